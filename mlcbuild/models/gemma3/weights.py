"""Gemma 3 text HF → MLC parameters (MLC-LLM's gemma3 loader layout).

MLC names: `language_model.` + the HF name; q/k/v stay separate, gate/up → gate_up_proj, and every
Gemma RMSNorm weight (the four layer norms, q_norm, k_norm, final norm) is stored as 1 + w.
"""
from __future__ import annotations

from mlcbuild.models.gemma2.weights import IGNORE, mlp_and_norms, norm, same
from mlcbuild.models.gemma3.config import Gemma3Config
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan

PREFIX = "language_model."


def weight_plan(cfg: Gemma3Config, scheme: QuantizationScheme) -> WeightPlan:
    h, v, d = cfg.hidden_size, cfg.vocab_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    params: list[ParamSource] = [same(f"{PREFIX}model.embed_tokens.weight", (v, h), "embedding", PREFIX)]
    for layer in range(cfg.num_hidden_layers):
        p = f"{PREFIX}model.layers.{layer}"
        a = f"{p}.self_attn"
        params += [
            same(f"{a}.q_proj.weight", (nq * d, h), "linear", PREFIX),
            same(f"{a}.k_proj.weight", (nkv * d, h), "linear", PREFIX),
            same(f"{a}.v_proj.weight", (nkv * d, h), "linear", PREFIX),
            same(f"{a}.o_proj.weight", (h, nq * d), "linear", PREFIX),
            norm(f"{a}.q_norm.weight", d, PREFIX),
            norm(f"{a}.k_norm.weight", d, PREFIX),
            *mlp_and_norms(cfg, p, PREFIX),
        ]
    params.append(norm(f"{PREFIX}model.norm.weight", h, PREFIX))
    return WeightPlan(params, scheme, IGNORE)
