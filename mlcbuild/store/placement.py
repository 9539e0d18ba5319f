"""Placing a cached manifest's files into a folder: an output folder (`dist/`, with its
`.mlcbuild-placed.json` record) or a step's work dir. `store.cas.Store` is made of this, its objects
and action cache (store/cas.py) and its maintenance (store/maintenance.py)."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from mlcbuild.store.fs import StoreError, fs_errors, os_error_message, reflink, replace_link
from mlcbuild.store.manifest import Manifest
from mlcbuild.store.placed import Placed

if TYPE_CHECKING:
    from mlcbuild.store.cas import Store

LINK_MIN_BYTES = 16 << 20
"""Output files this large are hard-linked to their object (weights: no second copy on disk);
smaller ones (configs, tokenizers, libraries) are copied, so an edit in the output folder never
reaches the cache. An edit through a hard link is caught by the object's stat signature. The same
size decides ingest (store/ingest.py): only source files this large are hard-linked into the cache."""
PLACE_TMP_NAME = re.compile(r"^\..+\.(\d+)\.mlcbuild\.tmp$")
"""Temp files of placing an output (`.<name>.<pid>.mlcbuild.tmp`): distinct from anything a user names."""


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


class Placement:
    """`Store.materialize`: where cached files leave the cache."""

    def materialize(
        self: "Store", manifest: Manifest, dest: Path, *, rename: dict[str, str] | None = None, placed: Placed | None = None
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
                if placed is not None and name in placed.entries and not placed.ours_unmodified(name):
                    placed.restored.append(name)
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
                replace_link(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return linked
