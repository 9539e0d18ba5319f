"""Provenance beside every artifact (in-toto Statement v1, SLSA provenance v1) and `mlcbuild verify`."""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from test_check import built_from_shared_cache
except ImportError:
    from tests.test_check import built_from_shared_cache

pytestmark = pytest.mark.slow

MODEL = "tiny-q0f32-MLC"
LIB = "libs/tiny-q0f32-llvm-x86_64.so"


@pytest.fixture
def built_tiny_recipe(cache: Path, tmp_path: Path):
    return built_from_shared_cache(cache, tmp_path / "built")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_statements_beside_the_folder_and_the_library(built_tiny_recipe) -> None:
    dist = built_tiny_recipe.dist
    folder = json.loads((dist / f"{MODEL}.provenance.json").read_text())
    lib = json.loads((dist / f"{LIB}.provenance.json").read_text())
    assert not list((dist / MODEL).glob("*provenance*"))
    for statement in (folder, lib):
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
        build = statement["predicate"]["buildDefinition"]
        recipe = build["externalParameters"]["recipe"]
        assert recipe["digest"]["sha256"] == sha256(built_tiny_recipe.recipe)
        assert build["internalParameters"]["toolchain"]["apache-tvm"].startswith("0.27")
        sources = [d for d in build["resolvedDependencies"] if d["name"].startswith(("download ", "local "))]
        assert sources and all(len(d["digest"]["sha256"]) == 64 and d["uri"].startswith("file:") for d in sources)
        for node in build["internalParameters"]["nodes"]:
            assert len(node["key"]) == 64 and len(node["output"]["sha256"]) == 64
    names = {s["name"]: s["digest"]["sha256"] for s in folder["subject"]}
    assert {f"{MODEL}/tensor-cache.json", f"{MODEL}/mlc-chat-config.json", f"{MODEL}/tokenizer.json"} <= set(names)
    assert all(sha256(dist / name) == digest for name, digest in names.items())
    assert {n["kind"] for n in folder["predicate"]["buildDefinition"]["internalParameters"]["nodes"]} == {"download", "convert", "gen-config"}
    def source_files(statement: dict) -> set[str]:
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        return {f for d in deps if d["name"].startswith(("download ", "local ")) for f in d["annotations"]["files"]}

    assert "model.safetensors" in source_files(folder)
    assert "config.json" in source_files(lib) and "model.safetensors" not in source_files(lib)  # compile reads no weights
    assert lib["subject"] == [{"name": Path(LIB).name, "digest": {"sha256": sha256(dist / LIB)}}]
    lib_build = lib["predicate"]["buildDefinition"]
    assert lib_build["externalParameters"]["target"]["id"] == "llvm-x86_64"
    compile_node = next(n for n in lib_build["internalParameters"]["nodes"] if n["kind"] == "compile")
    assert set(compile_node["inputs"]) == {"config"}
    assert "time" not in json.dumps(lib).lower() and "/tmp/" not in json.dumps(lib)


