"""The Ray executor on a real local cluster started here on 127.0.0.1: a head with no CPUs and two
workers offering different toolchains. Fake steps (tests/fakesteps.py) keep every node cheap;
the workers import them through PYTHONPATH and open the test's cache directory."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fakesteps import fake
from mlcbuild.execute.ray_executor import RayExecutor
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.steps import register_step, unregister_step
from mlcbuild.store.cas import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKERS = {"A": {"toolchain:fake": 1}, "B": {"toolchain:other": 1}}


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs and the two WORKERS (one CPU each)."""
    from raycluster import LocalRayCluster

    cluster = LocalRayCluster().start_head()
    try:
        for resources in WORKERS.values():
            cluster.add_worker(cpus=1, resources=resources)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def fake_steps():
    register_step("fake", "fakesteps:FakeStep")
    yield
    unregister_step("fake")


def graph_of(*nodes: Node) -> BuildGraph:
    graph = BuildGraph()
    for node in nodes:
        graph.add(node)
    return graph


def test_routing_by_toolchain_and_results_through_the_cache(cluster, tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    a = fake("a", toolchain="fake")
    b = fake("b", {"in": a}, toolchain="other")
    c = fake("c")
    graph = graph_of(a, b, c)
    report = RayExecutor(store, address=cluster.address).run(graph, set(graph.nodes))
    assert report.ok, {o.node.label: o.reason for o in report.outcomes.values()}
    assert "[toolchain:fake]" in report.outcomes[a.id].worker
    assert "[toolchain:other]" in report.outcomes[b.id].worker
    assert report.outcomes[c.id].worker
    assert store.read_bytes(report.outcomes[b.id].manifest.files["out.txt"].digest) == b"a;b;"
    again = RayExecutor(store, address=cluster.address).run(graph, set(graph.nodes))
    assert {o.status for o in again.outcomes.values()} == {"cached"}
    assert {o.worker for o in again.outcomes.values()} == {""}, "cached nodes never leave the driver"


def test_unrunnable_node_is_reported_at_once(cluster, tmp_path: Path) -> None:
    metal = fake("metal", toolchain="xcrun")
    user = fake("user", {"in": metal})
    fine = fake("fine")
    graph = graph_of(metal, user, fine)
    began = time.perf_counter()
    report = RayExecutor(Store(tmp_path / "c"), address=cluster.address, keep_going=True).run(graph, set(graph.nodes))
    assert time.perf_counter() - began < 20
    assert report.outcomes[metal.id].status == "failed"
    assert "no worker in the Ray cluster can run it: it needs CPU=1, toolchain:xcrun=0.001" in report.outcomes[metal.id].reason
    assert report.outcomes[user.id].status == "skipped" and report.outcomes[fine.id].status == "built"


def test_a_node_the_driver_cannot_build_goes_to_a_worker_that_can(cluster, tmp_path: Path) -> None:
    """The driver lacks both tools (as a laptop lacks nvcc): the node whose tool a worker offers is
    built there; the one no worker offers ends `elsewhere` (not failed), and so does its user."""
    from mlcbuild.execute.base import ELSEWHERE

    gpu = fake("gpu", toolchain="fake")
    mac = fake("mac", toolchain="xcrun")
    user = fake("user", {"in": mac})
    graph = graph_of(gpu, mac, user)
    graph.unbuildable.update({gpu.id: "needs fake: build it where that is", mac.id: "needs xcrun: build it where that is"})
    report = RayExecutor(Store(tmp_path / "c"), address=cluster.address).run(graph, set(graph.nodes))
    assert report.outcomes[gpu.id].status == "built" and "[toolchain:fake]" in report.outcomes[gpu.id].worker
    assert [report.outcomes[n.id].status for n in (mac, user)] == [ELSEWHERE, ELSEWHERE]
    assert report.ok


def test_a_node_no_one_here_can_build_is_fetched_from_the_remote(cluster, tmp_path: Path) -> None:
    """A metal library some mac pushed: no worker offers xcrun, yet the cluster fetches it."""
    from mlcbuild.execute.base import ELSEWHERE
    from mlcbuild.execute.local import LocalExecutor
    from mlcbuild.execute.runner import FETCHED
    from mlcbuild.store.remote import RemoteCache

    url = f"file://{tmp_path / 'remote'}"
    mac = fake("mac", toolchain="xcrun")
    user = fake("user", {"in": mac})
    pushed = LocalExecutor(Store(tmp_path / "mac"), remote=RemoteCache(url)).run(graph_of(mac), {mac.id})
    assert pushed.ok

    graph = graph_of(mac, user)
    graph.unbuildable[mac.id] = "needs xcrun: build it where that is"
    report = RayExecutor(Store(tmp_path / "c"), address=cluster.address, remote=RemoteCache(url)).run(graph, set(graph.nodes))
    assert (report.outcomes[mac.id].status, report.outcomes[mac.id].reason) == ("cached", FETCHED)
    assert report.outcomes[user.id].status == "built" and report.ok

    other = fake("other", toolchain="xcrun")
    missing = graph_of(other)
    missing.unbuildable[other.id] = "needs xcrun: build it where that is"
    away = RayExecutor(Store(tmp_path / "d"), address=cluster.address, remote=RemoteCache(url)).run(missing, {other.id})
    assert away.outcomes[other.id].status == ELSEWHERE and away.ok


def test_noop_with_ray_executor_imports_no_ray(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from fakesteps import fake
        from mlcbuild.execute.local import LocalExecutor
        from mlcbuild.execute.ray_executor import RayExecutor
        from mlcbuild.plan.graph import BuildGraph
        from mlcbuild.steps import register_step
        from mlcbuild.store.cas import Store
        register_step("fake", "fakesteps:FakeStep")
        graph = BuildGraph()
        a = graph.add(fake("a"))
        graph.add(fake("b", {{"in": a}}))
        store = Store({str(tmp_path / 'c')!r})
        assert LocalExecutor(store).run(graph, set(graph.nodes)).ok
        report = RayExecutor(store, address="127.0.0.1:1").run(graph, set(graph.nodes))
        assert {{o.status for o in report.outcomes.values()}} == {{"cached"}}
        print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_workers_read_and_write_through_the_remote_cache(cluster, tmp_path: Path) -> None:
    """Machine one builds on the cluster and its workers push signed results; machine two, with a
    fresh cache dir and only the public key, gets every node from the remote: no step runs."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlcbuild.execute.runner import FETCHED
    from mlcbuild.store.remote import RemoteCache
    from mlcbuild.store.remote.signing import key_id

    key = Ed25519PrivateKey.generate()
    url = f"file://{tmp_path / 'remote'}"
    marker = str(tmp_path / "ran")
    a = fake("a", toolchain="fake", marker=marker)
    b = fake("b", {"in": a}, marker=marker)
    graph = graph_of(a, b)

    pushing = RemoteCache(url, signing_key=key)
    built = RayExecutor(Store(tmp_path / "one"), address=cluster.address, remote=pushing).run(graph, set(graph.nodes))
    assert built.ok and {o.status for o in built.outcomes.values()} == {"built"}
    assert (pushing.stats.uploaded_entries, pushing.stats.uploaded_objects) == (2, 2), pushing.stats
    assert len(list((tmp_path / "ran").iterdir())) == 2

    fetching = RemoteCache(url, trusted_keys={key_id(key.public_key()): key.public_key()})
    fresh = Store(tmp_path / "two")
    again = RayExecutor(fresh, address=cluster.address, remote=fetching).run(graph, set(graph.nodes))
    assert {(o.status, o.reason) for o in again.outcomes.values()} == {("cached", FETCHED)}
    assert all(o.worker for o in again.outcomes.values()), "fetched on the workers"
    assert fetching.stats.hits == 2 and fetching.stats.uploaded_entries == 0
    assert len(list((tmp_path / "ran").iterdir())) == 2, "no step ran on machine two"
    assert fresh.read_bytes(again.outcomes[b.id].manifest.files["out.txt"].digest) == b"a;b;"
    assert fresh.verify() == []


def test_a_remote_down_is_one_warning_on_the_driver_and_the_build_goes_on(cluster, tmp_path: Path) -> None:
    from mlcbuild.store.remote import RemoteCache

    seen: list[str] = []
    remote = RemoteCache("http://127.0.0.1:1/cache", warn=seen.append)
    node = fake("lonely")
    report = RayExecutor(Store(tmp_path / "c"), address=cluster.address, remote=remote).run(graph_of(node), {node.id})
    assert report.ok and report.outcomes[node.id].status == "built"
    assert len(seen) == 1 and "remote cache http://127.0.0.1:1/cache unavailable" in seen[0], seen


def test_worker_node_killed_mid_node_is_retried_elsewhere_without_partial_result(cluster, tmp_path: Path) -> None:
    """Runs last: it kills one of the module's two workers."""
    store = Store(tmp_path / "c")
    marker = tmp_path / "marker"
    slow = fake("slow", sleep=3.0, marker=str(marker))
    graph = graph_of(slow)
    result: dict = {}
    executor = RayExecutor(store, address=cluster.address)
    thread = threading.Thread(target=lambda: result.setdefault("report", executor.run(graph, {slow.id})))
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not list(marker.glob("slow.*")):
        time.sleep(0.05)
    first = list(marker.glob("slow.*"))
    assert first, "the node never started"
    victim = int(first[0].read_text().split()[0])
    killed = cluster.kill_node_running(victim)
    thread.join(timeout=90)
    outcome = result["report"].outcomes[slow.id]
    assert outcome.status == "built", outcome.reason
    survivor = next(offer for offer in WORKERS.values() if offer != killed)
    assert f"[{next(iter(survivor))}]" in outcome.worker, "retried on the other worker"
    attempts = sorted(p.name for p in marker.glob("slow.*"))
    assert len(attempts) == 2 and f"slow.{victim}" in attempts
    assert [r.key for r in store.iter_actions()] == [outcome.key]
    assert store.verify() == []
