"""A local HTTP server that speaks enough of the Hugging Face Hub API for the real client.

No machine here reaches the Hub, so download code is exercised against this server through
HF_ENDPOINT: `HfApi().model_info`, `list_repo_tree`, `hf_hub_download` and `snapshot_download`
all run unmodified. Repos come from local folders and get fake, deterministic commit shas.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".pt", ".gguf")

_INFO_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN_RE = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})/(?P<name>[^/]+)$")
_PATHS_INFO_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")


@dataclass(frozen=True)
class Blob:
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    gated: bool = False
    tokens: frozenset[str] = frozenset()


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    served: str | None = None
    """Repo path of the file whose bytes this request returned (a GET that downloaded content)."""


class HubError(Exception):
    """An HTTP error the way the Hub reports it: status + X-Error-Code / X-Error-Message headers."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit


class FakeHub:
    """The server plus its repos; thread-safe so the client's parallel downloads are fine."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, lfs_redirect: bool = True):
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_redirect = lfs_redirect
        self._lfs: dict[str, Blob] = {}
        self.corrupted: set[str] = set()
        """LFS sha256s whose bytes are served with the last byte flipped (same size): a bad download."""
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._cdn = ThreadingHTTPServer((host, 0), _make_handler(self))
        for server in (self._server, self._cdn):
            server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        """A second origin for LFS blobs, so the client treats it like the Hub's CDN (no auth, no follow)."""
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        for name, server in (("fakehub", self._server), ("fakehub-cdn", self._cdn)):
            thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._server, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(
        self,
        repo_id: str,
        folder: Path | str | None = None,
        branch: str = "main",
        *,
        files: dict[str, bytes] | None = None,
        gated: bool = False,
        tokens: Iterable[str] = (),
    ) -> str:
        """Commit a folder's files (or `files`) onto `branch`; returns the new commit sha.

        Adding again to the same branch moves it; older commits stay downloadable by sha.
        A gated repo serves metadata to anyone but files only to requests bearing one of `tokens`.
        """
        content: dict[str, Blob] = {}
        if folder is not None:
            root = Path(folder)
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    content[p.relative_to(root).as_posix()] = Blob(p.read_bytes())
        for name, data in (files or {}).items():
            content[name] = Blob(data)
        with self._lock:
            repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
            repo.gated = repo.gated or gated
            repo.tokens = repo.tokens | frozenset(tokens)
            parent = repo.branches.get(branch, "")
            h = hashlib.sha1(f"{repo_id}\0{parent}\0".encode())
            for name in sorted(content):
                h.update(f"{name}\0{content[name].sha256}\0".encode())
            sha = h.hexdigest()
            repo.commits[sha] = content
            repo.branches[branch] = sha
            self._lfs.update({b.sha256: b for n, b in content.items() if n.endswith(LFS_SUFFIXES)})
        return sha

    def count(self, method: str | None = None, contains: str = "") -> int:
        """How many requests matched, e.g. count("GET", "/resolve/") to prove a cache hit."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and contains in r.path
            )

    def downloads(self) -> list[str]:
        """Repo paths whose bytes were served, in order: what the client really fetched."""
        with self._lock:
            return [r.served for r in self.requests if r.served]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def lfs_blob(self, sha256: str) -> Blob:
        blob = self._lfs.get(sha256)
        if blob is None:
            raise HubError(404, None, "No such object")
        return blob

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _repo(self, repo_id: str) -> FakeRepo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: FakeRepo, revision: str) -> tuple[str, dict[str, Blob]]:
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, repo.commits[sha]

    def _check_access(self, repo: FakeRepo, authorization: str | None) -> None:
        if not repo.gated:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise HubError(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
        if token not in repo.tokens:
            raise HubError(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.url}/{repo.repo_id} to ask for access.",
            )

    def model_info(self, repo_id: str, revision: str, blobs: bool = False) -> dict:
        """Like the Hub: `?blobs=true` adds each sibling's blobId, size and lfs {sha256, size, pointerSize}."""
        repo = self._repo(repo_id)
        sha, files = self._commit(repo, revision)
        return {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "tags": [],
            "library_name": "transformers",
            "siblings": [self._sibling(name, files[name]) if blobs else {"rfilename": name} for name in sorted(files)],
        }

    @staticmethod
    def _sibling(name: str, blob: Blob) -> dict:
        entry: dict = {"rfilename": name, "blobId": blob.git_oid, "size": len(blob.data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": 134}
        return entry

    def paths_info(self, repo_id: str, revision: str, paths: list[str]) -> list[dict]:
        """POST /api/models/{repo}/paths-info/{rev}: the tree entries of the named files."""
        repo = self._repo(repo_id)
        _, files = self._commit(repo, revision)
        wanted = set(paths)
        return [e for e in self.tree(repo_id, revision, "", True) if e["path"] in wanted and e["path"] in files]

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        repo = self._repo(repo_id)
        _, files = self._commit(repo, revision)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):].split("/")
            if len(rest) > 1:
                for depth in range(1, len(rest) if recursive else 2):
                    folder = prefix + "/".join(rest[:depth])
                    entries.setdefault(
                        folder,
                        {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                         "path": folder},
                    )
                if not recursive:
                    continue
            blob = files[name]
            entry = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            entries[name] = entry
        return [entries[k] for k in sorted(entries)]

    def resolve(self, repo_id: str, revision: str, path: str, authorization: str | None) -> tuple[str, Blob]:
        repo = self._repo(repo_id)
        sha, files = self._commit(repo, revision)
        self._check_access(repo, authorization)
        blob = files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}", commit=sha)
        return sha, blob


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            self._request = Request(self.command, split.path, self.headers.get("Authorization"))
            hub._log(self._request)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            try:
                if m := _PATHS_INFO_RE.match(split.path):
                    paths = parse_qs(body).get("paths", [])
                    self._json(200, hub.paths_info(unquote(m["repo"]), unquote(m["rev"]), paths), False)
                else:
                    raise HubError(404, None, "Not found")
            except HubError as e:
                self._error(e, False)

        def _dispatch(self, head: bool) -> None:
            split = urlsplit(self.path)
            self._request = Request(self.command, split.path, self.headers.get("Authorization"))
            hub._log(self._request)
            try:
                if m := _TREE_RE.match(split.path):
                    recursive = parse_qs(split.query).get("recursive", ["false"])[0].lower() == "true"
                    body = hub.tree(unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"] or ""), recursive)
                    self._json(200, body, head)
                elif m := _INFO_RE.match(split.path):
                    blobs = parse_qs(split.query).get("blobs", ["false"])[0].lower() == "true"
                    self._json(200, hub.model_info(unquote(m["repo"]), unquote(m["rev"] or "main"), blobs), head)
                elif m := _RESOLVE_RE.match(split.path):
                    sha, blob = hub.resolve(
                        unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]), self.headers.get("Authorization")
                    )
                    path = unquote(m["path"])
                    if hub.lfs_redirect and path.endswith(LFS_SUFFIXES):
                        self._redirect(sha, path, blob, head)
                    else:
                        self._file(sha, path, blob, head)
                elif m := _CDN_RE.match(split.path):
                    self._file(None, unquote(m["name"]), hub.lfs_blob(m["sha256"]), head)
                else:
                    raise HubError(404, None, "Not found")
            except HubError as e:
                self._error(e, head)

        def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, value: object, head: bool) -> None:
            self._send(status, {"Content-Type": "application/json"}, json.dumps(value).encode(), head)

        def _error(self, e: HubError, head: bool) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._send(e.status, headers, json.dumps({"error": e.message}).encode(), head)

        def _redirect(self, sha: str, path: str, blob: Blob, head: bool) -> None:
            """LFS files: the Hub answers 302 to a CDN URL, with the blob's etag and size in X-Linked-*."""
            headers = {
                "Location": f"{hub.cdn_url}/cdn/{blob.sha256}/{path.rsplit('/', 1)[-1]}",
                "X-Repo-Commit": sha,
                "ETag": f'"{blob.git_oid}"',
                "X-Linked-Etag": f'"{blob.sha256}"',
                "X-Linked-Size": str(len(blob.data)),
            }
            self._send(302, headers, b"", head)

        def _file(self, sha: str | None, path: str, blob: Blob, head: bool) -> None:
            data = blob.data
            if blob.sha256 in hub.corrupted:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            etag = blob.sha256 if path.endswith(LFS_SUFFIXES) else blob.git_oid
            headers = {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            if sha is not None:
                headers["X-Repo-Commit"] = sha
            if path.endswith(LFS_SUFFIXES) and sha is not None:
                headers["X-Linked-Etag"] = f'"{blob.sha256}"'
                headers["X-Linked-Size"] = str(len(data))
            status = 200
            rng = self.headers.get("Range")
            if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
                start = int(m[1])
                end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    headers["Content-Range"] = f"bytes */{len(data)}"
                    self._send(416, headers, b"", head)
                    return
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data = data[start:end + 1]
                status = 206
            if not head:
                self._request.served = path
            self._send(status, headers, data, head)

    return Handler


if __name__ == "__main__":
    import sys
    import time

    with FakeHub(port=int(sys.argv[2]) if len(sys.argv) > 2 else 0) as served:
        if len(sys.argv) > 1:
            print(served.add_repo("local/model", sys.argv[1]))
        print(served.url, flush=True)
        while True:
            time.sleep(3600)
