"""One decode GEMV of the RedPajama-3B shapes on q4f16_1 weights: the float path (dequantize + matmul,
`compiler/cpu_schedule.Matmul`) against the integer path (`compiler/int8_gemv.py`: quantize the
activation row to int8, then AVX2 `vpmaddubsw` or AVX-512 VNNI `vpdpbusd` dot products), built here for
each target variant and timed in one process, interleaved, best of `--repeat` (TVM's time_evaluator,
each sample the mean of `--number` calls cycling through 8 copies of the weights, so that they come
from DRAM as in a decode step). `int8x1` is one int8 digit per activation (llama.cpp's Q8_0), `int8x2`
two (what libraries use: `int8_gemv.LEVELS`); the int8 times include quantizing the activation row..

Then the same for a prefill chunk (`--prefill` rows, 32 by default): the float kernel against the
integer GEMM (`int8_gemv.gemm_func`), in GMAC/s.

    TVM_NUM_THREADS=2 python -m bench.gemv [--variants x86_64,znver4] [--repeat 15] [--number 10] [--prefill 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

SHAPES = {"qkv 2560→7680": (7680, 2560), "mlp up 2560→10240": (10240, 2560), "mlp down 10240→2560": (2560, 10240)}
COPIES = 8
"""Weight copies cycled through, so a call finds its weights in DRAM, not in cache (as in a decode step)."""


def _float_kernel(n: int, k: int, target: Any, rows: int = 1) -> Any:
    """The library's fused float kernel for `rows` activation rows: dequantize → NT_matmul → float16."""
    import tvm
    from tvm import te

    from mlcbuild.compiler.cpu_schedule import Matmul
    from mlcbuild.quantization import get_scheme
    from mlcbuild.quantization.nn_quant import _dequantize_te

    scheme = get_scheme("q4f16_1")
    x = te.placeholder((1, rows, k), "float16", name="x")
    w = te.placeholder((n, k // 8), "uint32", name="w")
    s = te.placeholder((n, k // 32), "float16", name="s")
    with target:
        deq = _dequantize_te(w, s, k, scheme)
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute((1, rows, n), lambda a, b, j: te.sum(x[a, b, r].astype("float32") * deq[j, r].astype("float32"), axis=r), name="NT_matmul")
    out = te.compute((1, rows, n), lambda a, b, j: mm[a, b, j].astype("float16"), name="cast")
    func = te.create_prim_func([x, w, s, out])
    sch = Matmul().apply(func, target, False)
    assert sch is not None, "the CPU schedule no longer takes the decode GEMV"
    return tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=target)


def _int_kernels(n: int, k: int, target: Any, isa: str, levels: int) -> Any:
    import tvm

    from mlcbuild.compiler.int8_gemv import gemm_func, gemv_func, quantize_func

    mod = tvm.IRModule({
        "quantize_q8": quantize_func(k, "float16", levels).with_attr("global_symbol", "quantize_q8"),
        "gemv": gemv_func(n, k, "float16", isa, levels).with_attr("global_symbol", "gemv"),
        "gemm": gemm_func(n, k, "float16", isa, levels).with_attr("global_symbol", "gemm"),
    })
    return tvm.compile(mod, target=target)


def main(argv: list[str]) -> dict[str, Any]:
    import numpy as np
    import tvm

    from mlcbuild.compiler.int8_gemv import Isa
    from mlcbuild.targets import resolve_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="x86_64,znver4", help="llvm target variants to build (comma list)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--prefill", type=int, default=32, help="activation rows of the prefill rows (0: decode only)")
    args = ap.parse_args(argv)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for rows in (1, args.prefill) if args.prefill else (1,):
        for label, (n, k) in SHAPES.items():
            x = tvm.runtime.tensor(rng.standard_normal((1, rows, k)).astype("float16"), dev)
            ws = [tvm.runtime.tensor(rng.integers(0, 2**32, (n, k // 8), dtype=np.uint64).astype(np.uint32), dev) for _ in range(COPIES)]
            ss = [tvm.runtime.tensor((rng.random((n, k // 32)) * 0.01).astype("float16"), dev) for _ in range(COPIES)]
            xqs = {levels: tvm.runtime.empty((rows, levels * k), "int8", dev) for levels in (1, 2)}
            zc = tvm.runtime.empty((rows, k // 8), "int32", dev)
            xd = tvm.runtime.empty((rows, k // 32), "float32", dev)
            y = tvm.runtime.empty((1, rows, n), "float16", dev)
            y2 = tvm.runtime.empty((rows, n), "float16", dev)
            x2 = x._create_view((rows, k))
            runs: dict[str, Callable[[int], Any]] = {}
            for variant in args.variants.split(","):
                target = tvm.target.Target(resolve_target("llvm", variant).tvm_target_config())
                main_fn = _float_kernel(n, k, target, rows).mod["main"]
                runs[f"float {variant}"] = lambda j, f=main_fn: f(x, ws[j], ss[j], y)
                isa = Isa.of(target)
                for levels in (1, 2) if isa is not None else ():
                    lib = _int_kernels(n, k, target, isa.name, levels).mod
                    xq = xqs[levels]
                    runs[f"int8x{levels} {isa.name} {variant}"] = (
                        lambda j, q=lib["quantize_q8"], g=lib["gemv" if rows == 1 else "gemm"], xq=xq: (q(x2, xq, zc, xd), g(xq, zc, xd, ws[j], ss[j], y2))
                    )
            best = {name: float("inf") for name in runs}
            for i in range(args.repeat):
                for name, call in runs.items():
                    call(i % COPIES)
                    t0 = time.perf_counter()
                    for c in range(args.number):
                        call((i + 1 + c) % COPIES)
                    best[name] = min(best[name], (time.perf_counter() - t0) / args.number)
            bytes_read = n * k // 2 + n * k // 32 * 2
            if rows == 1:
                row = {name: {"ms": round(t * 1e3, 3), "GB_s": round(bytes_read / t / 1e9, 1)} for name, t in best.items()}
            else:
                row = {name: {"ms": round(t * 1e3, 3), "GMAC_s": round(rows * n * k / t / 1e9, 1)} for name, t in best.items()}
            title = label if rows == 1 else f"{label}, {rows} rows (prefill)"
            results[title] = row
            print(title, json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
