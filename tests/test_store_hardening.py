"""Nothing lost, nothing corrupt served (issue 7): one test per class of failure. Most run in
process against a real store on disk; the classes that need it run real `mlcbuild` processes on the
tiny recipe (gc during a build, disk full, read-only cache, edits and corruption end to end)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from mlcbuild.cli.main import main
from mlcbuild.errors import UserError
from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.execute.materialize import materialize
from mlcbuild.plan.graph import Artifact, BuildGraph, Node
from mlcbuild.store import cas, hashing, placement
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.fs import StoreError
from mlcbuild.store.hashing import sha256_file
from mlcbuild.store.placed import RECORD
from test_build import mlcbuild, statuses, write_recipe
from test_store import _put


def _variant(store: Store, tmp_path: Path, dest: Path, weights: dict[str, bytes], config: dict[str, bytes]):
    """A graph with one model folder (convert + gen-config) and one library, all built."""
    graph = BuildGraph()
    convert = graph.add(Node.make("convert", {"w": sorted(weights)}, {}, "convert"))
    gen = graph.add(Node.make("gen-config", {"c": sorted(config)}, {}, "gen-config"))
    lib = graph.add(Node.make("compile", {}, {"config": gen}, "compile"))
    graph.artifacts += [
        Artifact(convert.id, dest),
        Artifact(gen.id, dest),
        Artifact(lib.id, dest.parent / "libs", rename={"lib.so": "tiny-llvm.so"}, kind="library"),
    ]
    report = BuildReport()
    for node, files in ((convert, weights), (gen, config), (lib, {"lib.so": b"\x7fELF" + os.urandom(64)})):
        report.outcomes[node.id] = Outcome(node, "built", "k" * 64, _put(store, tmp_path, files))
    return graph, report


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """A read-only view of path (a bind mount: root ignores permission bits, not a ro mount)."""
    view = path.with_name(path.name + "-ro")
    view.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


# -- 1. output locations that overlap what a build reads ---------------------------------------
def _line_of(recipe: Path, key: str) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1) if line.lstrip().startswith(f"{key}:"))


def test_output_overlapping_source_cache_or_a_file_is_refused_at_plan_time(tmp_path: Path) -> None:
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe

    cache = tmp_path / "cache"
    folder = tmp_path / "r"
    recipe = write_recipe(folder)
    (folder / "model").rename(folder / "src-q0f32-MLC")
    recipe = write_recipe(folder, name="src", source={"path": "src-q0f32-MLC"}, output=".")
    with pytest.raises(UserError) as e:
        plan([load_recipe(recipe)], Store(cache), PlanOptions())
    assert f"recipe.yaml:{_line_of(recipe, 'output')}:" in str(e.value) and "output: " in str(e.value)
    assert "overlaps the source folder" in str(e.value) and "\n" not in str(e.value)
    assert (folder / "src-q0f32-MLC" / "model.safetensors").is_file()

    recipe = write_recipe(folder, source={"path": "src-q0f32-MLC"}, output=str(cache / "dist"))
    with pytest.raises(UserError, match=r"recipe.yaml:\d+:\d+: output: .*overlaps the cache"):
        plan([load_recipe(recipe)], Store(cache), PlanOptions())

    (folder / "afile").write_text("not a folder")
    recipe = write_recipe(folder, source={"path": "src-q0f32-MLC"}, output="afile")
    with pytest.raises(UserError, match=r"recipe.yaml:\d+:\d+: output: .*afile is a file"):
        plan([load_recipe(recipe)], Store(cache), PlanOptions())

    recipe = write_recipe(folder, source={"path": "src-q0f32-MLC"}, output="out")
    assert plan([load_recipe(recipe)], Store(cache), PlanOptions()).artifacts


# -- 2. only files mlcbuild placed, unmodified, are removed ------------------------------------
def test_user_files_survive_and_only_our_unmodified_stale_files_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    dest = tmp_path / "dist" / "tiny-q0f32-MLC"
    graph, report = _variant(
        store, tmp_path, dest, {"tensor-cache.json": b"{}", "params_shard_0.bin": b"w0", "params_shard_1.bin": b"w1"},
        {"mlc-chat-config.json": b"{}", "extra.txt": b"ours"},
    )
    materialize(graph, report, store)
    (dest / "NOTES.txt").write_text("mine")
    (dest / "sub").mkdir()
    (dest / "sub" / "keep.bin").write_bytes(b"mine too")
    os.chmod(dest / "extra.txt", 0o644)
    (dest / "extra.txt").write_text("edited by the user")
    graph2, report2 = _variant(store, tmp_path, dest, {"tensor-cache.json": b"{}", "params_shard_0.bin": b"w0"}, {"mlc-chat-config.json": b"{}"})
    restored: list[Path] = []
    materialize(graph2, report2, store, restored.append)
    assert restored == [], "an edited file the artifact no longer holds is kept, not restored"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        ".mlcbuild-placed.json", "NOTES.txt", "extra.txt", "mlc-chat-config.json", "params_shard_0.bin", "sub", "sub/keep.bin", "tensor-cache.json",
    ]
    assert (dest / "extra.txt").read_text() == "edited by the user"
    assert "extra.txt" not in json.loads((dest / RECORD).read_text())["files"]


# -- 3. edits in the output folder never reach the cache, and are restored ----------------------
def test_edit_in_output_never_reaches_cache_and_is_restored(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "cache")
    dest = tmp_path / "dist" / "m-MLC"
    graph, report = _variant(store, tmp_path, dest, {"params_shard_0.bin": b"W" * 4096}, {"mlc-chat-config.json": b'{"t": 1}'})
    materialize(graph, report, store)
    config = dest / "mlc-chat-config.json"
    digest = report.outcomes[graph.artifacts[1].node_id].manifest.files["mlc-chat-config.json"].digest
    with open(config, "r+b") as f:  # in place, as an editor that keeps the inode would
        f.write(b'{"t": 9}')
    assert sha256_file(store.object_path(digest)) == digest
    restored: list[Path] = []
    assert materialize(graph, report, store, restored.append) and config.read_bytes() == b'{"t": 1}'
    assert restored == [config], "the user is told the edit was put back"

    monkeypatch.setattr(placement, "LINK_MIN_BYTES", 1024)  # weights above this are hard links
    shard = dest / "params_shard_0.bin"
    shard.unlink()
    materialize(graph, report, store)
    obj = report.outcomes[graph.artifacts[0].node_id].manifest.files["params_shard_0.bin"].digest
    assert os.path.samefile(shard, store.object_path(obj))
    key = "e" * 64
    store.put_action(ActionResult(key, report.outcomes[graph.artifacts[0].node_id].manifest, {}))
    with open(shard, "r+b") as f:
        f.write(b"X")
    fresh = Store(store.root)
    assert fresh.get_action(key) is None, "an edit through a hard link must make the result a miss"
    assert fresh.quarantined == [obj] and not store.object_path(obj).exists()
    fresh.put_file(_write(tmp_path / "rebuilt", b"W" * 4096))  # what a rebuild (or --force) stores
    assert fresh.get_action(key) is not None
    materialize(graph, report, fresh)
    assert shard.read_bytes() == b"W" * 4096 and os.path.samefile(shard, fresh.object_path(obj))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- 4. a corrupt object with its size and mtime restored is not served ------------------------
def test_flipped_byte_with_restored_mtime_is_detected_before_served(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"w.bin": bytes(range(256)) * 64})
    store.put_action(ActionResult("b" * 64, manifest, {}))
    store.save_index()
    path = store.object_path(manifest.files["w.bin"].digest)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    os.chmod(path, before.st_mode)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns

    fresh = Store(store.root)
    assert fresh.get_action("b" * 64, check_objects=False) is not None  # planners that never serve: presence only
    with pytest.raises(StoreError, match="missing or corrupt"):
        fresh.materialize(manifest, tmp_path / "dest")
    assert not (tmp_path / "dest" / "w.bin").exists()
    assert fresh.get_action("b" * 64) is None
    assert list((store.root / "quarantine").iterdir())


# -- 5. gc waits for running builds ------------------------------------------------------------
def test_gc_waits_for_a_build_holding_the_cache(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"a": b"1"})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mlcbuild.store.cas import Store\n"
         f"s = Store({str(store.root)!r}); s.hold_lease(); print('held', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(cas.__file__).parents[2])},
    )
    assert holder.stdout.readline().strip() == "held"
    waited: list[float] = []
    start = time.monotonic()
    report = Store(store.root).gc(on_wait=lambda: waited.append(time.monotonic()))
    assert waited and time.monotonic() - start > 1.0, "gc must wait for the holder"
    assert holder.wait() == 0 and report.objects == 1  # unreferenced: removed, but only after the build
    assert not store.object_path(manifest.files["a"].digest).exists()


def test_a_store_collected_inside_the_lease_bookkeeping_never_deadlocks(tmp_path: Path) -> None:
    """The garbage collector may free a leased Store while its thread holds the lease lock (any
    allocation there can run it). Nothing may wait for a lock its own thread holds (CI once hung so
    until its time ran out), and the lease is still given back."""
    import gc
    import threading

    def collect_inside_the_lock() -> None:
        with cas._LEASE_LOCK:
            gc.collect()

    gc.disable()
    try:
        dropped = Store(tmp_path / "dropped")
        dropped.hold_lease()
        dropped.cycle = dropped  # only the cyclic collector frees it
        del dropped
        worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
        worker.start()
        worker.join(timeout=20)
    finally:
        gc.enable()
    assert not worker.is_alive(), "the collector's __del__ waited for the lease lock its own thread held"
    taker = Store(tmp_path / "taker")
    taker.hold_lease()
    assert (tmp_path / "dropped").absolute() not in cas._LEASES and (tmp_path / "taker").absolute() in cas._LEASES
    with taker.exclusive():  # this process's own lease never blocks its gc
        pass
    taker.close()
    assert (tmp_path / "taker").absolute() not in cas._LEASES


# -- 6. a failed variant places nothing --------------------------------------------------------
def test_a_failed_variant_places_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    dest = tmp_path / "dist" / "m-MLC"
    graph, report = _variant(store, tmp_path, dest, {"tensor-cache.json": b"{}"}, {"mlc-chat-config.json": b"{}"})
    gen = graph.artifacts[1].node_id
    report.outcomes[gen] = Outcome(graph.nodes[gen], "failed", reason="boom")
    assert materialize(graph, report, store) == []
    assert not dest.exists() and not (dest.parent / "libs").exists()
    del report.outcomes[graph.artifacts[0].node_id], report.outcomes[gen]  # a compile-only cell: not run, not failed
    assert materialize(graph, report, store) == [dest.parent / "libs" / "tiny-llvm.so"] and not dest.exists()


# -- 7. disk full: one line, no temp file left -------------------------------------------------
def test_disk_full_while_placing_outputs_is_one_line_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"small.json": b"{}", "big.bin": os.urandom(300_000)})
    with tmpfs(tmp_path / "full", "128k") as full:
        dest = full / "m-MLC"
        with pytest.raises(StoreError) as e:
            store.materialize(manifest, dest)
        assert str(e.value) == f"no space left on {dest}"
        assert [p.name for p in dest.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_disk_full_cache_during_a_build_is_one_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    with tmpfs(tmp_path / "cache", "256k") as cache:
        result = mlcbuild("build", str(recipe), cache=cache)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert errors and all(e.startswith("error: local model") and e.endswith(f": no space left on {cache}") for e in errors), result.stderr
        assert not list(cache.glob("tmp/*")) and not list(cache.glob("objects/*/.*.tmp"))


# -- 8. leftovers of killed builds: counted by du, collected by gc -----------------------------
def test_leftovers_of_killed_builds_are_counted_and_collected(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path / "cache")
    _put(store, tmp_path, {"x": b"x"})
    dead = store.tmp_dir / "convert-dead"
    (dead / "out").mkdir(parents=True)
    (dead / "out" / "params_shard_0.bin").write_bytes(b"\0" * 5000)
    half = store.object_path("ab" * 32).with_name(f".{'ab' * 32}.999999999.1.tmp")
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"\0" * 3000)
    live = Store(store.root).make_work_dir("compile-")  # a running build's work dir: flocked
    assert main(["--cache-dir", str(store.root), "cache", "du"]) == 0
    assert "leftovers of killed builds 2 (7.8 KiB)" in capsys.readouterr().out
    assert main(["--cache-dir", str(store.root), "cache", "gc"]) == 0
    out = capsys.readouterr().out
    assert str(dead) in out and half.name in out
    assert not dead.exists() and not half.exists() and live.is_dir()


# -- 9. malformed action-cache entries: a miss for build, a finding for verify ------------------
@pytest.mark.parametrize("raw", [b'{"key": 5, "manifest": [1]}', b'{"key": "', b"[]", b"\xff\xfe",
                                 b'{"key": "KEY", "manifest": {"files": {"a": {"digest": "zz", "size": -1}}}, "preimage": {}}',
                                 b'{"key": "KEY", "manifest": {"files": {}}, "preimage": {"kind": 5}, "created": NaN}',
                                 b'{"key": "KEY", "manifest": {"files": {"../../x": {"digest": "' + b"a" * 64 + b'", "size": 1}}}, "preimage": {}}'])
def test_malformed_entry_is_a_miss_and_a_finding(tmp_path: Path, capsys, raw: bytes) -> None:
    store = Store(tmp_path / "cache")
    key = "f" * 64
    path = store.action_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(raw.replace(b"KEY", key.encode()))
    assert store.get_action(key) is None
    root = ["--cache-dir", str(store.root), "cache"]
    assert main([*root, "ls"]) == 0 and "1 malformed result entries" in capsys.readouterr().out
    assert main([*root, "verify"]) == 1 and f"malformed result {path}" in capsys.readouterr().out
    assert main([*root, "gc"]) == 0 and "removed malformed result entry" in capsys.readouterr().out
    assert not path.exists() and main([*root, "verify"]) == 0


def test_malformed_node_history_is_ignored(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    store.node_path("n").parent.mkdir(parents=True)
    store.node_path("n").write_text('{"key": 5}')
    assert store.last_node_build("n") is None


# -- 10. a read-only cache: one clear line --------------------------------------------------------
@pytest.mark.slow
def test_read_only_cache_is_one_clear_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = Store(cache)
    _put(store, tmp_path, {"orphan": b"o"})
    store.hold_lease()
    store.close()
    recipe = write_recipe(tmp_path / "r")
    with read_only(cache) as ro:
        gc = mlcbuild("cache", "gc", cache=ro)
        assert gc.returncode == 1 and gc.stderr.strip() == f"mlcbuild: error: cache {ro} is not writable", gc.stderr
        build = mlcbuild("build", str(recipe), cache=ro)
        assert build.returncode == 1 and "Traceback" not in build.stderr
        errors = [line for line in build.stderr.splitlines() if "error" in line]
        assert errors and all(e.startswith("error: local model") and e.endswith(f": cache {ro} is not writable") for e in errors), build.stderr
        assert mlcbuild("cache", "gc", "--dry-run", cache=ro).returncode == 0


# -- 11. gc documents its policy, lists what goes, --dry-run removes nothing ---------------------
def test_gc_help_dry_run_and_older_than_say_what_goes(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["cache", "--help"])
    text = capsys.readouterr().out
    assert "Plain `gc` keeps every well-formed result" in text and "--dry-run" in text
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"a": b"payload"})
    store.put_action(ActionResult("c" * 64, manifest, {"kind": "convert", "params": {"quantization": "q4f16_1"}}))
    root = ["--cache-dir", str(store.root), "cache", "gc", "--older-than", "0"]
    assert main([*root, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove result {'c' * 12} convert q4f16_1 (older than the cutoff)" in out
    assert store.get_action("c" * 64) is not None
    assert main(root) == 0
    assert f"removed result {'c' * 12} convert q4f16_1" in capsys.readouterr().out
    assert store.get_action("c" * 64) is None and not list(store.iter_objects())


# -- 12. a no-op materialize touches nothing ---------------------------------------------------
def test_noop_materialize_replaces_nothing(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "cache")
    dest = tmp_path / "dist" / "m-MLC"
    monkeypatch.setattr(placement, "LINK_MIN_BYTES", 1024)
    graph, report = _variant(store, tmp_path, dest, {"params_shard_0.bin": b"W" * 4096}, {"mlc-chat-config.json": b"{}"})
    materialize(graph, report, store)
    before = {p: p.stat() for p in dest.parent.rglob("*") if p.is_file()}
    calls: list[str] = []
    monkeypatch.setattr(Store, "_place", lambda self, *a, **k: calls.append(str(a[1])))
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(str(p)))
    assert len(materialize(graph, report, Store(store.root))) == 3 and calls == []
    assert {p: p.stat() for p in before} == before


# -- end to end on the tiny recipe ------------------------------------------------------------
@pytest.mark.slow
def test_edited_output_and_corrupt_object_are_restored_by_the_next_build(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    assert mlcbuild("build", str(recipe), cache=cache).returncode == 0
    config = tmp_path / "r/dist/tiny-q0f32-MLC/mlc-chat-config.json"
    good = config.read_bytes()
    os.chmod(config, 0o644)
    config.write_text('{"edited": true}')
    again = mlcbuild("build", str(recipe), cache=cache)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert config.read_bytes() == good
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0

    digest = next(
        e.digest for r in Store(cache).iter_actions() if r.preimage.get("kind") == "gen-config"
        for rel, e in r.manifest.files.items() if rel == "mlc-chat-config.json"
    )
    obj = Store(cache).object_path(digest)
    st = obj.stat()
    os.chmod(obj, 0o644)
    obj.write_bytes(good.replace(b'"', b"'", 1))
    os.chmod(obj, st.st_mode)
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))
    config.unlink()
    rebuilt = mlcbuild("build", str(recipe), cache=cache)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"cache object {digest[:12]} was modified or is corrupt" in rebuilt.stderr
    assert "built gen-config" in rebuilt.stderr and "built compile" not in rebuilt.stderr
    assert config.read_bytes() == good
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0


@pytest.mark.slow
def test_gc_during_a_build_deletes_nothing_the_build_uses(tmp_path: Path, cache: Path) -> None:
    # a context window the cache has not compiled: gc starts while the compile runs (seconds), not in the
    # few hundred ms a build has left after its gen-config when the compile is a cache hit
    overrides = {"context_window_size": 384, "prefill_chunk_size": 128, "max_batch_size": 1}
    recipe = write_recipe(tmp_path / "r", conv_template="chatml", overrides=overrides)
    before = len(list(Store(cache).iter_actions()))
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache)}
    build = subprocess.Popen([sys.executable, "-m", "mlcbuild", "build", str(recipe)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list((cache / "tmp").glob("compile-*")):
        assert build.poll() is None and time.time() < deadline, build.communicate()
        time.sleep(0.02)
    gc = subprocess.Popen([sys.executable, "-m", "mlcbuild", "cache", "gc", "--older-than", "0"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = build.communicate(timeout=300)
    gc_out, gc_err = gc.communicate(timeout=300)
    assert build.returncode == 0, err
    assert gc.returncode == 0 and "waiting for running builds" in gc_err, gc_err
    removed = re.search(r"^removed (\d+) results", gc_out, re.M)
    assert removed and int(removed.group(1)) >= before + 1, gc_out  # all, including what the build just made
    assert not list(Store(cache).iter_action_files())
    model = tmp_path / "r/dist/tiny-q0f32-MLC"
    assert json.loads((model / "mlc-chat-config.json").read_text())["conv_template"]["name"] == "chatml"
    assert (model / "tensor-cache.json").is_file() and list((tmp_path / "r/dist/libs").glob("tiny-q0f32-llvm*.so")), (err, sorted(str(p) for p in (tmp_path / "r/dist").rglob("*")))
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0
    assert set(statuses(recipe, cache).values()) == {"pending"}


# -- siblings the issue did not name ---------------------------------------------------------
def test_siblings_never_crash_and_never_touch_user_files(tmp_path: Path, capsys) -> None:
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.store.hashing import StatIndex

    store = Store(tmp_path / "cache")
    (store.root / "index").mkdir(parents=True)
    (store.root / "index" / "stat.json").write_text("[1, 2]")  # a malformed stat index is no index
    assert StatIndex.open(store.root / "index" / "stat.json").entries == {}

    folder = tmp_path / "r"
    recipe = write_recipe(folder, output="out")
    (folder / "out").mkdir()
    (folder / "out" / "tiny-q0f32-MLC").symlink_to(folder / "model")  # the output folder is the source, by a link
    with pytest.raises(UserError, match="overlaps the source folder"):
        plan([load_recipe(recipe)], store, PlanOptions())

    with pytest.raises(SystemExit):
        main(["--cache-dir", str(store.root), "cache", "gc", "--older-than", "nan"])
    assert "--older-than: must be a finite number" in capsys.readouterr().err

    dest = tmp_path / "dist" / "m-MLC"
    graph, report = _variant(store, tmp_path, dest, {"tensor-cache.json": b"{}"}, {"mlc-chat-config.json": b"{}"})
    dest.mkdir(parents=True)
    (dest / ".notes.123.tmp").write_text("a user's file that looks like a temp file")
    (dest / ".tensor-cache.json.999999999.mlcbuild.tmp").write_text("left by a killed build")
    (dest / "mlc-chat-config.json").mkdir()  # something in the way
    with pytest.raises(StoreError, match=r"cannot write .*mlc-chat-config.json: is a directory"):
        materialize(graph, report, store)
    assert sorted(p.name for p in dest.iterdir()) == [".notes.123.tmp", "mlc-chat-config.json", "tensor-cache.json"]

    (store.object_path("cd" * 32)).mkdir(parents=True)  # not a file where an object should be
    assert main(["--cache-dir", str(store.root), "cache", "verify"]) == 1
    assert f"unreadable object {'cd' * 6}" in capsys.readouterr().out


def test_staged_step_inputs_keep_their_signatures_unless_a_step_wrote_to_them(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"model.safetensors": b"S" * 5000, "config.json": b"{}"})
    for write in (False, True):
        work = store.make_work_dir("convert-")
        store.materialize(manifest, work / "in" / "source")
        if write:  # a step that writes to its (read-only by contract) input
            with open(work / "in" / "source" / "config.json", "r+b") as f:
                f.write(b"[]")
        store.remove_work_dir(work)
        store.save_index()
        calls: list[str] = []
        real = hashing.sha256_file
        monkeypatch.setattr(hashing, "sha256_file", lambda p, real=real, calls=calls: calls.append(str(p)) or real(p))
        fresh = Store(store.root)
        intact = {rel: fresh.check_object(e.digest) is not None for rel, e in manifest.files.items()}
        monkeypatch.setattr(hashing, "sha256_file", real)
        if write:
            assert intact == {"model.safetensors": True, "config.json": False} and len(calls) == 1, calls  # only the written one re-hashed, then quarantined
        else:
            assert intact == {"model.safetensors": True, "config.json": True} and calls == [], calls  # a no-op reads no object


def _paths_of_inode(path: Path, root: Path) -> list[str]:
    """Every path under root (and the system temp folder) that is the same file as path: who holds a link."""
    import tempfile

    ino = os.stat(path).st_ino
    found = []
    for top in (root, Path(tempfile.gettempdir())):
        for dirpath, _, files in os.walk(top):
            found += [os.path.join(dirpath, f) for f in files if os.lstat(os.path.join(dirpath, f)).st_ino == ino]
    return sorted(set(found))


def test_editing_a_source_file_in_place_never_damages_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 19: config.json of a local model folder edited in place after a build. Small source files
    are copied into the cache, never hard-linked, so the edit reaches no object: the rebuild is correct
    and `cache verify` passes. Where a file is hard-linked (weights, here any size), the edited object is
    named as the user's file, not corruption; `--repair` unlinks it (the file stays), drops the results
    naming it, exits 0, and the next build and verify pass."""
    import test_ingest

    model = test_ingest.model_folder(tmp_path / "model")
    recipe = test_ingest.write_recipe(tmp_path / "r", model)
    config = model / "config.json"

    def edit() -> bytes:
        with open(config, "r+b") as f:
            data = f.read() + b"\n"
            f.seek(0)
            f.write(data)
            f.truncate()
        return data

    def run(cache: str, *args: str) -> int:
        capsys.readouterr()
        return main(["--cache-dir", str(tmp_path / cache), *args])

    build = ["build", str(recipe), "--only", "weights"]
    assert run("cache", *build) == 0
    assert os.stat(config).st_nlink == 1  # a copy in the cache, not the user's inode
    edit()
    assert run("cache", *build) == 0
    assert run("cache", "cache", "verify") == 0, capsys.readouterr().out

    monkeypatch.setattr(placement, "LINK_MIN_BYTES", 0)  # every file as large as weights: hard-linked
    assert run("linked", "--link-type", "hardlink", *build) == 0
    assert os.stat(config).st_nlink == 2, _paths_of_inode(config, tmp_path)
    edited = edit()
    assert run("linked", "--link-type", "hardlink", *build) == 0
    assert run("linked", "cache", "verify") == 1
    out = capsys.readouterr().out
    assert "is a source file hard-linked into the cache" in out and str(config.resolve()) in out and "corrupt object" not in out
    assert run("linked", "cache", "verify", "--repair") == 0
    out = capsys.readouterr().out
    assert "repaired 1 " in out and "ok:" in out, out
    assert config.read_bytes() == edited
    assert run("linked", "cache", "verify") == 0
    assert run("linked", "--link-type", "hardlink", *build) == 0
    assert run("linked", "cache", "verify") == 0


