"""File and tree hashing, with a stat-trusted index so unchanged files are never re-read.

Like git's index: a file whose (inode, size, mtime, ctime) match the recorded entry keeps its
recorded digest. Entries for files modified within the timestamp granularity of "now" are not
recorded (the racy-git problem), so a same-second edit is never trusted.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mlcbuild.store.manifest import sha256_json

CHUNK = 4 << 20
RACY_WINDOW_NS = 2_000_000_000
PIPELINE_MIN_BYTES = 16 << 20
"""Below this a file is read and hashed in one thread: a helper thread costs more than it saves."""


def sha256_file(path: Path | str) -> str:
    return file_digest(path, "sha256")


def md5_file(path: Path | str) -> str:
    """MLC's shard checksum (tensor-cache.json's md5sum)."""
    return file_digest(path, "md5")


def file_digest(path: Path | str, algorithm: str) -> str:
    """A file's digest. Large files are read on a helper thread while this one hashes, so a cold
    read and the hashing overlap (both release the GIL). Only a regular file is read: a FIFO or a
    device there is an OSError, found without blocking (O_NONBLOCK, then fstat)."""
    h = hashlib.new(algorithm)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with open(fd, "rb", buffering=0) as f:
        if st.st_size < PIPELINE_MIN_BYTES:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
            return h.hexdigest()
        free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        full: queue.SimpleQueue[tuple[bytearray, int] | BaseException | None] = queue.SimpleQueue()
        for _ in range(3):
            free.put(bytearray(CHUNK))

        def read() -> None:
            try:
                while True:
                    buf = free.get()
                    n = f.readinto(buf)
                    if not n:
                        full.put(None)
                        return
                    full.put((buf, n))
            except BaseException as e:  # handed to the hashing thread, which raises it
                full.put(e)

        reader = threading.Thread(target=read, name="sha256-read", daemon=True)
        reader.start()
        try:
            while (item := full.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                buf, n = item
                h.update(memoryview(buf)[:n])
                free.put(buf)
        finally:
            reader.join()
    return h.hexdigest()


def sha256_files(paths: Sequence[Path | str], workers: int | None = None) -> list[str]:
    """Digests of several files, hashed concurrently (a checkpoint's shards in parallel)."""
    return file_digests(paths, sha256_file, workers)


def file_digests(paths: Sequence[Path | str], hash_file: Callable[[Path | str], str], workers: int | None = None) -> list[str]:
    """`hash_file` of each path, on a few threads (hashlib and reads release the GIL)."""
    if len(paths) <= 1:
        return [hash_file(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(paths), workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        return list(pool.map(hash_file, paths))


def _signature(st: os.stat_result) -> list[int | None]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class StatIndex:
    """Path -> (signature, digest), persisted as JSON under the cache's index/ folder."""

    path: Path
    entries: dict[str, list]
    dirty: bool = False
    hash_file: Callable[[Path], str] | None = None
    """None = sha256; md5 for MLC's shard checksums."""

    @classmethod
    def open(cls, path: Path, hash_file: Callable[[Path], str] | None = None) -> "StatIndex":
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            entries = {}
        if not isinstance(entries, dict):
            entries = {}
        return cls(path, entries, hash_file=hash_file)

    def digest(self, file: Path) -> tuple[str, int]:
        return self.digests([file])[0]

    def digests(self, files: Sequence[Path]) -> list[tuple[str, int]]:
        """(digest, size) of each file: recorded ones trusted by stat, the rest hashed in parallel."""
        resolved = [f.resolve() for f in files]
        stats = [f.stat() for f in resolved]
        out: list[tuple[str, int] | None] = [None] * len(files)
        misses: list[int] = []
        for i, (file, st) in enumerate(zip(resolved, stats)):
            known = self.known(file, st)
            if known is not None:
                out[i] = (known, st.st_size)
            else:
                misses.append(i)
        now = time.time_ns()
        todo = [resolved[i] for i in misses]
        digests = file_digests(todo, self.hash_file) if self.hash_file else sha256_files(todo)
        for i, digest in zip(misses, digests):
            out[i] = (digest, stats[i].st_size)
            self.note(resolved[i], stats[i], digest, now)
        return out  # type: ignore[return-value]

    def known(self, file: Path, st: os.stat_result) -> str | None:
        """The digest recorded for `file` (a resolved path) if its stat is still the one it was
        hashed with: what lets the store ingest a file by the digest planning computed."""
        entry = self.entries.get(str(file))
        return entry[1] if entry is not None and entry[0] == _signature(st) else None

    def note(self, file: Path, st: os.stat_result, digest: str, now: int | None = None) -> None:
        """Record `digest` as the content of `file` when it had stat `st` (taken at `now`, before
        hashing); a racy stat (modified within the timestamp granularity of then) is recorded
        with no ctime, which no later stat matches: never trusted, yet the path of that inode is
        known (`cache verify` names a user's edited hard-linked file by it)."""
        signature = _signature(st)
        if (now or time.time_ns()) - st.st_mtime_ns <= RACY_WINDOW_NS:
            signature[3] = None
        self.entries[str(file)] = [signature, digest]
        self.dirty = True

    def restat(self, st: os.stat_result, digest: str) -> None:
        """Files that are the inode `st` describes and whose recorded bytes (size, mtime) did not
        move: take the new ctime. For a hard-linked source whose link count the cache changed."""
        for path, (sig, recorded) in list(self.entries.items()):
            if recorded == digest and sig[:3] == [st.st_ino, st.st_size, st.st_mtime_ns] and sig[3] not in (None, st.st_ctime_ns):
                self.entries[path] = [_signature(st), digest]
                self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        from mlcbuild.store.fs import atomic_write_bytes

        atomic_write_bytes(self.path, json.dumps(self.entries, separators=(",", ":")).encode())
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
    results = index.digests([root / rel for rel in files])
    digests = {rel: d for rel, (d, _) in zip(files, results)}
    total = sum(size for _, size in results)
    return sha256_json(digests), digests, total
