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
            if not p or p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"manifest path {p!r} leaves its folder")
            out[p] = FileEntry(e["digest"], size, e.get("executable") is True)
        return cls(out)

    @property
    def digest(self) -> str:
        return sha256_json(self.to_json())

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files.values())
