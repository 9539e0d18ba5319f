"""Where a recipe's artifacts land: MLC's output layout, in one place for the planner and runtime."""
from __future__ import annotations

from pathlib import Path

from mlcbuild.recipe.model import Recipe, TargetRef


def model_dir(recipe: Recipe, quantization: str) -> Path:
    """`<output>/<name>-<quant>-MLC/`: weights, mlc-chat-config.json, tokenizer files."""
    return Path(recipe.output) / f"{recipe.name}-{quantization}-MLC"


def lib_name(recipe: Recipe, quantization: str, target: TargetRef, suffix: str) -> str:
    return f"{recipe.name}-{quantization}-{target.id}.{suffix}"


def lib_path(recipe: Recipe, quantization: str, target: TargetRef, suffix: str) -> Path:
    """`<output>/libs/<name>-<quant>-<target>.<suffix>`."""
    return Path(recipe.output) / "libs" / lib_name(recipe, quantization, target, suffix)