def test_repair_drops_results_that_name_missing_objects(tmp_path: Path, capsys) -> None:
    """A result whose object is gone (quarantined by an earlier repair, deleted by hand) was a finding
    forever: `--repair` deletes it, so its node re-runs, and exits 0; verify then passes. Plain `gc`
    drops such a result as well."""
    store = Store(tmp_path / "cache")
    manifest = _put(store, tmp_path, {"config.json": b"{}", "w.bin": b"w" * 100})
    store.put_action(ActionResult("e" * 64, manifest, {}))
    keep = _put(store, tmp_path, {"other.bin": b"o" * 10})
    store.put_action(ActionResult("d" * 64, keep, {}))
    store.object_path(manifest.files["config.json"].digest).unlink()
    root = ["--cache-dir", str(store.root), "cache", "verify"]
    assert main(root) == 1 and "names missing object" in capsys.readouterr().out
    assert main([*root, "--repair"]) == 0
    assert "repaired 1 " in capsys.readouterr().out
    assert not store.action_path("e" * 64).exists() and store.get_action("d" * 64) is not None
    assert main(root) == 0

    store.put_action(ActionResult("e" * 64, manifest, {}))  # plain gc drops it too
    assert [r.key for r in store.gc().broken] == ["e" * 64]
    assert main(root) == 0 and store.get_action("d" * 64) is not None


