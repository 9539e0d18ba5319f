"""Llama family (Llama 2/3, Vicuna, TinyLlama, Mistral): HF config.json → MLC model config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.models.config_base import (
    ModelConfigBase,
    bool_field,
    check_heads,
    float_field,
    int_field,
    rope_params,
    str_field,
)


@dataclass
class LlamaConfig(ModelConfigBase):
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    num_hidden_layers: int = 0
    rms_norm_eps: float = 1e-6
    position_embedding_base: float = 10000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    head_dim: int = 0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads == 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim == 0 and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads


_SUPPORTED_ROPE = ("default", "llama3")


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> LlamaConfig:
    rope = rope_params(hf)
    rope_type = rope.get("rope_type", "default") or "default"
    if rope_type not in _SUPPORTED_ROPE:
        raise UserError(f"llama: rope_scaling type {rope_type!r} is not supported (supported: {', '.join(_SUPPORTED_ROPE)})")
    scaling: dict[str, Any] = {}
    if rope_type == "llama3":
        named = {f"rope_scaling.{k}": v for k, v in rope.items()}
        scaling = {
            "rope_type": "llama3",
            "factor": float_field(named, "rope_scaling.factor", above=0),
            "low_freq_factor": float_field(named, "rope_scaling.low_freq_factor", above=0),
            "high_freq_factor": float_field(named, "rope_scaling.high_freq_factor", above=0),
            "original_max_position_embeddings": int_field(named, "rope_scaling.original_max_position_embeddings"),
        }
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise UserError(f"llama: {flag}=true is not supported")
    hidden = int_field(hf, "hidden_size")
    heads = int_field(hf, "num_attention_heads")
    kv_heads = int_field(hf, "num_key_value_heads", default=heads)
    check_heads(hidden, heads, kv_heads, hf.get("head_dim") is not None)
    cfg = LlamaConfig(
        vocab_size=int_field(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=int_field(hf, "intermediate_size"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=int_field(hf, "num_hidden_layers"),
        rms_norm_eps=float_field(hf, "rms_norm_eps", default=1e-6, above=0),
        position_embedding_base=float_field(hf, "rope_theta", default=rope.get("rope_theta", 10000.0), above=0),
        rope_scaling=scaling,
        head_dim=int_field(hf, "head_dim", default=hidden // heads),
        hidden_act=str_field(hf, "hidden_act", default="silu"),
        tie_word_embeddings=bool_field(hf, "tie_word_embeddings", default=False),
    )
    if cfg.hidden_act != "silu":
        raise UserError(f"llama: hidden_act {cfg.hidden_act!r} is not supported")
    sliding = hf.get("sliding_window")
    if sliding and hf.get("use_sliding_window", True):
        cfg.sliding_window_size = int_field(hf, "sliding_window")
    cfg.apply_overrides(overrides)
    cfg.finalize_runtime_sizes(hf.get("max_position_embeddings"))
    return cfg
