"""Phi-3 family (Phi-3, Phi-3.5, Phi-4-mini): HF config.json → MLC model config.

Field names follow MLC-LLM's `Phi3Config` (python/mlc_llm/model/phi3/phi3_model.py) so the
`model_config` of mlc-chat-config.json reads back in MLC, rope_scaling included:

    rope_scaling = {"type": "longrope", "rope_type": "longrope", "long_factor": [...],
                    "short_factor": [...], "max_position_embeddings": M,
                    "original_max_position_embeddings": O}    (None without scaling)

LongRoPE as MLC runs it (TVM's paged KV cache, `llama_rope_with_position_map`):
- cos/sin are multiplied by sqrt(1 + ln(M/O) / ln(O)) when M > O (else 1), for short and long
  factors alike, like transformers' default `attention_factor`;
- the long factors are used for a forward call whose token count (all sequences of the batch
  together) exceeds O, the short factors otherwise. transformers instead looks at the position
  (max(position_ids) + 1 > O) and, in `generate`, recomputes the whole cache with the long
  factors when a sequence crosses O. Up to O tokens the two agree exactly; past O they agree
  for one prefill chunk holding the whole sequence, while decode steps (1 token) keep using the
  short factors on top of keys cached with whichever factors their chunk used.

Differences from MLC's config reading, all where MLC would silently drop or crash:
- rope settings are also read from transformers-5 `rope_parameters` and from a `rope_scaling`
  that has `rope_type` but no `type` (MLC ignores both and runs plain RoPE);
- a missing `original_max_position_embeddings` defaults to 4096, transformers' Phi3Config
  default (MLC's 0 would divide by zero);
- `factor` / `attention_factor` that transformers would honour but TVM's kernel cannot are
  rejected unless they equal the value the kernel uses.
`sliding_window` is ignored, as in MLC (Phi-3 checkpoints declare one ≥ their context).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.models.config_base import (
    ConfigValueError,
    ModelConfigBase,
    bool_field,
    check_heads,
    float_field,
    int_field,
    rope_params,
    str_field,
)

DEFAULT_ORIGINAL_MAX_POSITION_EMBEDDINGS = 4096


@dataclass
class Phi3Config(ModelConfigBase):
    model_type: str = "phi3"
    hidden_size: int = 0
    vocab_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-5
    num_key_value_heads: int = 0
    max_position_embeddings: int = 0
    position_embedding_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    original_max_position_embeddings: int = 0
    head_dim: int = 0
    tie_word_embeddings: bool = False
    partial_rotary_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.num_key_value_heads == 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim == 0 and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Leading features of each head that RoPE rotates (MLC: int(head_dim * partial_rotary_factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

    def rope_ext_factors(self) -> list[float] | None:
        """long_factor + short_factor: the layout TVM's longrope kernel reads (long half first)."""
        if not self.rope_scaling:
            return None
        return [float(x) for x in self.rope_scaling["long_factor"]] + [float(x) for x in self.rope_scaling["short_factor"]]


_LONGROPE_NAMES = ("longrope", "su")


def _factors(rope: Mapping[str, Any], key: str, n: int) -> list[float]:
    value = rope.get(key)
    name = f"rope_scaling.{key}"
    if not isinstance(value, list):
        raise ConfigValueError("longrope needs a list of numbers", name, missing=value is None)
    out = []
    for i, x in enumerate(value):
        out.append(float_field({f"{name}[{i}]": x}, f"{name}[{i}]", above=0))
    if len(out) != n:
        raise ConfigValueError(f"has {len(out)} entries, rotary_dim {2 * n} needs {n}", name)
    return out


