"""An output manifest: relative path -> (digest, size). Its digest identifies a node's output."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


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
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        return cls(
            {
                p: FileEntry(e["digest"], e["size"], bool(e.get("executable", False)))
                for p, e in data["files"].items()
            }
        )

    @property
    def digest(self) -> str:
        return sha256_json(self.to_json())

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files.values())
