"""http(s):// remotes speaking Bazel's HTTP cache protocol: GET/PUT/HEAD `<base>/cas/<sha256>` and
`<base>/ac/<key>`. nginx with the dav module (`dav_methods PUT; create_full_put_path on;`) is such a
cache, so is bazel-remote (start it with `--disable_http_ac_validation`: our entries are JSON, not
Bazel's protobuf). Credentials in the URL (`https://user:token@host/`) become basic auth and are
never printed. Bodies stream both ways; no object is ever held in memory whole. Each GET's
reads wait at most until the transfer's deadline, and the body is read as it arrives, so a server
that trickles bytes is abandoned at the deadline, not after one read timeout per byte.
"""
from __future__ import annotations

import threading
from typing import Any, BinaryIO, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from mlcbuild.errors import redact
from mlcbuild.store.entries import MAX_ENTRY_BYTES
from mlcbuild.store.remote.base import CHUNK, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, STALE_TEMP_S, InvalidObject, RemoteUnavailable, check_deadline


class HttpBackend:
    def __init__(self, url: str):
        import httpx

        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.url = redact(self.base)
        self._httpx = httpx
        self._auth = auth
        self._local = threading.local()

    @property
    def _client(self) -> Any:
        """One client per thread: transfers run in a pool, and each keeps its connections warm."""
        client = getattr(self._local, "client", None)
        if client is None:
            httpx = self._httpx
            client = httpx.Client(
                auth=self._auth,
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                follow_redirects=True,
            )
            self._local.client = client
        return client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, f"{self.base}/{path}", **kwargs)
        except self._httpx.HTTPError as e:
            raise RemoteUnavailable(redact(f"{type(e).__name__}: {e}".splitlines()[0])) from None
        self._check(response, method, path)
        return response

    def _check(self, response: Any, method: str, path: str) -> None:
        code = response.status_code
        if code == 404 and method in ("GET", "HEAD"):
            return
        if code >= 400:
            raise RemoteUnavailable(f"{method} /{path.split('/')[0]}/… answered HTTP {code} {response.reason_phrase}")

    def has(self, digest: str) -> bool:
        return self._request("HEAD", f"cas/{digest}").status_code == 200

    @classmethod
    def from_url(cls, url: str) -> "HttpBackend":
        return cls(url)

    def _get(self, path: str, deadline: float | None, max_bytes: int | None = None) -> Iterator[bytes]:
        """The body of GET path in CHUNK pieces, read as it arrives; FileNotFoundError on 404."""
        what = f"GET /{path.split('/')[0]}/{path.split('/')[-1][:12]}"
        timeout = self._httpx.Timeout(check_deadline(deadline, what), connect=CONNECT_TIMEOUT_S)
        try:
            with self._client.stream("GET", f"{self.base}/{path}", timeout=timeout) as response:
                if response.status_code == 404:
                    raise FileNotFoundError(path)
                self._check(response, "GET", path)
                length = response.headers.get("content-length", "")
                if max_bytes is not None and length.isdigit() and int(length) > max_bytes:
                    raise InvalidObject(f"larger than {max_bytes} bytes ({length})")
                buffer = bytearray()
                size = 0
                for piece in response.iter_bytes():
                    check_deadline(deadline, what)
                    size += len(piece)
                    if max_bytes is not None and size > max_bytes:
                        raise InvalidObject(f"larger than {max_bytes} bytes")
                    buffer += piece
                    if len(buffer) >= CHUNK:
                        chunk, buffer = buffer, bytearray()
                        yield chunk
                if buffer:
                    yield buffer
        except self._httpx.TimeoutException:
            check_deadline(deadline, what)
            raise RemoteUnavailable(f"{what} timed out") from None
        except self._httpx.HTTPError as e:
            raise RemoteUnavailable(redact(f"{type(e).__name__}: {e}".splitlines()[0])) from None

    def get_stream(self, digest: str, deadline: float | None = None) -> Iterator[bytes]:
        return self._get(f"cas/{digest}", deadline)

    def put_stream(self, digest: str, file: BinaryIO, size: int, deadline: float | None = None) -> None:
        what = f"PUT /cas/{digest[:12]}"

        def body() -> Iterator[bytes]:
            while chunk := file.read(CHUNK):
                check_deadline(deadline, what)
                yield chunk

        timeout = self._httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, write=check_deadline(deadline, what))
        try:
            self._request("PUT", f"cas/{digest}", content=body(), headers={"Content-Length": str(size)}, timeout=timeout)
        except RemoteUnavailable:
            check_deadline(deadline, what)
            raise

    def get_action(self, key: str, max_bytes: int = MAX_ENTRY_BYTES, deadline: float | None = None) -> bytes | None:
        try:
            return b"".join(self._get(f"ac/{key}", deadline, max_bytes))
        except FileNotFoundError:
            return None

    def remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> int:
        return 0

    def put_action(self, key: str, data: bytes) -> None:
        self._request("PUT", f"ac/{key}", content=data)
