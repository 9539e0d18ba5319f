"""File and tree hashing, with a stat-trusted index so unchanged files are never re-read.

Like git's index: a file whose (inode, size, mtime, ctime) match the recorded entry keeps its
recorded digest. Entries for files modified within the timestamp granularity of "now" are not
recorded (the racy-git problem), so a same-second edit is never trusted.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlcbuild.store.manifest import sha256_json

CHUNK = 1 << 20
RACY_WINDOW_NS = 2_000_000_000


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK * 4)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class StatIndex:
    """Path -> (signature, digest), persisted as JSON under the cache's index/ folder."""

    path: Path
    entries: dict[str, list]
    dirty: bool = False

    @classmethod
    def open(cls, path: Path) -> "StatIndex":
        try:
            entries = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            entries = {}
        return cls(path, entries)

    def digest(self, file: Path) -> tuple[str, int]:
        file = file.resolve()
        st = file.stat()
        sig = _signature(st)
        entry = self.entries.get(str(file))
        if entry is not None and entry[0] == sig:
            return entry[1], st.st_size
        digest = sha256_file(file)
        if time.time_ns() - st.st_mtime_ns > RACY_WINDOW_NS:
            self.entries[str(file)] = [sig, digest]
            self.dirty = True
        return digest, st.st_size

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, separators=(",", ":")))
        os.replace(tmp, self.path)
        self.dirty = False


def list_tree(root: Path, patterns: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of regular files under root (sorted), optionally filtered by glob."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if name.startswith("."):
                continue
            if patterns is None or any(fnmatch.fnmatch(rel, p) for p in patterns):
                out.append(rel)
    return sorted(out)


def tree_digest(root: Path, files: list[str], index: StatIndex) -> tuple[str, dict[str, str], int]:
    """Digest of a folder's selected files: sha256 over {relpath: file digest}."""
    digests: dict[str, str] = {}
    total = 0
    for rel in files:
        d, size = index.digest(root / rel)
        digests[rel] = d
        total += size
    return sha256_json(digests), digests, total
