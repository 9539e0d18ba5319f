"""The remote cache against real servers on 127.0.0.1: moto's S3 server (through s3fs), Debian's
nginx with WebDAV PUT (Bazel's HTTP cache protocol), and a plain folder. Machine A builds the
tiny recipe once (the session's only compile) and writes through to S3; every other test starts
from a fresh local cache and reads A's results from a remote."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.manifest import Manifest, canonical_json, sha256_json
from mlcbuild.store.remote import RemoteCache, open_backend
from mlcbuild.store.remote import signing
from test_build import write_recipe as build_recipe

try:
    from remote_servers import AWS_ENV, Moto, Nginx, free_port
except ImportError:
    from tests.remote_servers import AWS_ENV, Moto, Nginx, free_port

REPO = Path(__file__).resolve().parent.parent
HF_SECRET = "hf_mustNeverLeakTokenf00dfeed"
URL_SECRET = "pw-must-never-leak-c0ffee"
SECRETS = [HF_SECRET, URL_SECRET, AWS_ENV["AWS_SECRET_ACCESS_KEY"]]

pytestmark = pytest.mark.slow


# --- helpers ------------------------------------------------------------------------------------
def write_recipe(folder: Path) -> Path:
    return build_recipe(folder, overrides={"context_window_size": 256, "prefill_chunk_size": 64, "max_batch_size": 1})


def mlcbuild(*args: str, cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **AWS_ENV, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "300", **(env or {})}
    for name in ("MLCBUILD_REMOTE", "MLCBUILD_SIGNING_KEY", "MLCBUILD_TRUSTED_KEYS", "MLCBUILD_REMOTE_READ_ONLY"):
        if name not in (env or {}):
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=full_env, timeout=600
    )


def built_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("built ")]


def fetched_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("pulled ")]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mlcbuild: error:")]


def warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mlcbuild: warning:")]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """The artifact files; the output folder's record of what mlcbuild placed holds this machine's
    inodes, and only a build with a signing key (machine A) signs its provenance."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".mlcbuild-placed.json" and not p.name.endswith(".provenance.dsse.json")
    }


def new_key(path: Path) -> object:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key


def seed(remote_url: str, cache: Path, **options: object) -> RemoteCache:
    """Push every result of a local cache to a remote, as a finished build would have."""
    store = Store(cache)
    remote = RemoteCache(remote_url, **options)
    for result in store.iter_actions():
        assert remote.push(store, result), remote.url
    remote.close()
    return remote


def entry_keys(store: Store) -> dict[str, str]:
    """node kind -> key of its result, in a cache holding one build of the tiny recipe."""
    return {r.preimage["kind"]: r.key for r in store.iter_actions()}


def graph_of(recipe: Path, store: Store):
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe

    return plan([load_recipe(recipe)], store, PlanOptions())


def build_in_process(recipe: Path, cache: Path, remote: RemoteCache, reporter=None, skip_compile: bool = True):
    """The real executor and steps, without the compile node (the session compiles once, in A)."""
    from mlcbuild.execute.base import NullReporter
    from mlcbuild.execute.local import LocalExecutor

    store = Store(cache)
    graph = graph_of(recipe, store)
    wanted = {n.id for n in graph.nodes.values() if not (skip_compile and n.kind == "compile")}
    executor = LocalExecutor(store, jobs=1, reporter=reporter or NullReporter(), remote=remote)
    return executor.run(graph, wanted)


