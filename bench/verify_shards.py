"""Cost of the runtime's shard integrity check: first load (md5 of every shard) vs a repeated load
(stat-trusted). `python -m bench.verify_shards [MiB]`."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(mib: int = 512) -> dict[str, float]:
    import numpy as np

    from mlcbuild.artifact.tensor_cache import TensorCacheIndex
    from mlcbuild.weights.tensor_cache import TensorCacheWriter

    root = Path(tempfile.mkdtemp(prefix="mlcbuild-verify-bench-"))
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    try:
        writer = TensorCacheWriter(root / "model")
        rng = np.random.default_rng(0)
        for i in range(mib // 8):
            writer.add(f"t{i}", rng.integers(0, 2**31, size=(2048, 1024), dtype=np.uint32))
        writer.finish({})
        past = time.time() - 60
        for shard in (root / "model").glob("*.bin"):
            os.utime(shard, (past, past))
        result = {}
        for label in ("first_load_ms", "repeat_load_ms"):
            t = time.perf_counter()
            TensorCacheIndex.read(root / "model").verify()
            result[label] = round((time.perf_counter() - t) * 1000, 1)
        result["MiB"] = mib
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 512))
