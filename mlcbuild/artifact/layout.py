"""Where a recipe's artifacts land: MLC's output layout, both ways, for the planner, placement,
provenance and the runtime.

artifact → path: `model_dir`, `lib_path` (the planner records the result in `plan.graph.Artifact`
with what it is, so nothing downstream parses a path). path → artifact: `artifact_of` (a placed
file's artifact), `provenance_path` and `envelope_path` (the statement and signature beside an
artifact) and back (`artifact_of_statement`), `find_library` (a model folder's library) and back
(`model_dir_of_library`), and whether a name in an output folder is one of a recipe's artifacts
(`is_model_dir_name`, `is_library_name`). A library's file name carries the resolved target id (`cuda-sm_90a`,
`llvm-x86_64`): a target written `cuda` and `cuda:sm_90a` (its default variant) are one build, so
they are one file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from mlcbuild.artifact.names import CHAT_CONFIG, MODEL_SUFFIX
from mlcbuild.errors import UserError

LIBS = "libs"
LIBRARY_SUFFIXES: tuple[str, ...] = (".so", ".dylib", ".dll")
PROVENANCE_SUFFIX = ".provenance.json"
ENVELOPE_SUFFIX = ".provenance.dsse.json"

if TYPE_CHECKING:
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.targets import ResolvedTarget


def model_dir(recipe: "Recipe", quantization: str) -> Path:
    """`<output>/<name>-<quant>-MLC/`: weights, mlc-chat-config.json, tokenizer files."""
    return Path(recipe.output) / f"{recipe.name}-{quantization}{MODEL_SUFFIX}"


def lib_name(recipe: "Recipe", quantization: str, target: "ResolvedTarget") -> str:
    return f"{recipe.name}-{quantization}-{target.id}.{target.suffix}"


def lib_path(recipe: "Recipe", quantization: str, target: "ResolvedTarget") -> Path:
    """`<output>/libs/<name>-<quant>-<target>-<variant>.<suffix>`."""
    return Path(recipe.output) / LIBS / lib_name(recipe, quantization, target)


def artifact_of(placed: Path) -> Path:
    """The artifact a placed file belongs to: a library is its own, a model folder's file its folder."""
    return placed if placed.parent.name == LIBS else placed.parent


def provenance_path(artifact: Path) -> Path:
    """`dist/x-q4f16_1-MLC` → `dist/x-q4f16_1-MLC.provenance.json`; `lib.so` → `lib.so.provenance.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + PROVENANCE_SUFFIX)


def find_library(model_dir: Path, target: str | None = None) -> Path:
    """The library `mlcbuild build` put beside a model folder (`../libs/<name>-<quant>-<target>*`)."""
    stem = model_dir.name.removesuffix(MODEL_SUFFIX)
    libs = model_dir.parent / LIBS
    want = (target or "llvm").replace(":", "-")
    found = sorted(p for p in libs.glob(f"{stem}-{want}*") if p.suffix in LIBRARY_SUFFIXES)
    if not found:
        raise UserError(f"no {want} library for {model_dir.name} in {libs}; pass --model-lib PATH", field="--model-lib")
    return found[0]


def envelope_path(artifact: Path) -> Path:
    """`dist/x-q4f16_1-MLC` → `dist/x-q4f16_1-MLC.provenance.dsse.json` (the signed envelope)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ENVELOPE_SUFFIX)


def artifact_of_statement(path: Path) -> Path | None:
    """`dist/x-q4f16_1-MLC.provenance.json` → `dist/x-q4f16_1-MLC`; None for any other file (a
    signature envelope included)."""
    path = Path(path)
    if not path.name.endswith(PROVENANCE_SUFFIX) or path.name.endswith(ENVELOPE_SUFFIX):
        return None
    return path.with_name(path.name[: -len(PROVENANCE_SUFFIX)])


def model_dir_of_library(lib: Path) -> Path | None:
    """The one built model folder beside `libs/` whose name the library's name starts with
    (`dist/libs/x-q4f16_1-llvm-x86_64.so` → `dist/x-q4f16_1-MLC`), or None when none or several."""
    if lib.parent.name != LIBS:
        return None
    found = [
        d
        for d in lib.parent.parent.iterdir()
        if d.is_dir() and (d / CHAT_CONFIG).is_file() and lib.name.startswith(d.name.removesuffix(MODEL_SUFFIX) + "-")
    ]
    return found[0] if len(found) == 1 else None


def is_model_dir_name(name: str, recipe_name: str, quantizations: Iterable[str]) -> bool:
    """Whether `name` is the recipe's model folder (`<name>-<quant>-MLC`) for one of `quantizations`."""
    return any(name == f"{recipe_name}-{q}{MODEL_SUFFIX}" for q in quantizations)


def is_library_name(name: str, recipe_name: str, quantizations: Iterable[str]) -> bool:
    """Whether `name`, a file in `libs/`, is one of the recipe's libraries (`<name>-<quant>-<target>...`)
    for one of `quantizations`, whatever its target."""
    return "/" not in name and any(
        name.startswith(prefix) and len(name) > len(prefix) for prefix in (f"{recipe_name}-{q}-" for q in quantizations)
    )
