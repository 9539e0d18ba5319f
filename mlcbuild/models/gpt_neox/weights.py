"""GPT-NeoX HF → MLC parameters: HF names kept; query_key_value regrouped from per-head [q,k,v]."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mlcbuild.models.gpt_neox.config import GPTNeoXConfig
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan


def _regroup_qkv(heads: int, head_dim: int):
    """HF lays out rows as [head][q|k|v][d]; the paged KV cache wants [q heads | k heads | v heads]."""

    def combine(arrays: Sequence[np.ndarray]) -> np.ndarray:
        w = arrays[0]
        rest = w.shape[1:]
        return np.ascontiguousarray(w.reshape(heads, 3, head_dim, *rest).swapaxes(0, 1).reshape(w.shape))

    return combine


def ffn_out_dtype(cfg: GPTNeoXConfig, model_dtype: str) -> str | None:
    """MLC computes both MLP projections into float32 for fp16 models; their biases are stored so."""
    return cfg.ffn_out_dtype if cfg.ffn_out_dtype != model_dtype else None


def weight_plan(cfg: GPTNeoXConfig, scheme: QuantizationScheme) -> WeightPlan:
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qkv = 3 * cfg.num_attention_heads * cfg.head_dim
    regroup = _regroup_qkv(cfg.num_attention_heads, cfg.head_dim)
    params: list[ParamSource] = [ParamSource("gpt_neox.embed_in.weight", ("gpt_neox.embed_in.weight",), ((v, h),), (v, h), "embedding")]

    def same(name: str, shape: tuple[int, ...], kind: str = "other", dtype: str | None = None) -> ParamSource:
        return ParamSource(name, (name,), (shape,), shape, kind, dtype=dtype)

    ffn_out = ffn_out_dtype(cfg, scheme.model_dtype)

    for layer in range(cfg.num_hidden_layers):
        p = f"gpt_neox.layers.{layer}"
        params += [
            same(f"{p}.input_layernorm.weight", (h,)),
            same(f"{p}.input_layernorm.bias", (h,)),
            ParamSource(f"{p}.attention.query_key_value.weight", (f"{p}.attention.query_key_value.weight",), ((qkv, h),), (qkv, h), "linear", regroup),
            ParamSource(f"{p}.attention.query_key_value.bias", (f"{p}.attention.query_key_value.bias",), ((qkv,),), (qkv,), "other", regroup),
            same(f"{p}.attention.dense.weight", (h, cfg.num_attention_heads * cfg.head_dim), "linear"),
            same(f"{p}.attention.dense.bias", (h,)),
            same(f"{p}.post_attention_layernorm.weight", (h,)),
            same(f"{p}.post_attention_layernorm.bias", (h,)),
            same(f"{p}.mlp.dense_h_to_4h.weight", (i, h), "linear"),
            same(f"{p}.mlp.dense_h_to_4h.bias", (i,), dtype=ffn_out),
            same(f"{p}.mlp.dense_4h_to_h.weight", (h, i), "linear"),
            same(f"{p}.mlp.dense_4h_to_h.bias", (h,), dtype=ffn_out),
        ]
    params += [
        same("gpt_neox.final_layer_norm.weight", (h,)),
        same("gpt_neox.final_layer_norm.bias", (h,)),
        same("embed_out.weight", (v, h), "linear"),
    ]
    ignore = (
        r"gpt_neox\.layers\.\d+\.attention\.(rotary_emb\.inv_freq|bias|masked_bias)",
        r"gpt_neox\.rotary_emb\.inv_freq",
    )
    return WeightPlan(params, scheme, ignore, aliases={"lm_head.weight": "embed_out.weight"})
