"""Gemma 3 (text) in tvm.relax.frontend.nn, in MLC-LLM's parameter layout.

Builds on Gemma 2's decoder layer, MLP, norms and KV cache. MLC's Gemma 3 names everything under
`language_model.` and keeps q_proj / k_proj / v_proj separate (the per-head q/k norms sit between
the projections and attention); gate/up stay fused.

RoPE differs per layer type (local base on sliding layers, global base + optional linear scaling on
full layers), which one paged KV cache cannot express (it bakes a single RoPE base), so the cache
runs with RopeMode.NONE and the model rotates q and k itself at the positions the cache reports.
"""
from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode

from mlcbuild.models.gemma2.config import SLIDING
from mlcbuild.models.gemma2.model import Gemma2DecoderLayer, Gemma2Model, GemmaCausalLMBase, gemma_norm
from mlcbuild.models.gemma3.config import Gemma3Config
from mlcbuild.quantization.scheme import QuantizationScheme


def apply_rope(qkv: Tensor, positions: Tensor, num_rotated_heads: int, theta: float, scale: float) -> Tensor:
    """Rotate the first `num_rotated_heads` heads of qkv [n, heads, d] (NeoX half-split RoPE, as
    transformers' rotate_half) at `positions` [n] scaled by `scale` (1 / linear factor), in float32."""

    def compute(x: te.Tensor, pos: te.Tensor) -> te.Tensor:
        d = int(x.shape[2])
        half = d // 2

        def f(s: Any, h: Any, i: Any) -> Any:
            j = tirx.floormod(i, half)
            inv_freq = tirx.const(1.0, "float32") / tirx.power(
                tirx.const(theta, "float32"), (j * 2).astype("float32") / tirx.const(d, "float32")
            )
            angle = pos[s].astype("float32") * tirx.const(scale, "float32") * inv_freq
            other = tirx.if_then_else(i < half, -x[s, h, i + half], x[s, h, tirx.max(i - half, 0)])
            rotated = x[s, h, i].astype("float32") * tirx.cos(angle) + other.astype("float32") * tirx.sin(angle)
            return tirx.if_then_else(h < num_rotated_heads, rotated.astype(x.dtype), x[s, h, i])

        return te.compute(x.shape, f, name="gemma3_rope")

    return op.tensor_expr_op(compute, "gemma3_rope", [qkv, positions])


class Gemma3Attention(nn.Module):
    def __init__(self, cfg: Gemma3Config, dtype: str, layer_id: int):
        self.num_q = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = d = cfg.head_dim
        self.sm_scale = cfg.sm_scale
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.num_q * d, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(h, self.num_kv * d, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(h, self.num_kv * d, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(self.num_q * d, h, bias=False, dtype=dtype)
        self.q_norm = gemma_norm(d, cfg, dtype)
        self.k_norm = gemma_norm(d, cfg, dtype)
        if cfg.layer_types[layer_id] == SLIDING:
            self.rope_theta, self.rope_scale = cfg.rope_local_base_freq, 1.0
        else:
            factor = float(cfg.rope_scaling.get("factor", 1.0)) if cfg.rope_scaling else 1.0
            self.rope_theta, self.rope_scale = cfg.position_embedding_base, 1.0 / factor

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        d = self.head_dim
        q = self.q_norm(op.reshape(self.q_proj(x), (b, s, self.num_q, d)))
        k = self.k_norm(op.reshape(self.k_proj(x), (b, s, self.num_kv, d)))
        v = op.reshape(self.v_proj(x), (b, s, self.num_kv, d))
        heads = self.num_q + 2 * self.num_kv
        qkv = op.reshape(op.concat([q, k, v], dim=2), (b * s, heads, d))
        qkv = apply_rope(qkv, kv.get_query_positions(b * s), self.num_q + self.num_kv, self.rope_theta, self.rope_scale)
        out = kv.attention_with_fused_qkv(layer_id, op.reshape(qkv, (b, s, heads, d)), self.num_q, sm_scale=self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, self.num_q * d)))


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    attention_cls = Gemma3Attention


class Gemma3TextModel(Gemma2Model):
    layer_cls = Gemma3DecoderLayer


class Gemma3LanguageModel(nn.Module):
    """Only a name scope: MLC's Gemma 3 parameters live under `language_model.model.`."""

    def __init__(self, cfg: Gemma3Config, dtype: str):
        self.model = Gemma3TextModel(cfg, dtype)


class Gemma3ForCausalLM(GemmaCausalLMBase):
    kv_rope_mode = RopeMode.NONE

    def __init__(self, cfg: Gemma3Config, dtype: str, target: Any = None):
        self.language_model = Gemma3LanguageModel(cfg, dtype)
        self._init_common(cfg, dtype, target)

    def text_model(self) -> Gemma3TextModel:
        return self.language_model.model


def create_model(cfg: Gemma3Config, scheme: QuantizationScheme, target: Any = None) -> Gemma3ForCausalLM:
    return Gemma3ForCausalLM(cfg, scheme.model_dtype, target)
