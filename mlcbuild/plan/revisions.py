"""Pin every HF source to a commit sha through the recipe's lock file."""
from __future__ import annotations

from mlcbuild.recipe.lock import pinned_revision
from mlcbuild.recipe.model import Recipe


def _resolve(repo: str, revision: str) -> str:
    from mlcbuild.hub import resolve_revision

    return resolve_revision(repo, revision)


def pin_revisions(recipes: list[Recipe], frozen: bool) -> dict[str, str]:
    """recipe path -> commit sha; a missing lock entry is resolved and written unless frozen."""
    pins: dict[str, str] = {}
    for recipe in recipes:
        sha = pinned_revision(recipe, frozen=frozen, resolve=None if frozen else _resolve)
        if sha is not None:
            pins[str(recipe.path)] = sha
    return pins
