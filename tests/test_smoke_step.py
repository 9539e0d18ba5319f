"""smoke nodes: planned per target on request, keyed like any node, and a real library load + greedy run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlcbuild.errors import UserError
from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.store.cas import Store

REPO = Path(__file__).resolve().parent.parent
TALKER = REPO / "recipes" / "models" / "tiny-talker"


def _recipe(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "talker",
        "source": {"path": str(TALKER)},
        "quantizations": ["q0f32", "q4f16_1"],
        "targets": ["llvm", "cuda:sm_90a"],
        "conv_template": "redpajama_chat",
        "output": "dist",
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_smoke_nodes_follow_the_recipe(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    graph = plan([load_recipe(_recipe(tmp_path, smoke=["llvm"]))], store, PlanOptions())
    nodes = {n.label: n for n in graph.topological()}
    smokes = sorted(label for label in nodes if label.startswith("smoke"))
    assert smokes == ["smoke talker q0f32 llvm", "smoke talker q4f16_1 llvm"]
    roles = {role: nodes_id for role, nodes_id in nodes["smoke talker q0f32 llvm"].deps}
    by_id = {n.id: n.label for n in nodes.values()}
    assert {r: by_id[i] for r, i in roles.items()} == {
        "weights": "convert talker q0f32",
        "config": "gen-config talker q0f32",
        "lib": "compile talker q0f32 llvm",
    }
    all_targets = plan([load_recipe(_recipe(tmp_path, smoke=True))], store, PlanOptions())
    assert sum(n.kind == "smoke" for n in all_targets.topological()) == 4
    none = plan([load_recipe(_recipe(tmp_path))], store, PlanOptions())
    assert not any(n.kind == "smoke" for n in none.topological())


def test_smoke_of_a_target_not_in_the_recipe_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(_recipe(tmp_path, smoke=["llvm", "metal"]))
    message = str(info.value)
    assert "recipe.yaml:" in message and "smoke[1]" in message and "'metal' is not one of the recipe's targets" in message
    with pytest.raises(UserError, match="smoke"):
        load_recipe(_recipe(tmp_path, smoke="yes"))


def test_smoke_without_a_device_here_is_information_not_an_error(tmp_path: Path, monkeypatch) -> None:
    from mlcbuild.ci.matrix import cell_of
    from mlcbuild.steps import smoke

    monkeypatch.setattr(smoke, "device_present", lambda kind: kind == "cpu")
    graph = plan([load_recipe(_recipe(tmp_path, smoke=True))], Store(tmp_path / "cache"), PlanOptions())
    by_label = {n.label: n for n in graph.topological()}
    on_cpu, on_gpu = by_label["smoke talker q0f32 llvm"], by_label["smoke talker q0f32 cuda-sm_90a"]
    assert on_cpu.id not in graph.unbuildable
    assert "runs on cuda, and this machine has no cuda device" in graph.unbuildable[on_gpu.id]
    assert (cell_of(on_cpu), cell_of(on_gpu)) == ("llvm-x86_64", "cuda-sm_90a")


@pytest.mark.slow
def test_demo_build_ran_its_smoke_nodes(demo_artifacts) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    cache = demo_artifacts.recipe.parent / "cache"
    out = subprocess.run(
        [sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache), "plan", str(demo_artifacts.recipe)],
        capture_output=True, text=True, env=env, timeout=120,
    ).stdout
    rows = [line for line in out.splitlines() if "smoke" in line]
    assert len(rows) == 2 and all("cached" in row for row in rows), out


@pytest.mark.slow
def test_smoke_fails_on_a_library_that_does_not_fit_the_weights(demo_artifacts, tmp_path: Path) -> None:
    from mlcbuild.steps.base import RunContext
    from mlcbuild.steps.smoke import SmokeStep, device_kind

    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    shutil.copy(demo_artifacts.lib("q0f32"), lib_dir / "lib.so")
    from mlcbuild.targets import target_params

    params = {"quantization": "q0f32", "target": target_params("llvm"), "tokens": 8}
    assert device_kind(params["target"]) == "cpu"
    good = tmp_path / "good"
    good.mkdir()
    SmokeStep().run(RunContext(params, {"weights": demo_artifacts.model_dir("q0f32"), "config": demo_artifacts.model_dir("q0f32"), "lib": lib_dir}, good))
    assert '"tokens"' in (good / "smoke.json").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    inputs = {"weights": demo_artifacts.model_dir("q4f16_1"), "config": demo_artifacts.model_dir("q0f32"), "lib": lib_dir}
    with pytest.raises(UserError, match="q4f16_1") as info:
        SmokeStep().run(RunContext(params, inputs, bad))
    assert "\n" not in str(info.value) and not (bad / "smoke.json").exists()


def test_smoke_refuses_a_cpu_without_the_library_features() -> None:
    from mlcbuild.steps.smoke import missing_cpu_features
    from mlcbuild.targets import target_params

    flags = Path("/proc/cpuinfo").read_text()
    params = target_params("llvm", "x86_64")
    assert params["attrs"]["mattr"] == ["+avx2", "+fma", "+f16c"]
    assert missing_cpu_features(params) == [f for f in ("avx2", "fma", "f16c") if f" {f}" not in flags]
    params["attrs"]["mattr"] = ["+no_such_feature"]
    assert missing_cpu_features(params) == ["no_such_feature"]
    assert missing_cpu_features(target_params("llvm", "aarch64")) == []


def test_smoke_survives_the_recipe_cache(tmp_path: Path) -> None:
    path = _recipe(tmp_path, smoke=["llvm"])
    first = load_recipe(path, tmp_path / "cache")
    again = load_recipe(path, tmp_path / "cache")
    assert first.smoke == again.smoke == ("llvm",)
    assert any((tmp_path / "cache").rglob("*.json"))
