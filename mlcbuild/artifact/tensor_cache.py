"""The one reader of MLC's tensor cache (tensor-cache.json + params_shard_<i>.bin).

`TensorCacheIndex.read` validates the whole index before any byte of a shard is used: every
record has a name, a known dtype, a shape that fits its nbytes and a range inside its shard; every
dataPath stays inside the folder (no `..`, no absolute path, no symlink out). `verify` then checks
each shard's size and md5sum, trusting a shard whose (inode, size, mtime, ctime) were verified
before, so repeated loads do not re-hash gigabytes. Every problem is one line naming the file.
"""
from __future__ import annotations

import dataclasses

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping

from mlcbuild.artifact.names import LEGACY_TENSOR_CACHE, TENSOR_CACHE
from mlcbuild.errors import Location, UserError

if TYPE_CHECKING:
    import numpy as np

    from mlcbuild.store.hashing import StatIndex

DTYPE_BYTES: dict[str, int] = {
    "bool": 1, "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "e4m3_float8": 1, "e5m2_float8": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4,
    "int64": 8, "uint64": 8, "float64": 8,
}
"""Element sizes of the dtypes a tensor cache may hold (TVM's names)."""


class TensorCacheError(UserError):
    """tensor-cache.json or a shard is malformed, corrupt or escapes its folder."""


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
class Shard:
    data_path: str
    nbytes: int
    md5sum: str | None
    names: tuple[str, ...]


def _verified_index_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "mlcbuild", "verified-shards.json")


def _int(value: Any, minimum: int = 0) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


@dataclass(frozen=True)
class TensorCacheIndex:
    """The parsed, validated `tensor-cache.json`: records by name in file order, shards, metadata."""

    folder: Path
    records: dict[str, TensorRecord]
    metadata: Mapping[str, Any]
    shards: tuple[Shard, ...] = ()
    index_name: str = TENSOR_CACHE
    """`tensor-cache.json`, or `ndarray-cache.json` in a folder written before the rename."""

    @property
    def path(self) -> Path:
        return self.folder / self.index_name

    @classmethod
    def read(cls, folder: Path | str) -> "TensorCacheIndex":
        """Parse and validate; a bad index raises TensorCacheError `path: field: what is wrong`."""
        from mlcbuild.artifact.names import MAX_JSON_BYTES
        from mlcbuild.inputs import read_json

        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        path = folder / TENSOR_CACHE
        if not path.exists() and (folder / LEGACY_TENSOR_CACHE).exists():
            path = folder / LEGACY_TENSOR_CACHE
        if not path.exists():
            raise TensorCacheError(f"no {TENSOR_CACHE} (is this a converted weights folder?)", Location(path))
        try:
            data = read_json(path, str(path), MAX_JSON_BYTES)
        except TensorCacheError:
            raise
        except UserError as exc:
            raise TensorCacheError(exc.message, exc.location, exc.field) from None
        return dataclasses.replace(cls.from_json(data, folder), index_name=path.name)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], folder: Path) -> "TensorCacheIndex":
        path = folder / TENSOR_CACHE

        def fail(where: str, message: str) -> TensorCacheError:
            return TensorCacheError(message, Location(path), field=where)

        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise fail("metadata", "must be a JSON object")
        shards_json = data.get("records")
        if not isinstance(shards_json, list):
            raise fail("records", "must be a list of shards")
        root = folder.resolve()
        records: dict[str, TensorRecord] = {}
        shards: list[Shard] = []
        seen_paths: set[str] = set()
        for i, shard in enumerate(shards_json):
            where = f"records[{i}]"
            if not isinstance(shard, Mapping):
                raise fail(where, "must be a JSON object")
            data_path = _data_path(shard.get("dataPath"), folder, root, lambda m: fail(f"{where}.dataPath", m))
            if data_path in seen_paths:
                raise fail(f"{where}.dataPath", f"{data_path} is listed twice")
            seen_paths.add(data_path)
            shard_bytes = _int(shard.get("nbytes"))
            if shard_bytes is None:
                raise fail(f"{where}.nbytes", f"must be a non-negative integer, got {shard.get('nbytes')!r:.40}")
            md5 = shard.get("md5sum")
            if md5 is not None and not isinstance(md5, str):
                raise fail(f"{where}.md5sum", f"must be a string, got {md5!r:.40}")
            recs = shard.get("records")
            if not isinstance(recs, list):
                raise fail(f"{where}.records", "must be a list")
            names = []
            for j, rec in enumerate(recs):
                record = _record(rec, data_path, shard_bytes, lambda f, m: fail(f"{where}.records[{j}]{f}", m))
                if record.name in records:
                    raise fail(f"{where}.records[{j}].name", f"{record.name!r} appears twice")
                records[record.name] = record
                names.append(record.name)
            shards.append(Shard(data_path, shard_bytes, md5 or None, tuple(names)))
        return cls(folder, records, dict(metadata), tuple(shards))

    # --- integrity ---------------------------------------------------------------------------

    def verify(self, trusted: "StatIndex | None" = None) -> None:
        """Each shard is a regular file of its recorded size and md5sum (stat-trusted when verified before).

        Without `trusted`, the per-user index of verified shards is used and saved. Sizes are checked
        first (a truncated shard is not hashed); shards are hashed in parallel; the first bad shard
        in file order is reported.
        """
        from mlcbuild.store.hashing import StatIndex, md5_file

        for shard in self.shards:
            self._check_size(shard)
        index = trusted if trusted is not None else StatIndex.open(_verified_index_path(), hash_file=md5_file)
        checked = [s for s in self.shards if s.md5sum is not None]
        try:
            digests = index.digests([self.folder / s.data_path for s in checked])
        finally:
            if trusted is None and index.dirty:
                index.entries = {p: e for p, e in index.entries.items() if os.path.exists(p)}
                try:
                    index.save()
                except OSError:
                    pass
        for shard, (digest, _) in zip(checked, digests):
            if digest != shard.md5sum:
                raise TensorCacheError(
                    f"md5 {digest} does not match {TENSOR_CACHE} ({shard.md5sum}): the shard is corrupt "
                    "or comes from other weights; rebuild or re-download this model folder",
                    Location(self.folder / shard.data_path),
                )

    def _check_size(self, shard: Shard) -> None:
        import stat as stat_mod

        file = self.folder / shard.data_path
        try:
            st = file.stat()
        except FileNotFoundError:
            raise TensorCacheError(f"shard missing (listed in {TENSOR_CACHE})", Location(file)) from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise TensorCacheError("shard is not a regular file", Location(file))
        if st.st_size != shard.nbytes:
            what = "truncated" if st.st_size < shard.nbytes else "longer than recorded"
            raise TensorCacheError(
                f"shard is {what}: {st.st_size} bytes, {TENSOR_CACHE} says {shard.nbytes}", Location(file)
            )

    # --- data --------------------------------------------------------------------------------

    def read_shard(self, data_path: str) -> bytes:
        return (self.folder / data_path).read_bytes()

    def to_numpy(self, verify: bool = False) -> dict[str, "np.ndarray"]:
        """Every tensor as numpy (bfloat16 via ml_dtypes; f32-to-bf16 records widened back)."""
        import numpy as np

        from mlcbuild.quantization.numpy_quant import np_dtype

        if verify:
            from mlcbuild.store.hashing import StatIndex, md5_file

            self.verify(StatIndex(self.folder / ".unsaved", {}, hash_file=md5_file))
        result: dict[str, np.ndarray] = {}
        for shard in self.shards:
            raw = self.read_shard(shard.data_path)
            if len(raw) != shard.nbytes:
                raise TensorCacheError(f"{len(raw)} bytes, expected {shard.nbytes}", Location(self.folder / shard.data_path))
            for name in shard.names:
                rec = self.records[name]
                buf = raw[rec.offset : rec.offset + rec.nbytes]
                if rec.format == "f32-to-bf16" and rec.dtype == "float32":
                    arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
                else:
                    arr = np.frombuffer(buf, np_dtype(rec.dtype))
                result[name] = arr.reshape(rec.shape).copy()
        return result


