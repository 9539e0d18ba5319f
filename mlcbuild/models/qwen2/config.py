"""Qwen2 family (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen): HF config.json → MLC model config.

Field names are those of MLC-LLM's QWen2Config (`rope_theta`, not Llama's `position_embedding_base`),
so the `model_config` of mlc-chat-config.json reads the same in MLC's runtimes. Qwen3 extends this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

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
class Qwen2Config(ModelConfigBase):
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    num_hidden_layers: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    head_dim: int = 0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False

    qk_norm: ClassVar[bool] = False
    """Per-head RMSNorm of q and k before rope (Qwen3)."""

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 always has q/k/v biases (fused into c_attn.bias)."""
        return True

    @property
    def o_proj_bias(self) -> bool:
        return False

    def __post_init__(self) -> None:
        if self.num_key_value_heads == 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim == 0 and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads


Q = TypeVar("Q", bound=Qwen2Config)


def _sliding_layers(hf: Mapping[str, Any], num_layers: int) -> list[int]:
    """Layers transformers runs with a sliding window: none unless use_sliding_window; then those
    `layer_types` marks, or (files without layer_types) every layer from max_window_layers on."""
    if not bool_field(hf, "use_sliding_window", default=False) or hf.get("sliding_window") is None:
        return []
    int_field(hf, "sliding_window")
    types = hf.get("layer_types")
    if isinstance(types, list) and len(types) == num_layers:
        return [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    first = int_field(hf, "max_window_layers", default=num_layers, minimum=0)
    return list(range(first, num_layers))


def build_config(cls: type[Q], family: str, hf: Mapping[str, Any], overrides: Mapping[str, Any], *, head_dim_default: int | None = None, **extra: Any) -> Q:
    """The config of a Qwen family from config.json; unsupported features are one-line UserErrors."""
    rope = rope_params(hf)
    rope_type = rope.get("rope_type", "default") or "default"
    if rope_type != "default":
        raise UserError(f"{family}: rope_scaling type {rope_type!r} is not supported (supported: default)")
    hidden = int_field(hf, "hidden_size")
    heads = int_field(hf, "num_attention_heads")
    kv_heads = int_field(hf, "num_key_value_heads", default=heads)
    head_dim_given = hf.get("head_dim") is not None or head_dim_default is not None
    check_heads(hidden, heads, kv_heads, head_dim_given)
    layers = int_field(hf, "num_hidden_layers")
    sliding = _sliding_layers(hf, layers)
    if sliding:
        where = "all layers" if len(sliding) == layers else f"{len(sliding)} of {layers} layers, from layer {sliding[0]}"
        raise UserError(
            f"{family}: use_sliding_window=true (a {hf['sliding_window']}-token window on {where}) is not supported; "
            "the paged KV cache cannot express transformers' per-layer token window",
            field="use_sliding_window",
        )
    cfg = cls(
        vocab_size=int_field(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=int_field(hf, "intermediate_size"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=layers,
        rms_norm_eps=float_field(hf, "rms_norm_eps", default=1e-6, above=0),
        rope_theta=float_field(hf, "rope_theta", default=rope.get("rope_theta", 10000.0), above=0),
        head_dim=int_field(hf, "head_dim", default=head_dim_default or hidden // heads),
        hidden_act=str_field(hf, "hidden_act", default="silu"),
        tie_word_embeddings=bool_field(hf, "tie_word_embeddings", default=False),
        **extra,
    )
    if cfg.hidden_act != "silu":
        raise UserError(f"{family}: hidden_act {cfg.hidden_act!r} is not supported (supported: silu)")
    cfg.apply_overrides(overrides)
    cfg.finalize_runtime_sizes(hf.get("max_position_embeddings"))
    return cfg


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> Qwen2Config:
    return build_config(Qwen2Config, "qwen2", hf, overrides)
