"""Phi-3 HF → MLC parameters (MLC's phi3_loader.py): renames only, the checkpoint already fuses
qkv_proj and gate_up_proj. Tied models (Phi-4-mini) have no lm_head; a stray one is ignored."""
from __future__ import annotations

from mlcbuild.models.phi3.config import Phi3Config
from mlcbuild.quantization.scheme import QuantizationScheme
from mlcbuild.weights.plan import ParamSource, WeightPlan


def weight_plan(cfg: Phi3Config, scheme: QuantizationScheme) -> WeightPlan:
    h, i, v, d = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads

    def rename(name: str, hf_name: str, shape: tuple[int, ...], kind: str = "other") -> ParamSource:
        return ParamSource(name, (hf_name,), (shape,), shape, kind)

    params: list[ParamSource] = [rename("transformer.embd.weight", "model.embed_tokens.weight", (v, h), "embedding")]
    for layer in range(cfg.num_hidden_layers):
        p, hf = f"transformer.h.{layer}", f"model.layers.{layer}"
        params += [
            rename(f"{p}.ln.weight", f"{hf}.input_layernorm.weight", (h,)),
            rename(f"{p}.mixer.qkv_proj.weight", f"{hf}.self_attn.qkv_proj.weight", ((nq + 2 * nkv) * d, h), "linear"),
            rename(f"{p}.mixer.out_proj.weight", f"{hf}.self_attn.o_proj.weight", (h, nq * d), "linear"),
            rename(f"{p}.mlp.gate_up_proj.weight", f"{hf}.mlp.gate_up_proj.weight", (2 * i, h), "linear"),
            rename(f"{p}.mlp.down_proj.weight", f"{hf}.mlp.down_proj.weight", (h, i), "linear"),
            rename(f"{p}.post_attention_layernorm.weight", f"{hf}.post_attention_layernorm.weight", (h,)),
        ]
    params.append(rename("transformer.norm.weight", "model.norm.weight", (h,)))
    ignore: tuple[str, ...] = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.(inv_freq|long_inv_freq|original_inv_freq)", r"model\.rotary_emb\.\w*inv_freq")
    if cfg.tie_word_embeddings:
        ignore += (r"lm_head\.weight",)
    else:
        params.append(rename("lm_head.weight", "lm_head.weight", (v, h), "linear"))
    return WeightPlan(params, scheme, ignore)
