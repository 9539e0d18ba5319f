"""Phi-3 family in tvm.relax.frontend.nn, with MLC-LLM's parameter names and layout.

MLC names (python/mlc_llm/model/phi3/phi3_model.py): transformer.embd, transformer.h.{i}.ln,
.mixer.qkv_proj, .mixer.out_proj, .mlp.gate_up_proj, .mlp.down_proj, .post_attention_layernorm,
transformer.norm, lm_head (absent when tied). The checkpoint already fuses qkv and gate/up.
LongRoPE runs inside the paged KV cache: rope_scaling {"rope_type": "longrope", ...} plus the
long+short factor table as `rope_ext_factors` (see config.py for its exact semantics).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import numpy as np
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm import kv_cache as tvm_kv_cache
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache
from tvm.relax.frontend.nn.llm.position_embedding import rope_freq_longrope
from tvm.script import tirx as T

from mlcbuild.models.llama.model import LlamaMLP
from mlcbuild.models.nn_common import CausalLMBase, Embedding
from mlcbuild.models.phi3.config import Phi3Config
from mlcbuild.quantization.scheme import QuantizationScheme


class Phi3Attention(nn.Module):
    """MLC's PhiMHA: fused qkv_proj, out_proj; RoPE is applied by the KV cache."""

    def __init__(self, cfg: Phi3Config, dtype: str):
        self.num_q = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(self.num_q * self.head_dim, cfg.hidden_size, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.num_q + 2 * self.num_kv, self.head_dim))
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.num_q, sm_scale=self.head_dim**-0.5)
        return self.out_proj(op.reshape(out, (b, s, self.num_q * self.head_dim)))


