"""mlc-chat-config.json as a typed object, after MLC-LLM's `protocol/mlc_chat_config.py`.

Field groups: the architecture (model_type, quantization, model_config), the runtime sizes, the
sampling defaults, the special token ids and the tokenizer. gen-config writes it, compile and the
runtime read it; `to_json`/`dumps` give exactly the bytes gen-config has always written (sorted keys,
two-space indent), so keys and cache hits do not move.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import Location, UserError

CONFIG_VERSION = "0.1.0"

RUNTIME_SIZE_FIELDS: tuple[str, ...] = (
    "context_window_size",
    "prefill_chunk_size",
    "sliding_window_size",
    "attention_sink_size",
    "tensor_parallel_shards",
    "max_batch_size",
)
"""The sizes that shape the compiled model and its KV cache; a recipe's `overrides` may set each."""

ARCH_FIELDS: tuple[str, ...] = ("model_type", "quantization", "model_config", *RUNTIME_SIZE_FIELDS)
"""Fields of mlc-chat-config.json that shape the compiled library (the compile key's view)."""

TOKEN_ID_FIELDS: tuple[str, ...] = ("pad_token_id", "bos_token_id", "eos_token_id")

_REQUIRED = ("model_type", "quantization", "model_config")


class _Reader:
    """Typed access to one JSON object; every error names the file and the field."""

    def __init__(self, data: Mapping[str, Any], where: Path | str | None, prefix: str = "") -> None:
        self.data = data
        self.where = where
        self.prefix = prefix

    def fail(self, key: str, message: str) -> UserError:
        return UserError(message, Location(self.where) if self.where is not None else None, field=self.prefix + key)

    def child(self, key: str) -> "_Reader":
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a JSON object, got {value!r:.60}")
        return _Reader(value, self.where, f"{self.prefix}{key}.")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "missing" if value is None else f"must be a string, got {value!r:.60}")
        return value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r:.60}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be ≥ {minimum}, got {value}")
        return value

    def token_id(self, key: str, default: int) -> int | list[int]:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self.fail(key, f"must be an integer or a list of integers, got {value!r:.60}")


