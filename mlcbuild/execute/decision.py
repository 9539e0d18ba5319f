"""The one rebuild decision: a node's key, whether the cache has its result, and why it runs if not.

Every caller asks this module: the local and Ray executors (which then only schedule), the dry
run, `plan`, `explain`, `cache gc --keep`, `cache push`/`pull` and `matrix --affected` (the last
three through `walk_keys`, the one walk that computes a graph's keys). Nothing here imports TVM or Ray.

History ("why does it run") is keyed by a node's *identity*, not its label or its key: the step's
`identity(params)` (e.g. quantization + target name/variant for compile, the repo for download)
plus the identities of its inputs. Renaming a recipe or editing a temperature keeps the identity,
so the reason names what changed; recipes over different sources (repo, or folder name) never
share one.

The decision reads only the local store (plan, explain and dry runs never touch the network);
the remote cache is asked where work happens, in `runner.build_node`, after a local miss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.plan.keys import diff_preimages, key_preimage, node_key
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.manifest import Manifest, sha256_json

TYPICAL_DURATION_S = {"download": 5.0, "convert": 20.0, "gen-config": 1.0, "compile": 30.0}
"""Estimates for scheduling a node never built here (seconds)."""

NEVER_BUILT = "never built"
FORCED = "forced"
RESULT_MISSING = "result was missing from the cache"
WAITS = "runs if its inputs change"


@dataclass(frozen=True)
class Decision:
    node: Node
    slot: str
    key: str | None = None
    preimage: dict[str, Any] | None = None
    hit: ActionResult | None = None
    why: str = ""
    changes: tuple[str, ...] | None = None
    last_key: str | None = None

    @property
    def cached(self) -> bool:
        return self.hit is not None

    @property
    def certain(self) -> bool:
        """Whether the node will run for sure (false while its key waits on inputs not yet built)."""
        return self.key is not None or self.why != WAITS


@dataclass
class Decider:
    """Decides nodes of one graph; holds the store and `--force`."""

    store: Store
    graph: BuildGraph
    force: bool = False
    _slots: dict[str, str] = field(default_factory=dict)

    def slot(self, node: Node) -> str:
        """The node's identity across edits: where its history lives."""
        if node.id not in self._slots:
            from mlcbuild.steps import get_step

            inputs = sorted((role, self.slot(self.graph.node(dep))) for role, dep in node.deps)
            identity = get_step(node.kind).identity({**node.params, **node.hints})
            self._slots[node.id] = sha256_json([node.kind, identity, inputs])[:24]
        return self._slots[node.id]

    def decide(self, node: Node, inputs: Mapping[str, Manifest] | None) -> Decision:
        """`inputs` None: an input is not built yet, so the key is not known."""
        if inputs is None:
            return self.decide_waiting(node)
        return self.decide_preimage(node, key_preimage(node, inputs, self.store))

    def decide_waiting(self, node: Node) -> Decision:
        """A node whose key waits on an input not built yet."""
        slot, last = self._history(node)
        why = FORCED if self.force else NEVER_BUILT if last is None else WAITS
        return Decision(node, slot, why=why, last_key=last and last["key"])

    def decide_preimage(self, node: Node, preimage: dict[str, Any]) -> Decision:
        """A node whose key is known. A hit reads no history (a no-op build stays one action-cache
        read per node)."""
        key = node_key(preimage)
        if not self.force and (hit := self.store.get_action(key)) is not None:
            return Decision(node, "", key, preimage, hit, "cached")
        slot, last = self._history(node)
        changes = None if last is None else tuple(diff_preimages(last["preimage"], preimage))
        if self.force:
            why = FORCED
        elif changes is None:
            why = NEVER_BUILT
        elif changes:
            why = "; ".join(changes[:3])
        else:
            why = RESULT_MISSING
        return Decision(node, slot, key, preimage, None, why, changes, last and last["key"])

    def _history(self, node: Node) -> tuple[str, dict[str, Any] | None]:
        slot = self.slot(node)
        return slot, self.store.last_node_build(slot)

    def record(self, decision: Decision, manifest: Manifest, duration_s: float) -> ActionResult:
        """Store a node's result, then its history (by identity)."""
        from mlcbuild.steps import get_step

        assert decision.key is not None and decision.preimage is not None
        node = decision.node
        built_with = get_step(node.kind).built_with({**node.params, **node.hints})
        result = ActionResult(decision.key, manifest, decision.preimage, duration_s, built_with=built_with, label=node.label)
        self.store.put_action(result)
        self.store.record_node(decision.slot, decision.key, decision.preimage, duration_s)
        return result

    def estimate_s(self, node: Node) -> float:
        """How long the node took last time here (its history outlives `gc` of its results), else a
        typical figure for its kind."""
        last = self.store.last_node_build(self.slot(node))
        if last is not None and last.get("duration_s"):
            return float(last["duration_s"])
        return TYPICAL_DURATION_S.get(node.kind, 1.0)


