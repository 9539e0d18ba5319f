"""Ingest: store files that already exist outside the cache (a local model folder, the HF cache's
blobs) under a digest known before, by reflink or hard link where the file system allows.

A step names such a file (`RunContext.adopt`) instead of copying it into its output, with the
sha256 its source states: the digest planning computed for a local file, the Hub's LFS sha256 for
a download. The store trusts that digest only when the StatIndex says the file's stat is unchanged
since those exact bytes were hashed (so each source byte is hashed once per build); otherwise it
hashes the file once, refuses it on a mismatch, and records it so the next build trusts it.

How the bytes get into `objects/` follows DVC's `cache.type`: an ordered list of link types,
the first one that works wins.
- reflink: a copy-on-write clone (FICLONE; btrfs, xfs, bcachefs): instant, no extra space, and
  an edit of the source never reaches the object.
- hardlink: the object *is* the source's inode: no extra space on any POSIX file system, but an
  in-place edit of the source changes the object. So only files of at least the store's
  LINK_MIN_BYTES (16 MiB: weights) are hard-linked; smaller ones (configs, tokenizers, the files
  a user edits) are copied instead. For a linked file the object's stat signature is recorded, so
  the store re-hashes it when its stat moves and quarantines it when the bytes changed: never
  served stale (an edited source means a rebuild, as it would anyway), `cache verify` names it as
  an edited source file, not corruption, and `--repair` unlinks it; its mode is left alone (a
  chmod would change the user's file).
- copy: a full copy, made read-only: the last resort (source and cache on different file systems).
Default: reflink,hardlink,copy (`--link-type` / MLCBUILD_LINK_TYPE): no second copy of the weights
whenever source and cache share a file system.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from mlcbuild.errors import StepError, UserError
from mlcbuild.store import hashing
from mlcbuild.store.fs import fs_errors, reflink, seal
from mlcbuild.store.manifest import FileEntry, Manifest

if TYPE_CHECKING:
    from mlcbuild.store.cas import Store

LINK_TYPES = ("reflink", "hardlink", "copy")
DEFAULT_LINK_TYPES = ("reflink", "hardlink", "copy")
ENV_LINK_TYPE = "MLCBUILD_LINK_TYPE"


@dataclass(frozen=True)
class SourceFile:
    """An output file of a step that is an existing file elsewhere: `rel` in the output is `path`.

    `sha256` is what its source states the bytes are (None: unknown, hash them); `changed` is the
    one-line error if they are not (e.g. "X changed while the build was running")."""

    rel: str
    path: str
    sha256: str | None = None
    changed: str = ""


def parse_link_types(text: str, field: str = "--link-type") -> tuple[str, ...]:
    """'reflink,hardlink,copy' -> ('reflink', 'hardlink', 'copy'); unknown names are a UserError."""
    from mlcbuild.suggest import unknown

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in LINK_TYPES:
            raise UserError(f"{unknown('link type', name, LINK_TYPES)} (a comma-separated list, e.g. reflink,hardlink,copy)", field=field)
    if not names:
        raise UserError(f"no link type given (one or more of {', '.join(LINK_TYPES)}, comma-separated)", field=field)
    return names


def link_types() -> tuple[str, ...]:
    """The configured order: $MLCBUILD_LINK_TYPE (set by --link-type), else the default."""
    text = os.environ.get(ENV_LINK_TYPE, "")
    return parse_link_types(text, ENV_LINK_TYPE) if text.strip() else DEFAULT_LINK_TYPES


def ingest(store: "Store", files: Iterable[SourceFile], types: Sequence[str] | None = None) -> dict[str, FileEntry]:
    """Store each file under its verified digest; rel -> entry."""
    types = tuple(types or link_types())
    return {f.rel: ingest_file(store, f, types)[0] for f in files}


def ingest_file(store: "Store", file: SourceFile, types: Sequence[str]) -> tuple[FileEntry, str]:
    """(entry, how: "present" | a link type). Raises StepError(file.changed) if the bytes are not
    what the source states, or changed while being linked."""
    src = Path(file.path).resolve()
    try:
        before = os.stat(src)
    except FileNotFoundError:
        raise StepError(file.changed or f"{file.path} disappeared") from None
    if not stat.S_ISREG(before.st_mode):
        raise StepError(f"{file.path} is not a regular file")
    digest = store.stat_index.known(src, before)
    if digest is None:
        digest = hashing.sha256_file(src)
        if _content_moved(os.stat(src), before):
            raise StepError(file.changed or f"{file.path} changed while it was hashed")
        if file.sha256 in (None, digest):
            store.stat_index.note(src, before, digest)
    if file.sha256 is not None and digest != file.sha256:
        raise StepError(file.changed or f"{file.path} hashes to {digest[:12]}, expected {file.sha256[:12]}")
    entry = FileEntry(digest, before.st_size, bool(before.st_mode & stat.S_IXUSR))
    if store.check_object(digest) is not None:
        return entry, "present"
    store.hold_lease()
    with fs_errors("cache", store.root), store.new_object(digest) as tmp:
        how = _place(src, tmp, _link_types_for(before.st_size, types))
        after = os.stat(src)
        if _content_moved(after, before) or (how != "hardlink" and after.st_ctime_ns != before.st_ctime_ns):
            raise StepError(file.changed or f"{file.path} changed while it was stored")
        if how != "hardlink":
            seal(tmp, entry.executable)
    if how == "hardlink":
        placed = os.stat(store.object_path(digest))
        store.signatures.record(digest, placed)
        store.stat_index.note(src, placed, digest)
    return entry, how


def _link_types_for(size: int, types: Sequence[str]) -> tuple[str, ...]:
    """A file under the store's LINK_MIN_BYTES (a config, a tokenizer: what users edit in place) is
    never hard-linked: it is copied where the list says hardlink, so editing it never edits the
    cache. Weights keep their link: no second copy of gigabytes."""
    from mlcbuild.store.placement import LINK_MIN_BYTES

    if size >= LINK_MIN_BYTES:
        return tuple(types)
    return tuple(dict.fromkeys("copy" if how == "hardlink" else how for how in types))


def _content_moved(after: os.stat_result, before: os.stat_result) -> bool:
    """Inode, size or mtime moved: the bytes may have. ctime alone is not: another node of this
    build hard-linking the same file (an HF blob two downloads adopt) moves it."""
    return (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns)


LINK_FAILURES = frozenset({errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOSYS, errno.ETXTBSY})
"""Errors that mean "this link type does not work here": try the next one."""


def _place(src: Path, tmp: Path, types: Sequence[str]) -> str:
    """Put src's bytes at tmp by the first link type that works; returns its name."""
    last: OSError | None = None
    for how in types:
        try:
            if how == "reflink":
                reflink(src, tmp)
            elif how == "hardlink":
                os.link(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            return how
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if how == "copy" or e.errno not in LINK_FAILURES:
                raise
            last = e
    raise StepError(f"cannot store {src} in the cache by {', '.join(types)}: {last.strerror if last else 'no link type'} (add 'copy' to --link-type)")


def merge_adopted(written: Manifest, adopted: dict[str, FileEntry]) -> Manifest:
    """A step's output: the files it wrote plus those it adopted (a name may be only one)."""
    both = sorted(set(written.files) & set(adopted))
    if both:
        raise StepError(f"step both wrote and adopted {both[0]}")
    return Manifest({**written.files, **adopted})
