"""Pinned toolchains (`toolchain_versions:`): a cuda compile key computed without nvcc equals the one a
build machine computes, so `plan`, `matrix --affected` and `build` (a cached library needs no toolchain)
work on a machine without nvcc; a build machine with another nvcc fails the node with one line.
One real cuda compile per module (the tiny demo model, q0f32 sm_80); everything else plans or fetches."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlcbuild.errors import StepError
from mlcbuild.steps.compile import CompileStep, check_pins, tool_version
from mlcbuild.store.cas import ActionResult
from mlcbuild.store.manifest import Manifest
from mlcbuild.targets import ResolvedTarget, load_targets, pin_matches, resolve_target, target_params

try:
    from test_build import write_recipe
except ImportError:
    from tests.test_build import write_recipe

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH (the build machines have it)")

BUILTIN_CUDA = Path(load_targets()["cuda"].source)  # type: ignore[arg-type]
CELL = "cuda-sm_80"
LABEL = "compile tiny q0f32 cuda-sm_80"


def without_nvcc() -> str:
    """PATH minus every folder holding an nvcc (python is run by its full path)."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "nvcc").exists())


def cli(*args: str, cwd: Path, cache: Path, nvcc: bool = True, targets: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "250"}
    env.pop("MLCBUILD_REMOTE", None)
    env.pop("MLCBUILD_TARGETS_DIR", None)
    if not nvcc:
        env["PATH"] = without_nvcc()
    if targets is not None:
        env["MLCBUILD_TARGETS_DIR"] = str(targets)
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def row(plan_stdout: str, label: str = LABEL) -> tuple[str, str]:
    """(status, key prefix) of one node in `plan`'s table."""
    line = next(l for l in plan_stdout.splitlines() if label in l)
    match = re.search(r"\b(cached|pending|elsewhere|failed)\s+([0-9a-f]{12})?", line)
    assert match, line
    return match.group(1), match.group(2) or ""


def cuda_targets(tmp: Path, pin: str | None) -> Path:
    """A targets folder whose cuda.yaml is the builtin one with another pin (None: unpinned)."""
    folder = tmp / f"targets-{pin}"
    folder.mkdir(parents=True, exist_ok=True)
    text = BUILTIN_CUDA.read_text()
    assert 'toolchain_versions: {nvcc: "13.0"}' in text
    replaced = "" if pin is None else f'toolchain_versions: {{nvcc: "{pin}"}}'
    (folder / "cuda.yaml").write_text(text.replace('toolchain_versions: {nvcc: "13.0"}', replaced))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The tiny recipe's cuda sm_80 library built with nvcc, and that cache pushed to a folder remote."""
    root = tmp_path_factory.mktemp("pinned")
    folder, cache, remote = root / "r", root / "cache", root / "remote"
    write_recipe(folder, targets=["cuda:sm_80"])
    result = cli("build", "recipe.yaml", cwd=folder, cache=cache)
    assert result.returncode == 0, result.stderr + result.stdout
    pushed = cli("cache", "push", "recipe.yaml", "--remote", str(remote), cwd=folder, cache=cache)
    assert pushed.returncode == 0, pushed.stderr
    return {"folder": folder, "cache": cache, "remote": remote}


