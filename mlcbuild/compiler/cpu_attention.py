"""CPU attention: TVM's paged-KV CPU attention kernels replaced by vector ones, or rewritten in place.

TVM's CPU attention kernels (`relax.frontend.nn.llm`, arriving already marked scheduled) are scalar
loops on one thread. Where the module's caches never rotate q and k inside attention (RopeMode NORMAL
or NONE and no sliding window: most models here), decode, paged prefill and ragged prefill are replaced
by the vector kernels of `cpu_attention_kernels.py` (same names and signatures). The rest (models with
a sliding window, inline rope, head sizes not a multiple of 8, the sliding-window kernels) keep TVM's
loops with their heads run in parallel; heads are independent (each writes its own output[.., h, :]
and lse[.., h]):

- decode (`batch_decode_paged_kv_cpu*`) is `for b: attn block {scratch buffers; for h_qo: ...}`: the
  scratch buffers used only inside the head loop move into a block of their own inside it (one set
  per thread) and the head loop runs `parallel`;
- prefill against cached pages (`batch_prefill_paged_kv_cpu*`) is `for h_qo: for b: attn block`,
  whose block already allocates per iteration: the head loop runs `parallel` as it is;
- a new chunk's self-attention (`batch_prefill_ragged_kv`) is `for b: attn block {scratch buffers;
  for q_idx: ...}`, its heads interleaved inside its key loop: its queries are independent instead
  (each re-initializes every scratch buffer and writes its own output row), so the query loop runs
  `parallel` with the scratch buffers inside it, as decode's head loop does.

TVM's LLVM codegen cannot hand a float scalar parameter (sm_scale, rope_theta, rope_scale) to a
parallel loop's closure (its analyzer binds every captured variable as an integer), so the kernel
first stores them in a small buffer and reads them from it (`PrimFunc.specialize` substitutes the
loads); the signature is unchanged. A kernel of another shape is left alone (the rewrite checks the
structure it expects).

Imports TVM at module level: reached only through `pipeline.schedule_passes` for llvm targets.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx
from tvm.s_tir.stmt import SBlock, SBlockRealize

HEAD_LOOP = "h_qo"
QUERY_LOOP = "q_idx"
KERNELS = ("batch_decode_paged_kv_cpu", "batch_prefill_paged_kv_cpu", "batch_prefill_ragged_kv")


def _block_with(block: Any, body: Any, alloc_buffers: Any = None) -> Any:
    return SBlock(
        block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
        block.alloc_buffers if alloc_buffers is None else alloc_buffers, block.match_buffers, block.annotations,
    )


def _realize(realize: Any, block: Any) -> Any:
    return SBlockRealize(realize.iter_values, realize.predicate, block)


def _for_with(loop: Any, body: Any, kind: Any = None) -> Any:
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind if kind is None else kind, body, loop.thread_binding, loop.annotations)


def _is_serial_loop(stmt: Any, name: str) -> bool:
    return isinstance(stmt, tirx.For) and stmt.loop_var.name == name and stmt.kind == tirx.ForKind.SERIAL


def _attn_block(attn: Any) -> Any | None:
    """The "attn" block with its last loop parallel (decode: the heads; ragged prefill: the queries)
    and that loop's own scratch buffers inside it."""
    stmts = list(attn.body.seq) if isinstance(attn.body, tirx.SeqStmt) else [attn.body]
    loop = stmts[-1]
    if not (_is_serial_loop(loop, HEAD_LOOP) or len(stmts) == 1 and _is_serial_loop(loop, QUERY_LOOP)):
        return None
    before = "\n".join(str(s) for s in stmts[:-1])
    shared = [b for b in attn.alloc_buffers if f"{b.name}[" in before]
    private = [b for b in attn.alloc_buffers if f"{b.name}[" not in before]
    inner = SBlockRealize([], True, SBlock([], [], [], f"attn_{loop.loop_var.name}", loop.body, None, private))
    parallel = _for_with(loop, inner, tirx.ForKind.PARALLEL)
    return _block_with(attn, tirx.SeqStmt([*stmts[:-1], parallel]) if len(stmts) > 1 else parallel, shared)


def _heads_parallel(body: Any) -> Any | None:
    """The root block's body with the heads in parallel, or None for a shape this does not know."""
    if _is_serial_loop(body, HEAD_LOOP):
        return _for_with(body, body.body, tirx.ForKind.PARALLEL)
    if isinstance(body, tirx.For) and isinstance(body.body, SBlockRealize) and body.body.block.name_hint == "attn":
        attn = _attn_block(body.body.block)
        return None if attn is None else _for_with(body, _realize(body.body, attn))
    return None


