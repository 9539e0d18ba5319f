"""Place built results into recipes' output dirs in MLC's layout.

What a failed build places: nothing of a variant whose nodes did not all succeed. A model folder
(`<name>-<quant>-MLC/`) is written only when both its convert and gen-config succeeded, so it never
lacks tensor-cache.json; a library when its compile succeeded and no node of its model folder failed
(a compile-only CI cell, which does not run convert, still places its library).
What an earlier successful build placed there stays as it was.

What is removed: only files mlcbuild placed (listed in the folder's `.mlcbuild-placed.json`),
no longer part of the artifact, and unmodified since. A user's NOTES.txt or sub-folder stays.
A placed file someone edited is replaced by the built one (the cache itself is never edited:
small files are copies, and an edit through a hard-linked weight shard is caught by the object's
stat signature, which quarantines it and rebuilds).
"""
from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable

from mlcbuild.execute.base import BuildReport
from mlcbuild.plan.graph import Artifact, BuildGraph
from mlcbuild.store.cas import Store
from mlcbuild.store.placement import PLACE_TMP_NAME
from mlcbuild.store.fs import fs_errors, pid_alive
from mlcbuild.store.placed import Placed


def materialize(
    graph: BuildGraph, report: BuildReport, store: Store, on_restored: Callable[[Path], None] | None = None
) -> list[Path]:
    """Place every artifact of a variant that fully succeeded; return the paths in place.
    `on_restored` hears of each placed file someone had edited in place, now put back."""

    def ok(node_id: str) -> bool:
        outcome = report.outcomes.get(node_id)
        return outcome is not None and outcome.ok and outcome.manifest is not None

    folders: dict[Path, list[Artifact]] = defaultdict(list)
    for artifact in graph.artifacts:
        folders[artifact.dest].append(artifact)
    whole = {a.dest for a in graph.artifacts if a.kind == "model"}
    complete = {dest: all(ok(a.node_id) for a in folders[dest]) for dest in whole}
    models: dict[tuple[str, str], list[Artifact]] = defaultdict(list)
    for artifact in graph.artifacts:
        if artifact.kind == "model":
            models[(artifact.recipe, artifact.quantization)].append(artifact)

    def failed(node_id: str) -> bool:
        outcome = report.outcomes.get(node_id)
        return outcome is not None and not outcome.ok

    def wanted(artifact: Artifact) -> bool:
        if artifact.kind == "model":
            return complete[artifact.dest]
        return ok(artifact.node_id) and not any(failed(a.node_id) for a in models[(artifact.recipe, artifact.quantization)])

    written: list[Path] = []
    try:
        for dest, artifacts in folders.items():
            chosen = [a for a in artifacts if wanted(a)]
            if not chosen:
                continue
            _sweep_temp_files(dest)
            placed = Placed.load(dest)
            expected: set[str] = set()
            for artifact in chosen:
                manifest = report.outcomes[artifact.node_id].manifest
                assert manifest is not None
                store.materialize(manifest, dest, rename=dict(artifact.rename), placed=placed)
                for rel in manifest.files:
                    name = artifact.rename.get(rel, rel)
                    expected.add(name)
                    written.append(dest / name)
            if on_restored is not None:
                for name in placed.restored:
                    on_restored(dest / name)
            if dest in whole:
                _remove_stale(placed, expected)
            with fs_errors("output folder", dest):
                placed.save()
    finally:
        store.save_index()
    return written


def _remove_stale(placed: Placed, expected: set[str]) -> None:
    """Drop files we placed that are no longer part of the artifact, if nobody changed them."""
    for name in sorted(set(placed.entries) - expected):
        if placed.ours_unmodified(name):
            with fs_errors("output folder", placed.folder):
                (placed.folder / name).unlink()
            with contextlib.suppress(OSError):
                parent = (placed.folder / name).parent
                while parent != placed.folder and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
        placed.drop(name)


def _sweep_temp_files(folder: Path) -> None:
    """Temp files a killed materialization left (`.<name>.<pid>.mlcbuild.tmp` of a dead pid)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = PLACE_TMP_NAME.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
