"""Gemma 3 text family (model_type gemma3_text): HF config.json → MLC model config.

Same layer as Gemma 2 plus per-head q/k RMSNorm, with two RoPE settings: full-attention layers use
`rope_theta` (default 1e6, optionally with linear `rope_scaling`), sliding layers use
`rope_local_base_freq` (default 1e4). transformers 5 writes both as
`rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`. Sliding windows are per
layer as in Gemma 2 (see gemma2/config.py). Gemma 3 has no soft-capping by default; a non-null
`attn_logit_softcapping` is refused (the KV cache cannot apply it), a final one is applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlcbuild.models.config_base import ConfigValueError, float_field
from mlcbuild.models.gemma2.config import (
    Gemma2Config,
    base_fields,
    default_layer_types,
    finalize_gemma_sizes,
    layer_types_field,
    window_field,
)

_ROPE_TYPES = ("default", "linear")


@dataclass
class Gemma3Config(Gemma2Config):
    position_embedding_base: float = 1_000_000.0
    """RoPE base of the full-attention layers."""
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    """Full-attention layers' scaling: {} or {"rope_type": "linear", "factor": f}."""
    rope_local_base_freq: float = 10_000.0
    """RoPE base of the sliding-window layers."""

    def __post_init__(self) -> None:
        if not self.layer_types and self.num_hidden_layers:
            self.layer_types = default_layer_types(self.num_hidden_layers, 6)
        super().__post_init__()


def _rope_block(block: Mapping[str, Any], where: str, default_theta: float) -> tuple[float, dict[str, Any]]:
    """(theta, scaling) of one layer type's RoPE settings."""
    named = {f"{where}.{k}": v for k, v in block.items()}
    rope_type = block.get("rope_type", block.get("type", "default")) or "default"
    if rope_type not in _ROPE_TYPES:
        raise ConfigValueError(f"gemma3: rope type {rope_type!r} is not supported (supported: {', '.join(_ROPE_TYPES)})", f"{where}.rope_type")
    theta = float_field(named, f"{where}.rope_theta", default=default_theta, above=0)
    if rope_type == "linear":
        factor = float_field(named, f"{where}.factor", above=0)
        return theta, ({"rope_type": "linear", "factor": factor} if factor != 1.0 else {})
    return theta, {}


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> Gemma3Config:
    fields = base_fields(hf, "gemma3", None)
    if hf.get("attn_logit_softcapping") is not None:
        raise ConfigValueError("gemma3: attention logit soft-capping is not supported by the paged KV cache", "attn_logit_softcapping")
    params = hf.get("rope_parameters")
    if isinstance(params, Mapping) and ("full_attention" in params or "sliding_attention" in params):
        # transformers ≥5: one block per layer type
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
        for k, v in (hf.get("rope_scaling") or {}).items():
            full.setdefault(k, v)
        full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
        local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
        full_where, local_where = "rope_parameters.full_attention", "rope_parameters.sliding_attention"
    else:
        # transformers 4: rope_theta + rope_scaling (full layers), rope_local_base_freq (sliding layers)
        full = {**dict(hf.get("rope_scaling") or {}), **dict(params or {})}
        full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
        local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
        full_where, local_where = "rope_scaling", "rope_local_base_freq"
    theta, scaling = _rope_block(full, full_where, 1_000_000.0)
    local_theta, local_scaling = _rope_block(local, local_where, 10_000.0)
    if local_scaling:
        raise ConfigValueError("gemma3: RoPE scaling on sliding-window layers is not supported", f"{local_where}.rope_type")
    layer_types = layer_types_field(hf, fields["num_hidden_layers"], 6)
    cfg = Gemma3Config(
        **fields,
        position_embedding_base=theta,
        rope_scaling=scaling,
        rope_local_base_freq=local_theta,
        sliding_window=window_field(hf, layer_types),
        layer_types=layer_types,
    )
    finalize_gemma_sizes(cfg, hf, overrides, "gemma3")
    return cfg


__all__ = ["Gemma3Config", "config_from_hf"]
