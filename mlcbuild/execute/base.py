"""What every executor reports back, and the interface both executors implement.

Executor interface: `run(graph, wanted) -> BuildReport`. An executor is built with the store,
`keep_going`, `force` and a `Reporter`; it decides every node with `execute.decision.Decider`
on the calling thread (cached nodes never leave it), and hands only the nodes that must run to
its backend (`execute.schedule.Backend`): threads + child processes (`LocalExecutor`) or Ray
tasks (`RayExecutor`). Longest critical path first; a failed node fails its dependents.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.manifest import Manifest


ELSEWHERE = "elsewhere"
"""A node this machine cannot build (`BuildGraph.unbuildable`) and no cache has: not a failure."""


@dataclass
class Outcome:
    node: Node
    status: str  # cached | built | failed | skipped | pending | elsewhere
    key: str | None = None
    manifest: Manifest | None = None
    duration_s: float = 0.0
    reason: str = ""
    worker: str = ""
    """Where it ran: "local", or the Ray node id."""
    decision: Any = None
    """The `execute.decision.Decision` behind it, where one was made."""

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "built")


@dataclass
class BuildReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing failed: nodes left to a machine with the toolchain are not failures."""
        return all(o.ok or o.status == ELSEWHERE for o in self.outcomes.values())

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


class Reporter(Protocol):
    def started(self, node: Node) -> None: ...
    def progress(self, node: Node, fraction: float, message: str) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


class NullReporter:
    def started(self, node: Node) -> None:
        pass

    def progress(self, node: Node, fraction: float, message: str) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        pass


class Executor(Protocol):
    def run(self, graph: BuildGraph, wanted: set[str]) -> BuildReport: ...
