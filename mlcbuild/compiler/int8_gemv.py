"""Matmuls on q4f16_1 weights as integer dot products (llama.cpp's Q4_0 × Q8_0 path): decode's
GEMV and prefill's GEMM.

MLC's q4f16_1 stores a row of W[N, K] as uint32 words of 8 nibbles (element j of a word in bits
4j..4j+3) and one float16 scale per group of 32 (value = (q - 7) * scale). The float path dequantizes
every nibble (8 AVX2 instructions per 8 weights: decode is instruction-bound). Here, as llama.cpp
multiplies Q4_0 weights by Q8_0 activations, each activation row is quantized once per call
(`quantize_q8`), per group g of 32, to int8 digits in base 256 (LEVELS of them):

    d[g] = max|x[g*32:+32]| / 127,   x ≈ d[g] · (q1 + q2/256),   q1 = nearbyint(x/d), q2 = nearbyint(256·(x/d - q1))

and each output is a sum of exact int32 dot products of the nibbles (0..15) with those digits:

    y[n] = Σ_g  s[n, g] · d[g]/256 · Σ_j (q[n, g, j] - 7) · (256·q1[g, j] + q2[g, j])

The weights are read as stored (no repacking). 32 bytes of two groups hold even elements in the low
nibbles and odd ones in the high nibbles, so `quantize_q8` writes the digits in that order (per pair
of groups and digit: the 32 even elements, then the 32 odd ones) with -7·Σ(digits) per 4 bytes beside
them (`zc`, the int32 accumulator's start). Per 64 weights (`q4_q8_gemv`): one 32-byte load, a shift
and two masks, then per digit two `vpdpbusd` (AVX-512 VNNI / AVX-VNNI), two `vpmaddubsw` + one
`vpmaddwd` (AVX2: u8 × s8 pairs in int16 cannot saturate, 2·15·127 < 2^15) or four `sdot` (AArch64
dotprod, 16-byte halves), then one int→float conversion and one FMA by the two group scales. A
row's digits stay in L1 while its weights stream: the weights a task reads 4 KB later are prefetched
(`PREFETCH_PAIRS`), into L2 only where the digits fill L1 (`ROW_BYTES_IN_L1`: mlp down, K = 10240). The prefill GEMM (`q4_q8_gemm`)
turns lanes around: 8 rows of W side by side (16 with AVX-512 VNNI), each activation row's 4 digits
broadcast, so a group's weights are unpacked once for every token and one conversion and FMA serve 8
(16) outputs (its float sums run group by group: the last bits can differ from the GEMV's).

Numerics: the only new rounding is the activation's, |error| ≤ d/512 with two digits (float16 keeps
11 bits: logits as the float path's to 6e-5 on the 3B shape), ≤ d/2 with one (llama.cpp's Q8_0).
The dot products are exact integers, the rest float32 as in the float path.

Imports TVM at module level: reached only through `pipeline.schedule_passes` for llvm targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.script import tirx as T

from mlcbuild.compiler.cpu_schedule import TASK_SCOPE, _as_int, prefetch
from mlcbuild.compiler.fusion import _callee_name

GROUP = 32
ZERO = 7
PAIR = 2 * GROUP
"""Weights per inner step: 32 bytes, two groups."""
LEVELS = 2
"""int8 digits per activation (base 256) by default: 1 is llama.cpp's Q8_0 (|error| ≤ d/2, d = max|x|/127
per group: the tiny test model's logits 0.079 from transformers', 4× the q4f16_1 test tolerance;
`compile: {cpu_int8_digits: 1}`); 2 adds the rounded remainder (|error| ≤ d/512: 0.0044) for twice the
dot products."""
ROWS_PER_TASK = (16, 8, 4, 2, 1)
"""Rows of W per parallel task, largest dividing N first: fewer, longer tasks for the thread pool to split."""
ROW_BYTES_IN_L1 = 16 * 1024
"""Above this many bytes of one activation row's digits and zero points (levels·K + K/2), a task
prefetches its weights into L2 only, leaving L1 to the digits that every row reads again. mlp down
(K = 10240, two digits: 25 KB), in an interleaved A/B on the 3B shape's weights (2 threads, VNNI):
prefetched into L1, 22-25 GB/s whole rows and 27 GB/s taken in chunks of 8 pairs across 16 rows (the
version-10 kernel); into L2, whole rows 38 GB/s. The same kernel reading its digits from a shorter
row (wrong answers, same instructions) ran 25 GB/s at 25 KB and 37 at 12.5 KB: the digits' L1 misses
were the cost. Rows of K = 2560 (6.4 KB) run fastest with the weights prefetched into L1."""
WIDE_LANES = 16
"""W rows per prefill GEMM task with AVX-512 VNNI (`vnni512`), one per int32 lane of a 512-bit
`vpdpbusd`; 8 elsewhere (256-bit). On Zen 4, which splits a 512-bit instruction in two, 16 rows still
ran 1.2-1.4× 8 (half the instructions to issue; 32 rows: one digit 229 → 273 GMAC/s, two digits 140 →
171, qkv; mlp down 205 → 294 and 126 → 177)."""
TOKEN_BLOCK = 32
"""Activation rows per pass over a GEMM tile's weights: at 128 rows (the chunks of a long prompt) 32
ran 143 GMAC/s, 64 124 (VNNI, two digits; AVX2 alike, less apart): a block's digits stay nearer; 16
was 10% slower at 32 rows (weights unpacked twice as often)."""
PREFETCH_PAIRS = 128
"""How far ahead (in pairs: 4 KB) a GEMV task prefetches the weights of its rows (past a row's end:
the next row's, W being row-major). The hardware prefetchers alone left the 2-core VM's DRAM
under-used between two digits' dot products (this kernel with and without, interleaved in one
process, `bench.gemv`'s shapes and 8 weight copies, 2 threads; VNNI two digits: qkv 31 → 33-35 GB/s;
AVX2 two digits: qkv 28 → 31); 2 KB ahead ran alike."""


@dataclass(frozen=True)
class Isa:
    """Which integer dot-product instructions a target has (None: leave the float path): `vnni512`
    (x86 AVX-512 VNNI: vpdpbusd on 256 and 512 bits), `vnni` (AVX-VNNI: 256 bits only), `avx2`
    (vpmaddubsw + vpmaddwd), `neon` (AArch64 sdot, +dotprod); `reference` is the same 4-byte dot
    products in plain TIR (tests check the NEON split and order with it on x86)."""

    name: str

    @classmethod
    def of(cls, target: Any) -> "Isa | None":
        if target.kind.name != "llvm":
            return None
        from tvm.target.codegen import target_has_features

        arch = str(target.attrs.get("mtriple", "") or "x86_64").split("-")[0]
        with target:
            if arch in ("aarch64", "arm64"):
                return cls("neon") if target_has_features("dotprod") else None
            if arch != "x86_64":
                return None
            if target_has_features(["avx512vnni", "avx512vl", "avx512bw"]):
                return cls("vnni512")
            if target_has_features("avxvnni"):
                return cls("vnni")
            if target_has_features("avx2"):
                return cls("avx2")
        return None


def _digits(x: Any, r: Any, g: Any, inv: Any, level: int) -> Any:
    """float32x32: int8 digit `level` of group g of row r of x/d in base 256 (d = amax/127):
    nearbyint(x/d), then the rounded remainder × 256, clamped to ±127."""
    from tvm import tirx

    scaled = tirx.Cast("float32x32", x.vload([r, g * GROUP], f"{x.dtype}x{GROUP}")) * tirx.Broadcast(inv, GROUP)
    first = tirx.call_intrin("float32x32", "tirx.nearbyint", scaled)
    if level == 0:
        return first
    rest = tirx.call_intrin("float32x32", "tirx.nearbyint", (scaled - first) * tirx.Broadcast(tirx.const(256, "float32"), GROUP))
    return tirx.max(tirx.min(rest, tirx.Broadcast(tirx.const(127, "float32"), GROUP)), tirx.Broadcast(tirx.const(-127, "float32"), GROUP))


def _half(x: Any, r: Any, g: Any, inv: Any, level: int, odd: int) -> Any:
    """int8x16: the even (odd = 0) or odd elements' digits of group g: the nibbles' order."""
    from tvm import tirx

    return tirx.Shuffle([tirx.Cast("int8x32", _digits(x, r, g, inv, level))], list(range(odd, GROUP, 2)))


def _zero_points(x: Any, r: Any, g: Any, inv: Any, levels: int) -> Any:
    """int32x4: -7·Σ digits over each 8 consecutive elements of group g (the 4 + 4 bytes, low and high
    nibble partners, that one int32 lane of the dot products adds up)."""
    from tvm import tirx

    total = None
    for level in range(levels):
        weight = tirx.Broadcast(tirx.const(-ZERO * 256 ** (levels - 1 - level), "int32"), GROUP)
        term = tirx.Cast("int32x32", tirx.Cast("int8x32", _digits(x, r, g, inv, level))) * weight
        total = term if total is None else total + term
    lanes = GROUP
    while lanes > 4:
        lanes //= 2
        total = tirx.Shuffle([total], list(range(0, 2 * lanes, 2))) + tirx.Shuffle([total], list(range(1, 2 * lanes, 2)))
    return total


def _abs_max(x: Any, r: Any, g: Any) -> Any:
    from tvm import tirx

    v = tirx.call_intrin("float32x32", "tirx.fabs", tirx.Cast("float32x32", x.vload([r, g * GROUP], f"{x.dtype}x{GROUP}")))
    lanes = GROUP
    while lanes > 1:
        lanes //= 2
        v = tirx.max(tirx.Shuffle([v], list(range(lanes))), tirx.Shuffle([v], list(range(lanes, 2 * lanes))))
    return v


def quantize_func(k: int, x_dtype: str, levels: int = LEVELS) -> tvm.tirx.PrimFunc:
    """x[M, K] → (xq int8[M, levels·K] in the pair order above, zc int32[M, K/8] = -7·Σx per 4 bytes,
    xd float32[M, K/32]: x ≈ xd · Σ_l 256^(levels-1-l) · xq_l). One task per (row, group), in vector
    registers: 32 elements, their digits, both halves and four zero points."""
    groups = k // GROUP
    unit = 127 * 256 ** (levels - 1)

    @T.prim_func(private=True, s_tir=True)
    def quantize_q8(x_h: T.handle, xq_h: T.handle, zc_h: T.handle, xd_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(x_h, (m, k), x_dtype)
        xq = T.match_buffer(xq_h, (m, levels * k), "int8")
        zc = T.match_buffer(zc_h, (m, k // 8), "int32")
        xd = T.match_buffer(xd_h, (m, groups), "float32")
        with T.sblock("root"):
            for rg in T.parallel(m * groups):
                amax = T.decl_buffer((1,), "float32", scope=TASK_SCOPE)
                inv = T.decl_buffer((1,), "float32", scope=TASK_SCOPE)
                amax[0] = _abs_max(x, rg // groups, rg % groups)
                xd[rg // groups, rg % groups] = amax[0] / T.float32(unit)
                inv[0] = T.Select(amax[0] > T.float32(0), T.float32(127) / T.max(amax[0], T.float32(1e-30)), T.float32(0))
                xq[rg // groups, T.ramp(rg % groups // 2 * PAIR * levels + rg % groups % 2 * (GROUP // 2), 1, GROUP // 2)] = _half(x, rg // groups, rg % groups, inv[0], 0, 0)
                xq[rg // groups, T.ramp(rg % groups // 2 * PAIR * levels + GROUP + rg % groups % 2 * (GROUP // 2), 1, GROUP // 2)] = _half(x, rg // groups, rg % groups, inv[0], 0, 1)
                if levels == 2:
                    xq[rg // groups, T.ramp(rg % groups // 2 * PAIR * levels + PAIR + rg % groups % 2 * (GROUP // 2), 1, GROUP // 2)] = _half(x, rg // groups, rg % groups, inv[0], 1, 0)
                    xq[rg // groups, T.ramp(rg % groups // 2 * PAIR * levels + PAIR + GROUP + rg % groups % 2 * (GROUP // 2), 1, GROUP // 2)] = _half(x, rg // groups, rg % groups, inv[0], 1, 1)
                zc[rg // groups, T.ramp(rg % groups * 4, 1, 4)] = _zero_points(x, rg // groups, rg % groups, inv[0], levels)

    return quantize_q8.with_attr("tirx.is_scheduled", True)


def _dot4_reference(acc: Any, a: Any, b: Any, lanes: int) -> Any:
    """acc[i] + Σ_j a[4i+j]·b[4i+j] for int32xlanes acc and 4·lanes int8 a, b: sdot's and vpdpbusd's
    semantics in plain TIR."""
    from tvm import tirx

    prod = tirx.Cast(f"int32x{4 * lanes}", a) * tirx.Cast(f"int32x{4 * lanes}", b)
    for j in range(4):
        acc = acc + tirx.Shuffle([prod], [4 * i + j for i in range(lanes)])
    return acc


def _dot4(isa: str, acc: Any, a: Any, b: Any, lanes: int = 8) -> Any:
    """int32x`lanes` acc + the 4-byte dot products of 4·lanes unsigned nibble bytes a with 4·lanes
    int8 b; 16 lanes are `vnni512`'s 512-bit form."""
    from tvm import tirx

    if lanes == WIDE_LANES:
        return tirx.call_llvm_pure_intrin(f"int32x{lanes}", "llvm.x86.avx512.vpdpbusd.512", acc, a, b)
    if isa in ("vnni", "vnni512"):
        return tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx512.vpdpbusd.256", acc, a, b)
    # NEON: two 16-byte halves (nibbles 0..15 are the same as signed bytes: sdot is s8 × s8)
    halves = []
    for h in range(2):
        acc4 = tirx.Shuffle([acc], list(range(4 * h, 4 * h + 4)))
        a16 = tirx.reinterpret("int8x16", tirx.Shuffle([a], list(range(16 * h, 16 * h + 16))))
        b16 = tirx.Shuffle([b], list(range(16 * h, 16 * h + 16)))
        if isa == "neon":
            halves.append(tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc4, a16, b16))
        else:
            halves.append(_dot4_reference(acc4, a16, b16, 4))
    return tirx.Shuffle(halves, list(range(8)))


