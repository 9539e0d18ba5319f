"""Qwen2 / Qwen3 HF → MLC parameters: q/k/v weights (and biases) fused into c_attn, gate/up into
gate_up_proj, everything else under its HF name. Biases and norms stay in the model dtype, as in MLC."""
from __future__ import annotations

from mlcbuild.models.qwen2.config import Qwen2Config
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan, concat_rows


def weight_plan(cfg: Qwen2Config, scheme: QuantizationScheme) -> WeightPlan:
    h, i, v, d = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    params: list[ParamSource] = [ParamSource("model.embed_tokens.weight", ("model.embed_tokens.weight",), ((v, h),), (v, h), "embedding")]

    def same(name: str, shape: tuple[int, ...], kind: str = "other") -> ParamSource:
        return ParamSource(name, (name,), (shape,), shape, kind)

    def qkv(a: str, leaf: str, tail: tuple[int, ...], kind: str) -> ParamSource:
        return ParamSource(
            f"{a}.c_attn.{leaf}",
            (f"{a}.q_proj.{leaf}", f"{a}.k_proj.{leaf}", f"{a}.v_proj.{leaf}"),
            ((nq * d, *tail), (nkv * d, *tail), (nkv * d, *tail)),
            ((nq + 2 * nkv) * d, *tail),
            kind,
            concat_rows,
        )

    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        a = f"{p}.self_attn"
        m = f"{p}.mlp"
        params += [same(f"{p}.input_layernorm.weight", (h,)), qkv(a, "weight", (h,), "linear")]
        if cfg.qkv_bias:
            params.append(qkv(a, "bias", (), "other"))
        params.append(same(f"{a}.o_proj.weight", (h, nq * d), "linear"))
        if cfg.o_proj_bias:
            params.append(same(f"{a}.o_proj.bias", (h,)))
        if cfg.qk_norm:
            params += [same(f"{a}.q_norm.weight", (d,)), same(f"{a}.k_norm.weight", (d,))]
        params += [
            same(f"{p}.post_attention_layernorm.weight", (h,)),
            ParamSource(f"{m}.gate_up_proj.weight", (f"{m}.gate_proj.weight", f"{m}.up_proj.weight"), ((i, h), (i, h)), (2 * i, h), "linear", concat_rows),
            same(f"{m}.down_proj.weight", (h, i), "linear"),
        ]
    params.append(same("model.norm.weight", (h,)))
    ignore: tuple[str, ...] = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")
    if cfg.tie_word_embeddings:
        ignore += (r"lm_head\.weight",)
    else:
        params.append(same("lm_head.weight", (v, h), "linear"))
    return WeightPlan(params, scheme, ignore)
