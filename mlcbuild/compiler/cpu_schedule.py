"""mlcbuild's CPU (llvm) schedule rules for the kernels that dominate an LLM's time.

dlight's CPU GEMV rule vectorizes the output axis by 64-128 and unrolls by 256, which LLVM needs
minutes to compile; without a rule the fused dequantize + NT_matmul kernels run as scalar,
single-threaded loops. `Matmul` schedules both decode (a few activation rows) and prefill (a chunk of
rows) the same way:

    for n_o in parallel(N / T):                 # T output features per task
        scale32[T, K / 32] = float32(scales)    # nn_quant's widened scales, vector-converted
        W[T, K] = dequantize(rows n_o*T ...)    # once per tile, reused by every activation row
        for m in rows:
            acc[T, 8] = 0
            for k_o in K / 8:                   # A[m, k_o*8:+8] loaded once, used by T rows
                for n_i in unroll(T):
                    acc[n_i, :] += A[m, k:+8] * W[n_i, k:+8]     # 8 lanes, one vector FMA
            out[m, n] = epilogue(sum(acc[n_i, :]))

The reduction is only reassociated (eight partial sums, then their sum), in the kernel's own
accumulator dtype; the dequantized tile keeps the kernel's dtype, so values are what the
unscheduled kernel computes up to summation order. Measured on the RedPajama-3B shapes (one core):
the dequantize is 8 AVX2 instructions per 8 weights and dominated decode, so on targets with integer
dot products matmuls on q4f16_1 no longer come here (`int8_gemv.py`), others do (q4f32_1, q3f16_1,
q0f32, other targets). Prefill's matmul runs ~80 GMAC/s on 2 cores (`python -m bench.gemv`): each 8
fp16 weights cost a load and a conversion beside their FMA. `Injective` parallelizes the outer loop of
elementwise kernels (embedding lookups, casts) and vectorizes their inner one.

`LEGALIZE` replaces legalizations whose TIR LLVM cannot vectorize: gelu's `erf` is a scalar libm
call per element (13% of a 3B prefill); topi's `fast_erf` is a clamped rational polynomial that
vectorizes with the matmul epilogue it is fused into.

Imports TVM at module level: reached only through `pipeline.cpu_schedule_rules`.
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx, topi
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.tirx.analysis import undefined_vars

LANES = 8
"""Reduction lanes: one AVX2 register of fp32, and the 8 nibbles of one q4 word."""

ROW_TILES = (8, 4, 2, 1)
"""Output features per parallel task, largest dividing N first: T accumulators + A + W fit in 16 ymm."""

DEQUANT_UNROLL = (4, 2, 1)
"""Dequantize LANES-wide steps per loop iteration (4 = one q4 group of 32: one scale)."""

INJECTIVE_VECTOR = 8

TASK_SCOPE = "global"
"""Storage scope of a kernel's small per-task buffers (accumulators, softmax state). TVM lowers a CPU
"global" allocation under 1 KB to a stack alloca, which LLVM keeps in registers, but a "local" one to
a TVMBackendAllocWorkspace call per task, heap memory every access goes through (decode attention at
512 cached tokens, cache-hot: 7.9 → 4.7 ns per key and head)."""


def _as_int(expr: Any) -> int | None:
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def prefetch(buf: Any, index: Any, locality: int = 3) -> Any:
    """A read prefetch of the cache line holding buf[index], for the kernels that stream rows from
    memory: into L1 (locality 3: x86 prefetcht0, AArch64 prfm pldl1keep) or L2 only (2: prefetcht1,
    pldl2keep). A prefetch never faults, so an index past the buffer's end (the last rows' lookahead)
    is harmless."""
    return tirx.call_llvm_intrin("void", "llvm.prefetch.p0", tirx.address_of(buf[index]), tirx.IntImm("int32", 0), tirx.IntImm("int32", locality), tirx.IntImm("int32", 1))


def _same_var(expr: Any, var: Any) -> bool:
    return expr.same_as(var)


def _uses(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr))


class Matmul(CPUScheduleRule):
    """`C[s.., n] += A[s.., k] * W[n, k]` (W a parameter or a fused dequantize's output), then any
    injective epilogue; returns None for any other kernel."""

    def apply(self, func: Any, target: Any, _tune: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1:
            return None
        at = reductions[0]
        mm_info = infos[at]
        kinds = mm_info.dom_kind()
        if len(kinds) < 2 or kinds[-1] != "R" or "R" in kinds[:-1]:
            return None
        mm = mm_info.block_rv
        operands = _operands(sch.get(mm))
        if operands is None:
            return None
        weight_buf = operands
        producers, epilogue = infos[:at], infos[at + 1 :]
        if not all(p.is_injective() for p in producers) or not all(e.is_injective() for e in epilogue):
            return None
        dequant = None
        for p in producers:
            writes = sch.get(p.block_rv).writes
            if len(writes) == 1 and writes[0].source.same_as(weight_buf) and dequant is None:
                dequant = p.block_rv
        if dequant is not None and not _is_row_major_producer(sch.get(dequant)):
            return None
        # other producers: per-row inputs of the dequantize (nn_quant's float32 scales)
        scale_stages = [p.block_rv for p in producers if not p.block_rv.same_as(dequant)]
        if scale_stages and (dequant is None or not all(_is_row_major_producer(sch.get(b)) for b in scale_stages)):
            return None

        loops = sch.get_loops(mm)
        if len(loops) != len(kinds):
            return None
        n_extent, k_extent = _as_int(sch.get(loops[-2]).extent), _as_int(sch.get(loops[-1]).extent)
        if n_extent is None or k_extent is None or k_extent % LANES:
            return None
        try:
            for e in epilogue[:-1]:
                sch.compute_inline(e.block_rv)
        except Exception:  # noqa: BLE001 - an epilogue that does not inline: not this rule's shape
            return None
        last = epilogue[-1].block_rv if epilogue else None

        tile = next(t for t in ROW_TILES if n_extent % t == 0)
        if len(loops) == 2:
            m = sch.add_unit_loop(loops[0])
        else:
            m = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
        n_o, n_i = sch.split(loops[-2], factors=[None, tile])
        k_o, k_i = sch.split(loops[-1], factors=[None, LANES])
        sch.reorder(n_o, m, k_o, n_i, k_i)
        rf = sch.rfactor(k_i, factor_axis=len(sch.get(mm).writes[0].region))
        sch.set_scope(rf, 0, "local")
        rf_loops = sch.get_loops(rf)
        sch.parallel(rf_loops[0])
        sch.unroll(rf_loops[-2])
        sch.vectorize(rf_loops[-1])
        rf_init = sch.decompose_reduction(rf, rf_loops[2])
        sch.vectorize(sch.get_loops(rf_init)[-1])
        sch.reverse_compute_at(mm, rf_loops[1])
        if last is not None:
            sch.reverse_compute_at(last, rf_loops[1])
            sch.set_scope(mm, 0, "local")
            sch.vectorize(sch.get_loops(last)[-1])
        if dequant is not None:
            sch.compute_at(dequant, rf_loops[0])
            d_loops = sch.get_loops(dequant)
            d_words, d_vec = sch.split(d_loops[-1], factors=[None, LANES])
            sch.vectorize(d_vec)
            unroll = next(u for u in DEQUANT_UNROLL if (k_extent // LANES) % u == 0)
            sch.unroll(sch.split(d_words, factors=[None, unroll])[1])
            for block in scale_stages:
                sch.compute_at(block, rf_loops[0])
                _vectorize_inner(sch, block)
        return sch


def _operands(block: Any) -> Any | None:
    """The weight buffer of `C[s.., n] = C + A[s.., k] * W[n, k]`, or None."""
    iters = [iv.var for iv in block.iter_vars]
    n_var, k_var = iters[-2], iters[-1]
    if len(block.writes) != 1:
        return None
    out = block.writes[0].source
    reads = [r for r in block.reads if not r.source.same_as(out)]
    if len(reads) != 2:
        return None
    weight = act = None
    for r in reads:
        mins = [rng.min for rng in r.region]
        if len(mins) == 2 and _same_var(mins[0], n_var) and _same_var(mins[1], k_var):
            weight = r
        elif mins and _same_var(mins[-1], k_var) and not any(_uses(x, n_var) or _uses(x, k_var) for x in mins[:-1]):
            act = r
    if weight is None or act is None or weight.source.same_as(act.source):
        return None
    return weight.source


def _is_row_major_producer(block: Any) -> bool:
    """A 2-d spatial block writing W[v_n, v_k] with its own two iterators, in order."""
    return len(block.iter_vars) == 2 and _writes_own_iterators(block)


def _vectorize_inner(sch: Any, block: Any) -> None:
    loop = sch.get_loops(block)[-1]
    extent = _as_int(sch.get(loop).extent)
    if extent is not None and extent % LANES == 0:
        sch.vectorize(sch.split(loop, factors=[None, LANES])[1])


def _writes_own_iterators(block: Any) -> bool:
    """out[v0, v1, ...] with the block's iterators in order: distinct iterations write distinct
    elements, so running them in parallel cannot race (a scatter through an index buffer could)."""
    iters = [iv.var for iv in block.iter_vars]
    if len(block.writes) != 1:
        return False
    write = block.writes[0]
    # a unit axis (decode's sequence axis of 1) is written at index 0 with no iterator of its own
    mins = [rng.min for rng, dim in zip(write.region, write.source.shape) if not (_as_int(rng.min) == 0 and _as_int(dim) == 1)]
    return len(mins) == len(iters) and all(_same_var(m, v) for m, v in zip(mins, iters))


class Injective(CPUScheduleRule):
    """A kernel of spatial blocks only that inline into one: parallel outer loop(s), vectorized inner."""

    def apply(self, func: Any, target: Any, _tune: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        infos = try_inline(sch, list(infos))
        if len(infos) != 1 or not _writes_own_iterators(sch.get(infos[0].block_rv)):
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if not loops:
            return None
        inner = _as_int(sch.get(loops[-1]).extent)
        if len(loops) > 1:
            sch.parallel(sch.fuse(*loops[:-1]))
            if inner is not None and inner % INJECTIVE_VECTOR == 0:
                _, vec = sch.split(loops[-1], factors=[None, INJECTIVE_VECTOR])
                sch.vectorize(vec)
        elif inner is not None and inner >= 4 * INJECTIVE_VECTOR:
            outer, vec = sch.split(loops[0], factors=[None, INJECTIVE_VECTOR])
            sch.parallel(outer)
            sch.vectorize(vec)
        else:
            return None
        return sch


def _gelu_fast_erf(bb: Any, call: Any) -> Any:
    """TVM's gelu legalization (erf in float32 for float16 inputs) with `topi.fast_erf`."""

    def gelu(x: Any) -> Any:
        dtype = x.dtype
        erf_in = x * tirx.const(0.5**0.5, dtype)
        if dtype == "float16":
            erf = topi.cast(topi.fast_erf(topi.cast(erf_in, "float32")), "float16")
        else:
            erf = topi.fast_erf(erf_in)
        return x * (tirx.const(0.5, dtype) + erf * tirx.const(0.5, dtype))

    return bb.call_te(gelu, call.args[0], primfunc_name_hint="gelu")


LEGALIZE: dict[str, Any] = {"relax.nn.gelu": _gelu_fast_erf}
"""`LegalizeOps(customize_legalize_map=...)` for llvm targets."""
