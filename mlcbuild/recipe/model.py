"""The validated, typed form of a recipe: what the loader returns and the planner consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import Location


@dataclass(frozen=True)
class Source:
    """Either a Hugging Face repo at a revision (branch, tag or sha), or a local folder (absolute)."""

    hf: str | None = None
    revision: str = "main"
    path: Path | None = None

    @property
    def ref(self) -> str | None:
        """`repo@revision`, the lock file's key; None for a local folder."""
        return f"{self.hf}@{self.revision}" if self.hf else None


@dataclass(frozen=True)
class TargetRef:
    """A target as written in a recipe: `llvm`, `cuda` or `cuda:sm_80` (name[:variant])."""

    name: str
    variant: str | None = None

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def __str__(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name


@dataclass(frozen=True)
class Recipe:
    """A recipe after validation. Paths are absolute; `overrides` holds only what the recipe sets;
    `compile_options` is the `compile` section as written (with `opt` defaulted); the planner makes
    every choice explicit per target, so equal meaning gives equal keys."""

    path: Path
    name: str
    source: Source
    quantizations: tuple[str, ...]
    targets: tuple[TargetRef, ...]
    conv_template: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    compile_options: Mapping[str, Any] = field(default_factory=dict)
    output: Path = Path("dist")
    model_type: str | None = None
    smoke: tuple[str, ...] = ()
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, field_name: str) -> Location:
        """Where `field_name` (dotted, e.g. "source.revision" or "targets[1]") is written, for later
        errors; the file as the user named it, like load errors."""
        found = self.locations.get(field_name)
        if found is not None:
            return found
        root = self.locations.get("")
        return Location(root.file if root else self.path)
