"""An output manifest: relative path -> (digest, size). Its digest identifies a node's output."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


MAX_JSON_DEPTH = 64
"""Deeper than any entry, manifest or record mlcbuild writes (about 8), far below Python's recursion limit."""


def parse_json(data: bytes | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON that came from outside this process (a remote, a cache file): a ValueError saying why
    when it is larger than max_bytes or nested deeper than max_depth, never a RecursionError."""
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason})") from None
    levels = [iter(_children(value))]
    while levels:
        for child in levels[-1]:
            if isinstance(child, (dict, list)):
                if len(levels) >= max_depth:
                    raise ValueError(f"nested deeper than {max_depth} levels")
                levels.append(iter(_children(child)))
                break
        else:
            levels.pop()
    return value


def _children(value: Any) -> Any:
    return value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()


NAME_MAX = 255
PATH_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(rel: Any) -> str | None:
    """Why `rel` cannot be a file of an output folder (None: it can): it must be a relative path
    inside the folder, each part a name every POSIX file system takes (no NUL or control character,
    at most 255 bytes), so placing it never fails or lands elsewhere."""
    if not isinstance(rel, str) or not rel:
        return f"manifest path {rel!r} is empty or not a string"
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts:
        return f"manifest path {rel!r} leaves its folder"
    if "\\" in rel or any(p in ("", ".") for p in parts):
        return f"manifest path {rel!r} is not a plain relative path"
    if _CONTROL.search(rel):
        return f"manifest path {rel!r} holds a control character"
    try:
        encoded = [p.encode() for p in parts]
    except UnicodeEncodeError:
        return f"manifest path {rel!r} is not valid UTF-8"
    if any(len(p) > NAME_MAX for p in encoded) or sum(len(p) + 1 for p in encoded) > PATH_MAX:
        return f"manifest path {rel[:40]!r}... is longer than a file system allows"
    return None


_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: Any) -> bool:
    """A lowercase hex sha256, as object names and action keys are."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


@dataclass(frozen=True)
class FileEntry:
    digest: str
    size: int
    executable: bool = False


@dataclass(frozen=True)
class Manifest:
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": {
                p: {"digest": e.digest, "size": e.size, **({"executable": True} if e.executable else {})}
                for p, e in sorted(self.files.items())
            }
        }

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        """Parse a stored manifest; anything malformed is a ValueError (the entry is then a miss)."""
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise ValueError("manifest has no 'files' mapping")
        out: dict[str, FileEntry] = {}
        for p, e in files.items():
            if not isinstance(e, dict) or not is_digest(e.get("digest")):
                raise ValueError(f"manifest entry {p!r} has no sha256 digest")
            size = e.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"manifest entry {p!r} has no valid size")
            problem = path_problem(p)
            if problem:
                raise ValueError(problem)
            out[p] = FileEntry(e["digest"], size, e.get("executable") is True)
        folders = {p.rsplit("/", i)[0] for p in out for i in range(1, p.count("/") + 1)}
        clash = sorted(folders & out.keys())
        if clash:
            raise ValueError(f"manifest path {clash[0]!r} is both a file and a folder")
        return cls(out)

    @property
    def digest(self) -> str:
        return sha256_json(self.to_json())

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files.values())
