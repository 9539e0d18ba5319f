"""The CPU attention kernels of a RedPajama-3B-shaped library (32 heads of 80, float16, pages of 16):
TVM's scalar kernels with their heads in parallel (what libraries had before compile step version 8)
against the vector kernels (`compiler/cpu_attention_kernels.py`), built here and timed in one process,
interleaved, on random inputs, with their outputs compared.

- decode: one query against `--contexts` cached tokens, hot (the same pages every call) and cold
  (cycling through 12 pools of pages, as 12 layers' caches would be: the pages come from DRAM);
- ragged prefill: a chunk's causal self-attention (32 and 128 queries);
- paged prefill: a 128-query chunk against 384 cached tokens.

    TVM_NUM_THREADS=2 python -m bench.attention [--repeat 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.common import WORK, write_json

HEADS, HEAD_DIM, PAGE, DTYPE = 32, 80, 16, "float16"


def _library() -> Any:
    import tvm
    from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu
    from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_cpu, _attention_prefill_ragged_cpu

    from mlcbuild.compiler.cpu_attention import parallel_heads, vector_kernel
    from mlcbuild.targets import resolve_target

    theirs = {
        "batch_decode_paged_kv_cpu": _attention_decode_cpu(HEADS, HEADS, HEAD_DIM, DTYPE, False, {}, PAGE),
        "batch_prefill_paged_kv_cpu": _attention_prefill_cpu(HEADS, HEADS, HEAD_DIM, DTYPE, False, {}, PAGE),
        "batch_prefill_ragged_kv": _attention_prefill_ragged_cpu(HEADS, HEADS, HEAD_DIM, HEAD_DIM, DTYPE, {}),
    }
    funcs = {}
    for name, func in theirs.items():
        funcs[f"before_{name}"] = parallel_heads(func).with_attr("global_symbol", f"before_{name}")
        funcs[f"after_{name}"] = vector_kernel(name, func).with_attr("global_symbol", f"after_{name}")
    target = tvm.target.Target(resolve_target("llvm", None).tvm_target_config())
    return tvm.compile(tvm.IRModule(funcs), target=target)


def _pages(rng: Any, cached: int, pools: int = 1) -> tuple[list[Any], list[Any]]:
    import numpy as np

    count = (cached + PAGE - 1) // PAGE
    size = count + 4
    pool = [rng.standard_normal((size, 2, HEADS, PAGE, HEAD_DIM)).astype(DTYPE) for _ in range(pools)]
    table = [np.array([0, count], "int32"), rng.permutation(size)[:count].astype("int32"), np.array([cached - (count - 1) * PAGE], "int32")]
    return pool, table


def _time(lib: Any, name: str, calls: list[list[Any]], scalars: list[Any], repeat: int) -> dict[str, Any]:
    """Median ms per call of before_/after_ `name` over `calls` (argument lists, cycled), and the
    largest difference of their outputs (the last two arrays of each call)."""
    import numpy as np
    import tvm

    dev = tvm.cpu()
    out: dict[str, Any] = {}
    outputs = {}
    for who in ("before", "after"):
        f = lib[f"{who}_{name}"]
        args = [[tvm.runtime.tensor(a, dev) for a in call] for call in calls]
        times = []
        for _ in range(repeat):
            for a in args:
                t0 = time.perf_counter()
                f(*a, *scalars)
                times.append(time.perf_counter() - t0)
        out[f"{who}_ms"] = round(1000 * float(np.median(times)), 3)
        outputs[who] = [x.numpy().astype("float32") for x in args[0][-2:]]
    out["speedup"] = round(out["before_ms"] / out["after_ms"], 2)
    diffs = []
    for before, after in zip(outputs["before"], outputs["after"]):
        seen = np.isfinite(before)
        diffs.append(float(np.abs(before[seen] - after[seen]).max()) if seen.any() else 0.0)
    out["max_abs_diff"] = max(diffs)
    return out


def main(argv: list[str]) -> dict[str, Any]:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--contexts", default="128,1000")
    args = ap.parse_args(argv)
    lib = _library()
    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(HEAD_DIM)
    rope = [np.zeros(1, "int32"), np.zeros(1, "int32")]
    results: dict[str, Any] = {}
    for cached in [int(c) for c in args.contexts.split(",")]:
        q = rng.standard_normal((1, HEADS, HEAD_DIM)).astype(DTYPE)
        outs = [np.zeros((1, HEADS, HEAD_DIM), DTYPE), np.zeros((1, HEADS), "float32")]
        for label, pools in (("hot", 1), ("cold", 12)):
            pool, table = _pages(rng, cached, pools)
            calls = [[q, p, *table, *rope, *outs] for p in pool]
            results[f"decode, {cached} cached, {label}"] = _time(lib, "batch_decode_paged_kv_cpu", calls, [0, 1.0, 1e4, scale], args.repeat)
    for n in (32, 128):
        q, k, v = (rng.standard_normal((n, HEADS, HEAD_DIM)).astype(DTYPE) for _ in range(3))
        indptr = np.array([0, n], "int32")
        call = [q, indptr, k, v, indptr, np.zeros(n, "int32"), np.zeros(1, "int32"), np.zeros((n, HEADS, HEAD_DIM), DTYPE), np.zeros((n, HEADS), "float32")]
        results[f"ragged prefill, {n} queries (causal)"] = _time(lib, "batch_prefill_ragged_kv", [call], [1, 0, 1.0, 1e4, scale], args.repeat)
    q = rng.standard_normal((128, HEADS, HEAD_DIM)).astype(DTYPE)
    pool, table = _pages(rng, 384)
    call = [q, np.array([0, 128], "int32"), pool[0], table[0], table[1], table[2], np.zeros(1, "int32"), np.zeros(128, "int32"), np.zeros((128, HEADS, HEAD_DIM), DTYPE), np.zeros((128, HEADS), "float32")]
    results["paged prefill, 128 queries, 384 cached"] = _time(lib, "batch_prefill_paged_kv_cpu", [call], [0, 0, 1.0, 1e4, scale], max(3, args.repeat // 4))
    write_json(WORK / "attention.json", results)
    for label, row in results.items():
        print(f"{label:<40} TVM's {row['before_ms']:>9.3f} ms   vector {row['after_ms']:>8.3f} ms   {row['speedup']:>6.2f}×   max |diff| {row['max_abs_diff']:.2g}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
