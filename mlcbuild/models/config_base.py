"""Shared behaviour of model configs: HF → MLC field mapping helpers and JSON round trip.

Pure Python: gen-config and planning import this without TVM.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from mlcbuild.artifact.chat_config import RUNTIME_SIZE_FIELDS
from mlcbuild.errors import Location, UserError, describe

C = TypeVar("C", bound="ModelConfigBase")


@dataclass
class ModelConfigBase:
    """Runtime-shape fields every family carries; families add their architecture fields."""

    context_window_size: int = 0
    prefill_chunk_size: int = 0
    sliding_window_size: int = -1
    attention_sink_size: int = 0
    tensor_parallel_shards: int = 1
    max_batch_size: int = 1
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `model_config` object of mlc-chat-config.json (sorted keys, JSON types only)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[C], model_config: Mapping[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in model_config.items() if k in names}
        extra = {k: v for k, v in model_config.items() if k not in names}
        if extra:
            known["kwargs"] = {**known.get("kwargs", {}), **extra}
        try:
            return cls(**known)
        except TypeError as exc:
            raise UserError(f"model_config does not fit {cls.__name__}: {exc}") from None

    def apply_overrides(self, overrides: Mapping[str, Any]) -> None:
        """The runtime sizes a recipe's `overrides` set (other override keys are not model fields)."""
        for key in RUNTIME_SIZE_FIELDS:
            value = overrides.get(key)
            if value is not None:
                setattr(self, key, int(value))

    def finalize_runtime_sizes(self, max_position_embeddings: int | None) -> None:
        """MLC's defaults for sizes the recipe left unset (0).

        With a sliding window and no explicit context window, the context is unbounded (-1): the
        KV cache holds the window plus attention sinks (4 by default), as MLC does for Mistral.
        Otherwise the window is HF's max_position_embeddings. Prefill chunks are ≤ 2048 and ≤ the window.
        """
        if self.sliding_window_size > 0 and self.context_window_size == 0:
            self.context_window_size = -1
            if self.attention_sink_size <= 0:
                self.attention_sink_size = 4
        if self.context_window_size == 0:
            if max_position_embeddings is None:
                raise UserError("config.json has no max_position_embeddings; set overrides.context_window_size")
            self.context_window_size = int_field({"max_position_embeddings": max_position_embeddings}, "max_position_embeddings")
        if self.prefill_chunk_size <= 0:
            window = self.context_window_size if self.context_window_size > 0 else self.sliding_window_size
            self.prefill_chunk_size = min(window, 2048)
        if self.tensor_parallel_shards != 1:
            raise UserError("tensor_parallel_shards > 1 is not supported yet", field="overrides.tensor_parallel_shards")


class ConfigValueError(UserError):
    """A config.json value that cannot describe a model (wrong type, out of range, inconsistent).

    Located at "config.json" by default; the download step, which knows the user's path, re-raises
    it naming the user's file.
    """

    def __init__(self, message: str, field: str | None, location: Location | None = None, missing: bool = False):
        super().__init__(message, location or Location("config.json"), field)
        self.missing = missing


def require(hf: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING) -> Any:
    """First present key among `names` (HF renamed fields across versions)."""
    for name in names:
        if name in hf and hf[name] is not None:
            return hf[name]
    if default is not dataclasses.MISSING:
        return default
    raise ConfigValueError("required field is missing", " / ".join(names), missing=True)


def _found(hf: Mapping[str, Any], names: tuple[str, ...]) -> str:
    return next((n for n in names if hf.get(n) is not None), names[0])


def int_field(hf: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING, minimum: int = 1) -> int:
    """An integer field ≥ `minimum` (1.0 counts as 1; "64", true and NaN do not)."""
    value = require(hf, *names, default=default)
    name = _found(hf, names)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigValueError(f"expected an integer, got {describe(value)}", name)
    if value < minimum:
        raise ConfigValueError(f"must be ≥ {minimum} (got {value})", name)
    return value


def float_field(
    hf: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING, above: float | None = None, at_most: float | None = None
) -> float:
    """A finite number, optionally > `above` and ≤ `at_most`."""
    value = require(hf, *names, default=default)
    name = _found(hf, names)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigValueError(f"expected a finite number, got {describe(value)}", name)
    if above is not None and value <= above:
        raise ConfigValueError(f"must be > {above} (got {value})", name)
    if at_most is not None and value > at_most:
        raise ConfigValueError(f"must be ≤ {at_most} (got {value})", name)
    return float(value)


def str_field(hf: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING) -> str:
    value = require(hf, *names, default=default)
    if not isinstance(value, str):
        raise ConfigValueError(f"expected a string, got {describe(value)}", _found(hf, names))
    return value


def bool_field(hf: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING) -> bool:
    value = require(hf, *names, default=default)
    if not isinstance(value, bool):
        raise ConfigValueError(f"expected true or false, got {describe(value)}", _found(hf, names))
    return value


def check_heads(hidden_size: int, num_attention_heads: int, num_key_value_heads: int, head_dim_given: bool) -> None:
    """Attention shapes the model can be built with: whole heads, whole groups of query heads per KV head."""
    if not head_dim_given and hidden_size % num_attention_heads:
        raise ConfigValueError(
            f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}", "num_attention_heads"
        )
    if num_attention_heads % num_key_value_heads:
        raise ConfigValueError(
            f"num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}",
            "num_key_value_heads",
        )


def rope_params(hf: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ≥5 nests rope settings in `rope_parameters`; older files use top-level keys."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    for k, v in legacy.items():
        params.setdefault(k, v)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    return params


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
