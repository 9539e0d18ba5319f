"""The scheduling loop both executors share.

On the calling thread: walk the graph as inputs finish, decide each node (`Decider`), finish the
cached ones on the spot (they never reach a thread or a worker), and hand the rest to a `Backend`
in order of their longest path to the end of the build (the node's own duration, as the action
cache recorded it last time, plus its longest chain of users), so that a long compile never
starts last. A failed node skips its dependents, and stops the build unless `keep_going`.

A node this machine cannot build (`graph.unbuildable`) is decided like any other: a cached result
needs no toolchain, so it is used (and placed); a backend that `builds_elsewhere` (a Ray worker with
the tool, the key computable here) runs it; a backend that `fetches` from a remote cache gets it to
ask the remote; otherwise it, and every node that needs it, ends `elsewhere`.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from typing import Hashable, Mapping, Protocol

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.base import ELSEWHERE, BuildReport, Outcome, Reporter
from mlcbuild.execute.decision import Decider, Decision
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.manifest import Manifest

STOPPED = "build stopped after a failure"


class Backend(Protocol):
    """Runs the nodes that must run. `slots`: how many the scheduler keeps in flight."""

    slots: int
    fetches: bool
    """Whether `submit` asks a remote cache before running: then it also gets the nodes this machine
    cannot build, and answers them fetched or `elsewhere`."""

    def builds_elsewhere(self, node: Node, inputs: Mapping[str, Manifest]) -> bool:
        """Whether it can build a node this machine cannot (on a worker that has the tool)."""
        ...

    def unrunnable(self, node: Node, inputs: Mapping[str, Manifest]) -> str | None:
        """Why no worker can ever run this node (reported at once), or None."""

    def submit(self, decision: Decision, inputs: Mapping[str, Manifest]) -> Hashable: ...

    def wait(self, running: list[Hashable]) -> list[tuple[Hashable, Outcome]]:
        """Block until at least one of `running` is done; return the done ones."""

    def close(self) -> None: ...


def critical_paths(graph: BuildGraph, nodes: set[str], decider: Decider) -> dict[str, float]:
    """Per node: its estimated duration plus the longest chain of its users below it."""
    users: dict[str, list[str]] = {n: [] for n in nodes}
    for dep, user, _ in graph.edges():
        if dep in nodes and user in nodes:
            users[dep].append(user)
    order = [n.id for n in graph.topological() if n.id in nodes]
    path: dict[str, float] = {}
    for node_id in reversed(order):
        below = max((path[u] for u in users[node_id]), default=0.0)
        path[node_id] = decider.estimate_s(graph.node(node_id)) + below
    return path


def schedule(
    graph: BuildGraph,
    wanted: set[str],
    decider: Decider,
    backend: Backend,
    reporter: Reporter,
    keep_going: bool = False,
) -> BuildReport:
    start = time.perf_counter()
    report = BuildReport()
    closure = graph.closure(wanted)
    waiting = {n.id: len(n.deps) for n in graph.topological() if n.id in closure}
    users: dict[str, list[Node]] = {node_id: [] for node_id in waiting}
    for dep, user, _ in graph.edges():
        if user in waiting:
            users[dep].append(graph.node(user))
    ready = deque(graph.node(node_id) for node_id, count in waiting.items() if count == 0)
    queue: list[tuple[float, int, Decision, dict[str, Manifest]]] = []
    order = itertools.count()
    running: dict[Hashable, Node] = {}
    paths: dict[str, float] | None = None
    stop = False

    def finish(outcome: Outcome) -> None:
        nonlocal stop
        report.outcomes[outcome.node.id] = outcome
        reporter.finished(outcome)
        if outcome.status == "failed" and not keep_going:
            stop = True
        for user in users[outcome.node.id]:
            waiting[user.id] -= 1
            if waiting[user.id] == 0:
                ready.append(user)

    try:
        while ready or queue or running:
            while ready:
                node = ready.popleft()
                deps = [report.outcomes[d] for _, d in node.deps]
                bad = [o for o in deps if not o.ok and o.status != ELSEWHERE]
                if bad or stop:
                    finish(Outcome(node, "skipped", reason=f"needs {bad[0].node.label}" if bad else STOPPED))
                    continue
                away = [o for o in deps if o.status == ELSEWHERE]
                if away:
                    finish(Outcome(node, ELSEWHERE, reason=f"needs {away[0].node.label}, which this machine cannot build"))
                    continue
                inputs = {role: report.outcomes[d].manifest for role, d in node.deps}
                try:
                    decision = decider.decide(node, inputs)
                    elsewhere = None if decision.cached else graph.unbuildable.get(node.id)
                    if elsewhere is not None and backend.builds_elsewhere(node, inputs):
                        elsewhere = None
                    problem = None if decision.cached or elsewhere else backend.unrunnable(node, inputs)
                except MlcbuildError as e:
                    finish(Outcome(node, "failed", reason=str(e)))
                    continue
                if decision.cached:
                    finish(Outcome(node, "cached", decision.key, decision.hit.manifest, reason=decision.why, decision=decision))
                elif elsewhere is not None and not backend.fetches:
                    finish(Outcome(node, ELSEWHERE, decision.key, reason=elsewhere, decision=decision))
                elif problem is not None:
                    finish(Outcome(node, "failed", decision.key, reason=problem, decision=decision))
                else:
                    if paths is None:
                        paths = critical_paths(graph, set(waiting), decider)
                    heapq.heappush(queue, (-paths[node.id], next(order), decision, inputs))
            if stop:
                while queue:
                    finish(Outcome(heapq.heappop(queue)[2].node, "skipped", reason=STOPPED))
            while queue and len(running) < max(1, backend.slots):
                _, _, decision, inputs = heapq.heappop(queue)
                reporter.started(decision.node)
                running[backend.submit(decision, inputs)] = decision.node
            if running:
                for handle, outcome in backend.wait(list(running)):
                    del running[handle]
                    finish(outcome)
    finally:
        backend.close()
        decider.store.save_index()
    report.wall_s = time.perf_counter() - start
    return report
