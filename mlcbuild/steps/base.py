"""The contract between the planner/executor and one kind of build step.

A step never sees the cache: it gets its inputs as read-only directories and writes its
outputs into an empty directory. The executor hashes, stores and links the results. An output
that is an existing file elsewhere (a local model's weights, an HF cache blob) is named with
`ctx.adopt` instead of copied: the executor stores it by reflink or hard link (store/ingest.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from mlcbuild.store.ingest import SourceFile
from mlcbuild.store.manifest import Manifest

JSON = Any


@dataclass
class RunContext:
    params: Mapping[str, JSON]
    inputs: Mapping[str, Path]
    out: Path
    progress: Callable[[float, str], None] = field(default=lambda fraction, message: None)
    scratch: Path | None = None
    adopter: Callable[[SourceFile], None] | None = None
    """Set by the executor; without one, adopted files are copied into `out` and verified."""

    def adopt(self, rel: str, path: Path, sha256: str | None = None, changed: str = "") -> None:
        """Output file `rel` is the existing file at `path`, whose bytes its source states are
        `sha256` (None: unknown); `changed` is the one-line error if they are not."""
        file = SourceFile(rel, str(path), sha256, changed)
        if self.adopter is not None:
            self.adopter(file)
            return
        import shutil

        from mlcbuild.errors import StepError
        from mlcbuild.store.hashing import sha256_file

        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if sha256 is not None and sha256_file(target) != sha256:
            raise StepError(changed or f"{path} does not hash to {sha256[:12]}")


class Step(ABC):
    """One node kind. Subclasses are registered in `mlcbuild.steps` (`BUILTIN_STEPS`, `register_step`).

    `in_process` steps run in the executor's own process (fake steps in tests, so scheduling is
    tested in milliseconds); real steps run in a spawned child (TVM is not thread-safe).
    """

    kind: ClassVar[str]
    version: ClassVar[str]
    in_process: ClassVar[bool] = False

    def check(self, params: Mapping[str, JSON]) -> None:
        """Plan-time validation (e.g. a missing toolchain); raise UserError."""

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        """What names this node across edits (params and hints; default: all of them).

        The node's history ("why does it run") is keyed by it with the identities of its inputs:
        keep what a user would call the same node after changing a setting or a revision.
        """
        return dict(params)

    def resources(self, params: Mapping[str, JSON], inputs: Mapping[str, Manifest]) -> dict[str, float]:
        """What a worker must offer to run this node (Ray resource names: CPU, memory, toolchain:<tool>)."""
        return {"CPU": 1}

    def toolchain(self, params: Mapping[str, JSON]) -> JSON:
        """Fingerprint of the tools that shape the output; enters the key."""
        return None

    def built_with(self, params: Mapping[str, JSON]) -> JSON:
        """The exact tools that produce the output on this machine, recorded in the action entry
        for provenance, never in the key (which may hold a pinned version instead)."""
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

    def keyable_here(self, params: Mapping[str, JSON]) -> bool:
        """Whether this machine computes the node's true key even when it lacks a tool to run it
        (the tool's version is pinned, or does not enter the key), so another machine (a Ray
        worker with the tool) can build it under that key."""
        return True

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        """Whether this node may have an output file `rel`. An action entry naming any other file
        (from a remote, or the local cache) is a miss (store/entries.py): a poisoned entry never
        places a file the step would not write. Default: any (a step that cannot say)."""
        return True

    @abstractmethod
    def run(self, ctx: RunContext) -> None:
        """Write the outputs into ctx.out."""
