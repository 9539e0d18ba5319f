"""Source files enter the cache by the digest already known (planning's, the Hub's), by reflink or
hard link where possible: each source byte is hashed once per build, no second copy in link modes,
and an edited source is never served from the cache."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import yaml

import mlcbuild.store.hashing as hashing
from mlcbuild.errors import StepError, UserError
from mlcbuild.store.cas import Store
from mlcbuild.store.ingest import SourceFile, ingest_file, parse_link_types

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "recipes" / "models" / "tiny-redpajama"
WEIGHTS = "model.safetensors"
AN_HOUR_AGO = time.time() - 3600


def model_folder(path: Path) -> Path:
    """The demo model as a user has it: files last written an hour ago (not racy)."""
    shutil.copytree(DEMO_MODEL, path)
    for f in path.iterdir():
        os.utime(f, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


def write_recipe(folder: Path, model: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "name": "tiny",
        "source": {"path": str(model)},
        "quantizations": ["q0f32"],
        "targets": ["llvm"],
        "conv_template": "redpajama_chat",
        "overrides": {"context_window_size": 512, "prefill_chunk_size": 128, "max_batch_size": 1},
        "output": "dist",
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _link_type_restored(monkeypatch):
    """`--link-type` sets $MLCBUILD_LINK_TYPE for the process: undone after each test. The demo's
    files are all under LINK_MIN_BYTES, which are never hard-linked in: here they stand in for
    weights (test_store_hardening's test_editing_a_source_file_in_place_never_damages_the_cache checks
    the real threshold)."""
    import mlcbuild.store.placement as placement

    monkeypatch.setenv("MLCBUILD_LINK_TYPE", "")  # records the original value for the undo
    monkeypatch.delenv("MLCBUILD_LINK_TYPE")
    monkeypatch.setattr(placement, "LINK_MIN_BYTES", 0)


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file sha256_file reads (resolved), in order."""
    calls: list[Path] = []
    real = hashing.sha256_file

    def counting(path):
        calls.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return calls


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_downloads(recipe: Path, store: Store, link_type: str, monkeypatch, force: bool = False):
    """Plan the recipe and run its download nodes with the real executor; -> {label: outcome}."""
    from mlcbuild.execute.local import LocalExecutor
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe

    monkeypatch.setenv("MLCBUILD_LINK_TYPE", link_type)
    graph = plan([load_recipe(recipe)], store, PlanOptions())
    wanted = {n.id for n in graph.nodes.values() if n.kind == "download"}
    report = LocalExecutor(store, force=force).run(graph, wanted)
    return {o.node.label: o for o in report.outcomes.values()}


def weights_entry(outcomes) -> str:
    full = next(o for label, o in outcomes.items() if "(config" not in label)
    assert full.ok, full.reason
    return full.manifest.files[WEIGHTS].digest


def test_first_build_hashes_each_source_byte_once(tmp_path, hashed):
    """A real first build (download + convert, in-process CLI): the weights file is read by a
    hash exactly once (at planning), never again when the cache stores it."""
    from mlcbuild.cli.main import main

    model = model_folder(tmp_path / "model")
    recipe = write_recipe(tmp_path / "r", model)
    code = main(["--cache-dir", str(tmp_path / "cache"), "--link-type", "copy", "build", str(recipe), "--only", "weights"])
    assert code == 0
    weights = [p for p in hashed if p.name == WEIGHTS]
    assert weights == [(model / WEIGHTS).resolve()]
    store = Store(tmp_path / "cache")
    assert store.object_path(sha256(model / WEIGHTS)).read_bytes() == (model / WEIGHTS).read_bytes()
    assert len(list((tmp_path / "cache" / "ac").glob("*/*.json"))) == 4  # 2 downloads, convert, gen-config


def test_hardlink_mode_stores_no_second_copy_and_leaves_the_file_alone(tmp_path, hashed, monkeypatch):
    model = model_folder(tmp_path / "model")
    mode = stat.S_IMODE(os.stat(model / WEIGHTS).st_mode)
    store = Store(tmp_path / "cache")
    digest = weights_entry(build_downloads(write_recipe(tmp_path / "r", model), store, "hardlink,copy", monkeypatch))
    obj = os.stat(store.object_path(digest))
    assert obj.st_ino == os.stat(model / WEIGHTS).st_ino
    assert stat.S_IMODE(obj.st_mode) == mode  # no chmod 0444 of the user's file
    assert [p for p in hashed if p.name == WEIGHTS] == [(model / WEIGHTS).resolve()]


