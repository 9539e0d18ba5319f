"""Reading files a user hands us: regular files only, bounded in size, JSON with finite numbers.

A FIFO or a device as a recipe or tokenizer.json must fail at once rather than hang or read
forever, and a malformed file must become one line naming it, so every read of user-supplied
input (recipes, lock files, the JSON files of a model folder) goes through here.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from mlcbuild.errors import Location, MlcbuildError, StepError, UserError

MiB = 1 << 20

ErrorFactory = Callable[[str, "Location | None", "str | None"], MlcbuildError]
"""(message, location, field) -> the error to raise: a UserError by default, `step_error` inside steps."""


def _user_error(message: str, location: Location | None, field: str | None = None) -> MlcbuildError:
    return UserError(message, location, field)


def step_error(message: str, location: Location | None, field: str | None = None) -> MlcbuildError:
    """A StepError that reads like a UserError (file: field: message)."""
    return StepError(str(UserError(message, location, field)))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def regular_file_problem(path: Path | str) -> str | None:
    """Why `path` (symlinks followed) cannot be read as a user file, or None when it is a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a regular file"
    return None


def read_bytes(path: Path | str, shown: str | None = None, limit: int = 16 * MiB, what: str = "file",
               error: ErrorFactory = _user_error) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is one-line `error`.

    Opened non-blocking and checked with fstat, so a FIFO swapped in after a stat cannot hang us.
    """
    where = Location(shown if shown is not None else str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found", where, None) from None
    except IsADirectoryError:
        raise error(f"{what} is a folder, not a regular file", where, None) from None
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror or e}", where, None) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{what} is {_kind(st.st_mode)}, not a regular file", where, None)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise error(f"{what} is {st.st_size} bytes; at most {limit} are accepted", where, None)
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {what}: {e.strerror or e}", where, None) from None
    if len(data) > limit:
        raise error(f"{what} grew past {limit} bytes while being read", where, None)
    return data


def nonfinite_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinity inside `value` ('' for the value itself), or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def read_json(path: Path | str, shown: str | None = None, limit: int = 16 * MiB, what: str | None = None,
              error: ErrorFactory = _user_error, mapping: bool = True) -> Any:
    """A JSON file as data: regular, bounded, UTF-8, finite numbers only, a mapping unless mapping=False."""
    shown = shown if shown is not None else str(path)
    what = what or Path(path).name
    raw = read_bytes(path, shown, limit, what, error)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{what} is not UTF-8 text (byte 0x{raw[e.start]:02x})", Location(shown, line, column), None) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON: {e.msg}", Location(shown, e.lineno, e.colno), None) from None
    except RecursionError:
        raise error(f"{what} nests too deeply", Location(shown), None) from None
    if mapping and not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise error(f"{what} must hold a JSON object, got {kind}", Location(shown), None)
    bad = nonfinite_path(data)
    if bad is not None:
        raise error("NaN and infinities are not allowed", Location(shown), bad or None)
    return data
