"""The no-op build answered by stat alone (ninja's rule): no recipe parsing, no planning, no keys.

A build in which every wanted node succeeded here leaves a stamp in the cache, filed under the
exact command (argv, working directory, the environment that shapes a plan). It lists the stat
signature of everything the plan and its results came from or left behind:
- inputs: each recipe and its lock file, every target definition folder and file, mlcbuild's own
  code, the TVM compiler library and nvcc, each local source folder (every folder and file in it);
- outputs: every file placed in an output folder (and its provenance), every action entry and
  object the results name.
The next `build` with the same options stats those; when nothing moved it reports "up to date" and stops. Any
difference, or no stamp, runs the full build, which writes a new stamp. Like git's index, nothing
modified within RACY_WINDOW_NS of the stamp is trusted: such a build writes no stamp.

`plan` keeps a stamp of its own when every node it showed was cached: the same inputs and results,
and the exact text it printed, filed also under what shapes that text (terminal or pipe, width,
colour settings). A `plan` whose stamp holds prints that text again; a plan with work to show is
always computed (a result appearing in the cache would change it).

This module imports nothing but the standard library's cheapest modules and the bounded JSON
parser (store/manifest.py: a deeply nested stamp is no stamp): it runs before the CLI imports
anything heavy.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from mlcbuild.store.manifest import parse_json

if TYPE_CHECKING:
    from mlcbuild.execute.base import BuildReport
    from mlcbuild.plan.graph import BuildGraph
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.store.cas import Store

FORMAT = 1
FOLDER = "noop"
RACY_WINDOW_NS = 2_000_000_000
ENV_PREFIXES = ("MLCBUILD_", "HF_", "HUGGINGFACE_", "AWS_", "XDG_CACHE_HOME", "PATH", "HOME", "CUDA", "TVM_")
"""Environment variables that can change a plan, a key or where results go."""
SCREEN_ENV = ("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")
"""Environment variables that change how rich draws the plan's table."""

MAX_STAMP_BYTES = 256 << 20
"""A stamp lists every path a build stood on (about 100 bytes each); a larger, or deeply nested,
stamp file is no stamp."""

_PACKAGE = Path(__file__).resolve().parent.parent
_NOT_OPTIONS = ("cache_dir", "debug")
"""Parsed arguments that do not change what a build does (the cache root is keyed as a path)."""


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _screen() -> dict[str, Any]:
    """What rich draws for stdout depends on: whether it is a terminal, its size, the colour settings."""
    try:
        size = list(os.get_terminal_size(sys.stdout.fileno())) if sys.stdout.isatty() else None
    except (OSError, ValueError):
        size = None
    return {"tty": sys.stdout.isatty(), "size": size, "env": [(k, os.environ.get(k)) for k in SCREEN_ENV]}


def _stamp_file(cache_dir: Path, command: Mapping[str, Any]) -> Path:
    context = {
        "format": FORMAT,
        "cache": str(cache_dir.absolute()),
        "command": {k: str(v) for k, v in sorted(command.items()) if k not in _NOT_OPTIONS},
        "cwd": os.getcwd(),
        "python": sys.executable,
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)),
        "screen": _screen() if command.get("command") == "plan" else None,
    }
    digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()
    return cache_dir / FOLDER / f"{digest[:32]}.json"


def prune(cache_dir: Path, dry_run: bool = False) -> int:
    """Remove the stamps that no longer hold (after `cache gc`, an edited recipe, a moved
    checkout): they would never be taken again. Returns how many."""
    stale = [f for f in sorted((cache_dir / FOLDER).glob("*.json")) if _holds(f) is None]
    if not dry_run:
        for f in stale:
            f.unlink(missing_ok=True)
    return len(stale)


def _holds(stamp_file: Path) -> dict[str, Any] | None:
    """The stamp, if nothing it lists has moved."""
    try:
        stamp = parse_json(stamp_file.read_bytes(), MAX_STAMP_BYTES)
        if not isinstance(stamp, dict) or stamp.get("format") != FORMAT:
            return None
        for path, signature in stamp["paths"]:
            if _signature(path) != signature:
                return None
        return stamp
    except (OSError, ValueError, KeyError, TypeError):
        return None


