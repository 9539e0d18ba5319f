"""The local content-addressed store: objects by digest plus an action cache by key.

Layout under the cache root:
    objects/ab/<sha256>    immutable, read-only file contents
    ac/ab/<key>.json       action results: the output manifest and how it was made
    nodes/<node id>.json   the key preimage of a node's last build (for `explain`)
    locks/<key>.lock       per-key flock, so concurrent builds never do one node twice
    tmp/                   work directories; anything here is garbage after a crash
    logs/<node id>.log     the output of a step that failed
Every write is temp file + rename, and an action result is written only after all of its
objects are in place, so an interrupted build never leaves a result that points at nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mlcbuild.store.hashing import StatIndex, sha256_file
from mlcbuild.store.manifest import FileEntry, Manifest, canonical_json

ENV_CACHE_DIR = "MLCBUILD_CACHE_DIR"
STALE_TMP_S = 24 * 3600
"""A work dir untouched this long belongs to a build that died; a younger one may be running."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or "cache")


@dataclass
class ActionResult:
    key: str
    manifest: Manifest
    preimage: dict[str, Any]
    duration_s: float = 0.0
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "manifest": self.manifest.to_json(),
            "preimage": self.preimage,
            "duration_s": round(self.duration_s, 3),
            "created": round(self.created, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ActionResult":
        return cls(
            data["key"],
            Manifest.from_json(data["manifest"]),
            data["preimage"],
            data.get("duration_s", 0.0),
            data.get("created", 0.0),
        )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        self._index: StatIndex | None = None

    # -- paths ---------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def action_path(self, key: str) -> Path:
        return self.root / "ac" / key[:2] / f"{key}.json"

    def node_path(self, node_id: str) -> Path:
        return self.root / "nodes" / f"{node_id}.json"

    def log_path(self, node_id: str) -> Path:
        """Where a failed step's output is kept (logs/ is not content-addressed, just kept)."""
        path = self.root / "logs" / f"{node_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def stat_index(self) -> StatIndex:
        if self._index is None:
            self._index = StatIndex.open(self.root / "index" / "stat.json")
        return self._index

    def save_index(self) -> None:
        if self._index is not None:
            self._index.save()

    # -- objects -------------------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return self.object_path(digest).exists()

    def put_file(self, path: Path, *, move: bool = False, digest: str | None = None) -> FileEntry:
        """Add a file's bytes; `move` consumes a file we own (a step's temp output). `digest` comes
        from a caller that hashed these very bytes as it wrote them (a verified remote download)."""
        st = path.stat()
        digest = digest or sha256_file(path)
        dest = self.object_path(digest)
        executable = bool(st.st_mode & stat.S_IXUSR)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{digest}.{os.getpid()}.{time.monotonic_ns()}.tmp")
            if move:
                os.replace(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o555 if executable else 0o444)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        return FileEntry(digest, st.st_size, executable)

    def put_dir(self, folder: Path, *, move: bool = False) -> Manifest:
        files: dict[str, FileEntry] = {}
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(folder).as_posix()
                files[rel] = self.put_file(full, move=move)
        return Manifest(files)

    def read_bytes(self, digest: str) -> bytes:
        return self.object_path(digest).read_bytes()

    # -- action cache --------------------------------------------------------
    def get_action(self, key: str) -> ActionResult | None:
        """A cached result, only if every object it names is present."""
        try:
            data = json.loads(self.action_path(key).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        result = ActionResult.from_json(data)
        if not all(self.has_object(e.digest) for e in result.manifest.files.values()):
            return None
        return result

    def put_action(self, result: ActionResult) -> None:
        _atomic_write_bytes(self.action_path(result.key), canonical_json(result.to_json()))

    def record_node(self, node_id: str, key: str, preimage: dict[str, Any]) -> None:
        _atomic_write_bytes(self.node_path(node_id), canonical_json({"key": key, "preimage": preimage}))

    def last_node_build(self, node_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.node_path(node_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- materialization -----------------------------------------------------
    def materialize(self, manifest: Manifest, dest: Path, *, rename: dict[str, str] | None = None) -> None:
        """Place a manifest's files under dest, hard-linked to the store where possible."""
        for rel, entry in manifest.files.items():
            target = dest / (rename or {}).get(rel, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = self.object_path(entry.digest)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(source, target):
                    continue
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o444)
            os.replace(tmp, target)

    # -- maintenance ---------------------------------------------------------
    def iter_actions(self) -> Iterator[ActionResult]:
        for path in sorted((self.root / "ac").glob("*/*.json")):
            with contextlib.suppress(ValueError, KeyError, FileNotFoundError):
                yield ActionResult.from_json(json.loads(path.read_bytes()))

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        for path in sorted((self.root / "objects").glob("*/*")):
            if not path.name.startswith("."):
                yield path.name, path

    def verify(self) -> list[str]:
        """Re-hash every object; report corrupt objects and results pointing at missing ones."""
        problems = []
        for digest, path in self.iter_objects():
            actual = sha256_file(path)
            if actual != digest:
                problems.append(f"corrupt object {digest[:12]} (content hashes to {actual[:12]}): {path}")
        for result in self.iter_actions():
            for rel, entry in result.manifest.files.items():
                if not self.has_object(entry.digest):
                    problems.append(f"result {result.key[:12]} names missing object {entry.digest[:12]} ({rel})")
        return problems

    def remove_corrupt(self) -> int:
        removed = 0
        for digest, path in self.iter_objects():
            if sha256_file(path) != digest:
                path.unlink()
                removed += 1
        return removed

    def gc(self, keep_keys: set[str] | None = None, older_than_s: float | None = None) -> tuple[int, int]:
        """Drop results not in keep_keys (or older than a cutoff), then unreferenced objects."""
        now = time.time()
        live: set[str] = set()
        for result in list(self.iter_actions()):
            drop = False
            if keep_keys is not None and result.key not in keep_keys:
                drop = True
            if older_than_s is not None and now - result.created > older_than_s:
                drop = True
            if drop:
                with contextlib.suppress(FileNotFoundError):
                    self.action_path(result.key).unlink()
            else:
                live.update(e.digest for e in result.manifest.files.values())
        freed = removed = 0
        for digest, path in self.iter_objects():
            if digest not in live:
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        for stale in (self.root / "tmp").glob("*"):
            if now - stale.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        return removed, freed

    def usage(self) -> dict[str, int]:
        objects = list(self.iter_objects())
        return {
            "objects": len(objects),
            "object_bytes": sum(p.stat().st_size for _, p in objects),
            "results": sum(1 for _ in (self.root / "ac").glob("*/*.json")),
        }
