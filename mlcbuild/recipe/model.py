"""The validated, typed form of a recipe: what the loader returns and the planner consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Source:
    """Either a Hugging Face repo pinned to a revision, or a local folder."""

    hf: str | None = None
    revision: str = "main"
    path: Path | None = None


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
