"""The one small interface every remote backend speaks, and what it raises.

Bazel's split: objects by sha256 (`cas/<digest>`), action entries by key (`ac/<key>`). A backend
only moves bytes; checking them (digests, signatures) is RemoteCache's job, so a new backend is
five methods and no policy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol


CHUNK = 4 << 20
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
"""A remote that does not answer a connect in seconds is down: the build goes on without it."""


class RemoteUnavailable(Exception):
    """The remote cannot be used right now (refused, timed out, 5xx, access denied)."""


class Backend(Protocol):
    url: str
    """The remote's URL with credentials removed: the only form ever printed."""

    def has(self, digest: str) -> bool: ...

    def get_stream(self, digest: str) -> Iterator[bytes]:
        """The object's bytes in chunks; FileNotFoundError (on first iteration) if it is absent."""
        ...

    def put_stream(self, digest: str, file: BinaryIO, size: int) -> None:
        """Store `size` bytes read from `file`; readers never see a partial object."""
        ...

    def get_action(self, key: str) -> bytes | None: ...

    def put_action(self, key: str, data: bytes) -> None: ...


def open_backend(url: str) -> Backend:
    """A backend for `url`: a path or file://, s3://, http(s)://, or any other fsspec protocol."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "file"):
        from mlcbuild.store.remote.fs import FsspecBackend

        path = url[len("file://"):] if scheme == "file" else url
        return FsspecBackend.local(Path(os.path.expanduser(path)).absolute())
    if scheme in ("s3", "s3a"):
        from mlcbuild.store.remote.s3 import S3Backend

        return S3Backend.from_url(url)
    if scheme in ("http", "https"):
        from mlcbuild.store.remote.http import HttpBackend

        return HttpBackend(url)
    from mlcbuild.store.remote.fs import FsspecBackend

    return FsspecBackend.from_url(url)
