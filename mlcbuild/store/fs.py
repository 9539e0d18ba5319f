"""File-system helpers shared by the store and the output folders: atomic writes, and OS errors
that a user can act on (disk full, read-only) turned into one line instead of a traceback."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + rename in the same folder: readers see the old or the new file,
    never a partial one, and the temp file is gone on every error path."""
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
