"""What mlcbuild placed in an output folder, so it removes only its own files and restores edits.

Each output folder holds a hidden `.mlcbuild-placed.json`: file name -> the digest placed there and
the stat signature the file had right after placing. A file whose signature still matches is known
to be intact without reading it (a no-op build touches nothing); a stale file (no longer part of
the artifact) is removed only when it is ours and unmodified. Files a user added are never touched.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcbuild.store import hashing
from mlcbuild.store.fs import atomic_write_bytes, read_regular
from mlcbuild.store.manifest import is_digest, parse_json
from mlcbuild.store.signatures import signature

RECORD = ".mlcbuild-placed.json"
MAX_RECORD_BYTES = 64 << 20
"""About 200 bytes per placed file: far above any real folder. The record sits in a folder users
edit, so it is read like any file we do not control: a larger, deeply nested or non-regular one
(a FIFO) is no record (every file is then checked against the cache and placed again)."""


@dataclass
class Placed:
    folder: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty: bool = False
    restored: list[str] = field(default_factory=list)
    """Files we placed that someone edited in place, put back by this build (the user is told)."""

    @classmethod
    def load(cls, folder: Path) -> "Placed":
        """The folder's record; none (empty) when it is missing or unreadable."""
        try:
            data = parse_json(read_regular(folder / RECORD, MAX_RECORD_BYTES), MAX_RECORD_BYTES)
        except (OSError, ValueError):
            data = {}
        files = data.get("files") if isinstance(data, dict) else None
        entries = {
            name: e
            for name, e in (files or {}).items()
            if isinstance(e, dict) and is_digest(e.get("digest")) and isinstance(e.get("sig"), list)
        }
        return cls(folder, entries)

    def intact(self, name: str, digest: str, st: os.stat_result) -> bool:
        """The file at `name` is the copy of `digest` we placed and nobody changed it since."""
        entry = self.entries.get(name)
        return entry is not None and entry["digest"] == digest and entry["sig"] == signature(st)

    def note(self, name: str, digest: str, st: os.stat_result) -> None:
        entry = {"digest": digest, "sig": signature(st)}
        if self.entries.get(name) != entry:
            self.entries[name] = entry
            self.dirty = True

    def ours_unmodified(self, name: str) -> bool:
        """Placed by us and unchanged since: stat first, a re-hash only when the stat moved."""
        entry = self.entries.get(name)
        path = self.folder / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            return False
        if entry is None or not path.is_file() or path.is_symlink():
            return False
        if entry["sig"] == signature(st):
            return True
        return hashing.sha256_file(path) == entry["digest"]

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        with contextlib.suppress(FileNotFoundError):
            atomic_write_bytes(self.folder / RECORD, json.dumps({"files": self.entries}, sort_keys=True, indent=1).encode())
        self.dirty = False