def parallel_heads(func: Any) -> Any | None:
    """`func` (a TVM CPU attention kernel) with its heads (or queries) in parallel, or None."""
    if not isinstance(func.body, SBlockRealize) or _heads_parallel(func.body.block.body) is None:
        return None
    floats = [p for p in func.params if isinstance(p.ty, tvm.ir.PrimType) and str(p.ty.dtype).startswith("float")]
    scalars = tirx.decl_buffer((max(len(floats), 1),), "float32", name="attn_scalars")
    loads = {p: tirx.Cast(str(p.ty.dtype), tirx.BufferLoad(scalars, [tirx.IntImm("int32", i)])) for i, p in enumerate(floats)}
    root = func.specialize(loads).body if floats else func.body
    body = _heads_parallel(root.block.body)
    if body is None:
        return None
    stores = [tirx.BufferStore(scalars, tirx.Cast("float32", p), [tirx.IntImm("int32", i)]) for i, p in enumerate(floats)]
    block = _block_with(root.block, tirx.SeqStmt([*stores, body]) if stores else body, [*root.block.alloc_buffers, *([scalars] if floats else [])])
    return func.with_body(_realize(root, block))


INLINE_ROPE = 2
"""RopeMode.INLINE: the runtime then asks the attention kernels to rotate q and k (rotary_mode 1). TVM's
runtime also switches a NORMAL cache to INLINE when it is created with sliding-window support (MLC's
runtimes do that for a model with `sliding_window_size` > 0), so that is checked too (`cpu_attention`)."""


def _rope_modes(mod: tvm.IRModule) -> set[int] | None:
    """The rope modes of every paged KV cache the module creates, or None where one is not a constant."""
    from tvm import relax

    modes: set[int | None] = set()

    @relax.expr_functor.visitor
    class Creates(relax.PyExprVisitor):
        def visit_call_(self, call: Any) -> None:
            callee = call.args[0] if len(call.args) else None
            if isinstance(callee, relax.ExternFunc) and callee.global_symbol == "vm.builtin.paged_attention_kv_cache_create":
                mode = call.args[9] if len(call.args) > 9 else None  # rope_mode: TVM's 9th argument of the call
                modes.add(int(mode.value) if isinstance(mode, tirx.IntImm) else None)
            for arg in call.args:
                self.visit_expr(arg)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Creates().visit_expr(func)
    return None if None in modes else modes


def vector_kernel(name: str, func: Any) -> Any | None:
    """The vector kernel (compiler/cpu_attention_kernels.py) for TVM's CPU attention kernel `func`
    named `name`, of its shapes, or None (sliding windows, other kernels, head sizes not in lanes)."""
    from mlcbuild.compiler import cpu_attention_kernels as kernels

    buffers = [p for p in func.params if not isinstance(p.ty, tvm.ir.PrimType)]
    shapes = [[int(x) if isinstance(x, tirx.IntImm) else None for x in b.shape] for b in buffers]
    dtype = str(buffers[0].dtype)
    if name == "batch_decode_paged_kv_cpu" or name == "batch_prefill_paged_kv_cpu":
        _, _, h_kv, page_size, d = shapes[1 if name.startswith("batch_decode") else 2]
        h_q = shapes[0][1]
        if not kernels.supports(h_kv, h_q, d):
            return None
        make = kernels.decode_func if name.startswith("batch_decode") else kernels.prefill_paged_func
        built = make(h_kv, h_q, d, dtype, page_size)
    elif name == "batch_prefill_ragged_kv":
        (_, h_q, d), (_, h_kv, d_k), (_, _, d_v) = shapes[0], shapes[2], shapes[3]
        if d != d_k or d != d_v or not kernels.supports(h_kv, h_q, d):
            return None
        built = kernels.prefill_ragged_func(h_kv, h_q, d, dtype)
    else:
        return None
    symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
    return built if symbol is None else built.with_attr("global_symbol", symbol)


def cpu_attention(vector_kernels: bool = True):
    """Module pass: TVM's CPU attention kernels replaced by vector ones where the module's caches
    never rotate inside attention, else (and for sliding windows) with heads in parallel.
    `vector_kernels=False` (a model that runs with a sliding window): TVM's kernels, heads in parallel."""

    @tvm.transform.module_pass(opt_level=0, name="CpuAttention")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        modes = _rope_modes(mod)
        vectors_ok = vector_kernels and modes is not None and INLINE_ROPE not in modes
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith(KERNELS):
                rewritten = (vector_kernel(gv.name_hint, func) if vectors_ok else None) or parallel_heads(func)
                if rewritten is not None:
                    out.update_func(gv, rewritten)
        return out

    return transform
