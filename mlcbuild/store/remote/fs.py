"""Any fsspec filesystem as a remote (FsspecBackend: through fsspec's own protocols gs:// with gcsfs,
hf://, memory://, untested beyond memory://), and a local or mounted folder (LocalBackend: NFS, a
CI volume).

Layout under the root: `cas/<digest>` and `ac/<key>`, the same as the HTTP protocol's paths, so
a folder served by a web server is also an HTTP cache.

A folder is written by temp file + rename; the temp files are named `.tmp-<pid>-<unix time>-…`, so
one left by a writer that was killed is recognisable, and the next push (or `cache gc --remote`)
removes those older than an hour. A folder is read without ever blocking: what stands where an
object should be is opened O_NONBLOCK and must be a regular file (a FIFO there is a bad object).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from mlcbuild.errors import redact
from mlcbuild.store.entries import MAX_ENTRY_BYTES
from mlcbuild.store.fs import open_regular, read_regular
from mlcbuild.store.remote.base import CHUNK, STALE_TEMP_S, InvalidObject, RemoteUnavailable, check_deadline

T = TypeVar("T")

TEMP_NAME = re.compile(r"^\.tmp-\d+-\d+-[0-9a-f]+-|^[0-9a-f]{64}\.[0-9a-f]{32}\.tmp$")
"""Upload temp files: `.tmp-<pid>-<time>-<random>-<name>`, and `<name>.<uuid>.tmp` of earlier versions."""


@dataclass
class FsspecBackend:
    fs: Any
    root: str
    url: str

    @classmethod
    def from_url(cls, url: str) -> "FsspecBackend":
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise RemoteUnavailable(f"no fsspec backend for {redact(url)}: {e}") from None
        return cls(fs, root.rstrip("/"), redact(url))

    def _cas(self, digest: str) -> str:
        return f"{self.root}/cas/{digest}"

    def _ac(self, key: str) -> str:
        return f"{self.root}/ac/{key}"

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one filesystem call; a missing file stays FileNotFoundError, a bad one InvalidObject,
        anything else means down."""
        try:
            return fn()
        except (FileNotFoundError, InvalidObject, RemoteUnavailable):
            raise
        except Exception as e:
            raise RemoteUnavailable(redact(f"{type(e).__name__}: {e}".splitlines()[0])) from None

    def has(self, digest: str) -> bool:
        try:
            self._call(lambda: self.fs.info(self._cas(digest)))
            return True
        except FileNotFoundError:
            return False

    def get_stream(self, digest: str, deadline: float | None = None) -> Iterator[bytes]:
        f = self._call(lambda: self.fs.open(self._cas(digest), "rb", block_size=CHUNK))
        try:
            while chunk := self._call(lambda: f.read(CHUNK)):
                check_deadline(deadline, f"object {digest[:12]}")
                yield chunk
        finally:
            f.close()

    def put_stream(self, digest: str, file: BinaryIO, size: int, deadline: float | None = None) -> None:
        self._write(self._cas(digest), lambda out: shutil.copyfileobj(file, out, CHUNK))

    def get_action(self, key: str, max_bytes: int = MAX_ENTRY_BYTES, deadline: float | None = None) -> bytes | None:
        def read() -> bytes:
            with self.fs.open(self._ac(key), "rb") as f:
                if isinstance(getattr(f, "size", None), int) and f.size > max_bytes:
                    raise InvalidObject(f"larger than {max_bytes} bytes ({f.size})")
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InvalidObject(f"larger than {max_bytes} bytes")
            return data

        try:
            return self._call(read)
        except FileNotFoundError:
            return None

    def put_action(self, key: str, data: bytes) -> None:
        self._write(self._ac(key), lambda out: out.write(data))

    def remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> int:
        return 0

    def _write(self, path: str, fill: Callable[[BinaryIO], object]) -> None:
        """An object store publishes a PUT whole."""

        def write() -> None:
            with self.fs.open(path, "wb") as out:
                fill(out)

        self._writing(write)

    def _writing(self, write: Callable[[], None]) -> None:
        """A write; a missing bucket or folder is the remote being unusable, not a missing object."""
        try:
            self._call(write)
        except FileNotFoundError as e:
            raise RemoteUnavailable(f"cannot write there: {e.strerror or e or 'no such bucket or folder'}") from None


@dataclass
class LocalBackend(FsspecBackend):
    """A folder: plain os calls (bounded, non-blocking reads), temp file + rename writes; no fsspec."""

    @classmethod
    def from_url(cls, url: str) -> "LocalBackend":
        path = url[len("file://"):] if url.lower().startswith("file://") else url
        root = Path(os.path.expanduser(path)).absolute()
        return cls(None, root.as_posix(), str(root))

    def has(self, digest: str) -> bool:
        try:
            return stat.S_ISREG(self._call(lambda: os.stat(self._cas(digest))).st_mode)
        except FileNotFoundError:
            return False

    def get_stream(self, digest: str, deadline: float | None = None) -> Iterator[bytes]:
        fd = self._call(lambda: _regular(open_regular, self._cas(digest)))
        with os.fdopen(fd, "rb", buffering=0) as f:
            while chunk := self._call(lambda: f.read(CHUNK)):
                check_deadline(deadline, f"object {digest[:12]}")
                yield chunk

    def get_action(self, key: str, max_bytes: int = MAX_ENTRY_BYTES, deadline: float | None = None) -> bytes | None:
        try:
            return self._call(lambda: _regular(read_regular, self._ac(key), max_bytes))
        except FileNotFoundError:
            return None

    def _write(self, path: str, fill: Callable[[BinaryIO], object]) -> None:
        folder, name = path.rsplit("/", 1)
        temp = f"{folder}/.tmp-{os.getpid()}-{int(time.time())}-{uuid.uuid4().hex[:12]}-{name}"

        def write() -> None:
            os.makedirs(folder, exist_ok=True)
            try:
                with open(temp, "wb") as out:
                    fill(out)
                os.replace(temp, path)
            except BaseException:
                if os.path.lexists(temp):
                    os.unlink(temp)
                raise

        self._writing(write)

    def remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Temp files nobody has written to for older_than_s (by mtime: a slow upload in progress
        keeps its file fresh)."""
        removed = 0
        cutoff = time.time() - older_than_s
        for sub in ("cas", "ac"):
            try:
                entries = list(os.scandir(f"{self.root}/{sub}"))
            except OSError:
                continue
            for entry in entries:
                if not TEMP_NAME.match(entry.name):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    continue
        return removed


def _regular(read: Callable[..., T], *args: Any) -> T:
    """open_regular/read_regular, their ValueError (not a regular file, too large) an InvalidObject."""
    try:
        return read(*args)
    except InvalidObject:
        raise
    except ValueError as e:
        raise InvalidObject(str(e)) from None
