"""Pin every HF source to a commit sha through the recipe's lock file."""
from __future__ import annotations

from mlcbuild.recipe.lock import pinned_revision, read_lock
from mlcbuild.recipe.model import Recipe


def resolve(repo: str, revision: str) -> str:
    """The commit sha `revision` of `repo` points at now (the Hub; the HF cache when offline)."""
    from mlcbuild.hub import resolve_revision

    return resolve_revision(repo, revision)


def pin_revisions(recipes: list[Recipe], frozen: bool, offline: bool = False) -> dict[str, str]:
    """recipe path -> commit sha.

    A missing lock entry is resolved and written (a build), unless frozen (an error) or offline:
    planning, graphs and dry runs never touch the network, and a revision the lock does not pin
    is left out, for the planner to show as unresolved (the build resolves it).
    """
    from mlcbuild.hub import is_commit_sha

    pins: dict[str, str] = {}
    for recipe in recipes:
        src = recipe.source
        if src.hf is None:
            continue
        lock = read_lock(recipe)
        if offline and not frozen and not is_commit_sha(src.revision) and lock.get(src.hf, src.revision) is None:
            continue
        sha = pinned_revision(recipe, lock, frozen=frozen, resolve=None if frozen or offline else resolve)
        if sha is not None:
            pins[str(recipe.path)] = sha
    return pins
