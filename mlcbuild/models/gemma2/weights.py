"""Gemma 2 HF → MLC parameters: q/k/v → qkv_proj, gate/up → gate_up_proj, RMSNorm weights + 1.

As MLC-LLM's gemma2 loader: the 1 of Gemma's (1 + w) RMSNorm is added at conversion (in float32,
then cast to the model dtype), and there is no lm_head parameter (the head is embed_tokens).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mlcbuild.models.gemma2.config import Gemma2Config
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan, concat_rows

NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
IGNORE = (r"lm_head\.weight", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\..*inv_freq")


def add_one(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Gemma RMSNorm weight w → the 1 + w that MLC's models multiply by."""
    return np.asarray(arrays[0], dtype=np.float32) + np.float32(1)


def same(name: str, shape: tuple[int, ...], kind: str = "other", hf_prefix: str = "") -> ParamSource:
    return ParamSource(name, (name[len(hf_prefix):] if hf_prefix else name,), (shape,), shape, kind)


def norm(name: str, dim: int, hf_prefix: str = "") -> ParamSource:
    hf = name[len(hf_prefix):] if hf_prefix else name
    return ParamSource(name, (hf,), ((dim,),), (dim,), "other", add_one)


def mlp_and_norms(cfg: Gemma2Config, p: str, hf_prefix: str = "") -> list[ParamSource]:
    """gate_up_proj, down_proj and the four (1 + w) norms of layer prefix `p` (MLC name)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    m = f"{p}.mlp"
    hm = m[len(hf_prefix):]
    return [
        ParamSource(f"{m}.gate_up_proj.weight", (f"{hm}.gate_proj.weight", f"{hm}.up_proj.weight"), ((i, h), (i, h)), (2 * i, h), "linear", concat_rows),
        same(f"{m}.down_proj.weight", (h, i), "linear", hf_prefix),
        *(norm(f"{p}.{n}.weight", h, hf_prefix) for n in NORMS),
    ]


def weight_plan(cfg: Gemma2Config, scheme: QuantizationScheme) -> WeightPlan:
    h, v, d = cfg.hidden_size, cfg.vocab_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    params: list[ParamSource] = [same("model.embed_tokens.weight", (v, h), "embedding")]
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        a = f"{p}.self_attn"
        params += [
            ParamSource(
                f"{a}.qkv_proj.weight",
                (f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"),
                ((nq * d, h), (nkv * d, h), (nkv * d, h)),
                ((nq + 2 * nkv) * d, h),
                "linear",
                concat_rows,
            ),
            same(f"{a}.o_proj.weight", (h, nq * d), "linear"),
            *mlp_and_norms(cfg, p),
        ]
    params.append(norm("model.norm.weight", h))
    return WeightPlan(params, scheme, IGNORE)
