"""Load a model library and its weights, checking they belong together before anything runs.

MLC users meet a lib/weights mismatch as "Cannot find parameter in cache" deep inside the
runtime. Here the library's `_metadata` (quantization, ordered params with shapes and dtypes) is
compared with `tensor-cache.json` first, and the first difference is reported in one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlcbuild.artifact import CHAT_CONFIG, TENSOR_CACHE, TOKENIZER_JSON, ChatConfig
from mlcbuild.artifact.tensor_cache import TensorCacheIndex, TensorRecord
from mlcbuild.errors import Location, UserError


class WeightsMismatchError(UserError):
    """The weights (or config) do not belong to the model library."""


def _fmt(dtype: str, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def check_weights(
    metadata: Mapping[str, Any],
    index: TensorCacheIndex,
    chat_config: ChatConfig | None = None,
    lib_name: str = "model library",
) -> None:
    """Raise WeightsMismatchError naming the first difference between a library and its weights."""
    where = f"{lib_name} vs {index.folder}"
    lib_quant = metadata.get("quantization")
    if chat_config is not None:
        for key, value in (("model_type", chat_config.model_type), ("quantization", chat_config.quantization)):
            if key in metadata and value != metadata[key]:
                raise WeightsMismatchError(
                    f"{where}: {CHAT_CONFIG} says {key}={value!r} but the library was built for {metadata[key]!r}"
                )
    cache_quant = index.metadata.get("quantization")
    if cache_quant is not None and lib_quant is not None and cache_quant != lib_quant:
        raise WeightsMismatchError(
            f"{where}: weights are quantized as {cache_quant!r} but the library expects {lib_quant!r}"
        )
    expected = metadata.get("params") or []
    for entry in expected:
        name = entry["name"]
        rec = index.records.get(name)
        want = _fmt(entry["dtype"], entry["shape"])
        if rec is None:
            hint = f" (weights quantization: {cache_quant})" if cache_quant else ""
            raise WeightsMismatchError(
                f"{where}: parameter {name!r} ({want}) is missing from {TENSOR_CACHE}; "
                f"library quantization {lib_quant!r}{hint}"
            )
        have = _fmt(rec.dtype, rec.shape)
        if list(rec.shape) != [int(d) for d in entry["shape"]] or rec.dtype != entry["dtype"]:
            raise WeightsMismatchError(
                f"{where}: parameter {name!r} is {have} in {TENSOR_CACHE} but the library expects {want} "
                f"(library quantization {lib_quant!r})"
            )
    known = {entry["name"] for entry in expected}
    for name in index.records:
        if name not in known:
            raise WeightsMismatchError(
                f"{where}: {TENSOR_CACHE} has parameter {name!r} that the library does not take "
                f"(library quantization {lib_quant!r})"
            )


def load_params(metadata: Mapping[str, Any], index: TensorCacheIndex, device: Any) -> list[Any]:
    """The library's parameters, in its order, as TVM tensors on `device` (one shard read at a time)."""
    import numpy as np
    import tvm

    by_shard: dict[str, list[tuple[int, TensorRecord]]] = {}
    order = [entry["name"] for entry in metadata.get("params") or []]
    for i, name in enumerate(order):
        rec = index.records[name]
        by_shard.setdefault(rec.shard, []).append((i, rec))
    out: list[Any] = [None] * len(order)
    for shard, recs in by_shard.items():
        raw = index.read_shard(shard)
        for i, rec in recs:
            buf = raw[rec.offset : rec.offset + rec.nbytes]
            if rec.dtype == "bfloat16":
                host = np.frombuffer(buf, dtype="uint16").reshape(rec.shape)
            else:
                host = np.frombuffer(buf, dtype=rec.dtype).reshape(rec.shape)
            arr = tvm.runtime.empty(rec.shape, rec.dtype, device=device)
            arr.copyfrom(np.ascontiguousarray(host))
            out[i] = arr
    return out


def read_library_metadata(vm: Any) -> dict[str, Any]:
    """`_metadata()` of a loaded Relax VM, parsed."""
    try:
        fn = vm["_metadata"]
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise WeightsMismatchError(f"the model library has no _metadata function ({exc})") from None
    try:
        metadata = json.loads(str(fn()))
    except ValueError as exc:
        raise WeightsMismatchError(f"the model library's _metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise WeightsMismatchError("the model library's _metadata is not a JSON object")
    return metadata


@dataclass(frozen=True)
class ModelFolder:
    """A model folder's config, weights index and tokenizer, each checked (md5s included)."""

    config: ChatConfig | None
    index: TensorCacheIndex
    tokenizer: Any


def open_model_folder(model_dir: Path, weights_dir: Path | None = None) -> ModelFolder:
    """Everything a run reads besides the library, checked before TVM is touched; one line per problem."""
    config_path = model_dir / CHAT_CONFIG
    config = ChatConfig.read(config_path) if config_path.exists() else None
    index = TensorCacheIndex.read(weights_dir or model_dir)
    index.verify()
    tokenizer_path = model_dir / TOKENIZER_JSON
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path.exists() or tokenizer_path.is_symlink() else None
    return ModelFolder(config, index, tokenizer)


def load_tokenizer(path: Path) -> Any:
    """A HF `tokenizers.Tokenizer` from tokenizer.json; garbage is one line naming the file."""
    from tokenizers import Tokenizer

    from mlcbuild.artifact.names import MAX_JSON_BYTES
    from mlcbuild.inputs import read_bytes

    raw = read_bytes(path, str(path), MAX_JSON_BYTES, what=path.name)
    try:
        return Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"not a valid tokenizer ({reason})", Location(path)) from None
