"""`cache push` / `cache pull`: move what a recipe's graph needs between the local and remote cache,
without building anything (what a CI job seeding a cache, or a laptop going offline, wants)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.decision import Decider, NodeKey, dry_run, walk_keys
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.store.cas import Store
from mlcbuild.store.manifest import Manifest
from mlcbuild.store.remote import RemoteCache


@dataclass
class TransferReport:
    moved: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Labels of nodes neither side has (push: not built here; pull: not in the remote)."""


def push(graph: BuildGraph, store: Store, remote: RemoteCache) -> TransferReport:
    """Upload every node of the graph the local cache has; report those it lacks."""
    report = TransferReport()
    for outcome in dry_run(graph, set(graph.nodes), Decider(store, graph)).outcomes.values():
        result = store.get_action(outcome.key) if outcome.status == "cached" and outcome.key else None
        if result is None:
            report.missing.append(outcome.node.label)
        elif remote.push(store, result, strict=True):
            report.moved.append(outcome.node.label)
        else:
            raise MlcbuildError(f"could not push {outcome.node.label} to {remote.url}")
    return report


def pull(graph: BuildGraph, store: Store, remote: RemoteCache) -> TransferReport:
    """Fetch every node the local cache lacks and the remote has, in dependency order."""
    report = TransferReport()
    decider = Decider(store, graph)

    def result_of(nk: NodeKey) -> Manifest | None:
        node = nk.node
        if nk.error is not None:
            raise nk.error
        if nk.key is None:
            report.missing.append(node.label)
            return None
        if (hit := store.get_action(nk.key)) is not None:
            report.present.append(node.label)
        elif (hit := remote.fetch_into(store, nk.key)) is not None:
            store.record_node(decider.slot(node), nk.key, nk.preimage, hit.duration_s)
            report.moved.append(node.label)
        else:
            report.missing.append(node.label)
            return None
        return hit.manifest

    walk_keys(graph, store, result_of)
    store.save_index()
    return report