class Phi3Block(nn.Module):
    """Pre-norm block; attribute order is MLC's (ln, mixer, mlp, post_attention_layernorm)."""

    def __init__(self, cfg: Phi3Config, dtype: str):
        self.ln = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
        self.mixer = Phi3Attention(cfg, dtype)
        self.mlp = LlamaMLP(cfg, dtype)  # type: ignore[arg-type]  # same gate_up_proj/down_proj SwiGLU
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.mixer(self.ln(x), kv, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class Phi3Model(nn.Module):
    def __init__(self, cfg: Phi3Config, dtype: str):
        self.embd = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.h = nn.ModuleList([Phi3Block(cfg, dtype) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.h):
            x = layer(x, kv, layer_id)
        return self.norm(x)


class Phi3ForCausalLM(CausalLMBase):
    def __init__(self, cfg: Phi3Config, dtype: str, target: Any = None):
        self.transformer = Phi3Model(cfg, dtype)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.set_sizes(cfg, dtype, target, rope_theta=cfg.position_embedding_base, rotary_dim=cfg.rotary_dim, rope_scaling=cfg.rope_scaling)
        self.rope_ext_factors = cfg.rope_ext_factors()

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.transformer.embd(input_ids)

    def forward_hidden(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        return self.transformer(input_embeds, paged_kv_cache)

    def get_logits(self, hidden: Tensor) -> Tensor:
        return self.head_logits(self.transformer.embd, hidden)

    def kv_cache_overrides(self) -> dict[str, Any]:
        """The longrope factor table (float32 [rotary_dim]: long, then short), as MLC passes it."""
        if not self.rope_ext_factors:
            return {}
        return {"rope_ext_factors": rx.const(np.array(self.rope_ext_factors, "float32"))}

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        with _longrope_split_rotary() if self.rope_ext_factors else contextlib.nullcontext():
            return super().create_tir_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window)

class _LongOrShort:
    """The factor TVM's rope_freq_longrope reads as `ext_factors[i]`: table[i] (long) when `use_long`,
    else table[half + i] (short)."""

    def __init__(self, table: Any, half: int, use_long: Any):
        self.table = table
        self.half = half
        self.use_long = use_long

    def __getitem__(self, i: Any) -> Any:
        return tirx.if_then_else(self.use_long, self.table[i], self.table[i + self.half])


def longrope_split_rotary(
    theta: float,
    scale: float,
    head_dim: int,
    num_q_heads: int,
    num_kv_heads: int,
    dtype: str,
    rope_scaling: dict[str, Any],
    rotary_dim: int | None = None,
) -> Any:
    """The KV cache's `tir_split_rotary` for longrope: split fused qkv into q, k, v, rotating q and k.

    Same contract and math as TVM's `llama_rope_with_position_map` longrope kernel, whose TVMScript
    does not parse in apache-tvm 0.27 (`if ext_factors:` on a TIR buffer raises). `ext_factors` is
    float32 [rotary_dim]: the long factors, then the short ones. A call with more tokens than
    original_max_position_embeddings (all sequences together) uses the long half, others the short
    half; cos/sin carry sqrt(1 + ln(M/O)/ln(O)) via TVM's own `rope_freq_longrope`.
    """
    rotary_dim = rotary_dim or head_dim
    half = rotary_dim // 2
    fused_heads = num_q_heads + 2 * num_kv_heads
    original = int(rope_scaling["original_max_position_embeddings"])
    freq = functools.partial(
        rope_freq_longrope,
        max_position_embeddings=int(rope_scaling["max_position_embeddings"]),
        original_max_position_embeddings=original,
    )
    pos_scale = tirx.const(scale, "float32")

    def rope(x: Any, s: Any, h: Any, d: Any, pos: Any, ext_factors: Any, seq_len: Any) -> Any:
        factors = _LongOrShort(ext_factors, half, seq_len > original)
        cos_freq, sin_freq, var_map = freq(pos * pos_scale, d, rotary_dim, theta, "float32", ext_factors=factors)
        rotated = tirx.if_then_else(d < half, -x[s, h, d + half], x[s, h, d - half])
        expr = (cos_freq * x[s, h, d].astype("float32") + sin_freq * rotated.astype("float32")).astype(dtype)
        for var, value in var_map.items():
            expr = tirx.Let(var, value, expr)
        return expr

    @T.prim_func(private=True, s_tir=True)
    def split_rotary(
        var_qkv: T.handle,
        var_position_map: T.handle,
        var_q: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        ext_factors: T.Buffer((rotary_dim,), "float32"),  # type: ignore[valid-type]
    ):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        seq_len = T.int64()
        position_map_elem_offset = T.int64()
        qkv = T.match_buffer(var_qkv, (seq_len, fused_heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, num_q_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, num_kv_heads, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        for iters in T.grid(seq_len, fused_heads, head_dim):
            with T.sblock("llama_fused_rope"):
                s, h, d = T.axis.remap("SSS", iters)
                if h < num_q_heads:
                    q[s, h, d] = T.if_then_else(d < rotary_dim, rope(qkv, s, h, d, position_map[s], ext_factors, seq_len), qkv[s, h, d])
                elif h < num_q_heads + num_kv_heads:
                    k[s, h - num_q_heads, d] = T.if_then_else(
                        d < rotary_dim, rope(qkv, s, h, d, position_map[s], ext_factors, seq_len), qkv[s, h, d]
                    )
                else:
                    v[s, h - (num_q_heads + num_kv_heads), d] = qkv[s, h, d]

    return split_rotary


@contextlib.contextmanager
def _longrope_split_rotary() -> Iterator[None]:
    """While the cache is built, TVM's kv_cache module uses `longrope_split_rotary` for longrope."""
    original = tvm_kv_cache.llama_rope_with_position_map

    def choose(theta: float, scale: float, head_dim: int, nq: int, nkv: int, dtype: str, rope_scaling: dict[str, Any], rotary_dim: int | None = None) -> Any:
        make = longrope_split_rotary if rope_scaling.get("rope_type") == "longrope" else original
        return make(theta, scale, head_dim, nq, nkv, dtype, rope_scaling, rotary_dim)

    tvm_kv_cache.llama_rope_with_position_map = choose
    try:
        yield
    finally:
        tvm_kv_cache.llama_rope_with_position_map = original


def create_model(cfg: Phi3Config, scheme: QuantizationScheme, target: Any = None) -> Phi3ForCausalLM:
    return Phi3ForCausalLM(cfg, scheme.model_dtype, target)
