"""The contract between the planner/executor and one kind of build step.

A step never sees the cache: it gets its inputs as read-only directories and writes its
outputs into an empty directory. The executor hashes, stores and links the results.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from mlcbuild.store.manifest import Manifest

JSON = Any


@dataclass
class RunContext:
    params: Mapping[str, JSON]
    inputs: Mapping[str, Path]
    out: Path
    progress: Callable[[float, str], None] = field(default=lambda fraction, message: None)
    scratch: Path | None = None


class Step(ABC):
    """One node kind. Subclasses are registered in `mlcbuild.steps.STEPS`."""

    kind: ClassVar[str]
    version: ClassVar[str]
    resources: ClassVar[Mapping[str, float]] = {"cpu": 1}

    def check(self, params: Mapping[str, JSON]) -> None:
        """Plan-time validation (e.g. a missing toolchain); raise UserError."""

    def toolchain(self, params: Mapping[str, JSON]) -> JSON:
        """Fingerprint of the tools that shape the output; enters the key."""
        return None

    def view(self, role: str, manifest: Manifest, read: Callable[[str], bytes]) -> JSON:
        """What of an input's output enters this step's key (default: all of it).

        Narrowing the view is how compile ignores weights and sampling fields.
        """
        return manifest.digest

    def unavailable(self, params: Mapping[str, JSON]) -> str | None:
        """What this machine lacks to run the step (a toolchain), else None.

        Information, not an error: the plan still shows the node, and the matrix sends it to a
        machine that has the tool.
        """
        return None

    @abstractmethod
    def run(self, ctx: RunContext) -> None:
        """Write the outputs into ctx.out."""
