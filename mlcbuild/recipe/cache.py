"""Validated recipes, cached by the bytes they were validated from.

A no-op build must not parse YAML or import jsonschema. The key covers everything validation
reads: the recipe's bytes, path and the directory it was named from, its lock file, the target
definitions, $HOME (for `~` in paths) and mlcbuild's own code (by the stat of its .py files and the
schema). What validation checks on the file system beyond those (a local source folder with
config.json) is re-checked on every hit. The entry is JSON (never pickle: the cache folder may be
shared), written atomically; an unreadable or foreign entry is a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlcbuild.errors import Location
from mlcbuild.recipe.model import Recipe, Source, TargetRef

FORMAT = 2
FOLDER = "recipes"
_PACKAGE = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def _code_fingerprint() -> str:
    """mlcbuild's code and data, by stat: a new registry entry or schema must invalidate every entry."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(_PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".json", ".yaml")):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{os.path.relpath(os.path.join(dirpath, name), _PACKAGE)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


def cache_key(path: Path, raw: bytes) -> str:
    """The key of the validated form of the recipe at `path` whose bytes are `raw`."""
    from mlcbuild.recipe.lock import lock_path

    h = hashlib.sha256()

    def part(label: str, data: bytes | None) -> None:
        h.update(f"{label}:{-1 if data is None else len(data)}:".encode())
        h.update(data or b"")

    part("format", str(FORMAT).encode())
    part("code", _code_fingerprint().encode())
    part("shown", str(path).encode())
    part("cwd", os.getcwd().encode())
    part("home", os.path.expanduser("~").encode())
    part("recipe", raw)
    part("lock", _file_bytes(lock_path(path.absolute())))
    from mlcbuild.targets import targets_dirs

    for folder in targets_dirs():
        part("targets", str(folder).encode())
        for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            part(file.name, _file_bytes(file))
    return h.hexdigest()


def to_json(recipe: Recipe) -> dict[str, Any]:
    src = recipe.source
    return {
        "format": FORMAT,
        "path": str(recipe.path),
        "name": recipe.name,
        "source": {"hf": src.hf, "revision": src.revision, "path": str(src.path) if src.path else None},
        "quantizations": list(recipe.quantizations),
        "targets": [[t.name, t.variant] for t in recipe.targets],
        "conv_template": recipe.conv_template,
        "overrides": dict(recipe.overrides),
        "compile_options": dict(recipe.compile_options),
        "output": str(recipe.output),
        "model_type": recipe.model_type,
        "smoke": list(recipe.smoke),
        "locations": {k: [str(v.file), v.line, v.column] for k, v in recipe.locations.items()},
    }


def from_json(data: dict[str, Any]) -> Recipe:
    src = data["source"]
    return Recipe(
        path=Path(data["path"]),
        name=data["name"],
        source=Source(hf=src["hf"], revision=src["revision"], path=Path(src["path"]) if src["path"] else None),
        quantizations=tuple(data["quantizations"]),
        targets=tuple(TargetRef(name, variant) for name, variant in data["targets"]),
        conv_template=data["conv_template"],
        overrides=dict(data["overrides"]),
        compile_options=dict(data["compile_options"]),
        output=Path(data["output"]),
        model_type=data["model_type"],
        smoke=tuple(data["smoke"]),
        locations={k: Location(f, line, col) for k, (f, line, col) in data["locations"].items()},
    )


def _still_valid(recipe: Recipe) -> bool:
    """What validation checked on disk outside the key: a local source folder holding config.json."""
    return recipe.source.path is None or (recipe.source.path / "config.json").is_file()


def _entry(cache_dir: Path, recipe_path: Path, key: str) -> Path:
    """`recipes/<recipe id>-<key>.json`: the id lets a new entry replace the recipe's older ones."""
    rid = hashlib.sha256(str(recipe_path.absolute()).encode()).hexdigest()[:16]
    return cache_dir / FOLDER / f"{rid}-{key}.json"


def get(cache_dir: Path, recipe_path: Path, key: str) -> Recipe | None:
    try:
        data = json.loads(_entry(cache_dir, recipe_path, key).read_bytes())
        if data.get("format") != FORMAT:
            return None
        recipe = from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return recipe if _still_valid(recipe) else None


def put(cache_dir: Path, recipe_path: Path, key: str, recipe: Recipe) -> None:
    """Store the entry and drop the recipe's older ones (one entry per recipe file). Best effort:
    a read-only or full cache only costs the next load a validation."""
    from mlcbuild.store.fs import atomic_write_bytes

    entry = _entry(cache_dir, recipe_path, key)
    try:
        atomic_write_bytes(entry, json.dumps(to_json(recipe), sort_keys=True).encode())
        for old in entry.parent.glob(entry.name.split("-")[0] + "-*.json"):
            if old != entry:
                old.unlink(missing_ok=True)
    except OSError:
        pass
