"""The one small interface every remote backend speaks, what it raises, and the scheme table.

Bazel's split: objects by sha256 (`cas/<digest>`), action entries by key (`ac/<key>`). A backend
only moves bytes; checking them (digests, signatures) is RemoteCache's job, so a new backend is
one module with these methods plus one line in SCHEMES.

Every read is bounded: an entry by its size (`max_bytes`), every transfer by a `deadline`
(time.monotonic()) that RemoteCache derives from its size and a minimum rate. A backend never
blocks past it by more than one read; it raises RemoteUnavailable, and the run goes on without
the remote.
"""
from __future__ import annotations

import importlib
import time
from typing import BinaryIO, Iterator, Protocol

from mlcbuild.store.entries import MAX_ENTRY_BYTES

CHUNK = 4 << 20
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
"""A remote that does not answer a connect in seconds is down: the build goes on without it."""

STALE_TEMP_S = 3600.0
"""A temp file of an upload untouched this long belongs to a writer that died (kill -9, power)."""

SCHEMES: dict[str, str] = {
    "": "mlcbuild.store.remote.fs:LocalBackend",
    "file": "mlcbuild.store.remote.fs:LocalBackend",
    "s3": "mlcbuild.store.remote.s3:S3Backend",
    "s3a": "mlcbuild.store.remote.s3:S3Backend",
    "http": "mlcbuild.store.remote.http:HttpBackend",
    "https": "mlcbuild.store.remote.http:HttpBackend",
}
"""URL scheme -> "module:Class" with a `from_url(url)`; imported by name on first use, so this
module imports no backend (and no backend's client library) and backends import only this."""
FSSPEC_BACKEND = "mlcbuild.store.remote.fs:FsspecBackend"
"""Any other scheme fsspec knows (gs://, hf://, memory://)."""


class RemoteUnavailable(Exception):
    """The remote cannot be used right now (refused, timed out, too slow, 5xx, access denied)."""


class InvalidObject(ValueError):
    """What the remote holds where an object or entry should be is not one (a FIFO, a folder, an
    entry larger than allowed): that node is built locally, the remote stays in use."""


class Backend(Protocol):
    url: str
    """The remote's URL with credentials removed: the only form ever printed."""

    def has(self, digest: str) -> bool: ...

    def get_stream(self, digest: str, deadline: float | None = None) -> Iterator[bytes]:
        """The object's bytes in chunks; FileNotFoundError (on first iteration) if it is absent."""
        ...

    def put_stream(self, digest: str, file: BinaryIO, size: int, deadline: float | None = None) -> None:
        """Store `size` bytes read from `file`; readers never see a partial object. The deadline
        bounds the upload where the backend can (HTTP); object stores and folders rely on their
        own timeouts."""
        ...

    def get_action(self, key: str, max_bytes: int = MAX_ENTRY_BYTES, deadline: float | None = None) -> bytes | None:
        """The entry's bytes, None if absent; InvalidObject if it is larger than max_bytes."""
        ...

    def put_action(self, key: str, data: bytes) -> None: ...

    def remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove temp files of uploads that died; how many. 0 where uploads are atomic (S3, HTTP)."""
        ...


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def open_backend(url: str) -> Backend:
    """A backend for `url`: a path or file://, s3://, http(s)://, or any other fsspec protocol."""
    module, name = SCHEMES.get(scheme_of(url), FSSPEC_BACKEND).split(":")
    return getattr(importlib.import_module(module), name).from_url(url)


def check_deadline(deadline: float | None, what: str) -> float:
    """How long the next read may wait: the seconds left before `deadline` (at least half a second,
    at most READ_TIMEOUT_S; None: no deadline), or RemoteUnavailable once it has passed."""
    if deadline is None:
        return READ_TIMEOUT_S
    left = deadline - time.monotonic()
    if left <= 0:
        raise RemoteUnavailable(f"{what} was too slow (still incomplete at its deadline)")
    return min(READ_TIMEOUT_S, max(left, 0.5))
