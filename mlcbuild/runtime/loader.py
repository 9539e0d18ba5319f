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

from mlcbuild.errors import UserError

TENSOR_CACHE = "tensor-cache.json"
CHAT_CONFIG = "mlc-chat-config.json"


class WeightsMismatchError(UserError):
    """The weights (or config) do not belong to the model library."""


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    dtype: str
    shard: str
    offset: int
    nbytes: int
    format: str = "raw"


@dataclass(frozen=True)
class TensorCacheIndex:
    """The parsed `tensor-cache.json`: records by name in file order, plus its metadata."""

    folder: Path
    records: dict[str, TensorRecord]
    metadata: Mapping[str, Any]

    @classmethod
    def read(cls, folder: Path) -> "TensorCacheIndex":
        path = Path(folder) / TENSOR_CACHE
        if not path.exists():
            raise WeightsMismatchError(f"{path}: no {TENSOR_CACHE} (is this a converted weights folder?)")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise WeightsMismatchError(f"{path}: not valid JSON ({exc})") from None
        records: dict[str, TensorRecord] = {}
        for shard in data.get("records", []):
            for rec in shard.get("records", []):
                records[rec["name"]] = TensorRecord(
                    name=rec["name"],
                    shape=tuple(int(d) for d in rec["shape"]),
                    dtype=str(rec["dtype"]),
                    shard=shard["dataPath"],
                    offset=int(rec["byteOffset"]),
                    nbytes=int(rec["nbytes"]),
                    format=str(rec.get("format", "raw")),
                )
        return cls(Path(folder), records, data.get("metadata") or {})


def _fmt(dtype: str, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def check_weights(
    metadata: Mapping[str, Any],
    index: TensorCacheIndex,
    chat_config: Mapping[str, Any] | None = None,
    lib_name: str = "model library",
) -> None:
    """Raise WeightsMismatchError naming the first difference between a library and its weights."""
    where = f"{lib_name} vs {index.folder}"
    lib_quant = metadata.get("quantization")
    if chat_config is not None:
        for key in ("model_type", "quantization"):
            if key in chat_config and key in metadata and chat_config[key] != metadata[key]:
                raise WeightsMismatchError(
                    f"{where}: {CHAT_CONFIG} says {key}={chat_config[key]!r} but the library was built for {metadata[key]!r}"
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
        raw = (index.folder / shard).read_bytes()
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
    return json.loads(str(fn()))
