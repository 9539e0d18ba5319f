"""The local content-addressed store: objects by digest plus an action cache by key.

Layout under the cache root:
    objects/ab/<sha256>    immutable, read-only file contents
    ac/ab/<key>.json       action results: the output manifest and how it was made
    nodes/<identity>.json  a node's last build: key, preimage, duration (execute/decision.py)
    index/objects.json     each object's stat signature (see signatures.py)
    locks/<key>.lock       per-key flock, so concurrent builds never do one node twice
    locks/gc.lock          every process using the cache holds it shared; `cache gc` takes it exclusive
    tmp/                   work directories, each flocked by the build using it
    quarantine/            objects found modified or corrupt, moved aside (gc deletes them)
    logs/<node id>.log     the output of a step that failed
Every write is temp file + rename, and an action result is written only after all of its
objects are in place, so an interrupted build never leaves a result that points at nothing.
An object is checked (stat signature, re-hash on mismatch) every time it is used: when a result
is looked up, read for a key, placed into an output folder or staged as a step's input; a corrupt
one is quarantined and its result becomes a miss, so the node is rebuilt.

`Store` is split along its seams: objects and the action cache here (an entry's record,
`ActionResult`, and what makes it usable live in store/entries.py), placement into output folders
in store/placement.py, and `cache verify`/`gc`/`du` in store/maintenance.py.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from mlcbuild.store import hashing
from mlcbuild.store.entries import MAX_ENTRY_BYTES, ActionResult, check_entry
from mlcbuild.store.fs import StoreError, atomic_write_bytes, fs_errors, read_regular, replace_link, seal
from mlcbuild.store.hashing import StatIndex
from mlcbuild.store.maintenance import Maintenance
from mlcbuild.store.manifest import FileEntry, Manifest, canonical_json, parse_json
from mlcbuild.store.placement import Placement, shared_with_user
from mlcbuild.store.signatures import ObjectSignatures

__all__ = ["ActionResult", "Store"]

_LEASE_LOCK = threading.Lock()
_LEASES: dict[Path, list[int]] = {}
"""cache root -> [fd of locks/gc.lock held shared, Stores using it]: one lease per process."""
_DROPPED: collections.deque[Path] = collections.deque()
"""Leases let go of by `Store.__del__`, given back by whoever next holds _LEASE_LOCK. The garbage
collector runs __del__ at any allocation, also inside a `with _LEASE_LOCK` of the same thread, so
__del__ must never wait for that lock (it did once: a test run that hung until CI's time ran out)."""
_SIGNATURES_LOCK = threading.Lock()


def _give_back_dropped(wait: bool) -> None:
    if not _LEASE_LOCK.acquire(blocking=wait):
        return
    try:
        while _DROPPED:
            root = _DROPPED.popleft()
            held = _LEASES.get(root)
            if held is None:
                continue
            held[1] -= 1
            if held[1] <= 0:
                del _LEASES[root]
                if held[0] >= 0:
                    os.close(held[0])
    finally:
        _LEASE_LOCK.release()

class Store(Placement, Maintenance):
    """The cache under one root: objects and the action cache here; placement and maintenance
    come from store/placement.py and store/maintenance.py."""

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        self._objects = str(self.root / "objects")
        self._index: StatIndex | None = None
        self._signatures: ObjectSignatures | None = None
        self._leased = False
        self._work: dict[Path, int] = {}
        self._staged: dict[str, tuple[int, int]] = {}
        """Objects hard-linked into work dirs -> their (size, mtime_ns) before any step ran."""
        self.quarantined: list[str] = []
        self._ignored: set[str] = set()
        """Keys whose entry was refused (store/entries.py): warned about once."""

    # -- paths ---------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return Path(self._object_str(digest))

    def _object_str(self, digest: str) -> str:
        """object_path as a str: the no-op path stats every object, and pathlib joins cost more than the stat."""
        return f"{self._objects}/{digest[:2]}/{digest}"

    def action_path(self, key: str) -> Path:
        return self.root / "ac" / key[:2] / f"{key}.json"

    def node_path(self, node_id: str) -> Path:
        return self.root / "nodes" / f"{node_id}.json"

    def log_path(self, node_id: str) -> Path:
        """Where a failed step's output is kept (logs/ is not content-addressed, just kept)."""
        path = self.root / "logs" / f"{node_id}.log"
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        with self._writing():
            path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def stat_index(self) -> StatIndex:
        if self._index is None:
            self._index = StatIndex.open(self.root / "index" / "stat.json")
        return self._index

    @property
    def signatures(self) -> ObjectSignatures:
        if self._signatures is None:
            with _SIGNATURES_LOCK:
                if self._signatures is None:
                    self._signatures = ObjectSignatures.open(self.root / "index" / "objects.json")
        return self._signatures

    def save_index(self) -> None:
        self._refresh_staged()
        self._staged.clear()
        if self._index is not None:
            with contextlib.suppress(OSError):
                self._index.save()
        if self._signatures is not None:
            self._signatures.save()

    def _writing(self, path: Path | None = None) -> contextlib.AbstractContextManager[None]:
        """Disk full / read-only under the cache become one line naming the cache."""
        return fs_errors("cache", path or self.root)

    # -- leases: gc never removes what a running build uses ------------------
    def hold_lease(self) -> None:
        """Hold `locks/gc.lock` shared while this Store lives (one fd per process and cache, released
        with the last Store using it, or at exit), so `cache gc`, which takes it exclusive, waits for
        running builds. Taken on first use; a cache where the lock file cannot even be opened
        (read-only and never written) needs none: gc cannot delete anything there either."""
        opened: int | None = None  # opened without _LEASE_LOCK: it may wait for another process's gc
        while not self._leased:
            with _LEASE_LOCK:
                held = _LEASES.get(self.root)
                if held is None and opened is not None:
                    held, opened = _LEASES.setdefault(self.root, [opened, 0]), None
                if held is not None and not self._leased:
                    held[1] += 1
                    self._leased = True
            if not self._leased:
                opened = self._open_lease()
        if opened is not None and opened >= 0:
            os.close(opened)  # another thread took this cache's lease meanwhile
        if _DROPPED:  # every object write passes here: the lock only when a lease waits to go back
            _give_back_dropped(wait=True)

    def _open_lease(self) -> int:
        path = self.root / "locks" / "gc.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"mlcbuild: waiting for `cache gc` on {self.root} to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def close(self) -> None:
        """Release this Store's share of the lease (also done when it is garbage-collected)."""
        self._drop_lease(wait=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._drop_lease(wait=False)

    def _drop_lease(self, wait: bool) -> None:
        if self._leased:
            self._leased = False
            _DROPPED.append(self.root)
            _give_back_dropped(wait)

    @contextlib.contextmanager
    def exclusive(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """No other process uses the cache while this is held (waits for running builds)."""
        path = self.root / "locks" / "gc.lock"
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
        self.hold_lease()  # converted to exclusive below: this process never waits for itself
        with _LEASE_LOCK:
            fd = _LEASES[self.root][0]
        own = fd < 0
        if own:
            with self._writing():
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if own:
                os.close(fd)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)

    # -- objects -------------------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return self.check_object(digest) is not None

    def check_object(self, digest: str) -> os.stat_result | None:
        """The object's stat if it is present and intact, else None. Trusted by its recorded stat
        signature; re-hashed when the stat moved; quarantined when the bytes are not its digest."""
        path = self._object_str(digest)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if self.signatures.matches(digest, st):
            return st
        if stat.S_ISREG(st.st_mode) and hashing.sha256_file(path) == digest:
            self.signatures.record(digest, st)
            return st
        self.quarantine(digest)
        return None

    def quarantine(self, digest: str) -> None:
        """Move a modified or corrupt object aside (kept for inspection until `cache gc`)."""
        path = self.object_path(digest)
        dest = self.root / "quarantine" / f"{digest}.{time.time_ns()}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            where = f"moved to {dest}"
        except FileNotFoundError:
            return
        except OSError as e:
            where = f"could not move it aside ({e.strerror}); it is not used"
        self.signatures.forget(digest)
        self.quarantined.append(digest)
        print(f"mlcbuild: warning: cache object {digest[:12]} was modified or is corrupt; {where}; its results will be rebuilt", file=sys.stderr)

    def put_file(self, path: Path, *, move: bool = False, digest: str | None = None) -> FileEntry:
        """Add a file's bytes; `move` consumes a file we own (a step's temp output). `digest` comes
        from a caller that hashed these very bytes as it wrote them (a verified remote download)."""
        self.hold_lease()
        st = path.stat()
        digest = digest or hashing.sha256_file(path)
        dest = self.object_path(digest)
        executable = bool(st.st_mode & stat.S_IXUSR)
        if self.check_object(digest) is None:
            with self._writing(), self.new_object(digest) as tmp:
                try:
                    if not move:
                        raise OSError(errno.EXDEV, "copy requested")
                    os.replace(path, tmp)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    shutil.copyfile(path, tmp)
                seal(tmp, executable)
            self.signatures.record(digest, os.stat(dest))
        return FileEntry(digest, st.st_size, executable)

    @contextlib.contextmanager
    def new_object(self, digest: str) -> Iterator[Path]:
        """A temp path beside the object's place: renamed into place when the block succeeds, removed
        when it fails, so a reader never sees a half-written object."""
        dest = self.object_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{digest}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            yield tmp
            replace_link(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_dir(self, folder: Path, *, move: bool = False) -> Manifest:
        files: dict[str, FileEntry] = {}
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(folder).as_posix()
                files[rel] = self.put_file(full, move=move)
        return Manifest(files)

    def read_bytes(self, digest: str) -> bytes:
        """An object's bytes, checked like every other use (they feed keys)."""
        if self.check_object(digest) is None:
            raise StoreError(f"cache object {digest[:12]} is missing or corrupt; run the build again to rebuild it")
        return self.object_path(digest).read_bytes()

    # -- action cache --------------------------------------------------------
    def get_action(self, key: str, *, check_objects: bool = True) -> ActionResult | None:
        """A cached result, only if it is well-formed and every object it names is present and
        intact; a malformed entry or a corrupt object (quarantined here) makes it a miss.
        `check_objects=False` only asks that the objects exist (no re-hash, no lease): for callers
        that plan, never serve (`matrix --affected` asking a shared cache folder)."""
        try:
            result = ActionResult.load(self.action_path(key))
        except (OSError, ValueError):
            return None
        try:
            check_entry(result, key, strict=False)
        except ValueError as e:
            if key not in self._ignored:
                self._ignored.add(key)
                print(f"mlcbuild: warning: cache entry {key[:12]} ignored: {' '.join(str(e).split())}; it will be rebuilt", file=sys.stderr)
            return None
        if not check_objects:
            return result if self._objects_present(result) else None
        self.hold_lease()
        if not all(self.check_object(e.digest) is not None for e in result.manifest.files.values()):
            return None
        return result

    def _objects_present(self, result: ActionResult) -> bool:
        """Every object the result names exists (not re-hashed: for planning and gc)."""
        return all(os.path.isfile(self._object_str(e.digest)) for e in result.manifest.files.values())

    def put_action(self, result: ActionResult) -> None:
        with self._writing():
            atomic_write_bytes(self.action_path(result.key), canonical_json(result.to_json()))

    def record_node(self, node_id: str, key: str, preimage: dict[str, Any], duration_s: float = 0.0) -> None:
        record = {"key": key, "preimage": preimage, "duration_s": round(duration_s, 3)}
        with self._writing():
            atomic_write_bytes(self.node_path(node_id), canonical_json(record))

    def last_node_build(self, node_id: str) -> dict[str, Any] | None:
        """The node's last recorded build, or None (also when the record is malformed)."""
        try:
            data = parse_json(read_regular(self.node_path(node_id), MAX_ENTRY_BYTES), MAX_ENTRY_BYTES)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("key"), str) or not isinstance(data.get("preimage"), dict):
            return None
        return data

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        self.hold_lease()
        path = self.root / "locks" / f"{key}.lock"
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- work directories ----------------------------------------------------
    def make_work_dir(self, prefix: str) -> Path:
        """A private folder under tmp/, flocked while in use so `cache gc` knows it is live."""
        self.hold_lease()
        with self._writing():
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._work[path] = fd
        return path

    def remove_work_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        fd = self._work.pop(path, None)
        if fd is not None:
            os.close(fd)
        self._refresh_staged()

    def _refresh_staged(self) -> None:
        """Objects hard-linked into a work dir had their ctime moved by the link and the unlink:
        re-record their signatures, unless a step wrote to them (size or mtime moved), which
        leaves them to be re-hashed (and quarantined) on their next use."""
        for digest, before in list(self._staged.items()):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self._object_str(digest))
                if (st.st_size, st.st_mtime_ns) == before:
                    self._rerecord(digest, st)

    def _rerecord(self, digest: str, st: os.stat_result) -> None:
        """Re-record an object whose ctime our own link or unlink moved; when it is a user's file
        (hardlink ingest), that file's StatIndex entry too, so the next plan does not re-hash it."""
        self.signatures.record(digest, st)
        if shared_with_user(st):
            self.stat_index.restat(st, digest)
