"""The content-addressed store. The cache root is known here, without importing the store itself,
so that the CLI's stat-only no-op check (execute/noop.py) imports nothing heavy.

Where the cache lives (the first that applies):
1. `--cache-dir` or `$MLCBUILD_CACHE_DIR`;
2. the project's cache, `<root>/cache`: the root is the nearest folder, from the recipe's own folder
   upward, that holds `.mlcbuild` (file or folder) or `.git` (as git and DVC find theirs), so a
   recipe is built into the same cache from whatever folder the command runs in. A project cache
   mlcbuild creates holds a `.gitignore` of `*` (as .pytest_cache does), so git never sees it;
3. the user cache, `${XDG_CACHE_HOME:-~/.cache}/mlcbuild` (as Bazel and huggingface_hub keep theirs).
A command without recipes (`cache ls`, `cache gc`, ...) looks upward from the current folder instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ENV_CACHE_DIR = "MLCBUILD_CACHE_DIR"
PROJECT_MARKERS = (".mlcbuild", ".git")
PROJECT_CACHE = "cache"


@dataclass(frozen=True)
class CacheHome:
    path: Path
    why: str
    """Which rule chose it, as `plan` prints it."""
    project: bool = False
    """Found from a project marker (`<root>/cache`)."""


def project_root(start: Path) -> tuple[Path, str] | None:
    """The nearest folder at or above `start` holding a project marker, and that marker."""
    folder = start.absolute()
    for candidate in (folder, *folder.parents):
        for marker in PROJECT_MARKERS:
            if os.path.lexists(candidate / marker):
                return candidate, marker
    return None


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlcbuild"


def _home_from(start: Path) -> CacheHome:
    found = project_root(start)
    if found is None:
        return CacheHome(user_cache_dir(), "user cache: no .mlcbuild or .git above " + str(start.absolute()))
    root, marker = found
    return CacheHome(root / PROJECT_CACHE, f"project cache of {root} (has {marker})", project=True)


def cache_home(recipes: Sequence[Path | str] = ()) -> CacheHome:
    """The cache for these recipe files (see the module docstring). Recipes in different projects
    have no one home: a UserError saying so."""
    given = os.environ.get(ENV_CACHE_DIR)
    if given:
        return CacheHome(Path(given), f"--cache-dir / ${ENV_CACHE_DIR}")
    if not recipes:
        return _home_from(Path.cwd())
    homes = {str(Path(r).absolute()): _home_from(Path(r).absolute().parent) for r in recipes}
    distinct = {h.path for h in homes.values()}
    if len(distinct) > 1:
        listed = ", ".join(f"{r} → {h.path}" for r, h in homes.items())
        from mlcbuild.errors import UserError

        raise UserError(f"these recipes belong to different caches ({listed}); pass --cache-dir to pick one")
    return next(iter(homes.values()))


def default_cache_dir(recipes: Sequence[Path | str] = ()) -> Path:
    return cache_home(recipes).path


def open_cache_dir(recipes: Sequence[Path | str] = ()) -> Path:
    """`default_cache_dir`, creating a project cache that git ignores when there is none yet (the
    store creates everything else it needs on first write)."""
    home = cache_home(recipes)
    if home.project and not home.path.exists():
        try:
            home.path.mkdir(parents=True)
            (home.path / ".gitignore").write_text("# made by mlcbuild: the build cache is never committed\n*\n")
        except OSError:
            pass
    return home.path
