"""Scheduling and the rebuild decision, with fake steps from the step registry (milliseconds each),
plus the CLI's plan / dry run / explain on the bundled demo recipe (planning only, no compile)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import fakesteps
from fakesteps import fake
from mlcbuild.execute.base import BuildReport
from mlcbuild.execute.decision import Decider, dry_run
from mlcbuild.execute.local import LocalExecutor
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.steps import register_step, unregister_step
from mlcbuild.store.cas import Store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fake_steps():
    register_step("fake", "fakesteps:FakeStep")
    register_step("fake-child", "fakesteps:ChildFakeStep")
    fakesteps.EVENTS.clear()
    yield
    unregister_step("fake")
    unregister_step("fake-child")


def graph_of(*nodes: Node) -> BuildGraph:
    graph = BuildGraph()
    for node in nodes:
        graph.add(node)
    return graph


def build(store: Store, graph: BuildGraph, **options) -> BuildReport:
    return LocalExecutor(store, **options).run(graph, set(graph.nodes))


def status(report: BuildReport) -> dict[str, str]:
    return {o.node.label: o.status for o in report.outcomes.values()}


def starts() -> list[str]:
    return [name for name, what, _ in fakesteps.EVENTS if what == "start"]


def max_concurrency() -> int:
    level = peak = 0
    for _, what, _ in sorted(fakesteps.EVENTS, key=lambda e: (e[2], e[1] == "start")):
        level += 1 if what == "start" else -1
        peak = max(peak, level)
    return peak


def test_jobs_bound_parallelism(tmp_path: Path) -> None:
    """From the steps' own start/end events, not wall-clock ratios (which a loaded machine skews):
    -j 2 runs two at once and never three; -j 1 never two."""
    graph = graph_of(*(fake(f"n{i}", sleep=0.15) for i in range(4)))
    report = build(Store(tmp_path / "c2"), graph, jobs=2)
    assert report.ok and max_concurrency() == 2 and len(starts()) == 4
    fakesteps.EVENTS.clear()
    assert build(Store(tmp_path / "c1"), graph, jobs=1).ok
    assert max_concurrency() == 1 and len(starts()) == 4


def test_outputs_flow_to_dependents(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    a = fake("a")
    b = fake("b", {"in": a})
    report = build(store, graph_of(a, b), jobs=2)
    assert store.read_bytes(report.outcomes[b.id].manifest.files["out.txt"].digest) == b"a;b;"


def test_failure_skips_dependents_and_stops_without_keep_going(tmp_path: Path) -> None:
    bad = fake("bad", fail=True)
    user = fake("user", {"in": bad})
    other = fake("other", sleep=0.01)
    graph = graph_of(other, bad, user)
    report = build(Store(tmp_path / "c"), graph, jobs=1)
    assert status(report) == {"fake bad": "failed", "fake user": "skipped", "fake other": "skipped"}
    assert report.outcomes[user.id].reason == "needs fake bad"
    assert report.outcomes[other.id].reason == "build stopped after a failure"
    assert report.outcomes[bad.id].reason == "fake bad failed on purpose"
    assert starts() == ["bad"], "the longer path (bad -> user) starts first"


def test_keep_going_builds_everything_else(tmp_path: Path) -> None:
    bad = fake("bad", fail=True)
    user = fake("user", {"in": bad})
    others = [fake(f"other{i}") for i in range(3)]
    report = build(Store(tmp_path / "c"), graph_of(bad, user, *others), jobs=1, keep_going=True)
    assert status(report) == {
        "fake bad": "failed",
        "fake user": "skipped",
        **{f"fake other{i}": "built" for i in range(3)},
    }
    assert not report.ok


def test_failed_node_leaves_no_result(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    bad = fake("bad", fail=True, sleep=0.01)
    report = build(store, graph_of(bad))
    key = report.outcomes[bad.id].key
    assert key is not None and store.get_action(key) is None
    assert list(store.iter_actions()) == [] and list(store.tmp_dir.iterdir()) == []
    assert dry_run(graph_of(bad), {bad.id}, Decider(store, graph_of(bad))).outcomes[bad.id].status == "pending"


def test_crashed_child_fails_one_node_with_one_line(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    crash = fake("crash", kind="fake-child", crash=True)
    fine = fake("fine", kind="fake-child")
    report = build(store, graph_of(crash, fine), jobs=2, keep_going=True)
    assert status(report) == {"fake-child crash": "failed", "fake-child fine": "built"}
    reason = report.outcomes[crash.id].reason
    assert "crashed (signal SIGKILL)" in reason and "\n" not in reason
    assert store.get_action(report.outcomes[crash.id].key) is None


def test_cached_nodes_never_reach_the_pool(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "c")
    a = fake("a")
    graph = graph_of(a, fake("b", {"in": a}), fake("c"))
    assert build(store, graph, jobs=2).ok
    threads: list[str] = []
    from mlcbuild.execute import local

    real = local.ThreadBackend.submit
    monkeypatch.setattr(local.ThreadBackend, "submit", lambda self, *a: threads.append("x") or real(self, *a))
    fakesteps.EVENTS.clear()
    report = build(store, graph, jobs=2)
    assert set(status(report).values()) == {"cached"} and threads == [] and fakesteps.EVENTS == []
    assert not [t for t in threading.enumerate() if t.name.startswith("mlcbuild-node")]


def test_longest_recorded_duration_starts_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    nodes = [fake("short"), fake("medium"), fake("long")]
    graph = graph_of(*nodes)
    assert build(store, graph, jobs=1).ok
    assert starts() == ["short", "medium", "long"], "no history: recipe order"
    decider = Decider(store, graph)
    for node, seconds in zip(nodes, (1.0, 20.0, 300.0)):
        last = store.last_node_build(decider.slot(node))
        store.record_node(decider.slot(node), last["key"], last["preimage"], seconds)
    fakesteps.EVENTS.clear()
    assert build(store, graph, jobs=1, force=True).ok
    assert starts() == ["long", "medium", "short"]
    assert store.last_node_build(decider.slot(nodes[2]))["duration_s"] < 300, "the new build's duration is recorded"


def test_history_follows_identity_not_label(tmp_path: Path) -> None:
    """A renamed node keeps its history; an edit names the changed param; another node has none."""
    store = Store(tmp_path / "c")
    assert build(store, graph_of(fake("a", sleep=0.0))).ok
    renamed = Node.make("fake", {"name": "a", "sleep": 0.01}, {}, "fake a in another recipe")
    other = fake("b", sleep=0.01)
    graph = graph_of(renamed, other)
    report = dry_run(graph, set(graph.nodes), Decider(store, graph))
    assert report.outcomes[renamed.id].reason == "will run: params.sleep: 0.0 -> 0.01"
    assert report.outcomes[other.id].reason == "will run: never built"


def test_dry_run_force_says_forced_everywhere(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    a = fake("a")
    graph = graph_of(a, fake("b", {"in": a}), fake("c", {"in": a}))
    assert build(store, graph).ok
    report = dry_run(graph, set(graph.nodes), Decider(store, graph, force=True))
    assert {o.reason for o in report.outcomes.values()} == {"will run: forced"}
    plain = dry_run(graph, set(graph.nodes), Decider(store, graph))
    assert {o.status for o in plain.outcomes.values()} == {"cached"}


def test_remote_cache_is_written_through_and_asked_on_a_local_miss(tmp_path: Path) -> None:
    from mlcbuild.store.remote import RemoteCache

    a = fake("a")
    graph = graph_of(a, fake("b", {"in": a}))
    remote = RemoteCache(str(tmp_path / "remote"), warn=pytest.fail)
    try:
        assert LocalExecutor(Store(tmp_path / "one"), remote=remote).run(graph, set(graph.nodes)).ok
        fakesteps.EVENTS.clear()
        other = Store(tmp_path / "two")
        report = LocalExecutor(other, remote=remote).run(graph, set(graph.nodes))
    finally:
        remote.close()
    assert {o.reason for o in report.outcomes.values()} == {"fetched from remote"} and fakesteps.EVENTS == []
    again = dry_run(graph, set(graph.nodes), Decider(other, graph))
    assert {o.status for o in again.outcomes.values()} == {"cached"}


def test_build_with_child_steps_leaves_no_process_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from fakesteps import fake
        from mlcbuild.execute.local import LocalExecutor
        from mlcbuild.plan.graph import BuildGraph
        from mlcbuild.steps import register_step
        from mlcbuild.store.cas import Store
        register_step("fake-child", "fakesteps:ChildFakeStep")
        graph = BuildGraph()
        for i in range(2):
            graph.add(fake(f"n{{i}}", kind="fake-child"))
        report = LocalExecutor(Store({str(tmp_path / 'c')!r}), jobs=2).run(graph, set(graph.nodes))
        assert report.ok, report
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.05)
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == proc.pid:
                    left.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                pass
    assert left == []


# --- the CLI on the bundled demo recipe: planning only ------------------------------------------
def demo_recipe(folder: Path, name: str = "demo", temperature: float = 0.7) -> Path:
    """The bundled demo recipe (its model folder copied beside it), renamed and re-tempered."""
    import yaml

    data = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    model = data["source"]["path"]
    shutil.copytree(REPO / "recipes" / model, folder / model, dirs_exist_ok=True)
    data.update(name=name, smoke=False)
    data["overrides"]["temperature"] = temperature
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, timeout=120)


def test_plan_table_fits_80_columns_and_has_no_fake_timing(tmp_path: Path) -> None:
    result = cli("plan", str(demo_recipe(tmp_path)), cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    home, *lines = result.stdout.splitlines()
    assert home.startswith(f"cache: {tmp_path / 'c'} "), "plan says which cache it reads, first"
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert "0.00s" not in result.stdout and "time" not in lines[2], result.stdout
    compiles = [line for line in lines if line.lstrip().startswith("compile ")]
    assert len(compiles) == 2, "one line per node"
    assert any("q0f32 llvm" in line for line in compiles) and any("q4f16_1 llvm" in line for line in compiles), "a label keeps both ends"
    assert "1 cached" not in result.stdout and "to run" in result.stdout


def test_dry_run_force_and_explain_by_key_prefix(tmp_path: Path) -> None:
    recipe = demo_recipe(tmp_path)
    cache = tmp_path / "c"
    forced = cli("build", str(recipe), "--dry-run", "--force", cache=cache)
    assert forced.returncode == 0, forced.stderr
    rows = [line for line in forced.stdout.splitlines() if " pending " in line]
    assert len(rows) == 8 and all("will run: forced" in row for row in rows), forced.stdout
    plan = cli("plan", str(recipe), cache=cache)
    row = next(line for line in plan.stdout.splitlines() if "local " in line)
    key = next(word for word in row.replace("│", " ").split() if len(word) == 12 and all(c in "0123456789abcdef" for c in word))
    explained = cli("explain", str(recipe), key, cache=cache)
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith("local ") and "never built" in explained.stdout


def test_identity_survives_recipe_rename_and_sampling_edit(tmp_path: Path) -> None:
    import yaml

    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe

    store = Store(tmp_path / "c")

    def slots(recipe: Path) -> dict[str, str]:
        graph = plan([load_recipe(recipe)], store, PlanOptions())
        decider = Decider(store, graph)
        return {n.kind + " " + " ".join(n.label.split()[2:]): decider.slot(n) for n in graph.nodes.values()}

    base = slots(demo_recipe(tmp_path / "a"))
    assert slots(demo_recipe(tmp_path / "a", name="renamed", temperature=0.3)) == base
    assert slots(demo_recipe(tmp_path / "moved")) == base, "a moved folder keeps its history"
    other = demo_recipe(tmp_path / "b")
    model = yaml.safe_load(other.read_text())["source"]["path"]
    shutil.move(str(tmp_path / "b" / model), str(tmp_path / "b" / "other-model"))
    other.write_text(other.read_text().replace(model, "other-model"))
    assert not set(slots(other).values()) & set(base.values()), "a different source shares no history"


def test_a_failed_steps_kept_log_holds_no_credentials(tmp_path: Path) -> None:
    from mlcbuild.errors import StepError
    from mlcbuild.execute.worker import run_step_in_child

    log, out, scratch = tmp_path / "step.log", tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    said = "GET https://alice:hunter2@hub.example/api?token=s3cr3t-token failed; HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456"
    with pytest.raises(StepError, match="failed on purpose"):
        run_step_in_child("fake-child", {"name": "x", "fail": True, "say": said}, {}, out, scratch, log, lambda f, m: None)
    kept = log.read_text()
    assert "hub.example" in kept and "***" in kept
    assert not any(secret in kept for secret in ("hunter2", "s3cr3t-token", "hf_abcdefghijklmnopqrstuvwxyz123456")), kept
