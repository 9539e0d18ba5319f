"""Keeping the cache healthy and small: `cache verify`/`--repair`, `cache gc` and `cache du`.
`store.cas.Store` is made of this, its objects and action cache (store/cas.py) and placement
(store/placement.py)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from mlcbuild.store import hashing
from mlcbuild.store.entries import ActionResult, check_entry
from mlcbuild.store.fs import pid_alive
from mlcbuild.store.manifest import is_digest
from mlcbuild.store.placement import shared_with_user

if TYPE_CHECKING:
    from mlcbuild.store.cas import Store

TMP_NAME = re.compile(r"^\..+?\.(\d+)(?:\.\d+)?\.tmp$")
"""Temp files this store leaves while writing into the cache: `.<name>.<pid>[.<ns>].tmp`."""


@dataclass
class GcReport:
    """What `cache gc` removed (or, with dry_run, would remove)."""

    results: list[ActionResult] = field(default_factory=list)
    broken: list[ActionResult] = field(default_factory=list)
    """Results naming an object that is gone: a miss for every build, so they go too."""
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


def _edited_source(st: os.stat_result) -> bool:
    """An object whose bytes are wrong and that is still a user's hard-linked source file (writable,
    another link): the user edited their file in place; not corruption of the cache."""
    return shared_with_user(st) and st.st_nlink > 1


class Maintenance:
    """What `cache verify`, `gc` and `du` ask of a Store."""

    def iter_action_files(self: "Store") -> Iterator[tuple[Path, ActionResult | str]]:
        """Every action entry: its result, or why it is malformed."""
        for path in sorted((self.root / "ac").glob("*/*.json")):
            try:
                result = ActionResult.load(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                yield path, f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
                continue
            if path.name != f"{result.key}.json":
                yield path, f"its key {result.key[:12]!r} is not its file name"
                continue
            try:
                check_entry(result, result.key, strict=False)
            except ValueError as e:
                yield path, str(e)
                continue
            yield path, result

    def iter_actions(self: "Store") -> Iterator[ActionResult]:
        """Well-formed results only (see iter_action_files for the rest)."""
        for _, result in self.iter_action_files():
            if isinstance(result, ActionResult):
                yield result

    def iter_objects(self: "Store") -> Iterator[tuple[str, Path]]:
        for path in sorted((self.root / "objects").glob("*/*")):
            if is_digest(path.name):
                yield path.name, path

    def leftovers(self: "Store") -> list[Path]:
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
        return found

    def key_lock_files(self: "Store") -> list[Path]:
        """Per-key lock files. Every build leaves them (unlinking a flock file races with a waiter
        that already opened it), so they are not leftovers of killed builds; they are empty, and
        gc removes them while it holds the cache exclusively (no build can be waiting on one)."""
        return [p for p in sorted((self.root / "locks").glob("*.lock")) if p.name != "gc.lock"]

    def _work_dir_live(self: "Store", path: Path) -> bool:
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

    def verify(self: "Store", rehash: bool = True) -> list[str]:
        """Re-hash every object; report corrupt objects, malformed entries and results that name
        missing objects. Catches what the cheap stat check cannot (see signatures.py).
        `rehash=False` re-hashes only objects whose stat moved since they were last found intact
        (what `--repair` runs after repairing, right after a full verify)."""
        problems = []
        for digest, path in self.iter_objects():
            try:
                st = path.stat()
                if not rehash and self.signatures.matches(digest, st):
                    continue
                actual = hashing.sha256_file(path)
            except OSError as e:
                problems.append(f"unreadable object {digest[:12]} ({e.strerror}): {path}")
                continue
            if actual == digest:
                self.signatures.record(digest, st)
            elif _edited_source(st):
                problems.append(
                    f"object {digest[:12]} is a source file hard-linked into the cache and edited in place "
                    f"since{self._user_file(st)}: not corruption; --repair unlinks it from the cache (the file stays)"
                )
            else:
                problems.append(f"corrupt object {digest[:12]} (content hashes to {actual[:12]}): {path}")
        for path, result in self.iter_action_files():
            if not isinstance(result, ActionResult):
                problems.append(f"malformed result {path}: {result}")
                continue
            for rel, entry in result.manifest.files.items():
                if not self.object_path(entry.digest).is_file():
                    problems.append(f"result {result.key[:12]} names missing object {entry.digest[:12]} ({rel})")
        self.save_index()
        return problems

    def _user_file(self: "Store", st: os.stat_result) -> str:
        """" (<path>)" of a source file that is this inode, from the stat index, or ""."""
        for path, entry in self.stat_index.entries.items():
            with contextlib.suppress(OSError, TypeError, IndexError):
                if entry[0][0] == st.st_ino and os.stat(path).st_ino == st.st_ino:
                    return f" ({path})"
        return ""

    def repair(self: "Store") -> int:
        """Quarantine corrupt objects (unlink an edited source file's hard link: the file is the
        user's), delete malformed entries and the results that name a missing object, so their
        nodes are rebuilt; returns how many findings of `verify` that fixes."""
        removed: set[str] = set()
        with self._writing():
            for digest, path in self.iter_objects():
                st: os.stat_result | None = None
                try:
                    st = path.stat()
                    if self.signatures.matches(digest, st) or hashing.sha256_file(path) == digest:
                        continue
                except OSError:
                    pass
                if st is not None and _edited_source(st):
                    path.unlink()
                    self.signatures.forget(digest)
                else:
                    self.quarantine(digest)
                removed.add(digest)
            fixed = len(removed)
            for path, result in list(self.iter_action_files()):
                if not isinstance(result, ActionResult):
                    path.unlink()
                    fixed += 1
                    continue
                missing = {e.digest for e in result.manifest.files.values() if not self.object_path(e.digest).is_file()}
                if missing:
                    path.unlink()
                    fixed += bool(missing - removed)
        self.save_index()
        return fixed

    def gc(
        self: "Store",
        keep_keys: set[str] | None = None,
        older_than_s: float | None = None,
        *,
        dry_run: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> GcReport:
        """Drop results not in keep_keys (or older than a cutoff), results naming a missing object (a
        miss for every build), malformed entries, then objects no result names, quarantined objects
        and what killed builds left. Waits for running builds
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
                if not self._objects_present(result):
                    report.broken.append(result)
                elif drop:
                    report.results.append(result)
                else:
                    live.update(e.digest for e in result.manifest.files.values())
            doomed = [p for p in report.malformed] + [self.action_path(r.key) for r in report.results + report.broken]
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
                for path in doomed + quarantine + report.leftovers + self.key_lock_files():
                    _remove(path)
                self.save_index()
        return report

    def usage(self: "Store") -> dict[str, int]:
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
