"""Target device definitions, loaded from `targets/*.yaml` (one file per target kind)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class Target:
    name: str
    tvm_target: Mapping[str, Any]
    host: Mapping[str, Any] | None
    suffix: str
    toolchain: tuple[str, ...] = ()
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_variant: str | None = None
    description: str = ""
    source: Path | None = None


def targets_dirs() -> list[Path]:
    extra = os.environ.get("MLCBUILD_TARGETS_DIR")
    return [Path(extra)] if extra else [DEFAULT_DIR]


@lru_cache(maxsize=None)
def load_targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for folder in targets_dirs():
        for file in sorted(folder.glob("*.yaml")):
            data = yaml.safe_load(file.read_text()) or {}
            found[data["name"]] = Target(
                name=data["name"],
                tvm_target=data["tvm_target"],
                host=data.get("host"),
                suffix=data["suffix"],
                toolchain=tuple(data.get("toolchain", ())),
                variants=data.get("variants", {}) or {},
                default_variant=data.get("default_variant"),
                description=data.get("description", ""),
                source=file,
            )
    return found