def test_default_link_types_keep_no_second_copy_of_the_weights(tmp_path):
    """No --link-type: a source on the cache's file system is cloned (reflink) or hard-linked, never
    copied; the user's file keeps its mode and its bytes."""
    from mlcbuild.cli.main import main
    from mlcbuild.store.fs import reflink

    model = model_folder(tmp_path / "model")
    mode = stat.S_IMODE(os.stat(model / WEIGHTS).st_mode)
    probe = tmp_path / "probe"
    try:
        reflink(model / "config.json", probe)
        clones = True
    except OSError:
        clones = False
    recipe = write_recipe(tmp_path / "r", model)
    assert main(["--cache-dir", str(tmp_path / "cache"), "build", str(recipe), "--only", "weights"]) == 0
    obj = Store(tmp_path / "cache").object_path(sha256(model / WEIGHTS))
    if clones:
        assert os.stat(obj).st_ino != os.stat(model / WEIGHTS).st_ino and obj.read_bytes() == (model / WEIGHTS).read_bytes()
    else:
        assert os.stat(obj).st_ino == os.stat(model / WEIGHTS).st_ino
    assert stat.S_IMODE(os.stat(model / WEIGHTS).st_mode) == mode


def test_copy_mode_makes_a_read_only_copy(tmp_path, monkeypatch):
    model = model_folder(tmp_path / "model")
    store = Store(tmp_path / "cache")
    digest = weights_entry(build_downloads(write_recipe(tmp_path / "r", model), store, "copy", monkeypatch))
    obj = os.stat(store.object_path(digest))
    assert obj.st_ino != os.stat(model / WEIGHTS).st_ino
    assert stat.S_IMODE(obj.st_mode) == 0o444
    assert os.stat(model / WEIGHTS).st_mode & stat.S_IWUSR


def test_source_edited_after_hardlink_ingest_is_never_served(tmp_path, monkeypatch, capsys):
    """The object shares the inode: an in-place edit changes it. The next use sees its stat moved,
    re-hashes it, quarantines it and stores the pristine bytes again from another copy."""
    model = model_folder(tmp_path / "model")
    pristine = model_folder(tmp_path / "pristine")
    store = Store(tmp_path / "cache")
    digest = weights_entry(build_downloads(write_recipe(tmp_path / "r", model), store, "hardlink", monkeypatch))
    store.save_index()
    with open(model / WEIGHTS, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    fresh = Store(tmp_path / "cache")
    outcomes = build_downloads(write_recipe(tmp_path / "r2", pristine), fresh, "hardlink", monkeypatch)
    assert weights_entry(outcomes) == digest
    full = next(o for label, o in outcomes.items() if "(config" not in label)
    assert full.status == "built"  # the cached result named a modified object: a miss
    assert digest in fresh.quarantined
    assert "was modified or is corrupt" in capsys.readouterr().err
    assert sha256(fresh.object_path(digest)) == digest
    assert os.stat(fresh.object_path(digest)).st_ino == os.stat(pristine / WEIGHTS).st_ino


def test_source_edited_between_planning_and_ingest_is_refused(tmp_path, monkeypatch):
    from mlcbuild.execute.local import LocalExecutor
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe

    model = model_folder(tmp_path / "model")
    store = Store(tmp_path / "cache")
    graph = plan([load_recipe(write_recipe(tmp_path / "r", model))], store, PlanOptions())
    with open(model / WEIGHTS, "r+b") as f:  # a tensor byte: still a valid file, other bytes
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    wanted = {n.id for n in graph.nodes.values() if n.kind == "download" and "(config" not in n.label}
    (outcome,) = LocalExecutor(store).run(graph, wanted).outcomes.values()
    assert outcome.status == "failed"
    assert "changed while the build was running" in outcome.reason and "\n" not in outcome.reason
    assert not list((tmp_path / "cache" / "ac").glob("*/*.json"))


def test_a_file_hard_linked_by_another_node_while_hashed_is_not_called_changed(tmp_path, monkeypatch):
    """Two downloads adopt the same HF blob; one hard-links it into the cache (its ctime moves)
    while the other hashes it: same bytes, same inode, same mtime: stored, not refused."""
    src = tmp_path / "blob"
    src.write_bytes(b"generation config")
    os.utime(src, (AN_HOUR_AGO, AN_HOUR_AGO))
    real = hashing.sha256_file

    def hashing_while_linked(path):
        os.link(path, tmp_path / "other-node-link")
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", hashing_while_linked)
    store = Store(tmp_path / "cache")
    entry, how = ingest_file(store, SourceFile("generation_config.json", str(src), None, "corrupt"), ("hardlink",))
    assert entry.digest == sha256(src) and how == "hardlink"


def test_link_types_fall_back_in_order(tmp_path, hashed):
    """No reflink on this file system (ext4 here): reflink,hardlink -> hardlink; a cache on another
    file system (tmpfs /dev/shm) -> copy; a list with nothing that works -> one line."""
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(1 << 16))
    digest = sha256(src)
    store = Store(tmp_path / "cache")
    entry, how = ingest_file(store, SourceFile("w.bin", str(src), digest), ("reflink", "hardlink"))
    assert (entry.digest, how) == (digest, "hardlink")
    assert ingest_file(store, SourceFile("w.bin", str(src), digest), ("copy",))[1] == "present"

    with pytest.raises(StepError, match="cannot store .* by reflink: .*add 'copy'"):
        ingest_file(Store(tmp_path / "cache2"), SourceFile("w.bin", str(src), digest), ("reflink",))

    shm = Path("/dev/shm")
    assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "needs /dev/shm on another file system"
    other = shm / f"mlcbuild-ingest-{os.getpid()}"
    other.mkdir()
    try:
        far = Store(other / "cache")
        entry, how = ingest_file(far, SourceFile("w.bin", str(src), digest), ("reflink", "hardlink", "copy"))
        assert how == "copy"
        assert sha256(far.object_path(digest)) == digest
    finally:
        shutil.rmtree(other)


