"""A remote (or local) cache nobody can poison or stall (issue 19): one test per attack class, against
real folder, moto S3, nginx and a deliberately slow http.server remote on 127.0.0.1. Every remote is
seeded from the session's shared cache (tests/conftest.py: the tiny recipe, built once), and each
poisoned node is one whose local rebuild is cheap (gen-config), so no test compiles."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from mlcbuild.store.cas import Store
from mlcbuild.store.entries import MAX_ENTRY_BYTES
from mlcbuild.store.manifest import canonical_json
from mlcbuild.store.remote import RemoteCache, open_backend
from mlcbuild.store.remote import signing
from mlcbuild.store.remote.fs import LocalBackend
from test_build import write_recipe
from test_remote_cache import moto_server, seed, warnings  # noqa: F401 (moto_server: a fixture)

try:
    from remote_servers import AWS_ENV, Moto, Nginx
except ImportError:
    from tests.remote_servers import AWS_ENV, Moto, Nginx

FAST = {"MLCBUILD_REMOTE_TIMEOUT": "2", "MLCBUILD_REMOTE_MIN_RATE": "100000000"}
"""A deadline of about 2 s for an entry or a small object: what the slow-server tests wait for."""


# --- helpers ------------------------------------------------------------------------------------
def mlcbuild(*args: str, cache: Path, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI in a child, with no remote, key or rate settings from this environment but `env`'s."""
    full = {**os.environ, **AWS_ENV, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "300"}
    for name in [n for n in full if n.startswith("MLCBUILD_REMOTE") or n in ("MLCBUILD_SIGNING_KEY", "MLCBUILD_TRUSTED_KEYS")]:
        full.pop(name)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=full, timeout=timeout)


def keys_by_kind(cache: Path) -> dict[str, str]:
    return {r.preimage["kind"]: r.key for r in Store(cache).iter_actions()}


