"""User-facing errors: one line, no traceback, exit code 2."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class MlcbuildError(Exception):
    """Base class for errors the CLI reports as a single line."""

    exit_code = 1


@dataclass
class Location:
    file: Path | str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [str(self.file)]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


class UserError(MlcbuildError):
    """A mistake in what the user gave us (recipe, flags, files): exit code 2."""

    exit_code = 2

    def __init__(self, message: str, location: Location | None = None, field: str | None = None):
        self.message = message
        self.location = location
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        where = f"{self.field}: " if self.field else ""
        return f"{prefix}{where}{self.message}"


class StepError(MlcbuildError):
    """A build step failed for a reason the user can act on (bad weights, missing repo...)."""

    exit_code = 1
