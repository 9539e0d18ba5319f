"""`mlcbuild matrix`: cells, CI formats validated against the vendored GitHub/GitLab schemas,
`--affected` against a shared cache, every cell buildable here run through its own command, and a
compile cell that downloads no weight file (fake hub). Compiles are reused from `shared_cache`."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    from test_build import DEMO_MODEL, write_recipe
except ImportError:
    from tests.test_build import DEMO_MODEL, write_recipe

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = {"context_window_size": 512, "prefill_chunk_size": 128, "max_batch_size": 1}

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "250", **(env or {})}
    full.pop("MLCBUILD_REMOTE", None)
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=600)


def cells(*args: str, cwd: Path, cache: Path) -> list[dict]:
    result = cli("matrix", "recipe.yaml", "--format", "json", *args, cwd=cwd, cache=cache)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["cells"]


def validate(schema: str, path: Path) -> None:
    """check-jsonschema with its vendored schema (no network needed)."""
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def remote(shared_cache: Path, tmp_path: Path) -> Path:
    """A copy of the session cache standing in for the remote: the tiny recipe's llvm q0f32 build is in it."""
    copy = tmp_path / "remote"
    shutil.copytree(shared_cache, copy, ignore=shutil.ignore_patterns("tmp", "locks"))
    return copy