def remote_from(shared_cache: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "remote"
    seed(str(folder), shared_cache)
    return folder


def rewrite_entry(remote: Path, key: str, change) -> None:
    """Apply `change` to the entry dict at ac/<key> and store it unsigned, as a writer to the remote could."""
    path = remote / "ac" / key
    entry = json.loads(path.read_bytes())["entry"]
    change(entry)
    path.write_bytes(signing.seal(entry, None))


def drop_local_entry(cache: Path, key: str) -> None:
    """A local cache that lacks this one result, so a build asks the remote for it."""
    Store(cache).action_path(key).unlink()


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mlcbuild: error:")]


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr


DEEP = b'{"format":"mlcbuild-ac/1","entry":' + b"[" * 50_000 + b"]" * 50_000 + b"}"


# --- 1. 50k-deep JSON ---------------------------------------------------------------------------
def test_deep_json_entry_is_one_warning_in_pull_build_and_matrix(shared_cache, cache, tmp_path):
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["gen-config"]
    (remote / "ac" / key).write_bytes(DEEP)
    recipe = write_recipe(tmp_path / "project")

    pull = mlcbuild("--remote", str(remote), "cache", "pull", str(recipe), cache=tmp_path / "pulled", env={})
    no_traceback(pull)
    assert pull.returncode == 0, pull.stderr
    [line] = warnings(pull)
    assert key[:12] in line and "nested deeper than 64 levels" in line, pull.stderr

    drop_local_entry(cache, key)
    build = mlcbuild("--remote", str(remote), "build", str(recipe), "--remote-read-only", cache=cache, env={})
    no_traceback(build)
    assert build.returncode == 0, build.stderr
    assert len(warnings(build)) == 1 and "built gen-config" in build.stderr, build.stderr

    matrix = mlcbuild("--remote", str(remote), "matrix", str(recipe), "--affected", "--format", "json", cache=tmp_path / "m", env={})
    no_traceback(matrix)
    assert matrix.returncode == 0 and len(json.loads(matrix.stdout)["cells"]) >= 1, matrix.stderr


def test_deep_or_huge_local_entry_is_a_miss_and_verify_names_it(cache, tmp_path):
    key = keys_by_kind(cache)["gen-config"]
    Store(cache).action_path(key).write_bytes(DEEP)
    recipe = write_recipe(tmp_path / "project")
    build = mlcbuild("build", str(recipe), cache=cache, env={})
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr

    other = keys_by_kind(cache)["convert"]
    with open(Store(cache).action_path(other), "r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that costs no disk and must cost no memory
    verify = mlcbuild("cache", "verify", cache=cache, env={})
    no_traceback(verify)
    assert verify.returncode == 1 and f"more than the {MAX_ENTRY_BYTES} allowed" in verify.stdout + verify.stderr


# --- 2. file names ------------------------------------------------------------------------------
BAD_NAMES = {
    "too long": "x" * 300,
    "NUL": "a\x00b.json",
    "control": "new\nline.json",
    "dot-dot": "sub/../../x.json",
    "slash": "/etc/passwd",
    "file and folder": "mlc-chat-config.json/inner",
}


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_bad_file_name_in_a_remote_entry_is_a_miss(shared_cache, tmp_path, name):
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["gen-config"]

    def add(entry):
        files = entry["manifest"]["files"]
        files[BAD_NAMES[name]] = dict(files["mlc-chat-config.json"])

    rewrite_entry(remote, key, add)
    seen: list[str] = []
    store = Store(tmp_path / "cache")
    assert RemoteCache(str(remote), warn=seen.append).fetch_into(store, key) is None
    assert len(seen) == 1 and key[:12] in seen[0] and "manifest path" in seen[0], seen
    assert store.get_action(key) is None and not list(store.iter_objects())


def test_bad_file_name_in_the_local_cache_is_a_miss_and_verify_flags_it(cache, tmp_path):
    key = keys_by_kind(cache)["gen-config"]
    path = Store(cache).action_path(key)
    entry = json.loads(path.read_bytes())
    entry["manifest"]["files"]["x" * 300] = dict(entry["manifest"]["files"]["mlc-chat-config.json"])
    path.write_bytes(canonical_json(entry))
    verify = mlcbuild("cache", "verify", cache=cache, env={})
    assert verify.returncode == 1 and "is longer than a file system allows" in verify.stdout + verify.stderr, verify.stdout
    build = mlcbuild("build", str(write_recipe(tmp_path / "project")), cache=cache, env={})
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr


# --- 3. a FIFO where an object or entry should be, and a remote that trickles -----------------------
def test_fifo_in_a_folder_remote_never_blocks(shared_cache, tmp_path):
    remote = remote_from(shared_cache, tmp_path)
    keys = keys_by_kind(shared_cache)
    config = next(e.digest for rel, e in Store(shared_cache).get_action(keys["gen-config"]).manifest.files.items() if rel == "mlc-chat-config.json")
    (remote / "cas" / config).unlink()
    os.mkfifo(remote / "cas" / config)
    (remote / "ac" / keys["convert"]).unlink()
    os.mkfifo(remote / "ac" / keys["convert"])
    began = time.monotonic()
    pull = mlcbuild("--remote", str(remote), "cache", "pull", str(write_recipe(tmp_path / "project")), cache=tmp_path / "c", env={})
    assert time.monotonic() - began < 60
    no_traceback(pull)
    lines = warnings(pull)
    assert pull.returncode == 0 and len(lines) == 2, pull.stderr
    assert all("not a regular file" in line for line in lines), lines
    assert LocalBackend.from_url(str(remote)).has(config) is False


class Trickle(http.server.BaseHTTPRequestHandler):
    """Serves a folder as a Bazel HTTP cache, one byte every `delay` seconds for paths under `slow`."""

    root: Path
    slow: str = ""
    delay = 0.25

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        path = self.root / self.path.lstrip("/")
        self.send_response(200 if path.is_file() else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if self.slow and self.path.lstrip("/").startswith(self.slow):
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(self.delay)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def trickle(tmp_path):
    servers = []

    def start(root: Path, slow: str) -> str:
        handler = type("Handler", (Trickle,), {"root": root, "slow": slow})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_trickling_object_is_abandoned_at_its_deadline(shared_cache, tmp_path, trickle):
    folder = tmp_path / "www"
    seed(str(folder / "cache"), shared_cache)
    url = trickle(folder, "cache/cas/") + "/cache"
    key = keys_by_kind(shared_cache)["gen-config"]
    seen: list[str] = []
    remote = RemoteCache(url, warn=seen.append, min_rate=1e8, timeout_s=1.0)
    began = time.monotonic()
    assert remote.fetch_into(Store(tmp_path / "cache"), key) is None
    took = time.monotonic() - began
    remote.close()
    assert took < 10, took
    assert remote.down and len(seen) == 1 and "too slow" in seen[0], seen


def test_trickling_remote_build_goes_on_locally(shared_cache, cache, tmp_path, trickle):
    folder = tmp_path / "www"
    seed(str(folder / "cache"), shared_cache)
    url = trickle(folder, "cache/") + "/cache"
    drop_local_entry(cache, keys_by_kind(cache)["gen-config"])
    began = time.monotonic()
    build = mlcbuild("--remote", url, "build", str(write_recipe(tmp_path / "project")), cache=cache, env=FAST)
    took = time.monotonic() - began
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr
    [line] = warnings(build)
    assert "unavailable" in line and "too slow" in line, line
    assert took < 30, took


# --- 4. entries above the size bound --------------------------------------------------------------
@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    server = Nginx.start(tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["folder", "nginx"])
def test_huge_entry_is_refused_without_reading_it(kind, tmp_path, nginx):
    root = tmp_path / "remote" if kind == "folder" else nginx.www / f"huge-{os.getpid()}"
    key = "e" * 64
    (root / "ac").mkdir(parents=True)
    with open(root / "ac" / key, "wb") as f:
        f.truncate(1 << 30)
    url = str(root) if kind == "folder" else f"http://127.0.0.1:{nginx.port}/{root.name}"
    seen: list[str] = []
    remote = RemoteCache(url, warn=seen.append)
    tracemalloc.start()
    try:
        assert remote.get_action(key) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        remote.close()
        shutil.rmtree(root)
    assert peak < 32 << 20, peak
    assert len(seen) == 1 and ("larger than" in seen[0] or "more than" in seen[0]), seen
    assert not remote.down


def test_huge_entry_in_s3_is_refused_by_its_length(moto_server):
    moto = moto_server
    url = moto.bucket("huge-entry")
    key = "e" * 64
    moto.client().put_object(Bucket="huge-entry", Key=f"cache/ac/{key}", Body=b"{" * (MAX_ENTRY_BYTES + 1))
    seen: list[str] = []
    remote = RemoteCache(url, warn=seen.append)
    assert remote.get_action(key) is None
    remote.close()
    assert len(seen) == 1 and f"larger than {MAX_ENTRY_BYTES} bytes" in seen[0] and not remote.down, seen


def test_object_size_lie_never_fills_the_disk(shared_cache, tmp_path):
    """An entry claiming a petabyte object is refused before a byte is fetched."""
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["gen-config"]
    rewrite_entry(remote, key, lambda entry: entry["manifest"]["files"]["mlc-chat-config.json"].update(size=1 << 50))
    seen: list[str] = []
    store = Store(tmp_path / "cache")
    assert RemoteCache(str(remote), warn=seen.append).fetch_into(store, key) is None
    assert len(seen) == 1 and "free; building locally" in seen[0], seen
    assert not list(store.iter_objects())


# --- 5. memory:// and a missing S3 bucket -----------------------------------------------------------
def test_memory_remote_round_trip(shared_cache, tmp_path):
    url = f"memory://bucket-{os.getpid()}/x"
    assert open_backend(url).url == url
    seed(url, shared_cache)
    key = keys_by_kind(shared_cache)["gen-config"]
    seen: list[str] = []
    got = RemoteCache(url, warn=seen.append).fetch_into(Store(tmp_path / "cache"), key)
    assert got is not None and seen == []


def test_missing_s3_bucket_build_warns_and_push_is_one_line(moto_server, cache, tmp_path):
    moto = moto_server
    url = f"s3://no-such-bucket/cache?endpoint_url={moto.endpoint}"
    recipe = write_recipe(tmp_path / "project")
    drop_local_entry(cache, keys_by_kind(cache)["gen-config"])
    build = mlcbuild("--remote", url, "build", str(recipe), cache=cache)
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr
    [line] = warnings(build)
    assert "unavailable" in line and "no-such-bucket" in line, line

    push = mlcbuild("--remote", url, "cache", "push", str(recipe), cache=cache)
    assert push.returncode == 1, push.stderr
    no_traceback(push)
    assert warnings(push) == [] and [e[:49] for e in errors(push)] == ["mlcbuild: error: remote cache s3://no-such-bucket"], push.stderr


# --- 6. temp files of a killed push ------------------------------------------------------------------
def test_killed_upload_leaves_a_temp_file_that_gc_and_the_next_push_remove(shared_cache, tmp_path):
    remote = tmp_path / "remote"
    probe = (
        "import os, sys\n"
        "from mlcbuild.store.remote.fs import LocalBackend\n"
        f"b = LocalBackend.from_url({str(remote)!r})\n"
        "b._write(b._cas('f' * 64), lambda out: (out.write(b'half'), out.flush(), os.kill(os.getpid(), 9)))\n"
    )
    killed = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60)
    assert killed.returncode == -9
    [temp] = [p for p in (remote / "cas").iterdir()]
    assert temp.name.startswith(".tmp-") and temp.name.endswith("f" * 64), temp.name
    legacy = remote / "ac" / f"{'a' * 64}.{'b' * 32}.tmp"
    legacy.parent.mkdir()
    legacy.write_bytes(b"old")
    fresh = remote / "cas" / f".tmp-1-{int(time.time())}-abc-{'c' * 64}"
    fresh.write_bytes(b"in progress")
    hour_ago = time.time() - 3700
    for path in (temp, legacy):
        os.utime(path, (hour_ago, hour_ago))

    gc = mlcbuild("--remote", str(remote), "cache", "gc", cache=tmp_path / "cache", env={})
    assert gc.returncode == 0 and f"removed 2 stale temp files of killed uploads from {remote}" in gc.stdout, gc.stdout + gc.stderr
    assert not temp.exists() and not legacy.exists() and fresh.exists()

    os.utime(fresh, (hour_ago, hour_ago))
    seed(str(remote), shared_cache)
    assert not fresh.exists()
    assert not [p for p in (remote / "cas").iterdir() if p.name.startswith(".")]


# --- 7. entries naming files their step never writes ---------------------------------------------------
def test_poisoned_compile_entry_is_a_miss(shared_cache, tmp_path):
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["compile"]

    def poison(entry):
        files = entry["manifest"]["files"]
        [lib] = files
        files["NOTES.txt"] = dict(files[lib])
        files["tiny-q4f16_1-llvm.so"] = dict(files[lib])

    rewrite_entry(remote, key, poison)
    seen: list[str] = []
    store = Store(tmp_path / "cache")
    assert RemoteCache(str(remote), warn=seen.append).fetch_into(store, key) is None
    assert len(seen) == 1 and "never writes" in seen[0] and "compile" in seen[0], seen
    assert not list(store.iter_objects())


def test_relabelled_entry_is_refused(shared_cache, tmp_path):
    """Without its true preimage, a compile entry cannot pass for a download (which may name more)."""
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["compile"]
    rewrite_entry(remote, key, lambda entry: entry["preimage"].update(kind="download", params={}))
    seen: list[str] = []
    assert RemoteCache(str(remote), warn=seen.append).get_action(key) is None
    assert len(seen) == 1 and "does not hash to its key" in seen[0], seen


@pytest.mark.parametrize("where", ["remote", "local"])
def test_poisoned_entry_never_touches_a_users_file(shared_cache, cache, tmp_path, where):
    recipe = write_recipe(tmp_path / "project")
    first = mlcbuild("build", str(recipe), cache=cache, env={})
    assert first.returncode == 0, first.stderr
    folder = next((recipe.parent / "dist").glob("*-MLC"))
    notes = folder / "NOTES.txt"
    notes.write_text("my notes\n")
    key = keys_by_kind(cache)["gen-config"]

    def poison(entry):
        files = entry["manifest"]["files"]
        files["NOTES.txt"] = dict(files["mlc-chat-config.json"])

    if where == "remote":
        remote = remote_from(shared_cache, tmp_path)
        rewrite_entry(remote, key, poison)
        drop_local_entry(cache, key)
        args = ["--remote", str(remote), "--remote-read-only"]
    else:
        path = Store(cache).action_path(key)
        entry = json.loads(path.read_bytes())
        poison(entry)
        path.write_bytes(canonical_json(entry))
        args = []
        verify = mlcbuild("cache", "verify", cache=cache, env={})
        assert verify.returncode == 1 and "'NOTES.txt', which a gen-config step never writes" in verify.stdout + verify.stderr
    build = mlcbuild(*args, "build", str(recipe), cache=cache, env={})
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr
    assert notes.read_text() == "my notes\n"
    [line] = warnings(build)
    assert key[:12] in line and "'NOTES.txt', which a gen-config step never writes" in line, line


# --- 8. trusted keys set but empty ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_trusted_keys_is_one_error_line(tmp_path, value):
    result = mlcbuild("--remote", str(tmp_path / "r"), "build", str(write_recipe(tmp_path / "project")),
                      cache=tmp_path / "cache", env={"MLCBUILD_TRUSTED_KEYS": value})
    assert result.returncode == 2
    no_traceback(result)
    assert errors(result) == [
        "mlcbuild: error: MLCBUILD_TRUSTED_KEYS: is set but names no key (unset it to accept unsigned entries;"
        " an empty value never turns checking off)"
    ]


def test_bad_rate_settings_are_one_error_line(tmp_path):
    result = mlcbuild("--remote", str(tmp_path / "r"), "build", str(write_recipe(tmp_path / "project")),
                      cache=tmp_path / "cache", env={"MLCBUILD_REMOTE_MIN_RATE": "fast"})
    assert result.returncode == 2
    no_traceback(result)
    assert errors(result) == ["mlcbuild: error: MLCBUILD_REMOTE_MIN_RATE: must be a positive number, got 'fast'"]


# --- beyond the list ------------------------------------------------------------------------
def test_remote_text_reaches_the_terminal_escaped(shared_cache, tmp_path):
    """Key ids and keys in a remote entry are the writer's strings: a warning never carries their
    escape sequences or newlines to the terminal."""
    remote = remote_from(shared_cache, tmp_path)
    key = keys_by_kind(shared_cache)["gen-config"]
    path = remote / "ac" / key
    envelope = json.loads(path.read_bytes())
    envelope["signatures"] = [{"keyid": "\x1b]0;owned\x07\x1b[2J\nmlcbuild: ok", "sig": ""}]
    path.write_bytes(canonical_json(envelope))
    seen: list[str] = []
    trusted = signing.load_trusted_keys(signing.public_key_text(_key().public_key()))
    assert RemoteCache(str(remote), warn=seen.append, trusted_keys=trusted).get_action(key) is None
    assert len(seen) == 1 and "signed by no trusted key" in seen[0], seen
    assert "\x1b" not in seen[0] and "\n" not in seen[0] and "\x07" not in seen[0], seen


def _key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def test_fifo_in_the_local_cache_never_blocks_verify_or_build(cache, tmp_path):
    store = Store(cache)
    config = store.get_action(keys_by_kind(cache)["gen-config"]).manifest.files["mlc-chat-config.json"].digest
    path = store.object_path(config)
    path.unlink()
    os.mkfifo(path)
    verify = mlcbuild("cache", "verify", cache=cache, env={}, timeout=60)
    no_traceback(verify)
    assert verify.returncode == 1 and "not a regular file" in verify.stdout + verify.stderr, verify.stdout
    build = mlcbuild("build", str(write_recipe(tmp_path / "project")), cache=cache, env={}, timeout=120)
    no_traceback(build)
    assert build.returncode == 0 and "built gen-config" in build.stderr, build.stderr
