"""Run a built artifact: load a model library with its weights and generate text.

Importing this package must not import TVM (the CLI imports it lazily anyway).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcbuild.errors import UserError
from mlcbuild.runtime.loader import TensorCacheIndex, WeightsMismatchError, check_weights
from mlcbuild.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.runtime.engine import Engine


def __getattr__(name: str) -> Any:
    if name in ("Engine", "chat_prompt"):
        from mlcbuild.runtime import engine

        return getattr(engine, name)
    raise AttributeError(name)


def artifact_paths(recipe: "Recipe", quantization: str | None = None, target: str = "llvm") -> tuple[Path, Path]:
    """(model folder, library path) where `mlcbuild build` puts a recipe's outputs."""
    from mlcbuild.plan.layout import lib_path, model_dir
    from mlcbuild.recipe.model import TargetRef
    from mlcbuild.targets import target_params

    quant = quantization or recipe.quantizations[0]
    if quant not in recipe.quantizations:
        raise UserError(f"quantization {quant} is not in the recipe (it has: {', '.join(recipe.quantizations)})")
    name, _, variant = target.partition(":")
    ref = TargetRef(name, variant or None)
    folder = model_dir(recipe, quant)
    lib = lib_path(recipe, quant, ref, target_params(name, variant or None)["suffix"])
    for path in (folder, lib):
        if not path.exists():
            raise UserError(f"{path} does not exist; run `mlcbuild build {recipe.path}` first")
    return folder, lib


def default_device(target: str) -> str:
    kind = target.partition(":")[0]
    return {"llvm": "cpu"}.get(kind, kind)


def run_recipe(
    recipe: "Recipe",
    prompt: str,
    max_tokens: int = 32,
    quantization: str | None = None,
    target: str = "llvm",
    temperature: float | None = None,
    device: str | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> str:
    """Generate a continuation of `prompt` with a recipe's built artifacts (for `mlcbuild run`)."""
    from mlcbuild.runtime.engine import Engine

    model_dir, lib = artifact_paths(recipe, quantization, target or "llvm")
    engine = Engine.load(model_dir, lib, device=device or default_device(target or "llvm"))
    defaults = engine.sampling_defaults()
    sampling = SamplingParams(
        temperature=defaults.temperature if temperature is None else float(temperature),
        top_p=defaults.top_p if top_p is None else float(top_p),
        seed=seed,
    )
    return engine.generate(prompt, max_tokens=max_tokens, sampling=sampling)


__all__ = [
    "Engine",
    "SamplingParams",
    "TensorCacheIndex",
    "WeightsMismatchError",
    "artifact_paths",
    "check_weights",
    "run_recipe",
]
