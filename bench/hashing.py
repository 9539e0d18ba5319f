"""Hashing a multi-shard checkpoint folder: mlcbuild against openssl, hashlib and b3sum, warm and cold.

Warm: the shards are in the page cache (each tool runs once before timing). Cold: each shard's pages
are dropped with posix_fadvise(DONTNEED) before every run (works without root; a page that another
process pins may stay). The disk baseline is `cat` of the same cold files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from bench.common import WORK, drop_page_cache, median_wall, run

SHARDS = 4
SHARD_BYTES = 512 << 20
FOLDER = WORK / "shards"


def make_shards() -> list[Path]:
    FOLDER.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(SHARDS):
        path = FOLDER / f"model-{i:05d}-of-{SHARDS:05d}.safetensors"
        if not path.exists() or path.stat().st_size != SHARD_BYTES:
            seed = hashlib.sha256(str(i).encode()).digest()
            block = b"".join(hashlib.sha256(seed + bytes([j])).digest() for j in range(256)) * 128
            with open(path, "wb") as f:
                for _ in range(SHARD_BYTES // len(block)):
                    f.write(block)
        paths.append(path)
    return paths


def main() -> dict[str, float]:
    from mlcbuild.store.hashing import sha256_file, sha256_files

    paths = make_shards()
    size = sum(p.stat().st_size for p in paths)
    names = [str(p) for p in paths]
    b3sum = shutil.which("b3sum")
    tools = {
        "mlcbuild (shards in parallel)": lambda: sha256_files(paths),
        "mlcbuild (one shard at a time)": lambda: [sha256_file(p) for p in paths],
        "openssl dgst -sha256": lambda: run(["openssl", "dgst", "-sha256", *names]),
        "openssl, 2 processes (xargs -P2)": lambda: subprocess.run(
            ["xargs", "-P2", "-n1", "openssl", "dgst", "-sha256"], input="\n".join(names), text=True,
            capture_output=True, check=True),
        "hashlib.file_digest": lambda: [hashlib.file_digest(open(p, "rb"), "sha256") for p in paths],
        **({"b3sum (BLAKE3, all threads)": lambda: run([b3sum, *names])} if b3sum else {}),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, fn in tools.items():
        fn()
        warm = median_wall(fn, repeat=3)

        def cold_run(fn=fn) -> None:
            drop_page_cache(paths)
            fn()

        cold = median_wall(cold_run, repeat=2)
        rows[name] = {"warm_gbps": size / warm / 1e9, "cold_gbps": size / cold / 1e9}
    def cat_cold() -> None:
        drop_page_cache(paths)
        subprocess.run(["cat", *names], stdout=subprocess.DEVNULL, check=True)

    read = median_wall(cat_cold, repeat=2)
    ours = rows["mlcbuild (shards in parallel)"]
    peer = rows["openssl dgst -sha256"]
    result = {
        "bytes": size,
        "shards": SHARDS,
        "cores": os.cpu_count() or 1,
        "cold_read_gbps_cat": size / read / 1e9,
        **{f"{name}: {k}": v for name, row in rows.items() for k, v in row.items()},
        "warm_ratio_vs_openssl": ours["warm_gbps"] / peer["warm_gbps"],
        "warm_ratio_vs_openssl_2proc": ours["warm_gbps"] / rows["openssl, 2 processes (xargs -P2)"]["warm_gbps"],
        "cold_time_vs_disk_read": (size / ours["cold_gbps"] / 1e9) / read,
    }
    print(f"\nhashing {SHARDS} shards, {size / 1e9:.2f} GB, {result['cores']} cores (GB/s; higher is better)")
    print(f"  {'tool':36s} {'warm':>7s} {'cold':>7s}")
    for name, row in rows.items():
        print(f"  {name:36s} {row['warm_gbps']:7.2f} {row['cold_gbps']:7.2f}")
    print(f"  {'cat (disk read, cold)':36s} {'':>7s} {size / read / 1e9:7.2f}")
    print(f"  warm: mlcbuild / openssl = {result['warm_ratio_vs_openssl']:.2f}x,"
          f" / openssl x2 processes = {result['warm_ratio_vs_openssl_2proc']:.2f}x;"
          f" cold: mlcbuild time / cat time = {result['cold_time_vs_disk_read']:.2f}")
    return result


if __name__ == "__main__":
    main()
