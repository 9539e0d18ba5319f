"""What `run`/`chat`/`serve` were given, recognised before anything is parsed: a recipe, a built
model folder (or its mlc-chat-config.json), a model library, a Hugging Face checkpoint folder or a
Hub repo id. What can be loaded is turned into (model folder, library); the rest is one line saying
what to pass instead (never "recipe is 1168032 bytes" for a .so, nor a schema error for a config)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlcbuild.artifact import CHAT_CONFIG
from mlcbuild.artifact.layout import LIBRARY_SUFFIXES, model_dir_of_library
from mlcbuild.errors import UserError

WEB_SUFFIXES = (".wasm", ".tar")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RunSpec:
    """Either a recipe file, or a model folder with the library to load (None: find it beside)."""

    recipe: Path | None = None
    model_dir: Path | None = None
    model_lib: Path | None = None


def resolve_spec(spec: str | Path, model_lib: str | Path | None = None) -> RunSpec:
    """The recipe, or the model folder and library, that `spec` names; a UserError naming what to
    pass instead for anything else."""
    path = Path(spec)
    lib = Path(model_lib) if model_lib else None
    if path.is_dir():
        if (path / CHAT_CONFIG).is_file():
            return RunSpec(model_dir=path, model_lib=lib)
        if (path / "config.json").is_file():
            raise UserError(
                f"{path} is a Hugging Face checkpoint, not a built model: write a recipe for it with "
                f"`mlcbuild init {path} -o recipe.yaml`, `mlcbuild build recipe.yaml`, then run the recipe"
            )
        raise UserError(f"{path} has no {CHAT_CONFIG}; give a recipe file or a built model folder (<name>-<quant>-MLC)")
    if path.name == CHAT_CONFIG and path.is_file():
        return RunSpec(model_dir=path.parent, model_lib=lib)
    if path.suffix in LIBRARY_SUFFIXES and path.is_file():
        if lib is not None:
            raise UserError(f"{path} is a model library and so is --model-lib; give the model folder first: `MODEL_DIR --model-lib {lib}`")
        folder = model_dir_of_library(path)
        if folder is None:
            raise UserError(f"{path} is a model library; give the model folder it was built for, with it: `MODEL_DIR --model-lib {path}`")
        return RunSpec(model_dir=folder, model_lib=path)
    if path.suffix in WEB_SUFFIXES and path.is_file():
        raise UserError(f"{path} is a WebGPU library: load it in a browser with WebLLM; run/chat/serve load .so/.dylib libraries (targets llvm, cuda, metal)")
    if path.suffix == ".json" and path.is_file():
        raise UserError(f"{path} is a JSON file, not a recipe: give a recipe (YAML) or a built model folder (with {CHAT_CONFIG})")
    if not path.exists() and _REPO_ID.match(str(spec)) and path.suffix not in (".yaml", ".yml"):
        raise UserError(
            f"{spec} is not a file here; as a Hugging Face repo id, write a recipe for it with "
            f"`mlcbuild init {spec} -o recipe.yaml`, `mlcbuild build recipe.yaml`, then run the recipe"
        )
    if lib is not None:
        raise UserError("--model-lib goes with a built model folder, not a recipe", field="--model-lib")
    return RunSpec(recipe=path)
