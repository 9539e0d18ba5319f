"""Where a recipe's artifacts land: MLC's output layout, for the planner and the runtime.

A library's file name carries the resolved target id (`cuda-sm_90a`, `llvm-x86_64`): a target
written `cuda` and `cuda:sm_90a` (its default variant) are one build, so they are one file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.targets import ResolvedTarget


def model_dir(recipe: "Recipe", quantization: str) -> Path:
    """`<output>/<name>-<quant>-MLC/`: weights, mlc-chat-config.json, tokenizer files."""
    return Path(recipe.output) / f"{recipe.name}-{quantization}-MLC"


def lib_name(recipe: "Recipe", quantization: str, target: "ResolvedTarget") -> str:
    return f"{recipe.name}-{quantization}-{target.id}.{target.suffix}"


def lib_path(recipe: "Recipe", quantization: str, target: "ResolvedTarget") -> Path:
    """`<output>/libs/<name>-<quant>-<target>-<variant>.<suffix>`."""
    return Path(recipe.output) / "libs" / lib_name(recipe, quantization, target)
