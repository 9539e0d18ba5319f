"""Run a build graph on this machine: up to `jobs` nodes at once, each step in its own process
(threads here only wait on those processes). Deciding and ordering is `execute.schedule`'s."""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from mlcbuild.execute.base import BuildReport, NullReporter, Outcome, Reporter
from mlcbuild.execute.decision import Decider, Decision
from mlcbuild.execute.runner import build_node
from mlcbuild.execute.schedule import schedule
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.cas import Store
from mlcbuild.store.manifest import Manifest

if TYPE_CHECKING:
    from mlcbuild.store.remote import RemoteCache


class ThreadBackend:
    def __init__(self, decider: Decider, jobs: int, reporter: Reporter, remote: "RemoteCache | None" = None):
        self.decider = decider
        self.reporter = reporter
        self.remote = remote
        self.slots = max(1, jobs)
        self.fetches = remote is not None
        self.pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="mlcbuild-node")

    def builds_elsewhere(self, node: Node, inputs: Mapping[str, Manifest]) -> bool:
        return False

    def unrunnable(self, node: Node, inputs: Mapping[str, Manifest]) -> str | None:
        return None

    def submit(self, decision: Decision, inputs: Mapping[str, Manifest]) -> Future:
        node = decision.node
        progress = lambda fraction, message: self.reporter.progress(node, fraction, message)  # noqa: E731
        elsewhere = self.decider.graph.unbuildable.get(node.id)
        return self.pool.submit(build_node, self.decider, decision, inputs, progress, remote=self.remote, elsewhere=elsewhere)

    def wait(self, running: list[Future]) -> list[tuple[Future, Outcome]]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        return [(future, future.result()) for future in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class LocalExecutor:
    store: Store
    jobs: int = 1
    keep_going: bool = False
    force: bool = False
    reporter: Reporter = field(default_factory=NullReporter)
    remote: "RemoteCache | None" = None
    """Asked on a local miss, in the node's thread (fetching is work); written through after a build."""

    def run(self, graph: BuildGraph, wanted: set[str]) -> BuildReport:
        decider = Decider(self.store, graph, self.force)
        backend = ThreadBackend(decider, self.jobs, self.reporter, self.remote)
        return schedule(graph, wanted, decider, backend, self.reporter, self.keep_going)