def test_noop_build_leaves_statements_byte_identical(built_tiny_recipe) -> None:
    path = built_tiny_recipe.dist / f"{LIB}.provenance.json"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    again = built_tiny_recipe.run("build", str(built_tiny_recipe.recipe))
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_verify_passes_then_names_each_mismatch(built_tiny_recipe, tmp_path: Path) -> None:
    run = built_tiny_recipe.run
    ok = run("verify", str(built_tiny_recipe.dist / MODEL), str(built_tiny_recipe.dist / LIB))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("matches its provenance") == 2

    copy = tmp_path / "dist"
    shutil.copytree(built_tiny_recipe.dist, copy)
    for p in copy.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    lib = bytearray((copy / LIB).read_bytes())
    lib[len(lib) // 2] ^= 0x01
    (copy / LIB).write_bytes(bytes(lib))
    (copy / MODEL / "tokenizer.json").unlink()
    (copy / MODEL / "stray.bin").write_bytes(b"x")
    bad = run("verify", str(copy / MODEL), str(copy / f"{LIB}.provenance.json"))
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert f"{copy / MODEL}: {MODEL}/stray.bin: not in the provenance" in lines
    assert f"{copy / MODEL}: {MODEL}/tokenizer.json: missing" in lines
    assert any(line.startswith(f"{copy / LIB}.provenance.json: tiny-q0f32-llvm-x86_64.so: sha256 ") for line in lines), lines

    missing = run("verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no provenance beside it" in missing.stderr


# -- issue 19: malformed statements, subjects outside the artifact, signatures, one writer at a time --
STATEMENT_HEAD = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1"}


def _artifact(tmp_path: Path) -> tuple[Path, str]:
    """A model folder `m-MLC` with one file; -> (folder, that file's sha256)."""
    folder = tmp_path / "dist" / "m-MLC"
    folder.mkdir(parents=True)
    (folder / "f.json").write_text("{}")
    return folder, sha256(folder / "f.json")


@pytest.mark.parametrize(
    "text,message",
    [
        ("[]", "not an in-toto statement"),
        (json.dumps(STATEMENT_HEAD), "'subject' is not a list"),
        (json.dumps({**STATEMENT_HEAD, "subject": {"name": "x"}}), "'subject' is not a list"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        (" " * (1 << 20) + " ", "at most 1048576 are accepted"),
    ],
    ids=["list", "no-subject", "subject-mapping", "not-json", "deep-list", "deep-object", "huge"],
)
def test_verify_malformed_statement_is_one_line(tmp_path: Path, capsys, monkeypatch, text: str, message: str) -> None:
    import mlcbuild.provenance as provenance
    from mlcbuild.cli.main import main

    monkeypatch.setattr(provenance, "MAX_STATEMENT_BYTES", 1 << 20)
    folder, _ = _artifact(tmp_path)
    (folder.parent / "m-MLC.provenance.json").write_text(text)
    assert main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "m-MLC.provenance.json" in err, err


def test_verify_bad_subjects_are_findings_and_nothing_outside_is_hashed(tmp_path: Path, capsys, monkeypatch) -> None:
    """`subject: [1]`, no digest, paths that leave the artifact (`../`, absolute, a symlink out): one
    finding each, exit 1; /etc/hostname is never read."""
    import mlcbuild.provenance as provenance
    from mlcbuild.cli.main import main

    folder, digest = _artifact(tmp_path)
    (folder / "out").symlink_to("/etc/hostname")
    read: list[Path] = []
    real = provenance.sha256_file
    monkeypatch.setattr(provenance, "sha256_file", lambda p: read.append(Path(p)) or real(p))
    good = {"digest": {"sha256": digest}}
    subjects = [1, {"name": "m-MLC/f.json"}, {"name": "m-MLC/f.json", "digest": [digest]},
                {"name": "../../../../etc/hostname", **good}, {"name": "/etc/hostname", **good},
                {"name": "m-MLC/../../x", **good}, {"name": "m-MLC/out", **good}, {"name": "other/f.json", **good}]
    (folder.parent / "m-MLC.provenance.json").write_text(json.dumps({**STATEMENT_HEAD, "subject": subjects}))
    assert main(["verify", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{folder}: ../../../../etc/hostname: not a relative path inside the artifact",
        f"{folder}: /etc/hostname: not a relative path inside the artifact",
        f"{folder}: m-MLC/../../x: not a relative path inside the artifact",
        f"{folder}: m-MLC/f.json: the provenance gives no sha256 digest",
        f"{folder}: m-MLC/f.json: the provenance gives no sha256 digest",
        f"{folder}: m-MLC/out: resolves outside the artifact (a symlink)",
        f"{folder}: other/f.json: outside the artifact m-MLC",
        f"{folder}: subject[0]: has no file name",
    ], lines
    assert read == []


def _keys(tmp_path: Path) -> tuple[Path, str, str]:
    """(signing key PEM, its trusted-key text, another key's trusted-key text)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlcbuild.store.remote.signing import public_key_text

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = tmp_path / "ci.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pem, public_key_text(key.public_key()), public_key_text(other.public_key())


def test_provenance_signed_with_the_cache_key_and_checked_against_trusted_keys(built_tiny_recipe, tmp_path: Path, monkeypatch) -> None:
    from mlcbuild.store.remote.signing import key_id, load_signing_key

    pem, trusted, stranger = _keys(tmp_path)
    keyid = key_id(load_signing_key(pem, "test").public_key())
    recipe, dist, run = built_tiny_recipe.recipe, built_tiny_recipe.dist, built_tiny_recipe.run
    signed = run("build", "--signing-key", str(pem), str(recipe))
    assert signed.returncode == 0, signed.stderr
    envelope = json.loads((dist / f"{MODEL}.provenance.dsse.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == (dist / f"{MODEL}.provenance.json").read_bytes()
    assert [s["keyid"] for s in envelope["signatures"]] == [keyid]

    def verify(keys: str | None, *artifacts: Path) -> subprocess.CompletedProcess:
        if keys is None:
            monkeypatch.delenv("MLCBUILD_TRUSTED_KEYS", raising=False)
        else:
            monkeypatch.setenv("MLCBUILD_TRUSTED_KEYS", keys)
        return run("verify", *map(str, artifacts or (dist / MODEL, dist / LIB)))

    ok = verify(trusted)
    assert ok.returncode == 0 and ok.stdout.count(f"(signed by {keyid})") == 2, ok.stdout + ok.stderr
    assert "integrity only" in verify(None).stdout
    untrusted = verify(stranger, dist / MODEL)
    assert untrusted.returncode == 1 and "bad signature: signed by no trusted key" in untrusted.stdout
    assert verify(" ").returncode == 2

    statement = dist / f"{MODEL}.provenance.json"
    original = statement.read_bytes()
    statement.write_bytes(original.replace(b'"name": "tiny"', b'"name": "tinx"'))
    forged = verify(trusted, dist / MODEL)
    assert forged.returncode == 1 and "bad signature" in forged.stdout and "signs other bytes" in forged.stdout
    statement.write_bytes(original)

    monkeypatch.delenv("MLCBUILD_TRUSTED_KEYS", raising=False)
    assert run("build", str(recipe)).returncode == 0  # no key: the stale envelope goes
    assert not (dist / f"{MODEL}.provenance.dsse.json").exists()
    unsigned = verify(trusted, dist / MODEL)
    assert unsigned.returncode == 1 and "unsigned" in unsigned.stdout


DRIVER = '''
"""mlcbuild with a random pause between placing a model folder and writing its provenance: the
window in which another build placing into the same folder made them disagree (issue 19)."""
import random, sys, time

import mlcbuild.provenance as provenance

write = provenance.write_provenance


def slow(*args, **kwargs):
    time.sleep(random.random() * 0.6)
    return write(*args, **kwargs)


provenance.write_provenance = slow
from mlcbuild.cli.main import main

sys.exit(main())
'''


def _second_recipe(first: Path) -> Path:
    """The same model into the same output folder with another temperature: only gen-config differs."""
    import yaml

    data = yaml.safe_load(first.read_text())
    data["overrides"]["temperature"] = 0.3
    path = first.with_name("hotter.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _temperature(dist: Path) -> float:
    return json.loads((dist / MODEL / "mlc-chat-config.json").read_text())["temperature"]


def test_concurrent_builds_into_one_folder_leave_it_matching_its_provenance(built_tiny_recipe, tmp_path: Path) -> None:
    """Two recipes building one model folder at once: the last to place wins whole (its files and its
    provenance), so `verify` passes after every round. Without the output folder's lock, this driver's
    pause made about 4 rounds in 10 fail."""
    from mlcbuild.provenance import verify_artifact

    recipe, dist = built_tiny_recipe.recipe, built_tiny_recipe.dist
    first = _temperature(dist)
    hotter = _second_recipe(recipe)
    assert built_tiny_recipe.run("build", str(hotter)).returncode == 0  # gen-config once; the rest is cached
    driver = tmp_path / "slow_provenance.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(built_tiny_recipe.cache), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    seen = set()
    for _ in range(3):
        (dist / f"{MODEL}.provenance.json").unlink()  # neither build is a no-op
        builds = [subprocess.Popen([sys.executable, str(driver), "build", str(r)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True) for r in (recipe, hotter)]
        for build in builds:
            _, err = build.communicate(timeout=300)
            assert build.returncode == 0, err
        assert verify_artifact(dist / MODEL).problems == []
        seen.add(_temperature(dist))
    assert seen <= {0.3, first}


def test_a_build_waits_for_the_output_folders_lock(built_tiny_recipe, tmp_path: Path) -> None:
    """While another process holds `dist/.mlcbuild.lock`, a build places nothing; once it is released,
    the build places its whole artifact and provenance."""
    from mlcbuild.provenance import verify_artifact

    recipe, dist = built_tiny_recipe.recipe, built_tiny_recipe.dist
    hotter = _second_recipe(recipe)
    before = (dist / MODEL / "mlc-chat-config.json").read_bytes()
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(built_tiny_recipe.cache), "COLUMNS": "200"}
    with open(dist / ".mlcbuild.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        build = subprocess.Popen([sys.executable, "-m", "mlcbuild", "build", str(hotter)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            waited = ""
            for line in build.stderr:  # the build blocks right after saying so
                if "waiting for another build placing into" in line:
                    waited = line
                    break
            assert waited and str(dist.resolve()) in waited, waited
            assert (dist / MODEL / "mlc-chat-config.json").read_bytes() == before
            assert build.poll() is None
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    build.communicate(timeout=300)
    assert build.returncode == 0
    assert _temperature(dist) == 0.3 and verify_artifact(dist / MODEL).problems == []
