"""One schedule for the ABI's small TIR kernels: serial on CPUs, one thread per element on GPUs.

The kernels are written once, as plain loops over their work items; on a GPU target the loops of
the named block are fused, split by the block size and bound to blockIdx.x / threadIdx.x.
"""
from __future__ import annotations

from typing import Any


def is_gpu(target: Any) -> bool:
    return "gpu" in target.keys


def max_threads(target: Any, want: int = 256) -> int:
    limit = target.attrs.get("max_num_threads")
    return min(want, int(limit)) if limit is not None else want


def for_target(func: Any, target: Any, block: str, threads: int | None = None) -> Any:
    """`func` with the loops around `block` bound to GPU threads (GPU targets), marked scheduled."""
    import tvm

    if is_gpu(target):
        sch = tvm.s_tir.Schedule(func)
        loops = sch.get_loops(sch.get_sblock(block))
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        bx, tx = sch.split(fused, [None, threads or max_threads(target)])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        func = sch.mod["main"]
    return func.with_attr("tirx.is_scheduled", True)
