"""Llama HF → MLC parameters: q/k/v fused into qkv_proj, gate/up fused into gate_up_proj."""
from __future__ import annotations

from mlcbuild.models.llama.config import LlamaConfig
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan, concat_rows


def weight_plan(cfg: LlamaConfig, scheme: QuantizationScheme) -> WeightPlan:
    h, i, v, d = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    params: list[ParamSource] = [ParamSource("model.embed_tokens.weight", ("model.embed_tokens.weight",), ((v, h),), (v, h), "embedding")]

    def same(name: str, shape: tuple[int, ...], kind: str = "other") -> ParamSource:
        return ParamSource(name, (name,), (shape,), shape, kind)

    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        a = f"{p}.self_attn"
        m = f"{p}.mlp"
        params += [
            same(f"{p}.input_layernorm.weight", (h,)),
            ParamSource(
                f"{a}.qkv_proj.weight",
                (f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"),
                ((nq * d, h), (nkv * d, h), (nkv * d, h)),
                ((nq + 2 * nkv) * d, h),
                "linear",
                concat_rows,
            ),
            same(f"{a}.o_proj.weight", (h, nq * d), "linear"),
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
