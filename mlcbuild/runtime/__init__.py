"""Run a built artifact: load a model library with its weights and generate text.

Importing this package must not import TVM (the CLI imports it lazily anyway).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcbuild.artifact.layout import find_library
from mlcbuild.artifact.tensor_cache import TensorCacheIndex
from mlcbuild.errors import Location, UserError
from mlcbuild.runtime.loader import WeightsMismatchError, check_weights
from mlcbuild.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.runtime.engine import Engine
    from mlcbuild.targets import ResolvedTarget
    from mlcbuild.runtime.llm_engine import LLMEngine


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from mlcbuild.runtime import engine

        return getattr(engine, name)
    if name == "LLMEngine":
        from mlcbuild.runtime.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(name)


def recipe_target(recipe: "Recipe", target: str | None = None) -> "ResolvedTarget":
    """The recipe's target that `target` (`cuda`, `cuda:sm_90a`; default llvm, else the first) names.

    `cuda` and `cuda:sm_90a` are the same target when sm_90a is cuda's default variant; a target the
    recipe does not build is a UserError listing the ones it does.
    """
    from mlcbuild.targets import resolve_target

    built = [resolve_target(ref.name, ref.variant) for ref in recipe.targets]
    if not built:
        raise UserError("the recipe builds no model library (targets is empty)", Location(recipe.path), field="targets")
    if target is None:
        return next((t for t in built if t.name == "llvm"), built[0])
    name, _, variant = target.partition(":")
    same = [t for t in built if t.name == name]
    if variant or not same:
        match = [t for t in same if t.variant == variant]
    else:
        default = resolve_target(name).variant
        match = [t for t in same if t.variant == default] or (same if len(same) == 1 else [])
    if match:
        return match[0]
    have = ", ".join(str(ref) for ref in recipe.targets)
    raise UserError(f"the recipe has no target {target} (it has: {have})", Location(recipe.path), field="targets")


def artifact_paths(recipe: "Recipe", quantization: str | None = None, target: str | None = None) -> tuple[Path, Path]:
    """(model folder, library path) where `mlcbuild build` puts a recipe's outputs."""
    from mlcbuild.artifact.layout import lib_path, model_dir

    quant = quantization or recipe.quantizations[0]
    if quant not in recipe.quantizations:
        have = ", ".join(recipe.quantizations)
        raise UserError(f"the recipe has no quantization {quant} (it has: {have})", Location(recipe.path), field="quantizations")
    resolved = recipe_target(recipe, target)
    folder = model_dir(recipe, quant)
    lib = lib_path(recipe, quant, resolved)
    for path in (folder, lib):
        if not path.exists():
            raise UserError(f"{path} does not exist; run `mlcbuild build {recipe.path}` first")
    return folder, lib


def default_device(target: str) -> str:
    kind = target.partition(":")[0]
    return {"llvm": "cpu"}.get(kind, kind)


def open_engine(
    spec: str | Path,
    quantization: str | None = None,
    target: str | None = None,
    device: str | None = None,
    model_lib: str | Path | None = None,
) -> "LLMEngine":
    """An LLMEngine from a recipe file (its built outputs) or an artifact folder (+ its library)."""
    from mlcbuild.runtime.llm_engine import LLMEngine
    from mlcbuild.runtime.spec import resolve_spec

    given = resolve_spec(spec, model_lib)
    if given.model_dir is not None:
        lib = given.model_lib or find_library(given.model_dir, target)
        return LLMEngine.load(given.model_dir, lib, device or (default_device(target) if target else None))
    from mlcbuild.recipe.load import load_recipe

    assert given.recipe is not None
    return LLMEngine.from_recipe(load_recipe(given.recipe), quantization, target, device)


def run_recipe(
    recipe: "Recipe",
    prompt: str,
    max_tokens: int = 32,
    quantization: str | None = None,
    target: str | None = None,
    temperature: float | None = None,
    device: str | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    raw: bool = True,
) -> str:
    """Generate text with a recipe's built artifacts: a raw continuation, or (raw=False) one chat turn."""
    from mlcbuild.runtime.llm_engine import LLMEngine

    with LLMEngine.from_recipe(recipe, quantization, target, device) as engine:
        sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
        if raw:
            return engine.completions.create(prompt, max_tokens=max_tokens, **sampling).choices[0].text
        messages = [{"role": "user", "content": prompt}]
        return engine.chat.completions.create(messages, max_tokens=max_tokens, **sampling).choices[0].message.content


__all__ = [
    "Engine",
    "LLMEngine",
    "open_engine",
    "SamplingParams",
    "TensorCacheIndex",
    "WeightsMismatchError",
    "artifact_paths",
    "check_weights",
    "recipe_target",
    "run_recipe",
]
