"""Gemma 2 family: HF config.json → MLC model config.

Gemma 2 alternates sliding-window layers (`layer_types`, older files: every other layer, starting
with a sliding one) with full-attention layers. The window is per layer (`sliding_window`), not
MLC's whole-model `sliding_window_size`, which stays -1: that one makes the runtime evict KV pages
on every layer, which would break the full-attention layers. The paged KV cache masks sliding
layers per token during decode and against cached tokens during prefill, but attends a prefill
chunk to itself with a plain causal mask, so `prefill_chunk_size` is capped at the window.

`attn_logit_softcapping` is recorded but not applied: tvm's paged-KV-cache attention kernels have
no soft-capping hook (MLC-LLM's Gemma 2 ignores it too). Final logit soft-capping is applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.models.config_base import (
    ConfigValueError,
    ModelConfigBase,
    check_heads,
    float_field,
    int_field,
    rope_params,
    str_field,
)

SLIDING = "sliding_attention"
FULL = "full_attention"
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


@dataclass
class Gemma2Config(ModelConfigBase):
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    num_hidden_layers: int = 0
    head_dim: int = 0
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"
    position_embedding_base: float = 10000.0
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int = 0
    """Window of the layers whose `layer_types` entry is sliding_attention (0: none)."""
    layer_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_key_value_heads == 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim == 0 and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not self.layer_types and self.num_hidden_layers:
            self.layer_types = default_layer_types(self.num_hidden_layers, 2)

    @property
    def sm_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5

    def attn_kinds(self) -> list[str]:
        """Per-layer attention kinds of tvm's paged KV cache."""
        return ["mha_sliding" if t == SLIDING else "mha" for t in self.layer_types]


def default_layer_types(num_layers: int, pattern: int) -> list[str]:
    """transformers' default: every `pattern`-th layer (1-based) is full, the rest slide."""
    return [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]


def softcap_field(hf: Mapping[str, Any], name: str, default: float | None) -> float | None:
    value = hf.get(name, default)
    if value is None:
        return None
    return float_field({name: value}, name, above=0)


def layer_types_field(hf: Mapping[str, Any], num_layers: int, default_pattern: int) -> list[str]:
    """`layer_types` (transformers ≥4.53) or the older `sliding_window_pattern` integer."""
    types = hf.get("layer_types")
    if types is None:
        pattern = int_field(hf, "sliding_window_pattern", "_sliding_window_pattern", default=default_pattern)
        return default_layer_types(num_layers, pattern)
    if not isinstance(types, list) or len(types) != num_layers or any(t not in (SLIDING, FULL) for t in types):
        raise ConfigValueError(
            f"expected {num_layers} entries, each {SLIDING!r} or {FULL!r}", "layer_types"
        )
    return list(types)


def check_common(hf: Mapping[str, Any], family: str) -> None:
    """Gemma 2 / 3 options this build does not implement."""
    if hf.get("attention_bias"):
        raise ConfigValueError(f"{family}: attention_bias=true is not supported", "attention_bias")
    if hf.get("use_bidirectional_attention"):
        raise ConfigValueError(f"{family}: use_bidirectional_attention=true is not supported", "use_bidirectional_attention")
    if hf.get("tie_word_embeddings") is False:
        raise ConfigValueError(f"{family}: an untied lm_head is not supported (MLC's Gemma ties it)", "tie_word_embeddings")


def finalize_gemma_sizes(cfg: Gemma2Config, hf: Mapping[str, Any], overrides: Mapping[str, Any], family: str) -> None:
    cfg.apply_overrides(overrides)
    if cfg.sliding_window_size > 0:
        raise UserError(
            f"{family}: a whole-model sliding window is not supported (its layers slide per layer_types)",
            field="overrides.sliding_window_size",
        )
    cfg.sliding_window_size = -1
    cfg.attention_sink_size = 0
    cfg.finalize_runtime_sizes(hf.get("max_position_embeddings"))
    if SLIDING in cfg.layer_types:
        # the KV cache attends a prefill chunk to itself without the window
        cfg.prefill_chunk_size = min(cfg.prefill_chunk_size, cfg.sliding_window)


def base_fields(hf: Mapping[str, Any], family: str, final_softcap_default: float | None) -> dict[str, Any]:
    """The fields Gemma 2 and Gemma 3 read the same way (absent softcaps take transformers' defaults)."""
    check_common(hf, family)
    hidden = int_field(hf, "hidden_size")
    heads = int_field(hf, "num_attention_heads")
    kv_heads = int_field(hf, "num_key_value_heads", default=heads)
    check_heads(hidden, heads, kv_heads, hf.get("head_dim") is not None)
    layers = int_field(hf, "num_hidden_layers")
    activation = str_field(hf, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    if activation not in _ACTIVATIONS:
        raise ConfigValueError(f"{family}: activation {activation!r} is not supported (supported: {', '.join(_ACTIVATIONS)})", "hidden_activation")
    return {
        "vocab_size": int_field(hf, "vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": int_field(hf, "intermediate_size"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "head_dim": int_field(hf, "head_dim", default=hidden // heads),
        "rms_norm_eps": float_field(hf, "rms_norm_eps", default=1e-6, above=0),
        "hidden_activation": activation,
        "query_pre_attn_scalar": float_field(hf, "query_pre_attn_scalar", default=256, above=0),
        "final_logit_softcapping": softcap_field(hf, "final_logit_softcapping", final_softcap_default),
    }


def window_field(hf: Mapping[str, Any], layer_types: list[str]) -> int:
    if SLIDING not in layer_types:
        return 0
    return int_field(hf, "sliding_window")


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> Gemma2Config:
    fields = base_fields(hf, "gemma2", 30.0)
    rope = rope_params(hf)
    rope_type = rope.get("rope_type", "default") or "default"
    if rope_type != "default":
        raise ConfigValueError(f"gemma2: rope type {rope_type!r} is not supported (supported: default)", "rope_scaling")
    layer_types = layer_types_field(hf, fields["num_hidden_layers"], 2)
    cfg = Gemma2Config(
        **fields,
        position_embedding_base=float_field(hf, "rope_theta", default=rope.get("rope_theta", 10000.0), above=0),
        attn_logit_softcapping=softcap_field(hf, "attn_logit_softcapping", 50.0),
        sliding_window=window_field(hf, layer_types),
        layer_types=layer_types,
    )
    finalize_gemma_sizes(cfg, hf, overrides, "gemma2")
    return cfg


__all__ = ["Gemma2Config", "config_from_hf", "SLIDING", "FULL"]
