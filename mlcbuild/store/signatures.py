"""Stat signatures of cache objects, so a use of an object costs one stat, not a re-hash.

An object's signature (inode, size, mtime_ns, ctime_ns) is recorded when the store writes it and
whenever it re-hashes it and finds it intact. Any write to the file changes mtime and ctime, and
ctime cannot be set back from user space (os.utime restores mtime, never ctime), so an object whose
stat still matches its signature holds the bytes it was stored with. A mismatch is not proof of
corruption (a hard link made or removed elsewhere also moves ctime): it means "re-hash before
trusting". What this cheap check cannot see: a write within the same clock tick as the recording
(milliseconds) or raw block-device edits; `mlcbuild cache verify` re-hashes every object and finds those.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlcbuild.store.fs import atomic_write_bytes


def signature(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class ObjectSignatures:
    """digest -> signature, persisted as one JSON file; concurrent builds merge on save."""

    path: Path
    entries: dict[str, list[int]] = field(default_factory=dict)
    changes: dict[str, list[int] | None] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "ObjectSignatures":
        return cls(path, _read(path))

    def matches(self, digest: str, st: os.stat_result) -> bool:
        return self.entries.get(digest) == signature(st)

    def record(self, digest: str, st: os.stat_result) -> None:
        sig = signature(st)
        if self.entries.get(digest) != sig:
            self.entries[digest] = sig
            self.changes[digest] = sig

    def forget(self, digest: str) -> None:
        if self.entries.pop(digest, None) is not None or digest in self.changes:
            self.changes[digest] = None

    def save(self) -> None:
        """Merge this process's changes into the file. Best effort: a lost entry only costs a
        re-hash later, so a read-only or full cache is not an error here."""
        if not self.changes:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                merged = _read(self.path)
                for digest, sig in self.changes.items():
                    if sig is None:
                        merged.pop(digest, None)
                    else:
                        merged[digest] = sig
                atomic_write_bytes(self.path, json.dumps(merged, separators=(",", ":")).encode())
            self.entries = merged
            self.changes = {}


def _read(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, list)}
