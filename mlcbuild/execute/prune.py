"""`mlcbuild clean` and `build --prune`: remove outputs a recipe no longer asks for.

Only what mlcbuild placed is a candidate: a file listed in its folder's `.mlcbuild-placed.json` and
unchanged since it was placed (an edited file stays, and is named). The candidates are this recipe's
own names (`<name>-<quant>-MLC/`, `libs/<name>-<quant>-<target>.<suffix>`) that the full recipe (no
`-q`/`-t`/`--only` narrowing) no longer plans: a quantization or a target taken out of the recipe.
Another recipe's outputs in a shared folder, and files a user added, are never touched. The
provenance beside an artifact that is gone goes with it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mlcbuild.artifact.layout import LIBS, envelope_path, is_library_name, is_model_dir_name, provenance_path
from mlcbuild.plan.graph import BuildGraph
from mlcbuild.recipe.model import Recipe
from mlcbuild.store.fs import fs_errors
from mlcbuild.store.placed import RECORD, Placed


@dataclass
class PruneReport:
    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    """Stale files mlcbuild placed that someone edited since: left where they are."""


def stale_outputs(recipes: Iterable[Recipe], graph: BuildGraph) -> list[tuple[Path, list[str]]]:
    """(folder, names in its placed record) of each recipe's outputs that `graph` (the whole
    recipe, planned) does not produce."""
    folders = {a.path for a in graph.artifacts if a.kind == "model"}
    files = {a.path for a in graph.artifacts if a.kind == "library"}
    from mlcbuild.quantization import SCHEMES

    found: dict[Path, set[str]] = {}
    for recipe in recipes:
        out = Path(recipe.output)
        with contextlib.suppress(OSError):
            for child in sorted(out.iterdir()):
                if is_model_dir_name(child.name, recipe.name, SCHEMES) and child not in folders and (child / RECORD).is_file():
                    found[child] = set(Placed.load(child).entries)
        libs = out / LIBS
        stale = {n for n in Placed.load(libs).entries if is_library_name(n, recipe.name, SCHEMES) and libs / n not in files}
        if stale:
            found.setdefault(libs, set()).update(stale)
    return [(folder, sorted(names)) for folder, names in sorted(found.items())]


def prune(recipes: Iterable[Recipe], graph: BuildGraph, dry_run: bool = False) -> PruneReport:
    """Remove the stale outputs `stale_outputs` finds (with dry_run, only say what would go)."""
    report = PruneReport()
    for folder, names in stale_outputs(recipes, graph):
        placed = Placed.load(folder)
        whole = folder.name != LIBS
        for name in names:
            path = folder / name
            if not path.exists():
                placed.drop(name)
                continue
            if not placed.ours_unmodified(name):
                report.kept.append(path)
                continue
            report.removed.append(path)
            if not dry_run:
                with fs_errors("output folder", folder):
                    path.unlink()
                placed.drop(name)
                _remove_empty_parents(path, folder)
            if not whole:
                _remove_beside(path, report, dry_run)
        if dry_run:
            if whole and not any(folder in p.parents for p in report.kept):
                _remove_beside(folder, report, dry_run)
            continue
        with fs_errors("output folder", folder):
            placed.save()
        if whole and not placed.entries:
            (folder / RECORD).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
            _remove_beside(folder, report)
    return report


def _remove_beside(artifact: Path, report: PruneReport, dry_run: bool = False) -> None:
    """The provenance statement and signature envelope beside a removed artifact (with dry_run, only listed)."""
    for path in (provenance_path(artifact), envelope_path(artifact)):
        if path.is_file():
            if not dry_run:
                path.unlink()
            report.removed.append(path)


def _remove_empty_parents(path: Path, folder: Path) -> None:
    """Sub-folders of `folder` that held a removed file and are empty now (a user's own empty
    folder elsewhere stays)."""
    parent = path.parent
    with contextlib.suppress(OSError):
        while parent != folder and folder in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
