"""Gemma 2 in tvm.relax.frontend.nn, in MLC-LLM's parameter layout.

MLC's layout: fused qkv_proj and gate_up_proj, LM head tied to embed_tokens, and the RMSNorm
weights stored as (1 + w): the converter adds the 1 (as MLC's gemma loaders do), so the model uses
plain RMSNorm. Embeddings are scaled by sqrt(hidden_size) in the model dtype at the start of the
decoder (not in `embed`), as MLC does.

The paged KV cache gets one attention kind per layer ("mha_sliding" for sliding-window layers,
"mha" otherwise) and the window as `layer_sliding_window_size`; see gemma2/config.py for what the
cache does and does not mask. Attention logit soft-capping is not applied (no hook in the cache's
kernels); the final logit soft-capping is.
"""
from __future__ import annotations

import re
from typing import Any

import tvm
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode

from mlcbuild.models.gemma2.config import Gemma2Config
from mlcbuild.models.nn_common import CausalLMBase, Embedding, resolve_target
from mlcbuild.quantization.scheme import QuantizationScheme


def gemma_norm(dim: int, cfg: Gemma2Config, dtype: str) -> nn.RMSNorm:
    """Gemma's (1 + w) RMSNorm; the stored weight already holds 1 + w."""
    return nn.RMSNorm(dim, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)


class GemmaMLP(nn.Module):
    def __init__(self, cfg: Gemma2Config, dtype: str):
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)
        self.approximate = "tanh" if cfg.hidden_activation == "gelu_pytorch_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.gelu(gate, approximate=self.approximate) * up)


class Gemma2Attention(nn.Module):
    def __init__(self, cfg: Gemma2Config, dtype: str, layer_id: int):
        self.num_q = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.sm_scale = cfg.sm_scale
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.head_dim, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(self.num_q * self.head_dim, cfg.hidden_size, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.num_q + 2 * self.num_kv, self.head_dim))
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.num_q, sm_scale=self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, self.num_q * self.head_dim)))


class Gemma2DecoderLayer(nn.Module):
    """Pre- and post-norms around both attention and MLP (the sandwich Gemma 2 and 3 share)."""

    attention_cls: Any = Gemma2Attention

    def __init__(self, cfg: Gemma2Config, dtype: str, layer_id: int):
        self.input_layernorm = gemma_norm(cfg.hidden_size, cfg, dtype)
        self.self_attn = self.attention_cls(cfg, dtype, layer_id)
        self.post_attention_layernorm = gemma_norm(cfg.hidden_size, cfg, dtype)
        self.pre_feedforward_layernorm = gemma_norm(cfg.hidden_size, cfg, dtype)
        self.mlp = GemmaMLP(cfg, dtype)
        self.post_feedforward_layernorm = gemma_norm(cfg.hidden_size, cfg, dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), kv, layer_id))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(nn.Module):
    layer_cls: Any = Gemma2DecoderLayer

    def __init__(self, cfg: Gemma2Config, dtype: str):
        self.hidden_size = cfg.hidden_size
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([self.layer_cls(cfg, dtype, i) for i in range(cfg.num_hidden_layers)])
        self.norm = gemma_norm(cfg.hidden_size, cfg, dtype)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        x = x * (self.hidden_size**0.5)
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv, layer_id)
        return self.norm(x)


class GemmaCausalLMBase(CausalLMBase):
    """What Gemma 2 and 3 share above the decoder: tied head, final soft-cap, per-layer KV cache."""

    kv_rope_mode: RopeMode = RopeMode.NORMAL

    def _init_common(self, cfg: Gemma2Config, dtype: str, target: Any) -> None:
        self.set_sizes(cfg, dtype, target, rope_theta=cfg.position_embedding_base, rotary_dim=cfg.head_dim)
        self.final_logit_softcapping = cfg.final_logit_softcapping
        self.attn_kinds = cfg.attn_kinds()
        self.layer_window = cfg.sliding_window if cfg.sliding_window > 0 else 1024

    def text_model(self) -> Gemma2Model:
        raise NotImplementedError

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.text_model().embed_tokens(input_ids)

    def forward_hidden(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        return self.text_model()(input_embeds, paged_kv_cache)

    def get_logits(self, hidden: Tensor) -> Tensor:
        logits = self.text_model().embed_tokens.lm_head_forward(hidden)
        if logits.dtype != "float32":
            logits = logits.astype("float32")
        cap = self.final_logit_softcapping
        if cap is not None:
            logits = op.tanh(logits / cap) * cap
        return logits

    def kv_cache_overrides(self) -> dict[str, Any]:
        """Windows are per layer (attn_kinds + layer_window); the whole-sequence sliding window
        (page eviction on every layer, inline RoPE) stays off whatever the caller asks."""
        return {
            "attn_kind": list(self.attn_kinds),
            "support_sliding_window": 0,
            "rope_mode": self.kv_rope_mode,
            "layer_sliding_window_size": self.layer_window,
        }

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        cache = super().create_tir_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window)
        if resolve_target(self.target).kind.name == "llvm" and "mha_sliding" in self.attn_kinds:
            _fix_cpu_sliding_prefill(rx.BlockBuilder.current())
        return cache

_MASKED_BRANCH = re.compile(
    r"(\n\s*new_m\[0\] = T\.max\(m_val\[0\], S_val\[0\]\)\n\s*else:\n(\s*)S_val\[0\] = T\.float32\(-50000\.0\)\n)"
)


def _fix_cpu_sliding_prefill(bb: rx.BlockBuilder) -> None:
    """tvm 0.27's CPU paged prefill kernel leaves its running max `new_m` unset when a key is
    masked, which only the sliding-window mask does for leading keys: a query whose window starts
    after the first cached key then reads an uninitialised value, and one that sees no cached key
    (the last query of a window-sized chunk) gets 0/0 = NaN. Set new_m = m_val on masked keys (a
    masked key then adds exp2(-5e4 - m) ≈ 0, or a negligible-weight state when nothing is seen)."""
    mod = bb.get()
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
            continue
        if func.attrs.get("global_symbol") != "batch_prefill_paged_kv_cpu_sliding_window":
            continue
        text, count = _MASKED_BRANCH.subn(lambda m: m.group(1) + m.group(2) + "new_m[0] = m_val[0]\n", func.script())
        if count != 1:
            raise RuntimeError("the CPU sliding-window prefill kernel changed shape; re-check _fix_cpu_sliding_prefill")
        bb.update_func(gv, tvm.script.from_source(text))


class Gemma2ForCausalLM(GemmaCausalLMBase):
    def __init__(self, cfg: Gemma2Config, dtype: str, target: Any = None):
        self.model = Gemma2Model(cfg, dtype)
        self._init_common(cfg, dtype, target)

    def text_model(self) -> Gemma2Model:
        return self.model


def create_model(cfg: Gemma2Config, scheme: QuantizationScheme, target: Any = None) -> Gemma2ForCausalLM:
    return Gemma2ForCausalLM(cfg, scheme.model_dtype, target)
