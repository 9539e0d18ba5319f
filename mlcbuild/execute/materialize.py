"""Place built results into recipes' output dirs in MLC's layout, by hard link."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from mlcbuild.execute.base import BuildReport
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.store.cas import Store


def materialize(graph: BuildGraph, report: BuildReport, store: Store) -> list[Path]:
    """Link every artifact whose node succeeded; drop stale files from whole-folder artifacts."""
    written: list[Path] = []
    expected: dict[Path, set[str]] = defaultdict(set)
    complete: dict[Path, bool] = defaultdict(lambda: True)
    for artifact in graph.artifacts:
        outcome = report.outcomes.get(artifact.node_id)
        if outcome is None or not outcome.ok or outcome.manifest is None:
            complete[artifact.dest] = False
            continue
        store.materialize(outcome.manifest, artifact.dest, rename=dict(artifact.rename))
        for rel in outcome.manifest.files:
            name = artifact.rename.get(rel, rel)
            written.append(artifact.dest / name)
            if not artifact.rename:
                expected[artifact.dest].add(name)
    for folder, names in expected.items():
        if not complete[folder]:
            continue
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                rel = (Path(dirpath) / name).relative_to(folder).as_posix()
                if rel not in names and not name.startswith("."):
                    (Path(dirpath) / name).unlink()
    return written
