"""Remote cache: (1) the demo recipe rebuilt into a fresh local cache from a remote hit vs built from
scratch; (2) one ≥1 GiB object downloaded from moto's S3 server through mlcbuild's verified fetch
vs s3fs's own `get` of the same object, with the peak RSS of each (each in its own process; the
server runs in a third, so its memory is not counted)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, WORK, run

ROOT = WORK / "remote"
BIG_BYTES = int(os.environ.get("MLCBUILD_BENCH_REMOTE_BYTES", 1 << 30))
BUCKET = "bench"
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(port: int) -> subprocess.Popen:
    from tests.remote_servers import wait_for_port

    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **AWS},
    )
    wait_for_port(port)
    return proc


def _url(port: int) -> str:
    return f"s3://{BUCKET}/cache?endpoint_url=http://127.0.0.1:{port}"


def timed_build(recipe: Path, cache: Path, remote: str | None) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(recipe.parent / "dist", ignore_errors=True)
    args = [sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache)]
    args += ["--remote", remote] if remote else []
    start = time.perf_counter()
    run([*args, "build", str(recipe)], env={**AWS, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def rebuild_from_remote(port: int) -> dict:
    project = ROOT / "project"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(REPO / "recipes", project)
    recipe = project / "demo.yaml"
    local = timed_build(recipe, ROOT / "cache-local", None)
    write_through = timed_build(recipe, ROOT / "cache-a", _url(port))
    fetched = timed_build(recipe, ROOT / "cache-b", _url(port))
    return {
        "recipe": "recipes/demo.yaml (2 quantizations, llvm)",
        "build_from_scratch_s": round(local, 2),
        "build_with_write_through_s": round(write_through, 2),
        "rebuild_from_remote_hit_s": round(fetched, 2),
        "speedup": round(local / fetched, 1),
    }


def _big_object() -> tuple[Path, str]:
    path = ROOT / "big.bin"
    marker = ROOT / "big.sha256"
    if path.exists() and marker.exists() and path.stat().st_size == BIG_BYTES:
        return path, marker.read_text()
    h = hashlib.sha256()
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        for i in range(0, BIG_BYTES, len(block)):
            chunk = (block[: BIG_BYTES - i] if BIG_BYTES - i < len(block) else block)
            chunk = i.to_bytes(8, "little") + chunk[8:]
            h.update(chunk)
            f.write(chunk)
    marker.write_text(h.hexdigest())
    return path, h.hexdigest()


def child(mode: str, port: int, digest: str, size: int, out: str) -> None:
    """Runs in its own process: one download, then prints seconds and peak RSS."""
    os.environ.update(AWS)
    shutil.rmtree(out, ignore_errors=True)
    if mode == "mlcbuild":
        from mlcbuild.store.cas import ActionResult, Store
        from mlcbuild.store.manifest import FileEntry, Manifest, sha256_json
        from mlcbuild.store.remote import RemoteCache
        from mlcbuild.store.remote.signing import seal

        remote = RemoteCache(_url(port))
        preimage = {"kind": "bench"}  # a remote entry's preimage must hash to its key
        key = sha256_json(preimage)
        result = ActionResult(key, Manifest({"big.bin": FileEntry(digest, size)}), preimage)
        remote.backend.put_action(key, seal(result.to_json(), None))
        start, cpu_start = time.perf_counter(), _cpu()
        got = remote.fetch_into(Store(out), key)
        assert got is not None and remote.stats.fetched_bytes == size
    else:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True)
        os.makedirs(out)
        start, cpu_start = time.perf_counter(), _cpu()
        concurrency = {"s3fs": None, "s3fs-sequential": 1}[mode]
        fs.get(f"{BUCKET}/cache/cas/{digest}", f"{out}/big.bin", max_concurrency=concurrency)
        assert os.path.getsize(f"{out}/big.bin") == size
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": _peak_rss()}))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss() -> int:
    """VmHWM: this process's own peak (ru_maxrss on Linux carries the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def download_vs_s3fs(port: int) -> dict:
    from mlcbuild.store.remote import open_backend

    path, digest = _big_object()
    os.environ.update(AWS)
    with open(path, "rb") as f:  # s3fs's concurrent put_file gets HTTP 500s from moto at this size
        open_backend(_url(port)).put_stream(digest, f, BIG_BYTES)
    runs: dict[str, list[dict]] = {"mlcbuild": [], "s3fs": [], "s3fs-sequential": []}
    for _ in range(3):
        for mode in runs:
            result = run(
                [sys.executable, "-m", "bench.remote", "--child", mode, str(port), digest, str(BIG_BYTES),
                 str(ROOT / f"dl-{mode}")],
                cwd=REPO,
                env={"PYTHONPATH": str(REPO)},
            )
            runs[mode].append(json.loads(result.stdout.strip().splitlines()[-1]))
            shutil.rmtree(ROOT / f"dl-{mode}", ignore_errors=True)
    best = {mode: min(r["seconds"] for r in rs) for mode, rs in runs.items()}
    mib = BIG_BYTES / (1 << 20)
    return {
        "object_bytes": BIG_BYTES,
        "mlcbuild_MiB_s": round(mib / best["mlcbuild"], 1),
        "s3fs_get_MiB_s": round(mib / best["s3fs"], 1),
        "s3fs_get_one_stream_MiB_s": round(mib / best["s3fs-sequential"], 1),
        "ratio_vs_s3fs": round(best["s3fs"] / best["mlcbuild"], 2),
        "ratio_vs_s3fs_one_stream": round(best["s3fs-sequential"] / best["mlcbuild"], 2),
        **{
            f"{mode.replace('-', '_')}_cpu_s": round(min(r["cpu_seconds"] for r in rs), 2)
            for mode, rs in runs.items()
        },
        **{
            f"{mode.replace('-', '_')}_peak_rss_MiB": round(max(r["peak_rss_bytes"] for r in rs) / (1 << 20))
            for mode, rs in runs.items()
        },
        "note": "mlcbuild verifies sha256 while streaming and ingests into the store; s3fs get only writes the file;"
        " s3fs get defaults to 10 concurrent 50 MiB ranged GETs",
    }


def main() -> dict:
    from tests.remote_servers import free_port

    ROOT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_moto(port)
    try:
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **_boto_kwargs()).create_bucket(Bucket=BUCKET)
        results = {"download": download_vs_s3fs(port)}
        if "--download-only" not in sys.argv:
            results["rebuild"] = rebuild_from_remote(port)
        return results
    finally:
        server.terminate()
        server.wait()


def _boto_kwargs() -> dict:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        print(json.dumps(main(), indent=2))
