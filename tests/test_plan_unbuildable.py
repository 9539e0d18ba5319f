"""Plans that span machines: a node whose toolchain this machine lacks is shown, not refused;
`build` builds the rest and exits 3 naming the command that builds it elsewhere. No compiles here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.store.cas import Store
from mlcbuild.toolchain import check_available
from test_build import write_recipe



def write(folder: Path, **changes) -> Path:
    """The build tests' recipe with a target this machine lacks (metal)."""
    return write_recipe(folder, **{"targets": ["llvm", "metal"], **changes})


def cli(*args: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_metal_needs_xcrun_here() -> None:
    """The tests below use metal as the target this Linux machine cannot build."""
    assert "xcrun" in str(check_available("metal", "macos"))
    assert check_available("llvm", "x86_64") is None


def test_unbuildable_nodes_are_data_on_the_graph(tmp_path: Path) -> None:
    recipe = write(tmp_path, targets=["llvm", "metal", "rocm", "webgpu", "cuda:sm_80"])
    graph = plan([load_recipe(recipe)], Store(tmp_path / "cache"), PlanOptions())
    compiles = {n.params["target"]["name"]: n.id for n in graph.nodes.values() if n.kind == "compile"}
    assert len(compiles) == 5 and len(graph) == 9
    expected = {name for name, _ in compiles.items() if check_available(name, None) is not None}
    assert "metal" in expected and "llvm" not in expected
    assert set(graph.unbuildable) == {compiles[name] for name in expected}
    assert graph.unbuildable[compiles["metal"]] == (
        "needs Xcode command line tools (xcrun, macOS only): build it where that is"
    )
    assert graph.elsewhere(set(graph.nodes)) == set(graph.unbuildable)


def test_dependents_of_an_unbuildable_node_are_elsewhere_too() -> None:
    graph = BuildGraph()
    a = graph.add(Node.make("download", {"n": 1}, {}, "a"))
    b = graph.add(Node.make("gen-config", {"n": 2}, {"source": a}, "b"))
    c = graph.add(Node.make("compile", {"n": 3}, {"config": b}, "c"))
    other = graph.add(Node.make("convert", {"n": 4}, {"source": a}, "d"))
    graph.unbuildable[b.id] = "needs x"
    assert graph.elsewhere(set(graph.nodes)) == {b.id, c.id}
    assert graph.elsewhere({a.id, other.id}) == set()


def test_plan_and_graph_show_the_whole_recipe(tmp_path: Path) -> None:
    recipe = write(tmp_path)
    planned = cli("plan", str(recipe), cache=tmp_path / "cache")
    assert planned.returncode == 0, planned.stderr
    metal = next(line for line in planned.stdout.splitlines() if "compile tiny q0f32 metal" in line)
    assert "elsewhere" in metal and "needs Xcode command line tools" in metal
    llvm = next(line for line in planned.stdout.splitlines() if "compile tiny q0f32 llvm" in line)
    assert "elsewhere" not in llvm
    graph = cli("graph", str(recipe), "--format", "dot", cache=tmp_path / "cache")
    assert graph.returncode == 0 and "compile tiny q0f32 metal" in graph.stdout


def test_build_of_only_unbuildable_cells_exits_3_and_says_where(tmp_path: Path) -> None:
    recipe = write(tmp_path)
    cache = tmp_path / "cache"
    for args in (["--only", "metal-macos"], ["-t", "metal"]):
        result = cli("build", str(recipe), *args, cache=cache)
        assert result.returncode == 3, result.stderr
        assert f"mlcbuild build {recipe} --only metal-macos" in result.stderr
        assert "needs Xcode command line tools" in result.stderr and "Traceback" not in result.stderr
        assert f"mlcbuild matrix {recipe}" in result.stderr
        if args[0] == "--only":
            kinds = sorted(json.loads(p.read_text())["preimage"]["kind"] for p in cache.glob("ac/*/*.json"))
            assert kinds == ["download", "gen-config"], (
                "a cell this machine cannot build builds only what its compile key needs (config and tokenizer, "
                f"gen-config), to find a cached library: {kinds}"
            )
            assert not (tmp_path / "dist" / "libs").exists()
    assert (tmp_path / "dist" / "tiny-q0f32-MLC" / "tensor-cache.json").is_file(), "-t metal still builds the weights"


def test_only_names_a_cell(tmp_path: Path) -> None:
    recipe = write(tmp_path)
    wrong = cli("build", str(recipe), "--only", "metal-macs", cache=tmp_path / "cache")
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0
    assert "--only: unknown cell 'metal-macs' — did you mean 'metal-macos'?" in wrong.stderr
    for remote in ("/no/such/cache", "s4://bucket/cache"):
        refused = cli("matrix", str(recipe), "--affected", "--remote", remote, cache=tmp_path / "cache")
        assert refused.returncode == 2 and refused.stderr.startswith("mlcbuild: error: --remote: "), refused.stderr
    helped = cli("build", "--help", cache=tmp_path / "cache")
    assert "3  built all that this machine can" in helped.stdout


def test_gen_config_depends_on_config_and_tokenizer_only(tmp_path: Path) -> None:
    from mlcbuild.weights.model_files import META_PATTERNS, is_weight_file

    local = write(tmp_path / "local")
    hf = write(tmp_path / "hf", source={"hf": "acme/tiny", "revision": "0" * 40})
    for recipe in (local, hf):
        graph = plan([load_recipe(recipe)], Store(tmp_path / "cache"), PlanOptions())
        by_kind = {n.kind: n for n in graph.nodes.values() if n.kind in ("convert", "gen-config")}
        meta = graph.node(dict(by_kind["gen-config"].deps)["source"])
        full = graph.node(dict(by_kind["convert"].deps)["source"])
        if "files" in meta.params:
            assert meta.params["files"] and not any(is_weight_file(f) for f in meta.params["files"])
            assert any(is_weight_file(f) for f in full.params["files"])
        else:
            assert meta.params["allow_patterns"] == list(META_PATTERNS)
            assert any(is_weight_file(p) for p in full.params["allow_patterns"])
        assert "(config, tokenizer)" in meta.label and meta.id != full.id


def test_runner_labels_come_from_targets_and_never_reach_the_key() -> None:
    from mlcbuild.targets import Target, get_target, resolve_target

    assert get_target("cuda").runner_labels() == ("self-hosted", "linux", "x64", "cuda")
    assert get_target("metal").runner_labels("macos") == ("macos-14",)
    assert get_target("metal").runner_labels("ios") == ("ubuntu-latest",), "iOS objects need no Xcode"
    assert "runner" not in resolve_target("metal", "ios").params()["attrs"]
    assert "runner" not in resolve_target("metal", "ios").params()
    bare = Target(name="npu", tvm_target={"kind": "llvm"}, host=None, suffix="so")
    assert bare.runner_labels() == ("self-hosted", "npu")