def test_atomic_writes_are_readable_like_any_written_file(tmp_path: Path) -> None:
    """Provenance, lock and placed-record files are for other users too: the mode open() gives
    under the process umask, not mkstemp's 0600."""
    from mlcbuild.store import fs

    target = tmp_path / "r.lock.json"
    fs.atomic_write_bytes(target, b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~fs._UMASK
    assert target.stat().st_mode & stat.S_IROTH or fs._UMASK & 0o004


def test_linking_a_file_that_is_already_linked_there_leaves_no_temp_name(tmp_path: Path) -> None:
    """rename(2) does nothing when both names are links to one file: two ingests of one source at
    once (the full suite once saw a third link to a source file after a hard-linking build), or an
    output placed again over its own object link, left the temp link behind as a third name."""
    store = Store(tmp_path / "cache")
    src = tmp_path / "weights.bin"
    src.write_bytes(b"w" * 100)
    digest = hashing.sha256_file(src)
    obj = store.object_path(digest)
    obj.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, obj)
    with store.new_object(digest) as tmp:
        os.link(src, tmp)
    assert not tmp.exists() and os.stat(src).st_nlink == 2

    out = tmp_path / "dist" / "weights.bin"
    out.parent.mkdir()
    os.link(obj, out)
    assert store._place(obj, out, True, False)
    assert [p.name for p in out.parent.iterdir()] == ["weights.bin"] and os.stat(src).st_nlink == 3
