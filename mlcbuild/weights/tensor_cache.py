"""MLC's tensor cache (tensor-cache.json + params_shard_<i>.bin), written as a stream.

The reader is `mlcbuild.artifact.tensor_cache`.

Same layout, record fields, shard policy and JSON formatting as tvm.contrib.tvmjs.dump_tensor_cache
(encode format "raw"), but tensors are written as they arrive so memory stays at one pending shard,
and nothing is timestamped, so equal inputs give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlcbuild.artifact.names import SHARD_PREFIX, TENSOR_CACHE

SHARD_CAP_BYTES = 32 * (1 << 20)


def _dtype_name(arr: np.ndarray) -> str:
    return "bfloat16" if arr.dtype.name == "bfloat16" else str(arr.dtype)


@dataclass
class TensorCacheWriter:
    """Append tensors in order; `finish(metadata)` writes tensor-cache.json last.

    With `background=True` a full shard is written and md5-summed on a helper thread while the
    caller produces the next tensors (hashlib and file writes release the GIL); at most one shard
    is in flight, so memory stays at two shards. Call `close()` before discarding a failed write.
    """

    out_dir: Path
    shard_cap_bytes: int = SHARD_CAP_BYTES
    background: bool = False
    shards: list[dict[str, Any]] = field(default_factory=list)
    _pending: bytearray = field(default_factory=bytearray)
    _pending_records: list[dict[str, Any]] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)
    _executor: ThreadPoolExecutor | None = None
    _inflight: Future | None = None
    total_bytes: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, arr: np.ndarray) -> None:
        if name in self._names:
            raise ValueError(f"duplicate tensor {name} in tensor cache")
        self._names.add(name)
        arr = np.ascontiguousarray(arr)
        data = memoryview(arr.reshape(-1).view(np.uint8))
        nbytes = data.nbytes
        rec: dict[str, Any] = {
            "name": name,
            "shape": [int(d) for d in arr.shape],
            "dtype": _dtype_name(arr),
            "format": "raw",
            "nbytes": nbytes,
        }
        self.total_bytes += nbytes
        if len(self._pending) + nbytes >= self.shard_cap_bytes:
            if nbytes * 2 >= self.shard_cap_bytes:
                rec["byteOffset"] = 0
                self._write_shard([data], [rec])
                return
            self._commit()
        rec["byteOffset"] = len(self._pending)
        self._pending_records.append(rec)
        self._pending += data

    def _commit(self) -> None:
        if self._pending:
            self._write_shard([memoryview(self._pending)], self._pending_records)
            self._pending = bytearray()
            self._pending_records = []

    def _write_shard(self, chunks: list[memoryview], records: list[dict[str, Any]]) -> None:
        data_path = f"{SHARD_PREFIX}_{len(self.shards)}.bin"
        shard = {"dataPath": data_path, "format": "raw-shard", "nbytes": sum(c.nbytes for c in chunks), "records": records, "md5sum": ""}
        self.shards.append(shard)
        if not self.background:
            _write_file(self.out_dir / data_path, chunks, shard)
            return
        self._wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcbuild-shard-writer")
        self._inflight = self._executor.submit(_write_file, self.out_dir / data_path, chunks, shard)

    def _wait(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    def close(self) -> None:
        """Wait for the shard in flight (errors included) and stop the helper thread."""
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def finish(self, metadata: Mapping[str, Any]) -> Path:
        self._commit()
        self.close()
        path = self.out_dir / TENSOR_CACHE
        with open(path, "w") as f:
            json.dump({"metadata": dict(metadata), "records": self.shards}, f, indent=4)
        return path


def _write_file(path: Path, chunks: list[memoryview], shard: dict[str, Any]) -> None:
    md5 = hashlib.md5()
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            md5.update(chunk)
    shard["md5sum"] = md5.hexdigest()
