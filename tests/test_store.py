"""The content-addressed store: atomicity, verification, locking, the stat-trusted index."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.hashing import StatIndex, sha256_file, tree_digest
from mlcbuild.store.manifest import Manifest


def _put(store: Store, tmp_path: Path, files: dict[str, bytes]) -> Manifest:
    out = tmp_path / f"out-{time.monotonic_ns()}"
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return store.put_dir(out, move=True)


def test_put_and_get_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"a.txt": b"hello", "sub/b.bin": b"\x00" * 10})
    store.put_action(ActionResult("k" * 64, manifest, {"kind": "t"}))
    hit = store.get_action("k" * 64)
    assert hit is not None and hit.manifest == manifest
    assert store.read_bytes(manifest.files["a.txt"].digest) == b"hello"
    dest = tmp_path / "dest"
    store.materialize(manifest, dest)
    assert (dest / "sub/b.bin").read_bytes() == b"\x00" * 10
    assert not os.path.samefile(dest / "a.txt", store.object_path(manifest.files["a.txt"].digest))  # small: a copy


def test_result_with_missing_object_is_not_served(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"a.txt": b"payload"})
    store.put_action(ActionResult("a" * 64, manifest, {}))
    store.object_path(manifest.files["a.txt"].digest).unlink()
    assert store.get_action("a" * 64) is None


def test_verify_detects_flipped_byte(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"w.bin": bytes(range(256)) * 64})
    store.put_action(ActionResult("b" * 64, manifest, {}))
    assert store.verify() == []
    path = store.object_path(manifest.files["w.bin"].digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    problems = store.verify()
    assert len(problems) == 1 and "corrupt object" in problems[0]
    assert store.repair() == 1
    assert store.get_action("b" * 64) is None


def test_gc_keeps_only_live_results(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    keep = _put(store, tmp_path, {"keep": b"1"})
    drop = _put(store, tmp_path, {"drop": b"2"})
    store.put_action(ActionResult("c" * 64, keep, {}))
    store.put_action(ActionResult("d" * 64, drop, {}))
    report = store.gc({"c" * 64})
    assert (report.objects, report.object_bytes) == (1, 1)
    assert [r.key for r in report.results] == ["d" * 64]
    assert store.get_action("c" * 64) is not None and store.get_action("d" * 64) is None


def _locked_append(root: str, log: str) -> None:
    store = Store(root)
    with store.lock("e" * 64):
        with open(log, "a") as f:
            f.write("start\n")
            f.flush()
            time.sleep(0.2)
            f.write("end\n")


def test_key_lock_serializes_processes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_locked_append, args=(str(tmp_path / "cache"), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert log.read_text() == "start\nend\n" * 3


def test_stat_index_trusts_unchanged_files_and_sees_edits(tmp_path: Path) -> None:
    root = tmp_path / "model"
    root.mkdir()
    f = root / "w.bin"
    f.write_bytes(b"x" * 1000)
    old = time.time() - 60
    os.utime(f, (old, old))
    index = StatIndex.open(tmp_path / "stat.json")
    digest, _, _ = tree_digest(root, ["w.bin"], index)
    index.save()
    assert StatIndex.open(tmp_path / "stat.json").entries  # persisted

    calls = []
    import mlcbuild.store.hashing as hashing

    real = hashing.sha256_file
    hashing.sha256_file = lambda p: calls.append(p) or real(p)
    try:
        again, _, _ = tree_digest(root, ["w.bin"], StatIndex.open(tmp_path / "stat.json"))
        assert again == digest and calls == []
        f.write_bytes(b"y" * 1000)
        changed, _, _ = tree_digest(root, ["w.bin"], StatIndex.open(tmp_path / "stat.json"))
        assert changed != digest and len(calls) == 1
    finally:
        hashing.sha256_file = real


def test_racy_fresh_files_are_not_trusted(tmp_path: Path) -> None:
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"now")
    index = StatIndex.open(tmp_path / "stat.json")
    digest, _ = index.digest(f)
    assert digest == sha256_file(f)
    assert index.known(f.resolve(), f.stat()) is None, "a racy stat is never trusted"
    (signature, recorded), = index.entries.values()
    assert signature[0] == f.stat().st_ino and signature[3] is None and recorded == digest
    index.restat(f.stat(), digest)
    assert index.known(f.resolve(), f.stat()) is None, "nor made trusted by a later restat"