@dataclass(frozen=True)
class RuntimeSizes:
    """Context window, prefill chunk, sliding window, attention sinks, tensor-parallel shards, batch."""

    context_window_size: int = -1
    prefill_chunk_size: int = -1
    sliding_window_size: int = -1
    attention_sink_size: int = 0
    tensor_parallel_shards: int = 1
    max_batch_size: int = 1

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str | None = None, prefix: str = "") -> "RuntimeSizes":
        r = _Reader(data, where, prefix)
        defaults = cls()
        return cls(**{k: r.integer(k, getattr(defaults, k), minimum=-1) for k in RUNTIME_SIZE_FIELDS})

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Range:
    """A closed interval, open at the low end when `low_open`; one range per sampling field."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


def _sampling_field(default: float, low: float, high: float, low_open: bool = False) -> Any:
    return field(default=default, metadata={"range": Range(low, high, low_open)})


@dataclass(frozen=True)
class Sampling:
    """Generation defaults a runtime starts from: MLC's names and defaults, OpenAI's ranges.

    The one declaration of the sampling fields (name, type, default, range): gen-config, the
    runtime, the server and the recipe schema's `overrides` (tests/test_sampling_fields.py) follow
    it, and `check_sampling` is the one check of a value. repetition_penalty stops at 0.01 because
    the runtime divides float32 logits by it.
    """

    temperature: float = _sampling_field(1.0, 0.0, 2.0)
    presence_penalty: float = _sampling_field(0.0, -2.0, 2.0)
    frequency_penalty: float = _sampling_field(0.0, -2.0, 2.0)
    repetition_penalty: float = _sampling_field(1.0, 0.01, 100.0)
    top_p: float = _sampling_field(1.0, 0.0, 1.0, low_open=True)

    def __post_init__(self) -> None:
        for name in SAMPLING_FIELDS:
            object.__setattr__(self, name, check_sampling(name, getattr(self, name)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str | None = None) -> "Sampling":
        d = cls()
        location = Location(where) if where is not None else None
        return cls(**{k: check_sampling(k, data.get(k), location, default=getattr(d, k)) for k in SAMPLING_FIELDS})

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Sampling))
SAMPLING_RANGES: dict[str, Range] = {f.name: f.metadata["range"] for f in dataclasses.fields(Sampling)}


def check_sampling(
    name: str, value: Any, where: Location | None = None, field: str | None = None, default: float | None = None
) -> float:
    """`value` of sampling field `name` as a float, or a UserError naming `field` (default: the name);
    None is `default` when one is given. The one check, for configs, recipes and requests alike."""
    if value is None and default is not None:
        return default
    label = field or name
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"must be a finite number (got {value!r:.60})", where, field=label)
    allowed = SAMPLING_RANGES[name]
    if value not in allowed:
        raise UserError(f"must be in {allowed} (got {value:g})", where, field=label)
    return float(value)


@dataclass(frozen=True)
class TokenIds:
    pad_token_id: int | list[int] = 0
    bos_token_id: int | list[int] = 1
    eos_token_id: int | list[int] = 2

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str | None = None) -> "TokenIds":
        r = _Reader(data, where)
        d = cls()
        return cls(**{k: r.token_id(k, getattr(d, k)) for k in TOKEN_ID_FIELDS})

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(self).items()}

    def stop_ids(self) -> list[int]:
        eos = self.eos_token_id
        return list(eos) if isinstance(eos, list) else [eos]


@dataclass(frozen=True)
class TokenizerInfo:
    """How MLC's runtime post-processes tokens (detected from tokenizer.json at gen-config)."""

    token_postproc_method: str = "byte_fallback"
    prepend_space_in_encode: bool = False
    strip_space_in_decode: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str | None = None) -> "TokenizerInfo":
        r = _Reader(data, where, "tokenizer_info.")
        method = r.string("token_postproc_method", cls.token_postproc_method)
        if method not in ("byte_fallback", "byte_level"):
            raise r.fail("token_postproc_method", f"must be byte_fallback or byte_level, got {method!r:.60}")
        flags = {}
        for key in ("prepend_space_in_encode", "strip_space_in_decode"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise r.fail(key, f"must be true or false, got {value!r:.60}")
            flags[key] = value
        return cls(method, **flags)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChatConfig:
    """The whole of mlc-chat-config.json; keys this class does not know are kept in `extra`."""

    model_type: str
    quantization: str
    model_config: Mapping[str, Any]
    vocab_size: int = 0
    active_vocab_size: int | None = None
    sizes: RuntimeSizes = field(default_factory=RuntimeSizes)
    pipeline_parallel_stages: int = 1
    tokenizer_files: tuple[str, ...] = ()
    tokenizer_info: TokenizerInfo = field(default_factory=TokenizerInfo)
    conv_template: Mapping[str, Any] | str = field(default_factory=dict)
    sampling: Sampling = field(default_factory=Sampling)
    token_ids: TokenIds = field(default_factory=TokenIds)
    version: str = CONFIG_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str | None = None) -> "ChatConfig":
        """Validate and type `data`; a bad field raises UserError `where: field: what is wrong`."""
        r = _Reader(data, where)
        for key in _REQUIRED:
            if key not in data:
                raise r.fail(key, "missing")
        model_config = r.child("model_config").data
        conv = data.get("conv_template", {})
        if not isinstance(conv, (Mapping, str)):
            raise r.fail("conv_template", f"must be a template object or name, got {conv!r:.60}")
        files = data.get("tokenizer_files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise r.fail("tokenizer_files", f"must be a list of file names, got {files!r:.60}")
        info = data.get("tokenizer_info", {})
        if not isinstance(info, Mapping):
            raise r.fail("tokenizer_info", f"must be a JSON object, got {info!r:.60}")
        active = data.get("active_vocab_size")
        known = {"version", "vocab_size", "active_vocab_size", "pipeline_parallel_stages", "tokenizer_files",
                 "tokenizer_info", "conv_template", *ARCH_FIELDS, *SAMPLING_FIELDS, *TOKEN_ID_FIELDS}
        return cls(
            model_type=r.string("model_type"),
            quantization=r.string("quantization"),
            model_config=dict(model_config),
            vocab_size=r.integer("vocab_size", 0, minimum=0),
            active_vocab_size=None if active is None else r.integer("active_vocab_size", 0, minimum=0),
            sizes=RuntimeSizes.from_json(data, where),
            pipeline_parallel_stages=r.integer("pipeline_parallel_stages", 1, minimum=1),
            tokenizer_files=tuple(files),
            tokenizer_info=TokenizerInfo.from_json(info, where),
            conv_template=conv if isinstance(conv, str) else dict(conv),
            sampling=Sampling.from_json(data, where),
            token_ids=TokenIds.from_json(data, where),
            version=r.string("version", CONFIG_VERSION),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def read(cls, path: Path | str) -> "ChatConfig":
        """Read mlc-chat-config.json (or the folder holding it); garbage is one line naming the file."""
        from mlcbuild.artifact.names import CHAT_CONFIG, MAX_JSON_BYTES
        from mlcbuild.inputs import read_json

        path = Path(path)
        if path.is_dir():
            path = path / CHAT_CONFIG
        return cls.from_json(read_json(path, str(path), MAX_JSON_BYTES), path)

    @classmethod
    def loads(cls, raw: bytes, where: Path | str) -> "ChatConfig":
        """From bytes (e.g. a cached object) with the same one-line errors as `read`."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"not valid JSON ({exc})", Location(where)) from None
        if not isinstance(data, dict):
            raise UserError(f"expected a JSON object, got {type(data).__name__}", Location(where))
        return cls.from_json(data, where)

    # --- writing -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "version": self.version,
            "model_type": self.model_type,
            "quantization": self.quantization,
            "model_config": dict(self.model_config),
            "vocab_size": self.vocab_size,
            **self.sizes.to_json(),
            "pipeline_parallel_stages": self.pipeline_parallel_stages,
            "tokenizer_files": list(self.tokenizer_files),
            "tokenizer_info": self.tokenizer_info.to_json(),
            "conv_template": self.conv_template if isinstance(self.conv_template, str) else dict(self.conv_template),
            **self.sampling.to_json(),
            **self.token_ids.to_json(),
        }
        if self.active_vocab_size is not None:
            out["active_vocab_size"] = self.active_vocab_size
        return out

    def dumps(self) -> bytes:
        """Stable bytes: sorted keys, two-space indent, UTF-8, trailing newline."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    # --- views -------------------------------------------------------------------------------

    def architecture(self) -> dict[str, Any]:
        """What compile depends on: sampling, templates and tokenizer excluded, except the
        tokenizer's size (`active_vocab_size`), which the library's softmax masks at."""
        arch = {
            "model_type": self.model_type,
            "quantization": self.quantization,
            "model_config": dict(self.model_config),
            **self.sizes.to_json(),
        }
        if self.active_vocab_size is not None:
            arch["active_vocab_size"] = self.active_vocab_size
        return arch

    def model_sizes(self) -> RuntimeSizes:
        """The sizes as the compiled model saw them: model_config first, then the top level."""
        merged = {**self.sizes.to_json(), **{k: self.model_config[k] for k in RUNTIME_SIZE_FIELDS if self.model_config.get(k) is not None}}
        return RuntimeSizes.from_json(merged, None, "model_config.")
