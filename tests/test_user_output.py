"""What users read: CI logs off a terminal, the GitHub step summary, honest counts and names, and
`clean` / `build --prune` / `verify FOLDER`. Fake steps and weights-only builds: no compile."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fakesteps
from fakesteps import fake
from mlcbuild.ci.matrix import cell_of, gitlab_runner
from mlcbuild.cli.main import main
from mlcbuild.cli.reporting import LogReporter, summary_table
from mlcbuild.execute.base import Outcome
from mlcbuild.execute.decision import Decider, dry_run
from mlcbuild.execute.local import LocalExecutor
from mlcbuild.execute.prune import prune
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.steps import register_step, unregister_step
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.manifest import Manifest
from mlcbuild.store.placed import RECORD, Placed
from test_build import write_recipe

REPO = Path(__file__).resolve().parent.parent
LONG = "a-model-whose-name-is-far-too-long-for-eighty-columns-of-a-ci-log"


@pytest.fixture
def fake_steps():
    register_step("fake", "fakesteps:FakeStep")
    fakesteps.EVENTS.clear()
    yield
    unregister_step("fake")


def graph_of(*nodes) -> BuildGraph:
    graph = BuildGraph()
    for node in nodes:
        graph.add(node)
    return graph


# -- CI logs --------------------------------------------------------------------------------------
def test_log_reporter_says_start_heartbeat_and_end_with_times() -> None:
    node = fake("slow")
    out = io.StringIO()
    with LogReporter(out, heartbeat_s=0.05) as reporter:
        reporter.started(node)
        reporter.progress(node, 0.5, "lowering")
        deadline = time.monotonic() + 10
        while "still running" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        reporter.finished(Outcome(node, "built", "k", duration_s=0.31))
    lines = out.getvalue().splitlines()
    assert lines[0] == "start fake slow" and lines[-1] == "built fake slow in 0.3s", lines
    beats = lines[1:-1]
    assert beats and all(b.startswith("still running fake slow: ") and b.endswith("s (lowering)") for b in beats), lines


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI with stdout and stderr into one pipe, as a CI job captures them; no $COLUMNS."""
    full = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "GITHUB_STEP_SUMMARY")}
    full.update({"MLCBUILD_CACHE_DIR": str(cwd / "cache"), "PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], cwd=cwd, env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def test_ci_log_is_full_width_in_order_with_a_step_summary_then_verify_dist_and_prune(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, name=LONG, quantizations=["q0f32", "q4f16_1"])
    summary = tmp_path / "summary.md"
    built = _cli("build", str(recipe), "--only", "weights", cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert built.returncode == 0, built.stdout
    lines = built.stdout.splitlines()
    label = f"gen-config {LONG} q4f16_1"
    assert f"start {label}" in lines and any(line.startswith(f"built {label} in ") and line.endswith("s") for line in lines), built.stdout
    table = lines.index(next(line for line in lines if line.rstrip() == "build"))
    assert all(not line.startswith(("start ", "built ")) for line in lines[table:]), "progress, then the table"
    assert any(label in line and " built " in line for line in lines[table:]), "a row keeps its whole label"
    assert "…" not in built.stdout and max(map(len, lines)) > 80

    md = summary.read_text()
    assert f"| {label} | built |" in md and "| artifact | size |" in md and f"`dist/{LONG}-q4f16_1-MLC` |" in md, md
    again = _cli("build", str(recipe), "--only", "weights", "--force", cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert again.returncode == 0 and summary.read_text().count("### mlcbuild build") == 2, "appended, never overwritten"

    verified = _cli("verify", "dist", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    oks = sorted(line.split(" matches its provenance")[0] for line in verified.stdout.splitlines())
    assert oks == [f"ok: dist/{LONG}-q0f32-MLC", f"ok: dist/{LONG}-q4f16_1-MLC"], "every artifact under the folder"

    dist = tmp_path / "dist"
    (dist / f"{LONG}-q4f16_1-MLC" / "NOTES.txt").write_text("mine")
    write_recipe(tmp_path, name=LONG, quantizations=["q0f32"])
    listed = _cli("clean", str(recipe), "--dry-run", cwd=tmp_path)
    assert listed.returncode == 0 and f"would remove dist/{LONG}-q4f16_1-MLC/tensor-cache.json (no longer in the recipe)" in listed.stdout, listed.stdout
    assert (dist / f"{LONG}-q4f16_1-MLC" / "tensor-cache.json").is_file()
    cleaned = _cli("build", str(recipe), "--only", "weights", "--prune", cwd=tmp_path)
    assert cleaned.returncode == 0 and f"removed dist/{LONG}-q4f16_1-MLC/tensor-cache.json" in cleaned.stdout, cleaned.stdout
    assert sorted(p.name for p in (dist / f"{LONG}-q4f16_1-MLC").iterdir()) == ["NOTES.txt"], "only what mlcbuild placed goes"
    assert not (dist / f"{LONG}-q4f16_1-MLC.provenance.json").exists() and (dist / f"{LONG}-q0f32-MLC" / "tensor-cache.json").is_file()
    assert "nothing to clean" in _cli("clean", str(recipe), cwd=tmp_path).stdout


def test_targets_off_a_terminal_is_one_readable_row_per_target(tmp_path: Path) -> None:
    from mlcbuild.targets import load_targets

    result = _cli("targets", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    for name, target in load_targets().items():
        rows = [line for line in result.stdout.splitlines() if line.startswith(f" {name} ")]
        assert len(rows) == 1 and f" {target.suffix} " in rows[0] and ", ".join(target.runner_labels()) in rows[0], result.stdout


# -- counts and names -----------------------------------------------------------------------------
def test_lock_files_of_finished_builds_are_not_leftovers(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path / "cache")
    for key in ("a" * 64, "b" * 64):
        with store.lock(key):
            pass
    assert store.usage()["leftovers"] == 0
    assert main(["--cache-dir", str(store.root), "cache", "du"]) == 0
    assert "leftovers of killed builds 0 (0 B)" in capsys.readouterr().out
    assert main(["--cache-dir", str(store.root), "cache", "gc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ".lock" not in out and "0 leftovers" in out, out
    assert main(["--cache-dir", str(store.root), "cache", "gc"]) == 0
    assert [p.name for p in (store.root / "locks").iterdir()] == ["gc.lock"], "gc clears them while no build runs"


def test_plan_counts_what_runs_apart_from_what_may_run(tmp_path: Path, fake_steps) -> None:
    store = Store(tmp_path / "c")
    upstream = fake("up")
    graph = graph_of(upstream, fake("down", {"in": upstream}))
    assert LocalExecutor(store).run(graph, set(graph.nodes)).ok
    edited = fake("up", say="hello")
    graph = graph_of(edited, fake("down", {"in": edited}))
    report = dry_run(graph, set(graph.nodes), Decider(store, graph))
    assert summary_table(report, title="plan").caption == "1 to run, 1 may run (if their inputs change)"


def test_cache_ls_and_gc_name_results_by_the_node_that_made_them(tmp_path: Path, capsys, fake_steps) -> None:
    store = Store(tmp_path / "c")
    graph = graph_of(fake("tiny-talker"))
    assert LocalExecutor(store).run(graph, set(graph.nodes)).ok
    assert main(["--cache-dir", str(store.root), "cache", "ls"]) == 0
    assert "tiny-talker" in capsys.readouterr().out
    from mlcbuild.cli.cache_commands import _describe

    gen = ActionResult("k" * 64, Manifest({}), {"kind": "gen-config", "params": {"conv_template": "redpajama_chat"}}, label="gen-config tiny q0f32")
    assert _describe(gen) == "tiny q0f32 (redpajama_chat)"
    assert ActionResult.from_json(gen.to_json()).label == "gen-config tiny q0f32"
    with pytest.raises(ValueError, match="label"):
        ActionResult.from_json({**gen.to_json(), "label": "two\nlines"})
    assert main(["--cache-dir", str(store.root), "cache", "gc", "--older-than", "0", "--dry-run"]) == 0
    assert "fake tiny-talker (older than the cutoff)" in capsys.readouterr().out, "kind, then the node's name"


# -- prune: only ours, unmodified, and only this recipe's names -----------------------------------
def test_prune_removes_only_this_recipes_unmodified_outputs_it_no_longer_asks_for(tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path, name="tiny", quantizations=["q0f32"], targets=["llvm"])
    recipe = load_recipe(recipe_path)
    graph = plan([recipe], Store(tmp_path / "cache"), PlanOptions())
    dist = tmp_path / "dist"

    def place(folder: Path, name: str, data: bytes) -> Path:
        from mlcbuild.store.hashing import sha256_file

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(data)
        placed = Placed.load(folder)
        placed.note(name, sha256_file(path), path.stat())
        placed.save()
        return path

    kept_lib = place(dist / "libs", "tiny-q0f32-llvm-x86_64.so", b"asked for")
    stale_lib = place(dist / "libs", "tiny-q4f16_1-cuda-sm_90a.so", b"cuda, dropped")
    (dist / "libs" / "tiny-q4f16_1-cuda-sm_90a.so.provenance.json").write_text("{}")
    other = place(dist / "libs", "tiny-talker-q4f16_1-cuda-sm_90a.so", b"another recipe's")
    edited = place(dist / "libs", "tiny-q4f16_1-metal-macos.dylib", b"metal, dropped")
    os.chmod(edited, 0o644)
    edited.write_bytes(b"edited since")
    folder = dist / "tiny-q4f16_1-MLC"
    place(folder, "tensor-cache.json", b"{}")
    (folder / "NOTES.txt").write_text("mine")
    report = prune([recipe], graph)
    assert sorted(p.relative_to(dist).as_posix() for p in report.removed) == [
        "libs/tiny-q4f16_1-cuda-sm_90a.so", "libs/tiny-q4f16_1-cuda-sm_90a.so.provenance.json", "tiny-q4f16_1-MLC/tensor-cache.json",
    ]
    assert report.kept == [edited] and edited.exists() and kept_lib.exists() and other.exists() and not stale_lib.exists()
    assert (folder / "NOTES.txt").exists() and not (folder / RECORD).exists()
    assert set(json.loads((dist / "libs" / RECORD).read_text())["files"]) == {kept_lib.name, other.name, edited.name}


# -- small ----------------------------------------------------------------------------------------
def test_gitlab_tags_are_gitlab_runners_not_github_labels() -> None:
    assert gitlab_runner(("ubuntu-latest",)) == {"tags": ["saas-linux-small-amd64"], "image": "python:3.11"}
    assert gitlab_runner(("macos-14",))["tags"] == ["saas-macos-medium-m1"]
    assert gitlab_runner(("self-hosted", "linux", "x64", "cuda")) == {"tags": ["linux", "x64", "cuda"]}
    from mlcbuild.ci.matrix import Cell, gitlab

    cells = [Cell("m", "m.yaml", cell, runner, (), (), ()) for cell, runner in (("weights", ("ubuntu-latest",)), ("webgpu", ("ubuntu-22.04",)))]
    jobs = {k: v for k, v in yaml.safe_load(gitlab(cells)).items() if k != "stages"}
    assert list(jobs) == ["build saas-linux-small-amd64"], "two GitHub labels for one GitLab runner are one job"
    assert [e["CELL"] for e in jobs["build saas-linux-small-amd64"]["parallel"]["matrix"]] == ["weights", "webgpu"]


def test_webgpu_smoke_is_in_no_cell_and_its_hint_names_no_cell(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, targets=["webgpu", "llvm"], smoke=True)
    graph = plan([load_recipe(recipe)], Store(tmp_path / "cache"), PlanOptions())
    cells = {n.label: cell_of(n) for n in graph.nodes.values() if n.kind in ("smoke", "compile")}
    assert cells == {
        "compile tiny q0f32 webgpu": "webgpu", "smoke tiny q0f32 webgpu": None,
        "compile tiny q0f32 llvm": "llvm-x86_64", "smoke tiny q0f32 llvm": "llvm-x86_64",
    }, cells
    assert main(["--cache-dir", str(tmp_path / "cache"), "build", str(recipe), "--dry-run", "-t", "webgpu"]) == 0
    err = capsys.readouterr().err
    smoke = next(line for line in err.splitlines() if "smoke tiny q0f32 webgpu" in line)
    assert "runs in an app" in smoke and "--only" not in smoke, err
