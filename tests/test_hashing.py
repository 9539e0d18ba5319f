"""Hashing: the pipelined and parallel paths give hashlib's digests; tool facts are remembered per binary."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from mlcbuild.store import hashing
from mlcbuild.store.hashing import StatIndex, sha256_file, sha256_files
from mlcbuild.toolmemo import remember


@pytest.mark.parametrize("size", [0, 1, hashing.CHUNK, hashing.PIPELINE_MIN_BYTES + 12345])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_read_error_surfaces_from_the_reader_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"\0" * (hashing.PIPELINE_MIN_BYTES + 1))
    real_open = open

    class FailingRead:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.f = real_open(*args, **kwargs)  # type: ignore[call-overload]

        def __enter__(self) -> "FailingRead":
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def fileno(self) -> int:
            return self.f.fileno()

        def readinto(self, buf: bytearray) -> int:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(hashing, "open", FailingRead, raising=False)
    with pytest.raises(OSError, match="Input/output"):
        sha256_file(f)


def test_sha256_files_keeps_order_and_index_hashes_only_misses(tmp_path: Path) -> None:
    files = []
    for i in range(5):
        f = tmp_path / f"shard{i}.bin"
        f.write_bytes(bytes([i]) * (1000 + i))
        old = time.time() - 60
        os.utime(f, (old, old))
        files.append(f)
    assert sha256_files(files) == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    index = StatIndex.open(tmp_path / "stat.json")
    first = index.digests(files)
    assert [d for d, _ in first] == sha256_files(files)
    files[2].write_bytes(b"changed")
    old = time.time() - 30
    os.utime(files[2], (old, old))
    calls: list[Path] = []
    real = hashing.sha256_file
    hashing.sha256_file = lambda p: calls.append(Path(p)) or real(p)
    try:
        second = index.digests(files)
    finally:
        hashing.sha256_file = real
    assert calls == [files[2].resolve()]
    assert second[2] == (hashlib.sha256(b"changed").hexdigest(), 7)
    assert [s for i, s in enumerate(second) if i != 2] == [s for i, s in enumerate(first) if i != 2]


def test_tool_facts_are_remembered_per_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checkouts with different TVM libraries keep one entry each: alternating never recomputes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    a.write_bytes(b"A")
    b.write_bytes(b"BB")
    computed: list[str] = []

    def fact(name: str):
        return lambda: computed.append(name) or [name]

    for _ in range(3):
        assert remember("probe", a, "s", fact("a")) == ["a"]
        assert remember("probe", b, "s", fact("b")) == ["b"]
    assert computed == ["a", "b"]
    a.write_bytes(b"A2")  # a rebuilt library is probed again
    assert remember("probe", a, "s", fact("a2")) == ["a2"]
    assert remember("probe", a, "other-probes", fact("a3")) == ["a3"]
    assert computed == ["a", "b", "a2", "a3"]
