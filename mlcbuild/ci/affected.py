"""`matrix --affected`: which cells have a node whose key has no result in the shared cache.

A compile key depends on gen-config's output (its architecture fields), so the keys are computed
the way the cells will compute them: the cheap nodes that every compile cell runs anyway (the
config/tokenizer download and gen-config, seconds, no weights, no TVM) are built into a private
scratch store; every other node's inputs come from the shared cache. A key that cannot be computed
here (an input that is in neither) counts as affected: the answer may be too wide, never too narrow.
A target that pins its tool versions (`toolchain_versions`) has keys this machine computes without
the tool, so its cells are exact here (a cuda cell on a planner without nvcc).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from mlcbuild.ci.matrix import Cell
from mlcbuild.errors import StepError
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.manifest import Manifest


class ResultLookup(Protocol):
    """All `--affected` needs of the shared cache: a local Store, or a remote's action entries."""

    def get_action(self, key: str) -> "ActionResult | None": ...


def missing_nodes(graph: BuildGraph, shared: ResultLookup, jobs: int = 1) -> dict[str, str]:
    """node id -> why it is not in the shared cache, for every node of the graph that is not.

    Object reads (compile's view of mlc-chat-config.json) hit the scratch store only: gen-config
    is always built there, and the same key gives the same bytes.
    """
    from mlcbuild.execute.decision import NodeKey, walk_keys
    from mlcbuild.execute.local import LocalExecutor

    scratch_root = Path(tempfile.mkdtemp(prefix="mlcbuild-affected-"))
    try:
        scratch = Store(scratch_root)
        cheap = graph.closure({n.id for n in graph.nodes.values() if n.kind == "gen-config"})
        report = LocalExecutor(scratch, jobs=jobs).run(graph, cheap)
        failed = [o for o in report.outcomes.values() if not o.ok]
        if failed:
            raise StepError(f"matrix --affected: {failed[0].node.label}: {failed[0].reason}")
        missing: dict[str, str] = {}

        def result_of(nk: NodeKey) -> Manifest | None:
            node = nk.node
            if nk.waits_on is not None:
                missing[node.id] = f"{node.label}: key unknown until {nk.waits_on.label} is built"
                return None
            if nk.key is None:
                missing[node.id] = f"{node.label}: key unknown here ({nk.error})"
                return None
            built = report.outcomes.get(node.id)
            hit = shared.get_action(nk.key)
            if hit is None:
                missing[node.id] = f"{node.label}: no result for key {nk.key[:12]}"
            return built.manifest if built is not None else hit.manifest if hit else None

        walk_keys(graph, scratch, result_of)
        return missing
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)


def affected_cells(cells: list[Cell], missing: dict[str, str]) -> dict[str, str]:
    """cell id -> why; only cells one of whose own nodes is missing."""
    found: dict[str, str] = {}
    for cell in cells:
        why = next((missing[n] for n in cell.nodes if n in missing), None)
        if why is not None:
            found[cell.id] = why
    return found
