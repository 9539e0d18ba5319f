"""Provenance beside every artifact (in-toto Statement v1, SLSA provenance v1) and `mlcbuild verify`."""
from __future__ import annotations

import hashlib
import json
import shutil
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
