"""Vector CPU attention kernels with the signatures of TVM's paged-KV CPU kernels.

TVM's CPU kernels (`relax.frontend.nn.llm`) are scalar reference loops: per key and head a serial
80-term dot product that LLVM may not reorder, the output vector rescaled for every key, and the
paged prefill walks the whole page pool. At a 512-token prompt they took 60% of the prefill time of
the 3B shape. Here every (query, head) is one parallel task:

- scores of a block of KEY_BLOCK keys: q (scaled once by sm_scale·log2 e) against each key row in
  8 float32 lanes, the lanes added pairwise;
- one online-softmax step per block (block max, one rescale of the output), then the block's value
  rows added with their weights, the output vector D lanes wide.

The queries see a prefix of their keys (causal: `kv_len - qo_len + row + 1` of them, TVM's mask), so
masked keys are never visited. Same state as TVM's kernels: m starts at -5e4 and the softmax sum at
1.0 (a query that sees no key writes zeros, lse -5e4), output = o / sum, lse = m + log2(sum).

Only for caches whose rope is applied before the cache (RopeMode NORMAL or NONE, no sliding window:
the runtime passes rotary_mode 0); `cpu_attention.cpu_attention` checks that at compile time, and a
call with rotary_mode 1 is a runtime error, never a wrong answer.
"""
from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.script import tirx as T

from mlcbuild.compiler.cpu_schedule import TASK_SCOPE, prefetch

KEY_BLOCK = 32
LANES = 8
LOG2E = math.log2(math.e)
MASKED = -5e4
ROTARY_UNSUPPORTED = "mlcbuild's CPU attention kernels do not rotate q and k (rotary_mode 1: a sliding-window cache); this library was built for a model without a sliding window"


def _lanes(c):
    """Indices of the c-th LANES-lane vector of a d-wide row."""
    return T.ramp(c * LANES, 1, LANES)