def _data_path(value: Any, folder: Path, root: Path, fail: Any) -> str:
    """A shard path that stays inside the folder, symlinks resolved."""
    if not isinstance(value, str) or not value:
        raise fail(f"must be a file name, got {value!r:.60}")
    pure = PurePosixPath(value)
    if pure.is_absolute() or value.startswith("\\") or ":" in pure.parts[0] or ".." in pure.parts:
        raise fail(f"{value!r} points outside the model folder")
    target = (folder / value).resolve()
    if target != root and root not in target.parents:
        raise fail(f"{value!r} points outside the model folder (to {target})")
    return value


def _record(rec: Any, data_path: str, shard_bytes: int, fail: Any) -> TensorRecord:
    if not isinstance(rec, Mapping):
        raise fail("", "must be a JSON object")
    name = rec.get("name")
    if not isinstance(name, str) or not name:
        raise fail(".name", f"missing or not a string (in {data_path})" if name is None else f"must be a string, got {name!r:.40}")
    dtype = rec.get("dtype")
    if dtype not in DTYPE_BYTES:
        raise fail(".dtype", f"{name}: unknown dtype {dtype!r:.40}")
    shape = rec.get("shape")
    if not isinstance(shape, list) or any(_int(d) is None for d in shape):
        raise fail(".shape", f"{name}: must be a list of non-negative integers, got {shape!r:.60}")
    nbytes, offset = _int(rec.get("nbytes")), _int(rec.get("byteOffset"))
    if nbytes is None:
        raise fail(".nbytes", f"{name}: must be a non-negative integer, got {rec.get('nbytes')!r:.40}")
    if offset is None:
        raise fail(".byteOffset", f"{name}: must be a non-negative integer, got {rec.get('byteOffset')!r:.40}")
    fmt = rec.get("format", "raw")
    if fmt not in ("raw", "f32-to-bf16"):
        raise fail(".format", f"{name}: unknown format {fmt!r:.40}")
    itemsize = 2 if fmt == "f32-to-bf16" else DTYPE_BYTES[dtype]
    if math.prod(shape) * itemsize != nbytes:
        raise fail(".nbytes", f"{name}: {nbytes} bytes do not hold {dtype}{shape}")
    if offset + nbytes > shard_bytes:
        raise fail(
            ".byteOffset", f"{name}: bytes {offset}..{offset + nbytes} run past the end of {data_path} ({shard_bytes} bytes)"
        )
    return TensorRecord(name, tuple(shape), dtype, data_path, offset, nbytes, fmt)


def load_tensor_cache(path: Path | str, verify_md5: bool = False) -> dict[str, "np.ndarray"]:
    """Read a tensor cache (its folder or its tensor-cache.json) into numpy."""
    return TensorCacheIndex.read(path).to_numpy(verify=verify_md5)
