"""http(s):// remotes speaking Bazel's HTTP cache protocol: GET/PUT/HEAD `<base>/cas/<sha256>` and
`<base>/ac/<key>`. nginx with the dav module (`dav_methods PUT; create_full_put_path on;`) is such a
cache, so is bazel-remote (start it with `--disable_http_ac_validation`: our entries are JSON, not
Bazel's protobuf). Credentials in the URL (`https://user:token@host/`) become basic auth and are
never printed. Bodies stream both ways; no object is ever held in memory whole.
"""
from __future__ import annotations

import threading
from typing import Any, BinaryIO, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from mlcbuild.errors import redact
from mlcbuild.store.remote.base import CHUNK, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, RemoteUnavailable


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

    def get_stream(self, digest: str) -> Iterator[bytes]:
        path = f"cas/{digest}"
        try:
            with self._client.stream("GET", f"{self.base}/{path}") as response:
                if response.status_code == 404:
                    raise FileNotFoundError(digest)
                self._check(response, "GET", path)
                yield from response.iter_bytes(CHUNK)
        except self._httpx.HTTPError as e:
            raise RemoteUnavailable(redact(f"{type(e).__name__}: {e}".splitlines()[0])) from None

    def put_stream(self, digest: str, file: BinaryIO, size: int) -> None:
        def body() -> Iterator[bytes]:
            while chunk := file.read(CHUNK):
                yield chunk

        self._request("PUT", f"cas/{digest}", content=body(), headers={"Content-Length": str(size)})

    def get_action(self, key: str) -> bytes | None:
        response = self._request("GET", f"ac/{key}")
        return None if response.status_code == 404 else response.content

    def put_action(self, key: str, data: bytes) -> None:
        self._request("PUT", f"ac/{key}", content=data)