def up_to_date(cache_dir: Path, command: Mapping[str, Any]) -> str | None:
    """The "up to date" line when the build stamp for this command still holds."""
    stamp = _holds(_stamp_file(cache_dir, command))
    if stamp is None or not isinstance(stamp.get("nodes"), int) or not isinstance(stamp.get("files"), int):
        return None
    return f"up to date: {stamp['nodes']} nodes cached, {stamp['files']} files in place (stat check)"


def saved_plan(cache_dir: Path, command: Mapping[str, Any]) -> str | None:
    """The text the last `plan` with these options printed, when its stamp still holds."""
    stamp = _holds(_stamp_file(cache_dir, command))
    output = None if stamp is None else stamp.get("output")
    return output if isinstance(output, str) else None


def _tree(root: Path) -> Iterable[str]:
    """Every folder and file under root: a file added, removed or edited moves one of them."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        yield dirpath
        yield from (os.path.join(dirpath, f) for f in filenames if not f.endswith(".pyc"))


def _inputs(recipes: list["Recipe"]) -> Iterable[str]:
    from mlcbuild.recipe.lock import lock_path
    from mlcbuild.targets import targets_dirs
    from mlcbuild.toolchain import tvm_compiler_library

    for recipe in recipes:
        yield str(Path(recipe.path).absolute())
        yield str(lock_path(Path(recipe.path).absolute()))
        if recipe.source.path is not None:
            yield from _tree(Path(recipe.source.path).absolute())
    for folder in targets_dirs():
        yield str(folder)
        yield from _tree(folder)
    yield from _tree(_PACKAGE)
    lib = tvm_compiler_library()
    if lib is not None:
        yield str(lib)
        yield str(lib.parent.parent)
    import shutil

    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        yield os.path.realpath(nvcc)


def _outputs(graph: "BuildGraph", report: "BuildReport", store: "Store", placed: list[Path]) -> Iterable[str]:
    from mlcbuild.artifact.layout import artifact_of, envelope_path, provenance_path
    from mlcbuild.store.placed import RECORD

    for path in placed:
        yield str(path.absolute())
        artifact = artifact_of(path)
        yield str(provenance_path(artifact).absolute())
        yield str(envelope_path(artifact).absolute())
        yield str((path.parent / RECORD).absolute())
    for outcome in report.outcomes.values():
        if outcome.key is None or outcome.manifest is None:
            continue
        yield str(store.action_path(outcome.key))
        for entry in outcome.manifest.files.values():
            yield str(store.object_path(entry.digest))


def write_stamp(
    command: Mapping[str, Any],
    recipes: list["Recipe"],
    graph: "BuildGraph",
    report: "BuildReport",
    store: "Store",
    placed: list[Path],
    output: str | None = None,
) -> bool:
    """Record what this successful build (or this all-cached plan, with the text it printed)
    stands on; False (no stamp) when something is too fresh to be trusted by its stat, or the
    cache cannot be written."""
    from mlcbuild.store.fs import atomic_write_bytes

    paths = dict.fromkeys([*_inputs(recipes), *_outputs(graph, report, store, placed)])
    signatures = [(p, _signature(p)) for p in paths]
    fresh = time.time_ns() - RACY_WINDOW_NS
    stamp_file = _stamp_file(store.root, command)
    if any(sig is not None and sig[2] > fresh for _, sig in signatures):
        stamp_file.unlink(missing_ok=True)
        return False
    stamp: dict[str, Any] = {"format": FORMAT, "nodes": len(report.outcomes), "files": len(placed), "paths": signatures}
    if output is not None:
        stamp["output"] = output
    try:
        atomic_write_bytes(stamp_file, json.dumps(stamp, separators=(",", ":")).encode())
    except OSError:
        return False
    return True