def _pair_term(isa: str, w: Any, s: Any, row: Any, xq: Any, zc: Any, xd: Any, r: Any, p: Any, levels: int) -> Any:
    """float32x8: the 64 weights of pair p of W's row `row` against activation row r, scaled per group.

    One expression: a named value in TVMScript would be a buffer (a workspace allocation), and every
    load here is from a parameter (noalias), so LLVM keeps the accumulator in a register."""
    from tvm import tirx

    v = tirx.reinterpret("uint8x32", w.vload([row, p * 8], "uint32x8"))
    mask = tirx.Broadcast(tirx.const(15, "uint8"), 32)
    lo = tirx.bitwise_and(v, mask)
    hi = tirx.bitwise_and(tirx.shift_right(v, tirx.Broadcast(tirx.const(4, "uint8"), 32)), mask)
    dot = zc.vload([r, p * 8], "int32x8")
    for level in range(levels):
        xlo = xq.vload([r, p * PAIR * levels + level * PAIR], "int8x32")
        xhi = xq.vload([r, p * PAIR * levels + level * PAIR + GROUP], "int8x32")
        shift = 8 * (levels - 1 - level)
        if isa == "avx2":
            ubsw = "llvm.x86.avx2.pmadd.ub.sw"
            pairs16 = tirx.call_llvm_pure_intrin("int16x16", ubsw, lo, xlo) + tirx.call_llvm_pure_intrin("int16x16", ubsw, hi, xhi)
            factor = tirx.Broadcast(tirx.const(1 << shift, "int16"), 16)
            dot = dot + tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs16, factor)
        elif shift == 0:
            dot = _dot4(isa, _dot4(isa, dot, lo, xlo), hi, xhi)
        else:
            zero = tirx.Broadcast(tirx.const(0, "int32"), 8)
            part = _dot4(isa, _dot4(isa, zero, lo, xlo), hi, xhi)
            dot = dot + tirx.shift_left(part, tirx.Broadcast(tirx.const(shift, "int32"), 8))
    scales = tirx.Cast("float32x2", s.vload([row, p * 2], "float16x2")) * xd.vload([r, p * 2], "float32x2")
    return tirx.Cast("float32x8", dot) * tirx.Shuffle([scales] * 4, [0, 0, 0, 0, 1, 1, 1, 1])


