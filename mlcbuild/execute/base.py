"""What every executor (local threads today, Ray tomorrow) reports back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.manifest import Manifest


@dataclass
class Outcome:
    node: Node
    status: str  # cached | built | failed | skipped | pending
    key: str | None = None
    manifest: Manifest | None = None
    duration_s: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "built")


@dataclass
class BuildReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes.values())

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