def _dot(q_local, k, row, d: int):
    """Σ_i q_local[i]·k[row.., i] in LANES float32 lanes, the lanes then added pairwise."""
    acc = None
    for c in range(d // LANES):
        term = q_local[_lanes(c)] * T.Cast(f"float32x{LANES}", k[(*row, _lanes(c))])
        acc = term if acc is None else acc + term
    half = LANES // 2
    while half:
        acc = tirx.Shuffle([acc], list(range(half))) + tirx.Shuffle([acc], list(range(half, 2 * half)))
        half //= 2
    return acc


def _exp2(x, lanes: int):
    """2^x for float32 lanes x ≤ 0 without libm (whose exp2f LLVM calls once per lane): 2^round(x)
    from the exponent bits times 2^f, f in [-1/2, 1/2], by its degree-6 Taylor polynomial (relative
    error ≤ 2.5e-7 over [-126, 0] in float32, two float32 roundings); below 2^-126 the weight is
    negligible beside the block's largest, 1."""
    x = T.max(x, T.broadcast(T.float32(-126), lanes))
    n = T.round(x)
    f = (x - n) * T.broadcast(T.float32(math.log(2)), lanes)
    poly = T.broadcast(T.float32(1 / math.factorial(6)), lanes)
    for k in range(5, -1, -1):
        poly = poly * f + T.broadcast(T.float32(1 / math.factorial(k)), lanes)
    bits = T.shift_left(T.Cast(f"int32x{lanes}", n) + T.broadcast(T.int32(127), lanes), T.broadcast(T.int32(23), lanes))
    return poly * T.reinterpret(f"float32x{lanes}", bits)


@T.macro
def _prefetch(buf, row, d, per_line):
    """Prefetch a row's cache lines: every per_line elements (64 bytes) and its last element."""
    for c in T.unroll((d + per_line - 1) // per_line + 1):
        T.evaluate(prefetch(buf, (*row, T.min(c * per_line, d - 1))))


def supports(h_kv: int, h_q: int, d: int) -> bool:
    return d % LANES == 0 and h_q % h_kv == 0


@T.macro
def _attend(q, q_at, kbuf, k_at, vbuf, v_at, n, output, lse, out_at, scale, d, dtype, stream):
    """One query row of one head against its first n keys (k_at/v_at: key -> the row's index).
    `stream` (decode: every key row read once, from memory): prefetch each block's value rows while
    its scores are computed and the next block's key rows while its values are added. Vectors of d
    lanes are taken LANES at a time: as one float32xd value LLVM kept the output in scalars on the
    stack (about 280 instructions per key for 5 FMAs at d = 80)."""
    q_local = T.decl_buffer((d,), "float32", scope=TASK_SCOPE)
    o = T.decl_buffer((d,), "float32", scope=TASK_SCOPE)
    s = T.decl_buffer((KEY_BLOCK,), "float32", scope=TASK_SCOPE)
    st = T.decl_buffer((4,), "float32", scope=TASK_SCOPE)  # running max, running sum, the block's new max, the rescale
    for c in T.unroll(d // LANES):
        q_local[_lanes(c)] = T.Cast(f"float32x{LANES}", q[(*q_at, _lanes(c))]) * T.broadcast(scale[0], LANES)
        o[_lanes(c)] = T.broadcast(T.float32(0), LANES)
    st[0] = T.float32(MASKED)
    st[1] = T.float32(1)
    for blk in T.serial((n + KEY_BLOCK - 1) // KEY_BLOCK):
        st[2] = st[0]
        for j in T.serial(T.min(KEY_BLOCK, n - blk * KEY_BLOCK)):
            if stream:
                _prefetch(vbuf, v_at(blk * KEY_BLOCK + j), d, 512 // tvm.DataType(dtype).bits)
            s[j] = _dot(q_local, kbuf, k_at(blk * KEY_BLOCK + j), d)
            st[2] = T.max(st[2], s[j])
        st[3] = T.exp2(st[0] - st[2])
        st[1] = st[1] * st[3]
        for c in T.unroll(d // LANES):
            o[_lanes(c)] = o[_lanes(c)] * T.broadcast(st[3], LANES)
        st[0] = st[2]
        s[T.ramp(0, 1, KEY_BLOCK)] = _exp2(s[T.ramp(0, 1, KEY_BLOCK)] - T.broadcast(st[0], KEY_BLOCK), KEY_BLOCK)
        for j in T.serial(T.min(KEY_BLOCK, n - blk * KEY_BLOCK)):
            if stream and (blk + 1) * KEY_BLOCK + j < n:
                _prefetch(kbuf, k_at((blk + 1) * KEY_BLOCK + j), d, 512 // tvm.DataType(dtype).bits)
            st[1] = st[1] + s[j]
            for c in T.unroll(d // LANES):
                o[_lanes(c)] = o[_lanes(c)] + T.broadcast(s[j], LANES) * T.Cast(f"float32x{LANES}", vbuf[(*v_at(blk * KEY_BLOCK + j), _lanes(c))])
    for c in T.unroll(d // LANES):
        output[(*out_at, _lanes(c))] = T.Cast(f"{dtype}x{LANES}", o[_lanes(c)] / T.broadcast(st[1], LANES))
    lse[out_at] = st[0] + T.log2(st[1])


def _visible(causal, row, kv_len, qo_len):
    """How many keys query `row` sees: TVM's mask `col < kv_len - qo_len + row + 1` when causal."""
    return T.max(T.if_then_else(causal > 0, T.min(kv_len, kv_len - qo_len + row + 1), kv_len), 0)


def _chunk_len(q_indptr, b):
    return q_indptr[b + 1] - q_indptr[b]


def _query(q_indptr, b, task):
    """(query row, head) of a prefill task: tasks head-major over sequence b's chunk."""
    return q_indptr[b] + task % _chunk_len(q_indptr, b), task // _chunk_len(q_indptr, b)


def _pages_len(page_indptr, length_info, b, page_size: int):
    """Cached tokens of sequence b: full pages and the last page's fill (TVM's kv_chunk_len)."""
    return T.if_then_else(page_indptr[b] != page_indptr[b + 1], (page_indptr[b + 1] - page_indptr[b] - 1) * page_size + length_info[b], 0)


def decode_func(h_kv: int, h_q: int, d: int, dtype: str, page_size: int) -> tvm.tirx.PrimFunc:
    """`batch_decode_paged_kv_cpu`: one query per sequence against its cached pages."""
    group = h_q // h_kv

    @T.prim_func(private=True, s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle, page_table_values_handle: T.handle,
        var_length_info: T.handle, k_rope_pos_offset_handle: T.handle, q_rope_position_handle: T.handle,
        output_handle: T.handle, lse_handle: T.handle, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.noalias": True})
        B, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        o1, o2, o3, o4, o5 = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", elem_offset=o1)
        page_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=o2)
        length_info = T.match_buffer(var_length_info, (B,), "int32", elem_offset=o3)
        T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", elem_offset=o4)
        T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=o5)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        with T.sblock("root"):
            scale = T.decl_buffer((1,), "float32")
            assert rotary_mode == 0, ROTARY_UNSUPPORTED
            scale[0] = sm_scale * T.float32(LOG2E)
            for task in T.parallel(B * h_q):
                _attend(
                    Q, (task // h_q, task % h_q),
                    pages, lambda key: (page_values[page_indptr[task // h_q] + key // page_size], 0, task % h_q // group, key % page_size),
                    pages, lambda key: (page_values[page_indptr[task // h_q] + key // page_size], 1, task % h_q // group, key % page_size),
                    _pages_len(page_indptr, length_info, task // h_q, page_size), output, lse, (task // h_q, task % h_q), scale, d, dtype, True,
                )

    return batch_decode_paged_kv.with_attr("tirx.is_scheduled", True)


def prefill_paged_func(h_kv: int, h_q: int, d: int, dtype: str, page_size: int) -> tvm.tirx.PrimFunc:
    """`batch_prefill_paged_kv_cpu`: a chunk's queries against the pages cached before it; tasks
    head-major, so a thread's consecutive tasks read the same head's keys."""
    group = h_q // h_kv

    @T.prim_func(private=True, s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle, var_page_indptr: T.handle, var_page_values: T.handle,
        var_length_info: T.handle, var_k_rope_pos_offset: T.handle, var_q_rope_position: T.handle, var_output: T.handle, var_lse: T.handle,
        causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.noalias": True})
        batch_size, total_len, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32(), T.int32()
        o1, o2, o3, o4, o5, o6 = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=o1)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=o2)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=o3)
        length_info = T.match_buffer(var_length_info, (batch_size,), "int32", elem_offset=o4)
        T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=o5)
        T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=o6)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        with T.sblock("root"):
            scale = T.decl_buffer((1,), "float32")
            assert rotary_mode == 0, ROTARY_UNSUPPORTED
            scale[0] = sm_scale * T.float32(LOG2E)
            for b in T.serial(batch_size):
                for task in T.parallel(h_q * _chunk_len(q_indptr, b)):
                    _attend(
                        q, _query(q_indptr, b, task),
                        pages, lambda key: (page_values[page_indptr[b] + key // page_size], 0, _query(q_indptr, b, task)[1] // group, key % page_size),
                        pages, lambda key: (page_values[page_indptr[b] + key // page_size], 1, _query(q_indptr, b, task)[1] // group, key % page_size),
                        _visible(causal, task % _chunk_len(q_indptr, b), _pages_len(page_indptr, length_info, b, page_size), _chunk_len(q_indptr, b)),
                        output, lse, _query(q_indptr, b, task), scale, d, dtype, False,
                    )

    return batch_prefill_paged_kv_cpu.with_attr("tirx.is_scheduled", True)


def prefill_ragged_func(h_kv: int, h_q: int, d: int, dtype: str) -> tvm.tirx.PrimFunc:
    """`batch_prefill_ragged_kv`: a chunk's self-attention (its own keys and values, not yet paged)."""
    group = h_q // h_kv

    @T.prim_func(private=True, s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle, var_q_indptr: T.handle, var_k: T.handle, var_v: T.handle, var_kv_indptr: T.handle,
        var_q_rope_position: T.handle, var_k_rope_pos_offset: T.handle, var_output: T.handle, var_lse: T.handle,
        causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.noalias": True})
        batch_size, qo_len, kv_len = T.int32(), T.int32(), T.int32()
        o1, o2, o3, o4 = T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=o1)
        k = T.match_buffer(var_k, (kv_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=o2)
        T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=o3)
        T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=o4)
        output = T.match_buffer(var_output, (qo_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")
        with T.sblock("root"):
            scale = T.decl_buffer((1,), "float32")
            assert rotary_mode == 0, ROTARY_UNSUPPORTED
            scale[0] = sm_scale * T.float32(LOG2E)
            for b in T.serial(batch_size):
                for task in T.parallel(h_q * _chunk_len(q_indptr, b)):
                    _attend(
                        q, _query(q_indptr, b, task),
                        k, lambda key: (kv_indptr[b] + key, _query(q_indptr, b, task)[1] // group),
                        v, lambda key: (kv_indptr[b] + key, _query(q_indptr, b, task)[1] // group),
                        _visible(causal, task % _chunk_len(q_indptr, b), _chunk_len(kv_indptr, b), _chunk_len(q_indptr, b)),
                        output, lse, _query(q_indptr, b, task), scale, d, dtype, False,
                    )

    return batch_prefill_ragged_kv.with_attr("tirx.is_scheduled", True)