def gemv_func(n: int, k: int, out_dtype: str, isa: str, levels: int = LEVELS) -> tvm.tirx.PrimFunc:
    """y[M, N] = x · W[N, K]^T (q4f16_1 W) from `quantize_func`'s outputs: tasks of rows of W in
    parallel; each row's sum runs over K in order."""
    groups = k // GROUP
    pairs = k // PAIR
    words = k // 8
    rows_per_task = next(t for t in ROWS_PER_TASK if n % t == 0)

    locality = 2 if levels * k + k // 2 > ROW_BYTES_IN_L1 else 3

    @T.prim_func(private=True, s_tir=True)
    def q4_q8_gemv(xq_h: T.handle, zc_h: T.handle, xd_h: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), "float16"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        xq = T.match_buffer(xq_h, (m, levels * k), "int8")
        zc = T.match_buffer(zc_h, (m, words), "int32")
        xd = T.match_buffer(xd_h, (m, groups), "float32")
        y = T.match_buffer(y_h, (m, n), out_dtype)
        with T.sblock("root"):
            for tile in T.parallel(n // rows_per_task):
                acc = T.decl_buffer((8,), "float32", scope=TASK_SCOPE)
                for r, i in T.grid(m, rows_per_task):
                    acc[T.ramp(0, 1, 8)] = T.broadcast(T.float32(0), 8)
                    for p in T.serial(pairs):
                        T.evaluate(prefetch(w, (tile * rows_per_task + i, (p + PREFETCH_PAIRS) * 8), locality))
                        acc[T.ramp(0, 1, 8)] = acc[T.ramp(0, 1, 8)] + _pair_term(isa, w, s, tile * rows_per_task + i, xq, zc, xd, r, p, levels)
                    y[r, tile * rows_per_task + i] = T.Cast(out_dtype, _lane_sum(acc, 0))

    return q4_q8_gemv.with_attr("tirx.is_scheduled", True)


def gemm_lanes(isa: str) -> int:
    """W rows per prefill GEMM task: one per int32 lane of the widest dot product the ISA has."""
    return WIDE_LANES if isa == "vnni512" else 8


def _tile_rows(tile: Any, n: int, lanes: int) -> list[Any]:
    """W rows of a GEMM tile's lanes; past the last row (N not a multiple of the lanes) the last row
    again, so the tail lanes compute and write its values twice instead of branching."""
    from tvm import tirx

    return [tile * lanes + lane if n % lanes == 0 else tirx.min(tile * lanes + lane, n - 1) for lane in range(lanes)]


def _gather(buf: Any, rows: list[Any], col: Any, dtype: str) -> Any:
    """`dtype`xL: buf[rows[lane], col] in lane `lane` (L = len(rows))."""
    from tvm import tirx

    return tirx.Shuffle([buf.vload([r, col], dtype) for r in rows], list(range(len(rows))))


def _word_column(w: Any, rows: list[Any], g: Any, c: int) -> Any:
    """uint8x(4L): word c of group g of the tile's rows (row `lane`'s 4 bytes in bytes 4·lane..4·lane+3)."""
    from tvm import tirx

    return tirx.reinterpret(f"uint8x{4 * len(rows)}", _gather(w, rows, g * 4 + c, "uint32"))


def _digits4(xq: Any, tok: Any, g: Any, level: int, levels: int, c: int, odd: int, lanes: int) -> Any:
    """int8x(4L): the 4 activation digits that word c's low (odd = 0) or high nibbles of group g meet, in
    every lane (with VNNI, LLVM folds it into the dot product's broadcast memory operand)."""
    from tvm import tirx

    at = g // 2 * PAIR * levels + level * PAIR + odd * GROUP + g % 2 * (GROUP // 2) + 4 * c
    return tirx.reinterpret(f"int8x{4 * lanes}", tirx.Broadcast(tirx.reinterpret("int32", xq.vload([tok, at], "int8x4")), lanes))


def _group_dot(isa: str, nib: Any, xq: Any, zg: Any, tok: Any, g: Any, levels: int, lanes: int) -> Any:
    """int32xL: Σ_j (q[row, g, j] - 7) · digits[tok, g, j] for the tile's L rows, exact. `nib` holds the
    group's unpacked weights, word c's low nibbles at 8L·c, its high ones at 8L·c + 4L. Independent
    dependency chains (low and high nibbles apart, pairwise int16 sums): one chain of 16 dot products
    ran at 117 GMAC/s, two of 8 at 149 (VNNI, two digits)."""
    from tvm import tirx

    dot = tirx.Broadcast(zg[tok, g], lanes)
    for level in range(levels):
        shift = 8 * (levels - 1 - level)
        terms = [[(nib.vload([(2 * c + odd) * 4 * lanes], f"uint8x{4 * lanes}"), _digits4(xq, tok, g, level, levels, c, odd, lanes)) for c in range(4)] for odd in range(2)]
        if isa == "avx2":
            # pairs of u8 × s8 sum to at most 2·15·127; eight of them 30480 < 2^15: no saturation
            sums = [tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", a, b) for chain in terms for a, b in chain]
            while len(sums) > 1:
                sums = [sums[i] + sums[i + 1] for i in range(0, len(sums), 2)]
            factor = tirx.Broadcast(tirx.const(1 << shift, "int16"), 16)
            dot = dot + tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", sums[0], factor)
            continue
        chains = []
        for odd, chain in enumerate(terms):
            part = dot if shift == 0 and odd == 0 else tirx.Broadcast(tirx.const(0, "int32"), lanes)
            for a, b in chain:
                part = _dot4(isa, part, a, b, lanes)
            chains.append(part)
        both = chains[0] + chains[1]
        dot = both if shift == 0 else dot + tirx.shift_left(both, tirx.Broadcast(tirx.const(shift, "int32"), lanes))
    return dot


def gemm_func(n: int, k: int, out_dtype: str, isa: str, levels: int = LEVELS) -> tvm.tirx.PrimFunc:
    """The same y for a chunk of rows (prefill), lanes over W's rows: a task owns L rows of W (L =
    `gemm_lanes(isa)`: 16 with AVX-512 VNNI, else 8); per group it unpacks their L × 32 nibbles once
    into 8 vectors (word c of every row side by side) and then, for each of up to TOKEN_BLOCK
    activation rows, multiplies them by that row's 4-byte digit groups broadcast to every lane: 8 dot
    products per digit give the L rows' exact group sums at once, and one conversion and one FMA by
    (the rows' scales × the row's d) per group and row. Each output is a sum over groups in order; the
    zero points' group sums (-7·Σ digits) come first, in parallel."""
    groups = k // GROUP
    words = k // 8
    lanes = gemm_lanes(isa)
    tiles = (n + lanes - 1) // lanes
    block = TOKEN_BLOCK

    @T.prim_func(private=True, s_tir=True)
    def q4_q8_gemm(xq_h: T.handle, zc_h: T.handle, xd_h: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), "float16"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        xq = T.match_buffer(xq_h, (m, levels * k), "int8")
        zc = T.match_buffer(zc_h, (m, words), "int32")
        xd = T.match_buffer(xd_h, (m, groups), "float32")
        y = T.match_buffer(y_h, (m, n), out_dtype)
        with T.sblock("root"):
            zg = T.alloc_buffer((m, groups), "int32")
            for rg in T.parallel(m * groups):
                zg[rg // groups, rg % groups] = (zc[rg // groups, rg % groups * 4] + zc[rg // groups, rg % groups * 4 + 1]) + (zc[rg // groups, rg % groups * 4 + 2] + zc[rg // groups, rg % groups * 4 + 3])
            for tile in T.parallel(tiles):
                acc = T.decl_buffer((block * lanes,), "float32", scope=TASK_SCOPE)
                nib = T.decl_buffer((8 * 4 * lanes,), "uint8", scope=TASK_SCOPE)
                sv = T.decl_buffer((lanes,), "float32", scope=TASK_SCOPE)
                for tb in T.serial((m + block - 1) // block):
                    for t in T.serial(T.min(block, m - tb * block)):
                        acc[T.ramp(t * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                    for g in T.serial(groups):
                        for c in T.unroll(4):
                            nib[T.ramp(2 * c * 4 * lanes, 1, 4 * lanes)] = T.bitwise_and(_word_column(w, _tile_rows(tile, n, lanes), g, c), T.broadcast(T.uint8(15), 4 * lanes))
                            nib[T.ramp((2 * c + 1) * 4 * lanes, 1, 4 * lanes)] = T.bitwise_and(T.shift_right(_word_column(w, _tile_rows(tile, n, lanes), g, c), T.broadcast(T.uint8(4), 4 * lanes)), T.broadcast(T.uint8(15), 4 * lanes))
                        sv[T.ramp(0, 1, lanes)] = T.Cast(f"float32x{lanes}", _gather(s, _tile_rows(tile, n, lanes), g, "float16"))
                        for t in T.serial(T.min(block, m - tb * block)):
                            acc[T.ramp(t * lanes, 1, lanes)] = acc[T.ramp(t * lanes, 1, lanes)] + T.Cast(f"float32x{lanes}", _group_dot(isa, nib, xq, zg, tb * block + t, g, levels, lanes)) * (sv[T.ramp(0, 1, lanes)] * T.broadcast(xd[tb * block + t, g], lanes))
                    for t in T.serial(T.min(block, m - tb * block)):
                        for lane in T.unroll(lanes):
                            y[tb * block + t, T.min(tile * lanes + lane, n - 1)] = T.Cast(out_dtype, acc[t * lanes + lane])

    return q4_q8_gemm.with_attr("tirx.is_scheduled", True)


def _lane_sum(buf: Any, base: Any) -> Any:
    """The 8 partial sums at buf[base:base+8], added pairwise (the order every kernel here uses)."""
    return ((buf[base] + buf[base + 4]) + (buf[base + 1] + buf[base + 5])) + ((buf[base + 2] + buf[base + 6]) + (buf[base + 3] + buf[base + 7]))


def _shape(ty: Any) -> list[Any] | None:
    values = getattr(getattr(ty, "shape", None), "values", None)
    return list(values) if values is not None else None


def _is_q4_group32(mod: tvm.IRModule, call: Any) -> bool:
    """A call of nn_quant's dequantize for a scheme with 4-bit values, zero point 7, groups of 32
    (q4f16_1): the scheme is named by the kernel's attribute, never guessed from shapes (q3f16_1's
    are q4f16_1's for K = 64 or 128)."""
    from mlcbuild.quantization import SCHEMES
    from mlcbuild.quantization.nn_quant import SCHEME_ATTR

    func = mod[call.args[0]] if _callee_name(call) and call.args[0] in mod.get_global_vars() else None
    name = func.attrs.get(SCHEME_ATTR) if func is not None and func.attrs is not None else None
    scheme = SCHEMES.get(str(name)) if name is not None else None
    return (getattr(scheme, "bits", None), getattr(scheme, "group_size", None), getattr(scheme, "max_int", None)) == (4, GROUP, ZERO)


def int8_matmuls(isa: Isa, levels: int = LEVELS):
    """Relax pass (after LegalizeOps, before the dequantize + matmul fusion): every
    `NT_matmul(x, dequantize(q_weight, q_scale))` on q4f16_1 weights of one activation row per sequence
    (decode, batch_decode) becomes quantize_q8(x) → q4_q8_gemv (`levels` int8 digits per activation),
    and those of a chunk of rows (prefill) quantize_q8(x) → q4_q8_gemm. Each activation is quantized
    once for all its matmuls."""
    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule) -> None:
            super().__init__(mod)
            self.mod_ = mod
            self.funcs: dict[tuple[Any, ...], relax.GlobalVar] = {}
            self.quantized: dict[Any, relax.Var] = {}

        def transform(self) -> tvm.IRModule:
            for gv, func in self.mod_.functions_items():
                if isinstance(func, relax.Function):
                    self.quantized = {}
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

        def _func(self, key: tuple[Any, ...], make: Any) -> relax.GlobalVar:
            if key not in self.funcs:
                self.funcs[key] = self.builder_.add_func(make().with_attr("op_pattern", 8), key[0])
            return self.funcs[key]

        def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(call_tir) or not _callee_name(call).startswith("NT_matmul"):
                return call
            args = call.args[1]
            if not isinstance(args, relax.Tuple) or len(args.fields) != 2:
                return call
            x, dq = args.fields
            producer = self.lookup_binding(dq) if isinstance(dq, relax.Var) else dq
            if not (isinstance(producer, relax.Call) and producer.op.same_as(call_tir) and _is_q4_group32(self.mod_, producer)):
                return call
            qargs = producer.args[1]
            if not isinstance(qargs, relax.Tuple) or len(qargs.fields) != 2:
                return call
            w, s = qargs.fields
            x_shape, y_shape = _shape(x.ty), _shape(call.ty)
            w_shape, s_shape = ([_as_int(d) for d in shape] if shape else None for shape in (_shape(w.ty), _shape(s.ty)))
            if x_shape is None or y_shape is None or w_shape is None or s_shape is None or len(x_shape) < 2:
                return call
            k, n = _as_int(x_shape[-1]), w_shape[0]
            x_dtype, y_dtype = str(x.ty.dtype), str(call.ty.dtype)
            # one token per sequence (decode, batch_decode): the sequence axis is a static 1
            one_row = _as_int(x_shape[-2]) == 1
            if (
                k is None or n is None or k % PAIR or w_shape != [n, k // 8] or s_shape != [n, k // GROUP]
                or _as_int(y_shape[-1]) != n or str(w.ty.dtype) != "uint32" or str(s.ty.dtype) != "float16"
                or x_dtype not in ("float16", "float32") or y_dtype not in ("float16", "float32")
            ):
                return call
            rows = x_shape[0]
            for d in x_shape[1:-1]:
                rows = rows * d
            bb = self.builder_
            if x not in self.quantized:
                quant = self._func(("quantize_q8", k, x_dtype), lambda: quantize_func(k, x_dtype, levels))
                flat = bb.emit(relax.op.reshape(x, (rows, k)))
                outs = [relax.TensorType((rows, levels * k), "int8"), relax.TensorType((rows, k // 8), "int32"), relax.TensorType((rows, k // GROUP), "float32")]
                self.quantized[x] = bb.emit(relax.call_tir(quant, [flat], outs))
            q = self.quantized[x]
            name, make = ("q4_q8_gemv", gemv_func) if one_row else ("q4_q8_gemm", gemm_func)
            matmul = self._func((name, n, k, y_dtype, isa.name), lambda: make(n, k, y_dtype, isa.name, levels))
            y = bb.emit(relax.call_tir(matmul, [relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1), relax.TupleGetItem(q, 2), w, s], relax.TensorType((rows, n), y_dtype)))
            return relax.op.reshape(y, y_shape)

    @tvm.transform.module_pass(opt_level=0, name="Int8Matmuls")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(Rewriter(mod).transform())

    return transform