def test_cells_runner_command_artifacts(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    write_recipe(folder, quantizations=["q0f32", "q4f16_1"], targets=["llvm", "metal", "webgpu", "cuda:sm_80"])
    got = {c["id"]: c for c in cells(cwd=folder, cache=tmp_path / "cache")}
    assert list(got) == ["tiny-weights", "tiny-llvm-x86_64", "tiny-metal-macos", "tiny-webgpu", "tiny-cuda-sm_80"]
    assert got["tiny-weights"]["runner"] == ["ubuntu-latest"]
    assert got["tiny-weights"]["artifacts"] == ["dist/tiny-q0f32-MLC/", "dist/tiny-q4f16_1-MLC/"]
    assert got["tiny-metal-macos"]["runner"] == ["macos-14"] and "xcrun" in got["tiny-metal-macos"]["unbuildable_here"]
    assert got["tiny-cuda-sm_80"]["runner"] == ["self-hosted", "linux", "x64", "cuda"]
    assert got["tiny-webgpu"]["runner"] == ["ubuntu-latest"] and got["tiny-webgpu"]["toolchain"] == ["emcc"]
    assert got["tiny-llvm-x86_64"]["command"] == "mlcbuild build recipe.yaml --only llvm-x86_64"
    assert got["tiny-llvm-x86_64"]["artifacts"] == ["dist/libs/tiny-q0f32-llvm-x86_64.so", "dist/libs/tiny-q4f16_1-llvm-x86_64.so"]
    assert got["tiny-llvm-x86_64"]["unbuildable_here"] is None
    again = {c["id"]: c for c in cells(cwd=folder, cache=tmp_path / "cache")}
    assert again == got, "cell ids, nodes and commands are stable"


def test_github_and_gitlab_formats_validate(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    write_recipe(folder, targets=["llvm", "metal", "cuda:sm_80"])
    cache = tmp_path / "cache"
    github = cli("matrix", "recipe.yaml", "--format", "github", cwd=folder, cache=cache)
    assert github.returncode == 0, github.stderr
    matrix = json.loads(github.stdout)
    assert [e["id"] for e in matrix["include"]] == ["tiny-weights", "tiny-llvm-x86_64", "tiny-metal-macos", "tiny-cuda-sm_80"]
    assert all(isinstance(e["runner"], list) and isinstance(e["artifacts"], str) for e in matrix["include"])
    workflow = {
        "on": "push",
        "jobs": {
            "build": {
                "runs-on": "${{ matrix.runner }}",
                "strategy": {"matrix": matrix},
                "steps": [{"run": "${{ matrix.command }}"}],
            }
        },
    }
    (tmp_path / "wf.yml").write_text(yaml.safe_dump(workflow))
    validate("vendor.github-workflows", tmp_path / "wf.yml")

    gitlab = cli("matrix", "recipe.yaml", "--format", "gitlab", cwd=folder, cache=cache)
    assert gitlab.returncode == 0, gitlab.stderr
    (tmp_path / "child.yml").write_text(gitlab.stdout)
    validate("vendor.gitlab-ci", tmp_path / "child.yml")
    jobs = {k: v for k, v in yaml.safe_load(gitlab.stdout).items() if k != "stages"}
    entries = {e["CELL_ID"]: (tuple(job["tags"]), e) for job in jobs.values() for e in job["parallel"]["matrix"]}
    assert set(entries) == {e["id"] for e in matrix["include"]}
    assert entries["tiny-metal-macos"][0] == ("saas-macos-medium-m1",), "GitHub's macos-14 is GitLab.com's hosted macOS tag"
    assert entries["tiny-weights"][0] == ("saas-linux-small-amd64",) and "ubuntu-latest" not in gitlab.stdout
    assert entries["tiny-cuda-sm_80"][0] == ("linux", "x64", "cuda"), "self-hosted labels are tags, less GitHub's self-hosted"
    assert entries["tiny-llvm-x86_64"][1]["ARTIFACTS"] == "dist/libs/tiny-q0f32-llvm-x86_64.so"


def test_shipped_workflow_validates_and_fans_out() -> None:
    path = REPO / ".github" / "workflows" / "models.yml"
    validate("vendor.github-workflows", path)
    workflow = yaml.safe_load(path.read_text())
    build = workflow["jobs"]["build"]
    assert "mlcbuild matrix" in json.dumps(workflow["jobs"]["plan"]) and "--affected" in json.dumps(workflow["jobs"]["plan"])
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert build["runs-on"] == "${{ matrix.runner }}"
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in build["steps"])
    assert "MLCBUILD_REMOTE" in workflow["env"]


def test_affected_only_cells_with_uncached_nodes(tmp_path: Path, remote: Path) -> None:
    folder = tmp_path / "r"
    local = tmp_path / "local"
    write_recipe(folder)
    assert cells("--affected", "--remote", str(remote), cwd=folder, cache=local) == []
    assert [c["id"] for c in cells("--affected", cwd=folder, cache=local)] == ["tiny-weights", "tiny-llvm-x86_64"], (
        "the local cache (empty) is asked without --remote"
    )
    write_recipe(folder, overrides={**OVERRIDES, "temperature": 0.2})
    assert [c["id"] for c in cells("--affected", "--remote", str(remote), cwd=folder, cache=local)] == ["tiny-weights"]
    write_recipe(folder, targets=["llvm", "metal"])
    assert [c["id"] for c in cells("--affected", "--remote", str(remote), cwd=folder, cache=local)] == ["tiny-metal-macos"]
    assert not list(remote.glob("tmp/*")) and not (local / "ac").exists(), "--affected writes into neither cache"


def test_every_cell_buildable_here_runs_through_its_command(tmp_path: Path, remote: Path) -> None:
    folder = tmp_path / "r"
    write_recipe(folder, targets=["llvm", "metal"])
    listed = cells(cwd=folder, cache=remote)
    for cell in listed:
        argv = shlex.split(cell["command"])
        assert argv[0] == "mlcbuild"
        result = cli(*argv[1:], cwd=folder, cache=remote)
        if cell["unbuildable_here"]:
            assert result.returncode == 3 and cell["command"] in result.stderr, result.stderr
            continue
        assert result.returncode == 0, result.stderr
        for artifact in cell["artifacts"]:
            assert (folder / artifact).exists(), (cell["id"], artifact)
    assert (folder / "dist/tiny-q0f32-MLC/tensor-cache.json").is_file()
    whole = cli("build", "recipe.yaml", cwd=folder, cache=remote)
    assert whole.returncode == 3 and "--only metal-macos" in whole.stderr, whole.stderr


def test_compile_cell_downloads_no_weight_file(tmp_path: Path, remote: Path, fake_hub) -> None:
    from mlcbuild.weights.model_files import is_weight_file

    sha = fake_hub.add_repo("acme/tiny-matrix", DEMO_MODEL)
    folder = tmp_path / "r"
    write_recipe(folder, source={"hf": "acme/tiny-matrix", "revision": sha}, overrides={**OVERRIDES, "temperature": 0.3})
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    sizes = {p.name: p.stat().st_size for p in DEMO_MODEL.iterdir() if p.is_file()}
    fake_hub.clear_requests()
    compile_cell = cli("build", "recipe.yaml", "--only", "llvm-x86_64", cwd=folder, cache=remote, env=env)
    assert compile_cell.returncode == 0, compile_cell.stderr
    assert "built gen-config" in compile_cell.stderr and "built convert" not in compile_cell.stderr
    assert (folder / "dist/libs/tiny-q0f32-llvm-x86_64.so").is_file()
    fetched = fake_hub.downloads()
    assert fetched and not any(is_weight_file(name) for name in fetched), fetched
    compile_bytes = sum(sizes[name] for name in fetched)

    fake_hub.clear_requests()
    weights_cell = cli("build", "recipe.yaml", "--only", "weights", cwd=folder, cache=remote, env=env)
    assert weights_cell.returncode == 0, weights_cell.stderr
    weight_bytes = sum(sizes[name] for name in fake_hub.downloads() if is_weight_file(name))
    assert weight_bytes == sum(size for name, size in sizes.items() if is_weight_file(name)) > compile_bytes
    print(f"compile cell fetched {compile_bytes} B ({len(fetched)} files); the weights cell then fetched {weight_bytes} B of weights")