def private(built: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the recipe folder (without its outputs) and of the build cache."""
    folder, cache = tmp_path / "r", tmp_path / "cache"
    shutil.copytree(built["folder"], folder, ignore=shutil.ignore_patterns("dist"))
    shutil.copytree(built["cache"], cache, ignore=shutil.ignore_patterns("tmp", "locks"))
    return folder, cache


def test_the_key_holds_the_pin_not_the_probe() -> None:
    fingerprint = CompileStep().toolchain({"target": target_params("cuda", "sm_80")})
    assert fingerprint["nvcc"] == "13.0" == resolve_target("cuda").toolchain_versions["nvcc"]
    assert "toolchain_versions" not in target_params("llvm"), "unpinned targets' params (and keys) are as before"


def test_pin_precision() -> None:
    assert pin_matches("13.0", "13.0, V13.0.88") and pin_matches("13.0.88", "13.0, V13.0.88")
    assert not pin_matches("13.0.48", "13.0, V13.0.88") and not pin_matches("12.4", "13.0, V13.0.88")
    assert not pin_matches("13.1", "13.10, V13.10.2") and pin_matches("13.10", "13.10, V13.10.2")
    assert not pin_matches("13.0", "garbage")


@needs_nvcc
def test_the_build_machine_checks_its_nvcc() -> None:
    found = tool_version("nvcc")
    assert found is not None
    here = re.search(r"V(\d+\.\d+\.\d+)", found).group(1)  # type: ignore[union-attr]
    cuda = target_params("cuda", "sm_80")
    check_pins(ResolvedTarget.from_params({**cuda, "toolchain_versions": {"nvcc": here}}), "cuda.yaml")
    with pytest.raises(StepError) as err:
        check_pins(ResolvedTarget.from_params({**cuda, "toolchain_versions": {"nvcc": "1.0"}}), "t/cuda.yaml")
    assert str(err.value) == (
        f"t/cuda.yaml: toolchain_versions.nvcc pins nvcc 1.0, but this machine's nvcc is {found}: "
        "build it where nvcc 1.0 is, or change the pin"
    )


def test_built_with_round_trips_and_is_optional() -> None:
    manifest = Manifest.from_json({"files": {}})
    plain = ActionResult("k", manifest, {}, 1.0, 2.0)
    assert "built_with" not in plain.to_json(), "entries of steps without built_with are unchanged"
    entry = ActionResult("k", manifest, {}, 1.0, 2.0, built_with={"nvcc": "13.0, V13.0.88"})
    assert ActionResult.from_json(entry.to_json()).built_with == {"nvcc": "13.0, V13.0.88"}
    with pytest.raises(ValueError, match="built_with"):
        ActionResult.from_json({**entry.to_json(), "built_with": "13.0"})


@needs_nvcc
@pytest.mark.slow  # `built` compiles a cuda library
def test_plan_without_nvcc_computes_the_build_machines_key(built: dict[str, Path], tmp_path: Path) -> None:
    folder, cache = private(built, tmp_path)
    with_nvcc = cli("plan", "recipe.yaml", cwd=folder, cache=cache)
    without = cli("plan", "recipe.yaml", cwd=folder, cache=cache, nvcc=False)
    assert with_nvcc.returncode == 0 and without.returncode == 0, with_nvcc.stderr + without.stderr
    status, key = row(with_nvcc.stdout)
    assert status == "cached" and key
    assert row(without.stdout) == ("cached", key), without.stdout

    unpinned = cuda_targets(tmp_path, None)
    probed = row(cli("plan", "recipe.yaml", cwd=folder, cache=cache, targets=unpinned).stdout)
    blind = row(cli("plan", "recipe.yaml", cwd=folder, cache=cache, targets=unpinned, nvcc=False).stdout)
    assert probed[0] == "pending" and blind[0] == "elsewhere" and probed[1] != blind[1] != key, (
        "unpinned, the key holds the probe: a machine without nvcc computes another one"
    )


@needs_nvcc
@pytest.mark.slow  # `built` compiles a cuda library
def test_affected_is_exact_without_nvcc(built: dict[str, Path], tmp_path: Path) -> None:
    folder, _ = private(built, tmp_path)
    local = tmp_path / "empty-cache"

    def affected(targets: Path | None = None) -> list[str]:
        args = ("matrix", "recipe.yaml", "--format", "json", "--affected", "--remote", str(built["remote"]))
        result = cli(*args, cwd=folder, cache=local, nvcc=False, targets=targets)
        assert result.returncode == 0, result.stderr
        return [c["id"] for c in json.loads(result.stdout)["cells"]]

    assert affected() == [], "the cuda library the GPU runner pushed is found by a planner without nvcc"
    assert affected(cuda_targets(tmp_path, "13.0.88")) == [f"tiny-{CELL}"], "a pin change touches the cuda cell only"
    write_recipe(folder, targets=["cuda:sm_80"], overrides={"context_window_size": 256, "prefill_chunk_size": 128, "max_batch_size": 1})
    assert affected() == ["tiny-weights", f"tiny-{CELL}"], "an architecture change touches the library"


@needs_nvcc
@pytest.mark.slow  # `built` compiles a cuda library
def test_build_without_nvcc_places_a_cached_library(built: dict[str, Path], tmp_path: Path) -> None:
    folder, _ = private(built, tmp_path)
    fetched = cli("build", "recipe.yaml", "--remote", str(built["remote"]), cwd=folder, cache=tmp_path / "c1", nvcc=False)
    assert fetched.returncode == 0, fetched.stderr + fetched.stdout
    lib = folder / "dist" / "libs" / "tiny-q0f32-cuda-sm_80.so"
    assert lib.read_bytes() == (built["folder"] / "dist" / "libs" / lib.name).read_bytes()
    statement = json.loads(lib.with_name(lib.name + ".provenance.json").read_text())
    params = statement["predicate"]["buildDefinition"]["internalParameters"]
    compile_record = next(n for n in params["nodes"] if n["kind"] == "compile")
    assert compile_record["toolchain"]["nvcc"] == "13.0", "the key's view: the pin"
    assert params["toolchain"]["nvcc"] == compile_record["builtWith"]["nvcc"] == tool_version("nvcc"), (
        "provenance names the nvcc that compiled it, though this machine has none"
    )

    shutil.rmtree(folder / "dist")
    alone = cli("build", "recipe.yaml", cwd=folder, cache=tmp_path / "c2", nvcc=False)
    assert alone.returncode == 3, alone.stderr
    assert f"{LABEL}: needs the CUDA toolkit (nvcc) on PATH: build it where that is: mlcbuild build recipe.yaml --only {CELL}" in alone.stderr
    assert not (folder / "dist" / "libs").exists() and (folder / "dist" / "tiny-q0f32-MLC" / "tensor-cache.json").is_file()


@needs_nvcc
@pytest.mark.slow  # `built` compiles a cuda library
def test_another_nvcc_fails_the_node_with_one_line(built: dict[str, Path], tmp_path: Path) -> None:
    folder, cache = private(built, tmp_path)
    targets = cuda_targets(tmp_path, "1.0")
    result = cli("build", "recipe.yaml", "--only", CELL, cwd=folder, cache=cache, targets=targets)
    assert result.returncode == 1, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert errors == [
        f"error: {LABEL}: {targets / 'cuda.yaml'}: toolchain_versions.nvcc pins nvcc 1.0, but this machine's nvcc is "
        f"{tool_version('nvcc')}: build it where nvcc 1.0 is, or change the pin"
    ], result.stderr
    assert "Traceback" not in result.stderr and not (folder / "dist" / "libs").exists()
    explained = cli("explain", "recipe.yaml", "cuda", cwd=folder, cache=cache, targets=targets)
    assert "toolchain_versions.nvcc: '13.0' -> '1.0'" in explained.stdout, explained.stdout + explained.stderr
