"""The dry run, `cache pull` and `matrix --affected` compute a graph's keys through one walk
(`execute.decision.walk_keys`), so they agree on every key and on which keys are not known yet."""
from __future__ import annotations

from pathlib import Path

import pytest

from fakesteps import fake
from mlcbuild.ci.affected import missing_nodes
from mlcbuild.execute.decision import Decider, dry_run
from mlcbuild.execute.local import LocalExecutor
from mlcbuild.execute.transfer import pull, push
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.steps import register_step, unregister_step
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.remote import RemoteCache


@pytest.fixture(autouse=True)
def fake_steps():
    register_step("fake", "fakesteps:FakeStep")
    yield
    unregister_step("fake")


class Asked:
    """A shared cache for `missing_nodes` that remembers which keys it was asked for."""

    def __init__(self, store: Store):
        self.store = store
        self.keys: list[str] = []

    def get_action(self, key: str) -> ActionResult | None:
        self.keys.append(key)
        return self.store.get_action(key)


def test_dry_run_pull_and_affected_agree_on_the_keys(tmp_path: Path):
    a = fake("a")
    b = fake("b", {"in": a})
    c = fake("c", {"in": b})
    d = fake("d", {"x": a, "y": c})
    graph = BuildGraph()
    for node in (a, b, c, d):
        graph.add(node)
    here = Store(tmp_path / "here")
    LocalExecutor(here).run(graph, {b.id})

    dry = {o.node.id: o.key for o in dry_run(graph, set(graph.nodes), Decider(here, graph)).outcomes.values()}
    assert dry[a.id] and dry[b.id] and dry[c.id] and dry[d.id] is None

    remote = RemoteCache(str(tmp_path / "remote"))
    assert sorted(push(graph, here, remote).moved) == ["fake a", "fake b"]
    there = Store(tmp_path / "there")
    pulled = pull(graph, there, remote)
    assert sorted(pulled.moved) == ["fake a", "fake b"] and sorted(pulled.missing) == ["fake c", "fake d"]
    assert sorted(r.key for r in there.iter_actions()) == sorted([dry[a.id], dry[b.id]])

    asked = Asked(here)
    missing = missing_nodes(graph, asked)
    assert sorted(asked.keys) == sorted(k for k in dry.values() if k)
    assert set(missing) == {c.id, d.id}
    assert missing[c.id].endswith(f"no result for key {dry[c.id][:12]}")
    assert missing[d.id] == "fake d: key unknown until fake c is built"