def test_a_file_with_no_trusted_digest_is_hashed_and_checked(tmp_path, hashed):
    """Just written (racy) or never planned: hashed once while ingesting; a wrong claim is refused."""
    src = tmp_path / "w.bin"
    src.write_bytes(b"abc" * 1000)
    store = Store(tmp_path / "cache")
    with pytest.raises(StepError, match="^bad bytes$"):
        ingest_file(store, SourceFile("w.bin", str(src), "0" * 64, "bad bytes"), ("copy",))
    assert not store.object_path("0" * 64).exists()
    entry, how = ingest_file(store, SourceFile("w.bin", str(src), None), ("copy",))
    assert (entry.digest, how) == (sha256(src), "copy")


def test_link_type_flag_is_validated(tmp_path, capsys, monkeypatch):
    from mlcbuild.cli.main import main

    assert parse_link_types("reflink, hardlink,copy") == ("reflink", "hardlink", "copy")
    with pytest.raises(UserError, match="did you mean 'hardlink'"):
        parse_link_types("hardlnk")
    assert main(["--link-type", "symlink", "cache", "du"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlcbuild: error: --link-type: unknown link type 'symlink'") and "\n" not in err
    monkeypatch.setenv("MLCBUILD_LINK_TYPE", "reflink,cp")
    assert main(["cache", "du"]) == 2
    assert capsys.readouterr().err.strip().startswith("mlcbuild: error: MLCBUILD_LINK_TYPE: unknown link type 'cp'")


# --- Hugging Face sources -----------------------------------------------------------------------
def safetensors_bytes(n: int) -> bytes:
    """A valid safetensors file holding n random bytes (the download step checks its header)."""
    import json as _json
    import struct

    header = _json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(n)


def hf_download(fake_hub, repo: str, sha: str, store: Store, monkeypatch, force: bool = False):
    from mlcbuild.execute.local import LocalExecutor
    from mlcbuild.plan.graph import BuildGraph, Node
    from mlcbuild.weights.model_files import DEFAULT_PATTERNS

    monkeypatch.setenv("MLCBUILD_LINK_TYPE", "reflink,hardlink,copy")
    graph = BuildGraph()
    node = graph.add(Node.make("download", {"repo": repo, "revision": sha, "allow_patterns": list(DEFAULT_PATTERNS)}, {}, "dl"))
    return LocalExecutor(store, force=force).run(graph, {node.id}).outcomes[node.id]


@pytest.fixture
def hf_cache(fake_hub, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_hub_states_lfs_sha256_like_the_real_hub(fake_hub, hf_cache, tmp_path):
    from huggingface_hub import HfApi

    data = safetensors_bytes(5000)
    sha = fake_hub.add_repo("org/stated", files={WEIGHTS: data, "config.json": b"{}"})
    api = HfApi(endpoint=fake_hub.url)
    siblings = {s.rfilename: s for s in api.model_info("org/stated", revision=sha, files_metadata=True).siblings}
    assert siblings[WEIGHTS].lfs.sha256 == hashlib.sha256(data).hexdigest()
    assert siblings["config.json"].lfs is None
    (info,) = api.get_paths_info("org/stated", [WEIGHTS], revision=sha)
    assert info.lfs.sha256 == hashlib.sha256(data).hexdigest()


def test_hf_blobs_are_verified_once_against_the_hub_and_linked(fake_hub, hf_cache, tmp_path, hashed, monkeypatch):
    data = safetensors_bytes(1 << 16)
    sha = fake_hub.add_repo("org/linked", files={WEIGHTS: data, "config.json": b"{}"})
    store = Store(tmp_path / "cache")
    outcome = hf_download(fake_hub, "org/linked", sha, store, monkeypatch)
    assert outcome.ok, outcome.reason
    digest = outcome.manifest.files[WEIGHTS].digest
    assert digest == hashlib.sha256(data).hexdigest()
    blob = next((hf_cache / "models--org--linked" / "blobs").glob(digest))
    assert [p for p in hashed if p.name == digest] == [blob.resolve()]  # the one verification
    assert os.stat(store.object_path(digest)).st_ino == os.stat(blob).st_ino
    os.utime(blob, (AN_HOUR_AGO, AN_HOUR_AGO))
    hashed.clear()
    store.stat_index.entries.clear()
    assert hf_download(fake_hub, "org/linked", sha, store, monkeypatch, force=True).ok
    hashed.clear()
    assert hf_download(fake_hub, "org/linked", sha, store, monkeypatch, force=True).ok
    assert [p for p in hashed if p.name == digest] == []  # verified before, stat unchanged: trusted
    with open(blob, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(bytes([data[-1] ^ 0xFF]))
    outcome = hf_download(fake_hub, "org/linked", sha, store, monkeypatch, force=True)
    assert outcome.status == "failed" and outcome.reason.startswith(f"corrupt download: {WEIGHTS} of 'org/linked'")


def test_corrupted_hf_download_is_detected(fake_hub, hf_cache, tmp_path, monkeypatch):
    data = safetensors_bytes(1 << 16)
    good = hashlib.sha256(data).hexdigest()
    sha = fake_hub.add_repo("org/corrupt", files={WEIGHTS: data, "config.json": b"{}"})
    fake_hub.corrupted.add(good)
    try:
        outcome = hf_download(fake_hub, "org/corrupt", sha, Store(tmp_path / "cache"), monkeypatch)
    finally:
        fake_hub.corrupted.discard(good)
    assert outcome.status == "failed"
    assert outcome.reason.startswith(f"corrupt download: {WEIGHTS} of 'org/corrupt'") and "\n" not in outcome.reason
    assert not Store(tmp_path / "cache").object_path(good).exists()


def test_hardlink_mode_rebuild_hashes_nothing(tmp_path, hashed):
    """Staging the hard-linked weights for convert moved their ctime (link count); the cache
    re-records it, so the next build trusts the source and the object by stat alone."""
    from mlcbuild.cli.main import main

    model = model_folder(tmp_path / "model")
    recipe = write_recipe(tmp_path / "r", model)
    args = ["--cache-dir", str(tmp_path / "cache"), "--link-type", "hardlink", "build", str(recipe), "--only", "weights"]
    assert main(args) == 0
    assert os.stat(model / WEIGHTS).st_nlink == 2
    hashed.clear()
    assert main(args) == 0
    assert hashed == []


def test_hardlink_mode_never_links_a_users_file_into_the_output_folder(tmp_path, monkeypatch):
    """gen-config's tokenizer.json is byte-identical to the source's, so its object is the user's
    inode: the output folder gets a copy even where its size would have it linked, so editing
    dist/ never edits the model folder."""
    import mlcbuild.store.placement as placement
    from mlcbuild.cli.main import main

    monkeypatch.setattr(placement, "LINK_MIN_BYTES", 0)

    model = model_folder(tmp_path / "model")
    recipe = write_recipe(tmp_path / "r", model)
    args = ["--cache-dir", str(tmp_path / "cache"), "--link-type", "hardlink", "build", str(recipe), "--only", "weights"]
    assert main(args) == 0
    (placed,) = (tmp_path / "r" / "dist").glob("*/tokenizer.json")
    assert placed.read_bytes() == (model / "tokenizer.json").read_bytes()
    assert os.stat(placed).st_ino != os.stat(model / "tokenizer.json").st_ino
    (config,) = (tmp_path / "r" / "dist").glob("*/mlc-chat-config.json")
    assert os.stat(config).st_nlink == 2  # the store's own objects are still linked
