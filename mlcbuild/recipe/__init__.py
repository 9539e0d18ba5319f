"""Recipes: YAML → validated `Recipe` (load.py), lock files pinning HF revisions (lock.py)."""
from __future__ import annotations

from mlcbuild.recipe.model import Recipe, Source, TargetRef

__all__ = ["Recipe", "Source", "TargetRef", "load_recipe"]


def __getattr__(name: str):
    if name == "load_recipe":
        from mlcbuild.recipe.load import load_recipe

        return load_recipe
    raise AttributeError(name)
