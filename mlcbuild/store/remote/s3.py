"""s3:// remotes through s3fs: AWS or anything that speaks S3 (MinIO, Ceph, R2, moto).

Credentials and region come from the usual AWS_* variables and files (botocore's chain). The
endpoint, for S3-compatible servers: `s3://bucket/prefix?endpoint_url=http://host:9000` in the
URL, else $MLCBUILD_S3_ENDPOINT_URL, else botocore's own $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL.
Downloads stream the GET body in chunks; uploads bigger than one part go multipart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator
from urllib.parse import parse_qs, urlsplit

from mlcbuild.errors import redact
from mlcbuild.store.entries import MAX_ENTRY_BYTES
from mlcbuild.store.remote.base import CHUNK, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, InvalidObject, check_deadline
from mlcbuild.store.remote.fs import FsspecBackend

ENV_ENDPOINT = "MLCBUILD_S3_ENDPOINT_URL"
PART_SIZE = 64 << 20
RETRIES = 2


@dataclass
class S3Backend(FsspecBackend):
    @classmethod
    def from_url(cls, url: str) -> "S3Backend":
        import s3fs

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        endpoint = (query.get("endpoint_url") or [os.environ.get(ENV_ENDPOINT)])[0] or None
        fs = s3fs.S3FileSystem(
            endpoint_url=endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,
            default_block_size=PART_SIZE,
            config_kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"max_attempts": RETRIES, "mode": "standard"},
            },
        )
        fs.retries = RETRIES
        root = f"{parts.netloc}{parts.path}".rstrip("/")
        shown = f"s3://{root}" + (f" (endpoint {redact(endpoint)})" if endpoint else "")
        return cls(fs, root, shown)

    def get_stream(self, digest: str, deadline: float | None = None) -> Iterator[bytes]:
        return self._get(self._cas(digest), f"object {digest[:12]}", deadline)

    def get_action(self, key: str, max_bytes: int = MAX_ENTRY_BYTES, deadline: float | None = None) -> bytes | None:
        try:
            return b"".join(self._get(self._ac(key), f"entry {key[:12]}", deadline, max_bytes))
        except FileNotFoundError:
            return None

    def _get(self, path: str, what: str, deadline: float | None, max_bytes: int | None = None) -> Iterator[bytes]:
        """One GET; its body read in whole chunks on s3fs's event loop, the next chunk arriving while
        the caller hashes and writes this one. Each wait ends at the deadline; a body larger than
        max_bytes (by its Content-Length, or as it arrives) is an InvalidObject."""
        import asyncio

        from fsspec.asyn import sync

        loop = self.fs.loop
        bucket, key, _ = self.fs.split_path(path)
        response = self._call(
            lambda: sync(loop, self.fs._call_s3, "get_object", Bucket=bucket, Key=key, timeout=check_deadline(deadline, what))
        )
        body = response["Body"]
        if max_bytes is not None and int(response.get("ContentLength") or 0) > max_bytes:
            loop.call_soon_threadsafe(body.close)
            raise InvalidObject(f"larger than {max_bytes} bytes ({response['ContentLength']})")
        pending = asyncio.run_coroutine_threadsafe(_read_chunk(body), loop)

        def next_chunk() -> bytes:
            try:
                return pending.result(timeout=check_deadline(deadline, what))
            except TimeoutError:
                check_deadline(deadline, what)
                raise

        size = 0
        try:
            while chunk := self._call(next_chunk):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise InvalidObject(f"larger than {max_bytes} bytes")
                pending = asyncio.run_coroutine_threadsafe(_read_chunk(body), loop)
                yield chunk
        finally:
            pending.cancel()
            loop.call_soon_threadsafe(body.close)

    def put_stream(self, digest: str, file: BinaryIO, size: int, deadline: float | None = None) -> None:
        path = self._cas(digest)

        def upload() -> None:
            with self.fs.open(path, "wb", block_size=max(PART_SIZE, 5 << 20)) as out:
                while chunk := file.read(CHUNK):
                    out.write(chunk)

        self._writing(upload)


async def _read_chunk(body) -> bytes:
    """CHUNK bytes (fewer only at the end): one hop between threads per chunk, not per socket read."""
    parts = []
    size = 0
    while size < CHUNK:
        part = await body.read(CHUNK - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)