def _longrope(hf: Mapping[str, Any], rope: Mapping[str, Any], rotary_dim: int, max_pos: int) -> tuple[dict[str, Any], int]:
    if "original_max_position_embeddings" in hf and hf["original_max_position_embeddings"] is not None:
        orig = int_field(hf, "original_max_position_embeddings")
    else:
        named = {f"rope_scaling.{k}": v for k, v in rope.items()}
        orig = int_field(named, "rope_scaling.original_max_position_embeddings", default=DEFAULT_ORIGINAL_MAX_POSITION_EMBEDDINGS)
    scale = max_pos / orig
    attention_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    for key, used in (("factor", scale), ("attention_factor", attention_factor)):
        given = rope.get(key)
        if given is not None:
            given = float_field({f"rope_scaling.{key}": given}, f"rope_scaling.{key}", above=0)
            if not math.isclose(given, used, rel_tol=1e-6):
                raise ConfigValueError(
                    f"phi3: longrope {key} {given} is not supported (the paged KV cache derives {used:.6g} from "
                    "max_position_embeddings / original_max_position_embeddings)",
                    f"rope_scaling.{key}",
                )
    n = rotary_dim // 2
    scaling = {
        "type": "longrope",
        "rope_type": "longrope",
        "long_factor": _factors(rope, "long_factor", n),
        "short_factor": _factors(rope, "short_factor", n),
        "max_position_embeddings": max_pos,
        "original_max_position_embeddings": orig,
    }
    return scaling, orig


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> Phi3Config:
    rope = rope_params(hf)
    rope_type = rope.get("rope_type", "default") or "default"
    if rope_type not in ("default", *_LONGROPE_NAMES):
        raise UserError(f"phi3: rope_scaling type {rope_type!r} is not supported (supported: default, longrope, su)")
    hidden = int_field(hf, "hidden_size")
    heads = int_field(hf, "num_attention_heads")
    kv_heads = int_field(hf, "num_key_value_heads", default=heads)
    check_heads(hidden, heads, kv_heads, False)
    head_dim = hidden // heads
    if hf.get("head_dim") is not None and int_field(hf, "head_dim") != head_dim:
        raise ConfigValueError(f"phi3 needs head_dim = hidden_size / num_attention_heads = {head_dim}", "head_dim")
    if "partial_rotary_factor" in rope and rope["partial_rotary_factor"] is not None:
        named = {"rope_parameters.partial_rotary_factor": rope["partial_rotary_factor"]}
        prf = float_field(named, "rope_parameters.partial_rotary_factor", above=0, at_most=1)
    else:
        prf = float_field(hf, "partial_rotary_factor", default=1.0, above=0, at_most=1)
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigValueError(
            f"head_dim {head_dim} × partial_rotary_factor {prf} gives rotary_dim {rotary_dim}; it must be even and ≥ 2",
            "partial_rotary_factor",
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise UserError(f"phi3: {flag}=true is not supported")
    hidden_act = str_field(hf, "hidden_act", default="silu")
    if hidden_act != "silu":
        raise ConfigValueError(f"phi3: hidden_act {hidden_act!r} is not supported (only silu)", "hidden_act")
    max_pos = int_field(hf, "max_position_embeddings")
    scaling: dict[str, Any] | None = None
    orig = int_field(hf, "original_max_position_embeddings", default=0, minimum=0)
    if rope_type in _LONGROPE_NAMES:
        scaling, orig = _longrope(hf, rope, rotary_dim, max_pos)
    cfg = Phi3Config(
        hidden_size=hidden,
        vocab_size=int_field(hf, "vocab_size"),
        num_hidden_layers=int_field(hf, "num_hidden_layers"),
        num_attention_heads=heads,
        intermediate_size=int_field(hf, "intermediate_size"),
        rms_norm_eps=float_field(hf, "rms_norm_eps", default=1e-5, above=0),
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos,
        position_embedding_base=float_field(hf, "rope_theta", default=rope.get("rope_theta", 10000.0), above=0),
        rope_scaling=scaling,
        original_max_position_embeddings=orig,
        head_dim=head_dim,
        tie_word_embeddings=bool_field(hf, "tie_word_embeddings", default=False),
        partial_rotary_factor=prf,
    )
    cfg.apply_overrides(overrides)
    cfg.finalize_runtime_sizes(max_pos)
    return cfg
