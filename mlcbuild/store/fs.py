"""File-system helpers shared by the store and the output folders: atomic writes, and OS errors
that a user can act on (disk full, read-only) turned into one line instead of a traceback."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from mlcbuild.errors import MlcbuildError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class StoreError(MlcbuildError):
    """The cache or an output folder cannot be written (disk full, read-only) or holds a corrupt
    object: one line, exit code 1."""


def os_error_message(e: OSError, what: str, path: Path | str) -> str | None:
    """The one line for an OSError the user can fix, or None for anything else (a bug)."""
    if e.errno in NO_SPACE:
        return f"no space left on {path}"
    if e.errno in NOT_WRITABLE:
        return f"{what} {path} is not writable"
    if isinstance(e, (IsADirectoryError, NotADirectoryError, FileExistsError)):
        return f"cannot write {e.filename2 or e.filename or path}: {(e.strerror or 'in the way').lower()}"
    return None


def open_regular(path: Path | str, max_bytes: int | None = None) -> int:
    """A read-only fd of the regular file at path. A FIFO, device or folder there is a ValueError,
    found without blocking (O_NONBLOCK, then fstat), and so is a file larger than max_bytes; a
    missing one stays FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{st.st_size} bytes, more than the {max_bytes} allowed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of the regular file at path (see open_regular), never more than max_bytes read,
    even of a file that grows meanwhile."""
    with os.fdopen(open_regular(path, max_bytes), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"more than the {max_bytes} bytes allowed")
    return data


@contextlib.contextmanager
def fs_errors(what: str, path: Path | str) -> Iterator[None]:
    """Raise StoreError("no space left on PATH" / "WHAT PATH is not writable") for those OSErrors."""
    try:
        yield
    except OSError as e:
        message = os_error_message(e, what, path)
        if message is None:
            raise
        raise StoreError(message) from None


def seal(path: Path, executable: bool) -> None:
    """Make a new cache object read-only and durable before it is renamed into place."""
    os.chmod(path, 0o555 if executable else 0o444)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def replace_link(tmp: Path, dest: Path) -> None:
    """os.replace(tmp, dest) for a tmp that may be a hard link: rename(2) does nothing when both names
    are already links to one file (the same source ingested twice at once, an output already linked
    to its object), which would leave the temp link behind as a third name of the file."""
    os.replace(tmp, dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + rename in the same folder: readers see the old or the new file,
    never a partial one, and the temp file is gone on every error path. The file gets the mode
    `open()` would give it (mkstemp's 0600 would hide provenance and lock files from other users)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


OUTPUT_LOCK = ".mlcbuild.lock"


@contextlib.contextmanager
def locked_folders(folders: Iterable[Path]) -> Iterator[None]:
    """Hold `<folder>/.mlcbuild.lock` exclusively in each folder, taken in sorted order so two
    builds never deadlock: a build places its files and writes their provenance as one unit, and
    the last build to place into a folder wins whole. A folder that cannot be written is not
    locked (placing into it will say so; a no-op build that writes nothing still succeeds)."""
    with contextlib.ExitStack() as stack:
        for folder in sorted({Path(os.path.abspath(f)) for f in folders}):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(folder / OUTPUT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if os_error_message(e, "", folder) is None:
                    raise
                continue
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"mlcbuild: waiting for another build placing into {folder}", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def mount_point(path: Path | str) -> Path:
    """The mount point holding path: what "no space left on ..." should name for a temp file."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


FICLONE = 0x40049409


def reflink(src: Path | str, dest: Path | str) -> None:
    """A copy-on-write clone of src at a new file dest (`cp --reflink=always`; btrfs, xfs: instant,
    no extra space); OSError where the file system has none, and dest is then not left behind."""
    with open(src, "rb") as s:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
        except OSError:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