@dataclass(frozen=True)
class NodeKey:
    """One node as the key walk sees it: its key, or why the key is not known here yet."""

    node: Node
    key: str | None = None
    preimage: dict[str, Any] | None = None
    waits_on: Node | None = None
    """The first input no cache has a result for: the key is unknown until it runs."""
    error: Exception | None = None
    """Why the key could not be computed from inputs that are all known."""


def walk_keys(
    graph: BuildGraph,
    store: Store,
    result_of: Callable[[NodeKey], Manifest | None],
    wanted: set[str] | None = None,
) -> None:
    """The one walk that computes keys over a graph (dry run, `cache pull`, `matrix --affected`).

    In dependency order over `wanted`'s closure (all nodes if None), each node's key is computed
    from its inputs' results; `result_of` is the caller's cache (local, remote, a scratch build): it
    gets the node's `NodeKey` and returns the node's result where that cache has one, which then
    feeds its dependents' keys. `store` serves the object reads some keys need (compile reads
    gen-config's config).
    """
    closure = graph.closure(wanted) if wanted is not None else set(graph.nodes)
    results: dict[str, Manifest | None] = {}
    for node in graph.topological():
        if node.id not in closure:
            continue
        absent = next((dep for _, dep in node.deps if results.get(dep) is None), None)
        if absent is not None:
            nk = NodeKey(node, waits_on=graph.node(absent))
        else:
            try:
                preimage = key_preimage(node, {role: results[dep] for role, dep in node.deps}, store)  # type: ignore[misc]
                nk = NodeKey(node, node_key(preimage), preimage)
            except (MlcbuildError, OSError, KeyError) as e:
                nk = NodeKey(node, error=e)
        results[node.id] = result_of(nk)


def dry_run(graph: BuildGraph, wanted: set[str], decider: Decider) -> BuildReport:
    """What a build would do, running nothing: each node cached, or why it will run."""
    report = BuildReport()

    def result_of(nk: NodeKey) -> Manifest | None:
        node = nk.node
        if isinstance(nk.error, MlcbuildError):
            report.outcomes[node.id] = Outcome(node, "failed", reason=str(nk.error))
            return None
        if nk.error is not None:
            raise nk.error
        try:
            decision = decider.decide_waiting(node) if nk.preimage is None else decider.decide_preimage(node, nk.preimage)
        except MlcbuildError as e:
            report.outcomes[node.id] = Outcome(node, "failed", reason=str(e))
            return None
        if decision.cached:
            outcome = Outcome(node, "cached", decision.key, decision.hit.manifest, reason=decision.why)
        else:
            reason = f"will run: {decision.why}" if decision.certain else decision.why
            outcome = Outcome(node, "pending", decision.key, reason=reason)
        outcome.decision = decision
        report.outcomes[node.id] = outcome
        return outcome.manifest

    walk_keys(graph, decider.store, result_of, wanted)
    return report
