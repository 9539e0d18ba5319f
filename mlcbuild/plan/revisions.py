"""Pin every HF source to a commit sha through the recipe's lock file."""
from __future__ import annotations

from mlcbuild.recipe.lock import pinned_revision, read_lock, update_lock
from mlcbuild.recipe.model import Recipe


def pin_revisions(recipes: list[Recipe], frozen: bool) -> dict[str, str]:
    """recipe path -> commit sha; resolves and writes the lock only when it lacks an entry."""
    pins: dict[str, str] = {}
    for recipe in recipes:
        if recipe.source.hf is None:
            continue
        lock = read_lock(recipe)
        sha = pinned_revision(recipe, lock, frozen=frozen)
        if sha is None:
            from mlcbuild.hub import resolve_revision

            lock, _ = update_lock(recipe, resolve_revision)
            sha = pinned_revision(recipe, lock, frozen=True)
        pins[str(recipe.path)] = sha
    return pins
