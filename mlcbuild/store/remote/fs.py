"""Any fsspec filesystem as a remote: a local or mounted folder (NFS, a CI volume), and through
fsspec's own protocols gs:// (gcsfs) or hf:// (huggingface_hub), untested here.

Layout under the root: `cas/<digest>` and `ac/<key>`, the same as the HTTP protocol's paths, so
a folder served by a web server is also an HTTP cache.
"""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from mlcbuild.errors import redact
from mlcbuild.store.remote.base import CHUNK, RemoteUnavailable

T = TypeVar("T")


@dataclass
class FsspecBackend:
    fs: Any
    root: str
    url: str
    atomic_rename: bool = False
    """Local folders need write-then-rename; object stores publish a PUT atomically anyway."""

    @classmethod
    def local(cls, path: Path) -> "FsspecBackend":
        from fsspec.implementations.local import LocalFileSystem

        return cls(LocalFileSystem(), path.as_posix(), str(path), atomic_rename=True)

    @classmethod
    def from_url(cls, url: str) -> "FsspecBackend":
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise RemoteUnavailable(f"no fsspec backend for {redact(url)}: {e}") from None
        return cls(fs, root.rstrip("/")(url))

    def _cas(self, digest: str) -> str:
        return f"{self.root}/cas/{digest}"

    def _ac(self, key: str) -> str:
        return f"{self.root}/ac/{key}"

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one filesystem call; a missing file stays FileNotFoundError, anything else means down."""
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as e:
            raise RemoteUnavailable(redact(f"{type(e).__name__}: {e}".splitlines()[0])) from None

    def has(self, digest: str) -> bool:
        try:
            self._call(lambda: self.fs.info(self._cas(digest)))
            return True
        except FileNotFoundError:
            return False

    def get_stream(self, digest: str) -> Iterator[bytes]:
        f = self._call(lambda: self.fs.open(self._cas(digest), "rb", block_size=CHUNK))
        try:
            while chunk := self._call(lambda: f.read(CHUNK)):
                yield chunk
        finally:
            f.close()

    def put_stream(self, digest: str, file: BinaryIO, size: int) -> None:
        self._write(self._cas(digest), lambda out: shutil.copyfileobj(file, out, CHUNK))

    def get_action(self, key: str) -> bytes | None:
        try:
            return self._call(lambda: self.fs.cat_file(self._ac(key)))
        except FileNotFoundError:
            return None

    def put_action(self, key: str, data: bytes) -> None:
        self._write(self._ac(key), lambda out: out.write(data))

    def _write(self, path: str, fill: Callable[[BinaryIO], object]) -> None:
        def write() -> None:
            target = f"{path}.{uuid.uuid4().hex}.tmp" if self.atomic_rename else path
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            try:
                with self.fs.open(target, "wb") as out:
                    fill(out)
                if self.atomic_rename:
                    self.fs.mv(target, path)
            except BaseException:
                if self.atomic_rename and self.fs.exists(target):
                    self.fs.rm(target)
                raise

        self._call(write)
