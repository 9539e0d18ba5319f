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
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlcbuild.store import hashing
from mlcbuild.store.fs import StoreError, atomic_write_bytes, fs_errors, os_error_message, pid_alive, reflink, seal
from mlcbuild.store.hashing import StatIndex
from mlcbuild.store.manifest import FileEntry, Manifest, canonical_json, is_digest
from mlcbuild.store.placed import Placed
from mlcbuild.store.signatures import ObjectSignatures

LINK_MIN_BYTES = 16 << 20
"""Output files this large are hard-linked to their object (weights: no second copy on disk);
smaller ones (configs, tokenizers, libraries) are copied, so an edit in the output folder never
reaches the cache. An edit through a hard link is caught by the object's stat signature."""
TMP_NAME = re.compile(r"^\..+?\.(\d+)(?:\.\d+)?\.tmp$")
"""Temp files this store leaves while writing into the cache: `.<name>.<pid>[.<ns>].tmp`."""
PLACE_TMP_NAME = re.compile(r"^\..+\.(\d+)\.mlcbuild\.tmp$")
"""Temp files of placing an output (`.<name>.<pid>.mlcbuild.tmp`): distinct from anything a user names."""


@dataclass
class ActionResult:
    key: str
    manifest: Manifest
    preimage: dict[str, Any]
    duration_s: float = 0.0
    created: float = field(default_factory=time.time)
    built_with: dict[str, Any] | None = None
    """The exact tools that made it (`Step.built_with`: nvcc's full version where the key has a pin)."""

    def to_json(self) -> dict[str, Any]:
        entry = {
            "key": self.key,
            "manifest": self.manifest.to_json(),
            "preimage": self.preimage,
            "duration_s": round(self.duration_s, 3),
            "created": round(self.created, 3),
        }
        if self.built_with:
            entry["built_with"] = self.built_with
        return entry

    @classmethod
    def from_json(cls, data: Any) -> "ActionResult":
        """Parse a stored entry; anything malformed (wrong types, missing fields) is a ValueError."""
        if not isinstance(data, dict):
            raise ValueError("entry is not a JSON object")
        key, preimage = data.get("key"), data.get("preimage", {})
        if not isinstance(key, str) or not key:
            raise ValueError("entry has no key")
        if not isinstance(preimage, dict):
            raise ValueError("entry's preimage is not a mapping")
        numbers = [data.get("duration_s", 0.0), data.get("created", 0.0)]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 <= n < 1e11 for n in numbers):
            raise ValueError("entry's duration_s/created are not plausible numbers of seconds")
        built_with = data.get("built_with")
        if built_with is not None and not isinstance(built_with, dict):
            raise ValueError("entry's built_with is not a mapping")
        return cls(key, Manifest.from_json(data.get("manifest")), preimage, *numbers, built_with=built_with)


@dataclass
class GcReport:
    """What `cache gc` removed (or, with dry_run, would remove)."""

    results: list[ActionResult] = field(default_factory=list)
    malformed: list[Path] = field(default_factory=list)
    objects: int = 0
    object_bytes: int = 0
    leftovers: list[Path] = field(default_factory=list)
    leftover_bytes: int = 0
    quarantined: int = 0
    quarantined_bytes: int = 0

    @property
    def freed(self) -> int:
        return self.object_bytes + self.leftover_bytes + self.quarantined_bytes


