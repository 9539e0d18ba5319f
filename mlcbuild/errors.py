"""Errors the CLI reports as one line (UserError: exit 2, StepError: exit 1), and `redact`, which
every line that may hold a URL passes through, so credentials never reach a terminal or a log."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
_SECRET_PARAM = re.compile(
    r"([?&;](?:[A-Za-z0-9_-]*token|api[_-]?key|apikey|key|password|passwd|pwd|secret|sig|signature|auth|"
    r"authorization|credential|x-amz-[a-z-]+)=)[^&;\s#'\"]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")


def print_warning(message: str) -> None:
    """A warning line on stderr, where no reporter draws one (library callers, the remote cache)."""
    print(f"mlcbuild: warning: {message}", file=sys.stderr, flush=True)


def redact(text: str) -> str:
    """`text` with URL credentials (user:password@, token-like query values, bearer and HF tokens) masked."""
    if not text:
        return text
    text = _USERINFO.sub(r"\1***@", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    text = _BEARER.sub(r"\1 ***", text)
    return _HF_TOKEN.sub("hf_***", text)


_factory_installed = False


def redact_logs() -> None:
    """Redact every log record of this process from now on (huggingface_hub and its HTTP client log
    URLs); installed once, as a record factory so records of every logger and handler pass through it."""
    global _factory_installed
    if _factory_installed:
        return
    import logging

    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def describe(value: Any) -> str:
    """How a value reads in an error: kind first, then the value."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


class MlcbuildError(Exception):
    """Base class for errors the CLI reports as a single line (credentials redacted)."""

    exit_code = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(str(message)))


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
        return redact(f"{prefix}{where}{self.message}")


class StepError(MlcbuildError):
    """A build step failed for a reason the user can act on (bad weights, missing repo...)."""

    exit_code = 1