def assert_consistent(backend_root: Path) -> None:
    """Every entry's objects are present and hash to their names; nothing half-written is left."""
    objects = backend_root / "cas"
    for path in objects.iterdir():
        assert not path.name.endswith(".tmp") and not path.name.startswith(".tmp-"), f"leftover temp file {path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    for path in (backend_root / "ac").iterdir():
        assert not path.name.endswith(".tmp") and not path.name.startswith(".tmp-"), f"leftover temp file {path}"
        entry = signing.unseal(path.read_bytes(), None)
        for item in entry["manifest"]["files"].values():
            assert (objects / item["digest"]).is_file()


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server():
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = Moto.start()
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    server = Nginx.start(tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def machine_a(tmp_path_factory, moto_server):
    """A signs and writes through to S3 while it builds, with an HF token and AWS secrets in its env."""
    root = tmp_path_factory.mktemp("machine-a")
    recipe = write_recipe(root / "project")
    key_file = root / "signing.pem"
    key = new_key(key_file)
    remote = moto_server.bucket("machine-a")
    cache = root / "cache"
    result = mlcbuild(
        "--remote", remote, "build", str(recipe),
        cache=cache, env={"MLCBUILD_SIGNING_KEY": str(key_file), "HF_TOKEN": HF_SECRET},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    nodes = len(graph_of(recipe, Store(cache)).nodes)
    assert len(built_lines(result)) == nodes, result.stderr
    assert f"{nodes} results pushed" in result.stderr, result.stderr
    return SimpleNamespace(
        root=root, recipe=recipe, cache=cache, dist=recipe.parent / "dist", remote=remote, key=key,
        trusted=signing.public_key_text(key.public_key()), outputs=[result], nodes=nodes,
    )


def fresh_project(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "project")


# --- a fresh machine builds nothing --------------------------------------------------------------
def test_fresh_cache_builds_nothing_from_s3_and_outputs_match(machine_a, tmp_path):
    recipe = fresh_project(tmp_path)
    result = mlcbuild(
        "--remote", machine_a.remote, "build", str(recipe),
        cache=tmp_path / "cache", env={"MLCBUILD_TRUSTED_KEYS": machine_a.trusted, "HF_TOKEN": HF_SECRET},
    )
    machine_a.outputs.append(result)
    assert result.returncode == 0, result.stderr
    assert built_lines(result) == [] and warnings(result) == [], result.stderr
    assert len(fetched_lines(result)) == machine_a.nodes
    assert tree_bytes(recipe.parent / "dist") == tree_bytes(machine_a.dist)
    again = mlcbuild("build", str(recipe), cache=tmp_path / "cache")
    assert f"up to date: {machine_a.nodes} nodes cached" in again.stdout


def test_s3_entries_are_signed_and_big_objects_go_multipart(machine_a, moto_server, monkeypatch):
    client = moto_server.client()
    listed = client.list_objects_v2(Bucket="machine-a", Prefix="cache/ac/")["Contents"]
    assert len(listed) == machine_a.nodes
    envelope = json.loads(client.get_object(Bucket="machine-a", Key=listed[0]["Key"])["Body"].read())
    assert envelope["signatures"][0]["keyid"] == signing.key_id(machine_a.key.public_key())

    import mlcbuild.store.remote.s3 as s3

    monkeypatch.setattr(s3, "PART_SIZE", 5 << 20)
    data = os.urandom(12 << 20)
    digest = hashlib.sha256(data).hexdigest()
    backend = open_backend(moto_server.bucket("multipart"))
    backend.put_stream(digest, io.BytesIO(data), len(data))
    etag = client.head_object(Bucket="multipart", Key=f"cache/cas/{digest}")["ETag"]
    assert int(etag.strip('"').rpartition("-")[2]) >= 2, etag  # an ETag ending in -N: N parts
    assert b"".join(backend.get_stream(digest)) == data


@pytest.mark.parametrize("variable", ["MLCBUILD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"])
def test_s3_endpoint_from_the_environment(moto_server, monkeypatch, variable):
    bucket = f"env-{variable.lower().replace('_', '-')}"
    moto_server.bucket(bucket)
    monkeypatch.setenv(variable, moto_server.endpoint)
    backend = open_backend(f"s3://{bucket}/cache")
    backend.put_action("a" * 64, b"entry")
    assert backend.get_action("a" * 64) == b"entry"
    stored = moto_server.client().get_object(Bucket=bucket, Key="cache/ac/" + "a" * 64)["Body"].read()
    assert stored == b"entry"


def test_nginx_http_cache_push_then_fresh_build(machine_a, nginx, tmp_path):
    url = nginx.url(f"ci:{URL_SECRET}")
    push = mlcbuild("--remote", url, "cache", "push", str(machine_a.recipe), cache=machine_a.cache)
    machine_a.outputs.append(push)
    assert push.returncode == 0, push.stderr + push.stdout
    assert f"pushed {machine_a.nodes} results" in push.stdout
    again = mlcbuild("--remote", url, "cache", "push", str(machine_a.recipe), cache=machine_a.cache)
    assert "(0 objects" in again.stdout, again.stdout
    assert_consistent(nginx.www / "cache")

    recipe = fresh_project(tmp_path)
    result = mlcbuild("--remote", url, "build", str(recipe), cache=tmp_path / "cache")
    machine_a.outputs.append(result)
    assert result.returncode == 0, result.stderr
    assert built_lines(result) == [] and len(fetched_lines(result)) == machine_a.nodes, result.stderr
    assert tree_bytes(recipe.parent / "dist") == tree_bytes(machine_a.dist)


def test_matrix_affected_asks_an_s3_remote(machine_a, tmp_path):
    recipe = fresh_project(tmp_path)
    args = ["matrix", str(recipe), "--affected", "--format", "json"]
    cached = mlcbuild("--remote", machine_a.remote, *args, cache=tmp_path / "cache")
    assert cached.returncode == 0 and json.loads(cached.stdout)["cells"] == [], cached.stderr
    (tmp_path / "empty-remote" / "cas").mkdir(parents=True)
    empty = mlcbuild("--remote", str(tmp_path / "empty-remote"), *args, cache=tmp_path / "cache")
    assert empty.returncode == 0 and len(json.loads(empty.stdout)["cells"]) == 2, empty.stderr + empty.stdout


# --- bad remote objects ------------------------------------------------------------------------
def _convert_shard(store: Store) -> str:
    convert = next(r for r in store.iter_actions() if r.preimage["kind"] == "convert")
    return next(e.digest for rel, e in convert.manifest.files.items() if rel.startswith("params_shard"))


def test_flipped_byte_in_s3_object_is_caught_and_node_rebuilt(machine_a, moto_server, tmp_path):
    url = moto_server.bucket("flipped")
    seed(url, machine_a.cache)
    digest = _convert_shard(Store(machine_a.cache))
    client = moto_server.client()
    data = bytearray(client.get_object(Bucket="flipped", Key=f"cache/cas/{digest}")["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket="flipped", Key=f"cache/cas/{digest}", Body=bytes(data))

    recipe = fresh_project(tmp_path)
    result = mlcbuild("--remote", url, "build", str(recipe), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert [line.split(" (")[0].split(" in ")[0] for line in built_lines(result)] == ["built convert tiny q0f32"], result.stderr
    lines = warnings(result)
    assert len(lines) == 1 and "corrupt" in lines[0] and digest[:12] in lines[0], result.stderr
    assert tree_bytes(recipe.parent / "dist") == tree_bytes(machine_a.dist)
    repaired = client.get_object(Bucket="flipped", Key=f"cache/cas/{digest}")["Body"].read()
    assert hashlib.sha256(repaired).hexdigest() == digest, "the rebuild re-uploads the object the remote had wrong"


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_missing_object_in_folder_remote(machine_a, tmp_path, damage):
    remote_dir = tmp_path / "remote"
    seed(str(remote_dir), machine_a.cache)
    digest = _convert_shard(Store(machine_a.cache))
    target = remote_dir / "cas" / digest
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        target.unlink()
    seen: list[str] = []
    remote = RemoteCache(f"file://{remote_dir}", warn=seen.append)
    report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", remote)
    assert report.ok
    statuses = {o.node.kind: o.status for o in report.outcomes.values()}
    assert statuses == {"download": "cached", "convert": "built", "gen-config": "cached"}
    assert len(seen) == 1 and digest[:12] in seen[0]
    assert ("expected" in seen[0]) if damage == "truncate" else ("missing" in seen[0])
    store = Store(tmp_path / "cache")
    assert store.verify() == []
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


# --- the remote goes away ------------------------------------------------------------------------
class StopAfterFirst:
    """A reporter that takes the remote down as soon as the first node is done."""

    def __init__(self, stop):
        self.stop = stop
        self.done: list[str] = []

    def started(self, node):
        pass

    def progress(self, node, fraction, message):
        pass

    def finished(self, outcome):
        if not self.done:
            self.stop()
        self.done.append(outcome.status)


def test_nginx_stopped_mid_build_the_build_still_succeeds(tmp_path):
    server = Nginx.start(tmp_path / "nginx")
    seen: list[str] = []
    remote = RemoteCache(server.url(), warn=seen.append)
    try:
        reporter = StopAfterFirst(server.stop)
        report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", remote, reporter)
    finally:
        server.stop()
    assert report.ok and reporter.done == ["built"] * len(report.outcomes)
    assert len(seen) == 1 and "unavailable" in seen[0], seen
    assert remote.down and remote.stats.uploaded_entries == 1
    assert_consistent(server.www / "cache")


def test_s3_stopped_mid_fetch_the_rest_builds_locally(machine_a, tmp_path):
    server = Moto.start()
    try:
        url = f"s3://mid-fetch/cache?endpoint_url={server.endpoint}"
        server.bucket("mid-fetch")
        seed(url, machine_a.cache)
        seen: list[str] = []
        remote = RemoteCache(url, warn=seen.append)
        reporter = StopAfterFirst(server.stop)
        report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", remote, reporter)
    finally:
        server.stop()
    assert report.ok and reporter.done == ["cached"] + ["built"] * (len(report.outcomes) - 1)
    assert len(seen) == 1 and "unavailable" in seen[0], seen


def test_refused_connection_is_one_warning_and_a_local_build(tmp_path):
    seen: list[str] = []
    remote = RemoteCache(f"http://ci:{URL_SECRET}@127.0.0.1:{free_port()}/cache", warn=seen.append)
    report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", remote)
    assert report.ok and report.count("built") == len(report.outcomes)
    assert len(seen) == 1 and "Connection refused" in seen[0] and URL_SECRET not in seen[0], seen
    assert "http://***@127.0.0.1" in seen[0]


def test_remote_answering_503_is_one_warning_and_a_local_build(tmp_path):
    server = Nginx.start(tmp_path / "nginx", status=503)
    seen: list[str] = []
    try:
        report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", RemoteCache(server.url(), warn=seen.append))
    finally:
        server.stop()
    assert report.ok and report.count("built") == len(report.outcomes)
    assert len(seen) == 1 and "HTTP 503" in seen[0], seen


def test_noop_build_with_a_remote_opens_no_connection_and_imports_no_client(machine_a):
    probe = (
        "import sys\n"
        "from mlcbuild.cli.main import main\n"
        f"code = main(['--cache-dir', {str(machine_a.cache)!r}, '--remote', 's3://nowhere/x?endpoint_url=http://127.0.0.1:9',"
        f" 'build', {str(machine_a.recipe)!r}])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('s3fs', 'botocore', 'httpx', 'fsspec', 'tvm')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **AWS_ENV})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- concurrent writers -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "folder"])
def test_concurrent_writers_leave_the_remote_consistent(kind, moto_server, tmp_path):
    """Eight writers race to publish different results (different objects) under one key (a
    non-reproducible step: one preimage, eight outputs)."""
    url = moto_server.bucket(f"race-{kind}") if kind == "s3" else str(tmp_path / "remote")
    preimage = {"kind": "race", "params": {}}
    key = sha256_json(preimage)
    shared = os.urandom(1 << 20)
    writers = []
    for i in range(8):
        store = Store(tmp_path / f"writer{i}")
        files = {}
        for name, data in (("shared.bin", shared), ("own.bin", os.urandom((256 << 10) + i))):
            path = tmp_path / f"w{i}-{name}"
            path.write_bytes(data)
            files[name] = store.put_file(path, move=True)
        writers.append((store, ActionResult(key, Manifest(files), preimage, duration_s=i)))
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def write(store: Store, result: ActionResult) -> None:
        try:
            remote = RemoteCache(url, warn=lambda m: errors.append(AssertionError(m)))
            barrier.wait()
            assert remote.push(store, result)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reader = Store(tmp_path / "reader")
    got = RemoteCache(url, warn=lambda m: pytest.fail(m)).fetch_into(reader, key)
    assert got is not None and got.duration_s in range(8)
    assert reader.verify() == []
    if kind == "folder":
        assert_consistent(tmp_path / "remote")
    else:
        names = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket="race-s3")["Contents"]]
        assert len([n for n in names if "/cas/" in n]) == 9 and len([n for n in names if "/ac/" in n]) == 1


# --- signatures ---------------------------------------------------------------------------------
def _tamper(remote_dir: Path, key: str, how: str, tmp_path: Path) -> None:
    """Poison an entry: point convert's shard at another object that exists (so digests still check)."""
    path = remote_dir / "ac" / key
    envelope = json.loads(path.read_bytes())
    entry = envelope["entry"]
    files = entry["manifest"]["files"]
    shard = next(rel for rel in files if rel.startswith("params_shard"))
    files[shard] = dict(files["tensor-cache.json"])
    if how == "unsigned":
        data = signing.seal(entry, None)
    elif how == "untrusted key":
        data = signing.seal(entry, new_key(tmp_path / "attacker.pem"))
    else:
        data = canonical_json(envelope)
    path.write_bytes(data)


@pytest.mark.parametrize("how", ["unsigned", "untrusted key", "signature of other bytes"])
def test_wrongly_signed_entry_is_ignored(machine_a, tmp_path, how):
    remote_dir = tmp_path / "remote"
    seed(str(remote_dir), machine_a.cache, signing_key=machine_a.key)
    key = entry_keys(Store(machine_a.cache))["convert"]
    _tamper(remote_dir, key, how, tmp_path)
    seen: list[str] = []
    trusted = signing.load_trusted_keys(machine_a.trusted)
    remote = RemoteCache(str(remote_dir), trusted_keys=trusted, warn=seen.append, read_only=True)
    report = build_in_process(fresh_project(tmp_path), tmp_path / "cache", remote)
    assert report.ok
    assert {o.node.kind: o.status for o in report.outcomes.values()}["convert"] == "built"
    assert len(seen) == 1 and key[:12] in seen[0] and "ignored" in seen[0], seen
    convert = Store(tmp_path / "cache").get_action(key)
    assert convert is not None and convert.manifest == Store(machine_a.cache).get_action(key).manifest


def test_entry_naming_a_path_outside_its_folder_is_refused(machine_a, tmp_path):
    remote_dir = tmp_path / "remote"
    seed(str(remote_dir), machine_a.cache)
    key = entry_keys(Store(machine_a.cache))["gen-config"]
    envelope = json.loads((remote_dir / "ac" / key).read_bytes())
    files = envelope["entry"]["manifest"]["files"]
    files["../../escaped.json"] = files.pop("mlc-chat-config.json")
    (remote_dir / "ac" / key).write_bytes(signing.seal(envelope["entry"], None))
    seen: list[str] = []
    store = Store(tmp_path / "cache")
    assert RemoteCache(str(remote_dir), warn=seen.append).fetch_into(store, key) is None
    assert len(seen) == 1 and "'../../escaped.json' leaves its folder" in seen[0]
    assert store.get_action(key) is None


def test_read_only_remote_receives_nothing(machine_a, tmp_path):
    remote_dir = tmp_path / "remote"
    store = Store(machine_a.cache)
    remote = RemoteCache(str(remote_dir), read_only=True)
    assert not any(remote.push(store, r) for r in store.iter_actions())
    assert not remote_dir.exists()


def test_bad_signing_key_is_one_user_error_line(tmp_path):
    bad = tmp_path / "key.pem"
    bad.write_text("not a key\n")
    result = mlcbuild("--remote", str(tmp_path / "r"), "--signing-key", str(bad), "build", str(fresh_project(tmp_path)),
                      cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"mlcbuild: error: --signing-key: cannot read an ed25519 PEM private key from {bad}: ValueError"
    ]


def test_unknown_remote_scheme_is_one_user_error_line(tmp_path):
    result = mlcbuild("--remote", "s4://bucket/x", "build", str(fresh_project(tmp_path)), cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result) == [
        "mlcbuild: error: --remote: unknown remote URL scheme 's4://' in s4://bucket/x (use a path, file://, s3://,"
        " http(s)://, or another fsspec protocol)"
    ]


# --- secrets ------------------------------------------------------------------------------------
def test_secrets_never_appear_in_output_or_files(machine_a, nginx, moto_server, tmp_path):
    """After A's build, fetches, pushes and a down remote: grep every output, cache, dist and remote."""
    url = nginx.url(f"ci:{URL_SECRET}")
    recipe = fresh_project(tmp_path)
    down = mlcbuild(
        "--remote", f"http://ci:{URL_SECRET}@127.0.0.1:{free_port()}/c", "cache", "pull", str(recipe),
        cache=tmp_path / "cache", env={"HF_TOKEN": HF_SECRET},
    )
    pull = mlcbuild("--remote", url, "cache", "pull", str(machine_a.recipe), cache=tmp_path / "pulled")
    texts = [r.stdout + r.stderr for r in [*machine_a.outputs, down, pull]]
    assert down.returncode == 1 and "http://***@127.0.0.1" in down.stderr, down.stderr
    assert pull.returncode == 0 and f"pulled {machine_a.nodes} results" in pull.stdout, pull.stdout + pull.stderr
    folders = [machine_a.root, machine_a.cache, machine_a.dist, nginx.root, tmp_path]
    blobs = [p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()]
    client = moto_server.client()
    for bucket in client.list_buckets()["Buckets"]:
        for item in client.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            blobs.append(client.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read())
    assert len(blobs) > 30
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret
        assert not any(secret.encode() in blob for blob in blobs), secret