def _size(path: Path) -> int:
    """Bytes under a file or folder (0 if it vanished)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _clone_or_copy(source: Path, dest: Path) -> None:
    """A reflink where the file system has them (btrfs, xfs: instant, no extra space), else a copy."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest)
    try:
        reflink(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def shared_with_user(st: os.stat_result) -> bool:
    """An object the store wrote is never writable (0444/0555); a writable one is a user's file
    hard-linked in by `--link-type hardlink` (store/ingest.py): its mode is the user's."""
    return bool(st.st_mode & stat.S_IWUSR)


_LEASE_LOCK = threading.Lock()
_LEASES: dict[Path, list[int]] = {}
"""cache root -> [fd of locks/gc.lock held shared, Stores using it]: one lease per process."""


class Store:
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
            with _LEASE_LOCK:
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
        if self._leased:
            return
        with _LEASE_LOCK:
            if self._leased:
                return
            held = _LEASES.get(self.root)
            if held is None:
                held = _LEASES[self.root] = [self._open_lease(), 0]
            held[1] += 1
            self._leased = True

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
        if not self._leased:
            return
        with _LEASE_LOCK:
            self._leased = False
            held = _LEASES.get(self.root)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    del _LEASES[self.root]
                    if held[0] >= 0:
                        os.close(held[0])

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @contextlib.contextmanager
    def exclusive(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """No other process uses the cache while this is held (waits for running builds)."""
        path = self.root / "locks" / "gc.lock"
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
        held = _LEASES.get(self.root)
        own = held is None or held[0] < 0
        with self._writing():
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644) if own else held[0]
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
            os.replace(tmp, dest)
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
            raw = self.action_path(key).read_bytes()
        except OSError:
            return None
        try:
            result = ActionResult.from_json(json.loads(raw))
        except ValueError:
            return None
        if result.key != key:
            return None
        if not check_objects:
            return result if all(os.path.isfile(self._object_str(e.digest)) for e in result.manifest.files.values()) else None
        self.hold_lease()
        if not all(self.check_object(e.digest) is not None for e in result.manifest.files.values()):
            return None
        return result

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
            data = json.loads(self.node_path(node_id).read_bytes())
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

    # -- materialization -----------------------------------------------------
    def materialize(
        self, manifest: Manifest, dest: Path, *, rename: dict[str, str] | None = None, placed: Placed | None = None
    ) -> list[Path]:
        """Place a manifest's files under dest; return the paths of files that changed.

        Large files are hard-linked to their object, small ones copied (see LINK_MIN_BYTES), and an
        object that is a user's file (hardlink ingest) is only ever linked into work dirs. With
        `placed` (an output folder's record), files already correct are skipped without reading
        them, and a file someone edited is replaced. Every object is checked before it is placed."""
        self.hold_lease()
        changed: list[Path] = []
        staged = str(dest).startswith(str(self.root / "tmp") + os.sep)
        base = str(dest)
        for rel, entry in manifest.files.items():
            name = (rename or {}).get(rel, rel)
            obj = self.check_object(entry.digest)
            if obj is None:
                raise StoreError(f"cache object {entry.digest[:12]} for {dest / name} is missing or corrupt; run the build again to rebuild it")
            with contextlib.suppress(OSError):
                now = os.lstat(f"{base}/{name}")
                if (now.st_ino, now.st_dev) == (obj.st_ino, obj.st_dev) or (placed is not None and placed.intact(name, entry.digest, now)):
                    if placed is not None and name not in placed.entries:
                        placed.note(name, entry.digest, now)
                    continue
            target = dest / name
            link = staged or (entry.size >= LINK_MIN_BYTES and not shared_with_user(obj))
            linked = self._place(self.object_path(entry.digest), target, link, entry.executable)
            if linked:
                after = os.stat(self.object_path(entry.digest))
                self._rerecord(entry.digest, after)
                if staged:
                    self._staged.setdefault(entry.digest, (after.st_size, after.st_mtime_ns))
            if placed is not None:
                placed.note(name, entry.digest, os.lstat(target))
            changed.append(target)
        return changed

    def _place(self, source: Path, target: Path, link: bool, executable: bool) -> bool:
        """Put source's bytes at target via a temp file + rename; True if hard-linked. The temp
        file is removed on every error path; disk full or read-only become one line."""
        tmp = target.with_name(f".{target.name}.{os.getpid()}.mlcbuild.tmp")
        with fs_errors("output folder", target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                linked = False
                if link:
                    try:
                        os.link(source, tmp)
                        linked = True
                    except OSError as e:
                        if os_error_message(e, "", "") is not None and e.errno != errno.EPERM:
                            raise
                if not linked:
                    _clone_or_copy(source, tmp)
                    os.chmod(tmp, 0o555 if executable else 0o444)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return linked

    # -- maintenance ---------------------------------------------------------
    def iter_action_files(self) -> Iterator[tuple[Path, ActionResult | str]]:
        """Every action entry: its result, or why it is malformed."""
        for path in sorted((self.root / "ac").glob("*/*.json")):
            try:
                result = ActionResult.from_json(json.loads(path.read_bytes()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                yield path, f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
                continue
            if path.name != f"{result.key}.json":
                yield path, f"its key {result.key[:12]!r} is not its file name"
                continue
            yield path, result

    def iter_actions(self) -> Iterator[ActionResult]:
        """Well-formed results only (see iter_action_files for the rest)."""
        for _, result in self.iter_action_files():
            if isinstance(result, ActionResult):
                yield result

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        for path in sorted((self.root / "objects").glob("*/*")):
            if is_digest(path.name):
                yield path.name, path

    def leftovers(self) -> list[Path]:
        """What killed builds leave: work dirs no live build holds, and temp files of writes."""
        found: list[Path] = []
        tmp = self.root / "tmp"
        if tmp.is_dir():
            for entry in sorted(tmp.iterdir()):
                if entry.is_dir() and not entry.is_symlink() and self._work_dir_live(entry):
                    continue
                found.append(entry)
        for sub in ("objects", "ac", "index"):
            for path in sorted((self.root / sub).glob("**/.*.tmp")):
                m = TMP_NAME.match(path.name)
                if m is None or not pid_alive(int(m.group(1))) or sub == "ac":
                    found.append(path)
        for path in sorted((self.root / "locks").glob("*.lock")):
            if path.name != "gc.lock":
                found.append(path)
        return found

    def _work_dir_live(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def verify(self) -> list[str]:
        """Re-hash every object; report corrupt objects, malformed entries and results that name
        missing objects. Catches what the cheap stat check cannot (see signatures.py)."""
        problems = []
        for digest, path in self.iter_objects():
            try:
                actual = hashing.sha256_file(path)
            except OSError as e:
                problems.append(f"unreadable object {digest[:12]} ({e.strerror}): {path}")
                continue
            if actual != digest:
                problems.append(f"corrupt object {digest[:12]} (content hashes to {actual[:12]}): {path}")
            else:
                self.signatures.record(digest, path.stat())
        for path, result in self.iter_action_files():
            if not isinstance(result, ActionResult):
                problems.append(f"malformed result {path}: {result}")
                continue
            for rel, entry in result.manifest.files.items():
                if not self.object_path(entry.digest).is_file():
                    problems.append(f"result {result.key[:12]} names missing object {entry.digest[:12]} ({rel})")
        self.save_index()
        return problems

    def repair(self) -> int:
        """Quarantine corrupt objects and delete malformed entries; returns how many."""
        fixed = 0
        with self._writing():
            for digest, path in self.iter_objects():
                try:
                    intact = hashing.sha256_file(path) == digest
                except OSError:
                    intact = False
                if not intact:
                    self.quarantine(digest)
                    fixed += 1
            for path, result in list(self.iter_action_files()):
                if not isinstance(result, ActionResult):
                    path.unlink()
                    fixed += 1
        self.save_index()
        return fixed

    def gc(
        self,
        keep_keys: set[str] | None = None,
        older_than_s: float | None = None,
        *,
        dry_run: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> GcReport:
        """Drop results not in keep_keys (or older than a cutoff), malformed entries, then objects no
        result names, quarantined objects and what killed builds left. Waits for running builds
        (they hold the gc lock shared), so nothing a build is using or has just written goes."""
        report = GcReport()
        if not self.root.is_dir():
            return report
        with self.exclusive(on_wait), self._writing():
            now = time.time()
            live: set[str] = set()
            for path, result in list(self.iter_action_files()):
                if not isinstance(result, ActionResult):
                    report.malformed.append(path)
                    continue
                drop = (keep_keys is not None and result.key not in keep_keys) or (
                    older_than_s is not None and now - result.created > older_than_s
                )
                if drop:
                    report.results.append(result)
                else:
                    live.update(e.digest for e in result.manifest.files.values())
            doomed = [p for p in report.malformed] + [self.action_path(r.key) for r in report.results]
            for digest, path in self.iter_objects():
                if digest not in live:
                    report.objects += 1
                    report.object_bytes += _size(path)
                    doomed.append(path)
                    if not dry_run:
                        self.signatures.forget(digest)
            quarantine = sorted((self.root / "quarantine").glob("*"))
            report.quarantined = len(quarantine)
            report.quarantined_bytes = sum(_size(p) for p in quarantine)
            report.leftovers = self.leftovers()
            report.leftover_bytes = sum(_size(p) for p in report.leftovers)
            if not dry_run:
                for path in doomed + quarantine + report.leftovers:
                    _remove(path)
                self.save_index()
        return report

    def usage(self) -> dict[str, int]:
        objects = list(self.iter_objects())
        leftovers = self.leftovers()
        quarantine = list((self.root / "quarantine").glob("*"))
        entries = list(self.iter_action_files())
        return {
            "objects": len(objects),
            "object_bytes": sum(_size(p) for _, p in objects),
            "results": sum(1 for _, r in entries if isinstance(r, ActionResult)),
            "malformed": sum(1 for _, r in entries if not isinstance(r, ActionResult)),
            "leftovers": len(leftovers),
            "leftover_bytes": sum(_size(p) for p in leftovers),
            "quarantined": len(quarantine),
            "quarantined_bytes": sum(_size(p) for p in quarantine),
            "log_bytes": sum(_size(p) for p in (self.root / "logs").glob("*")),
        }
