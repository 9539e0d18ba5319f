"""`cache push` / `cache pull`: move what a recipe's graph needs between the local and remote cache,
without building anything (what a CI job seeding a cache, or a laptop going offline, wants)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.decision import Decider, dry_run
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.plan.keys import key_preimage, node_key
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
        elif remote.push(store, result):
            report.moved.append(outcome.node.label)
        else:
            raise MlcbuildError(f"could not push {outcome.node.label} to {remote.url}")
    return report


def pull(graph: BuildGraph, store: Store, remote: RemoteCache) -> TransferReport:
    """Fetch every node the local cache lacks and the remote has, in dependency order."""
    report = TransferReport()
    decider = Decider(store, graph)
    manifests: dict[str, Manifest] = {}
    for node in graph.topological():
        if any(dep not in manifests for _, dep in node.deps):
            report.missing.append(node.label)
            continue
        preimage = key_preimage(node, {role: manifests[dep] for role, dep in node.deps}, store)
        key = node_key(preimage)
        if (hit := store.get_action(key)) is not None:
            report.present.append(node.label)
        elif (hit := remote.fetch_into(store, key)) is not None:
            store.record_node(decider.slot(node), key, preimage, hit.duration_s)
            report.moved.append(node.label)
        else:
            report.missing.append(node.label)
            continue
        manifests[node.id] = hit.manifest
    store.save_index()
    return report
