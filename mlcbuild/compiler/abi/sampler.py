"""The device sampler: MLC's `compiler_pass/attach_sampler.py` function set.

    argsort_probs(probs [b, v]) -> (sorted_probs [b, v], sorted_indices [b, v] i32), descending
    sample_with_top_p(sorted_probs, sorted_indices, uniform_samples [n], sample_indices [n] i32,
                      top_p [b]) -> tokens [n] i32
    multinomial_from_uniform(probs [b, v], uniform_samples [n], sample_indices [n] i32) -> [n] i32
    renormalize_by_top_p(probs [b, v], top_p [b], init_pivots [b, 3]) -> probs [b, v]
    sampler_take_probs(unsorted_probs, sorted_indices, sample_indices [n], sampling_results [n],
                       top_prob_offsets [m]) -> (sampled_values [n], top_prob_probs [m], top_prob_indices [m])
    sampler_verify_draft_tokens(draft_probs [N, v], draft_tokens [N], model_probs [N, v],
                                first_child [N], next_sibling [N], uniform_samples [N],
                                parent_ptr [B]) -> (model_probs, parent_ptr), updated in place

MLC attaches these for GPU targets only; we attach them everywhere (the CPU kernels are serial), so
our own engine samples through them on every library and the tests exercise them on llvm.
renormalize_by_top_p ignores `init_pivots` (MLC's starting guesses for its pivot search): it sorts.
On WebGPU argsort_probs is `bitonic.py` (TVM's GPU sort does not compile there).
"""
from __future__ import annotations

from typing import Any, Sequence

from tvm.script import tirx as T

from mlcbuild.compiler.abi.threads import for_target, is_gpu

FUNCTIONS = (
    "argsort_probs",
    "sample_with_top_p",
    "multinomial_from_uniform",
    "renormalize_by_top_p",
    "sampler_take_probs",
    "sampler_verify_draft_tokens",
)


def _vars(*names: str) -> list[Any]:
    from tvm import tirx

    return [tirx.Var(n, "int64") for n in names]


def _column(bb: Any, x: Any, n: Any, dtype: str) -> Any:
    """[n] -> [n, 1], as an nn.Tensor."""
    from tvm import relax
    from tvm.relax.frontend import nn

    return nn.wrap_nested(bb.emit(relax.op.reshape(x, relax.ShapeExpr([n, 1]))), name=f"col_{dtype}")


def _flat(bb: Any, t: Any, n: Any) -> Any:
    from tvm import relax

    return bb.emit(relax.op.reshape(t._expr, relax.ShapeExpr([n])))


def _argsort(bb: Any, target: Any) -> None:
    from tvm import relax, te

    from mlcbuild.compiler.abi.bitonic import bitonic_argsort

    b, v = _vars("batch_size", "vocab_size")
    probs = relax.Var("probs", relax.TensorType((b, v), "float32"))
    with bb.function("argsort_probs", [probs]):
        with bb.dataflow():
            if target.kind.name == "webgpu":
                kernel = bb.add_func(bitonic_argsort(target), "bitonic_argsort")
                out_ty = [relax.TensorType((b, v), "float32"), relax.TensorType((b, v), "int32")]
                out = bb.emit_output(relax.call_tir(kernel, [probs], out_ty=out_ty))
            else:
                order = bb.emit(relax.op.argsort(probs, descending=True, dtype="int32"))
                values = bb.emit_te(
                    lambda p, o: te.compute((b, v), lambda i, j: p[i, o[i, j]], name="take_sorted_probs"),
                    probs,
                    order,
                    primfunc_name_hint="take_sorted_probs",
                )
                out = bb.emit_output(relax.Tuple([values, order]))
        bb.emit_func_output(out)


def _sample_with_top_p(bb: Any) -> None:
    from tvm import relax, te
    from tvm.relax.frontend import nn

    b, n, v = _vars("batch_size", "num_samples", "vocab_size")
    sorted_probs = relax.Var("sorted_probs", relax.TensorType((b, v), "float32"))
    sorted_indices = relax.Var("sorted_indices", relax.TensorType((b, v), "int32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((n,), "float32"))
    rows = relax.Var("sample_indices", relax.TensorType((n,), "int32"))
    top_p = relax.Var("top_p", relax.TensorType((b,), "float32"))
    with bb.function("sample_with_top_p", [sorted_probs, sorted_indices, uniform, rows, top_p]):
        with bb.dataflow():
            top_k = bb.emit_te(
                lambda p: te.compute((b, 1), lambda i, _: p.shape[1].astype("int32"), name="top_k_all"), sorted_probs, primfunc_name_hint="top_k_all"
            )
            tokens = nn.sample_top_p_top_k_from_sorted_prob(
                nn.wrap_nested(sorted_probs, name="sorted_probs"),
                nn.wrap_nested(sorted_indices, name="sorted_indices"),
                _column(bb, top_p, b, "top_p"),
                nn.wrap_nested(top_k, name="top_k"),
                _column(bb, uniform, n, "uniform"),
                _column(bb, rows, n, "rows"),
            )
            out = bb.emit_output(_flat(bb, tokens, n))
        bb.emit_func_output(out)


def _multinomial(bb: Any) -> None:
    from tvm import relax
    from tvm.relax.frontend import nn

    b, n, v = _vars("batch_size", "num_samples", "vocab_size")
    probs = relax.Var("probs", relax.TensorType((b, v), "float32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((n,), "float32"))
    rows = relax.Var("sample_indices", relax.TensorType((n,), "int32"))
    with bb.function("multinomial_from_uniform", [probs, uniform, rows]):
        with bb.dataflow():
            tokens = nn.multinomial_from_uniform(
                nn.wrap_nested(probs, name="probs"), _column(bb, uniform, n, "uniform"), _column(bb, rows, n, "rows"), "int32"
            )
            out = bb.emit_output(_flat(bb, tokens, n))
        bb.emit_func_output(out)


def _renormalize_te(probs: Any, sorted_probs: Any, cumulative: Any, top_p: Any) -> Any:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (every token whose
    mass before it, in sorted order, is below top_p), ties at the cut included; renormalize."""
    from tvm import te, tirx

    b, v = probs.shape
    kept = lambda i, j: cumulative[i, j] - sorted_probs[i, j] < top_p[i]  # noqa: E731
    j = te.reduce_axis((0, v), name="j")
    cutoff = te.compute(
        (b,), lambda i: te.min(tirx.if_then_else(kept(i, j), sorted_probs[i, j], tirx.max_value("float32")), axis=j), name="top_p_cutoff"
    )
    j2 = te.reduce_axis((0, v), name="j2")
    mass = te.compute(
        (b,), lambda i: te.sum(tirx.if_then_else(probs[i, j2] >= cutoff[i], probs[i, j2], tirx.const(0, "float32")), axis=j2), name="top_p_mass"
    )
    return te.compute(
        (b, v),
        lambda i, k: tirx.if_then_else(probs[i, k] >= cutoff[i], probs[i, k] / mass[i], tirx.const(0, "float32")),
        name="renormalized_probs",
    )


def _renormalize_by_top_p(bb: Any) -> None:
    from tvm import relax

    b, v = _vars("batch_size", "vocab_size")
    probs = relax.Var("probs", relax.TensorType((b, v), "float32"))
    top_p = relax.Var("top_p", relax.TensorType((b,), "float32"))
    pivots = relax.Var("init_pivots", relax.TensorType((b, 3), "float32"))
    with bb.function("renormalize_by_top_p", [probs, top_p, pivots]):
        with bb.dataflow():
            ordered = bb.emit(relax.op.sort(probs, axis=-1, descending=True))
            cumulative = bb.emit(relax.op.cumsum(ordered, axis=-1))
            out = bb.emit_output(bb.call_te(_renormalize_te, probs, ordered, cumulative, top_p, primfunc_name_hint="top_p_renormalize"))
        bb.emit_func_output(out)


@T.prim_func(private=True, s_tir=True)
def _take_probs(
    var_unsorted_probs: T.handle,
    var_sorted_indices: T.handle,
    var_sample_indices: T.handle,
    var_sampling_results: T.handle,
    var_top_prob_offsets: T.handle,
    var_sampled_values: T.handle,
    var_top_prob_probs: T.handle,
    var_top_prob_indices: T.handle,
) -> None:
    T.func_attr({"tirx.noalias": True})
    batch_size = T.int32()
    num_samples = T.int32()
    num_positions = T.int32()
    vocab_size = T.int32()
    unsorted_probs = T.match_buffer(var_unsorted_probs, (batch_size, vocab_size), "float32")
    sorted_indices = T.match_buffer(var_sorted_indices, (batch_size, vocab_size), "int32")
    sample_indices = T.match_buffer(var_sample_indices, (num_samples,), "int32")
    sampling_results = T.match_buffer(var_sampling_results, (num_samples,), "int32")
    top_prob_offsets = T.match_buffer(var_top_prob_offsets, (num_positions,), "int32")
    sampled_values = T.match_buffer(var_sampled_values, (num_samples,), "float32")
    top_prob_probs = T.match_buffer(var_top_prob_probs, (num_positions,), "float32")
    top_prob_indices = T.match_buffer(var_top_prob_indices, (num_positions,), "int32")
    for i in T.serial(num_positions + num_samples):
        with T.sblock("take"):
            vi = T.axis.spatial(num_positions + num_samples, i)
            T.reads(
                top_prob_offsets[0:num_positions],
                sample_indices[0:num_samples],
                sampling_results[0:num_samples],
                sorted_indices[0:batch_size, 0:vocab_size],
                unsorted_probs[0:batch_size, 0:vocab_size],
            )
            T.writes(top_prob_indices[0:num_positions], top_prob_probs[0:num_positions], sampled_values[0:num_samples])
            if vi < num_positions:
                if 0 <= top_prob_offsets[vi] and top_prob_offsets[vi] < batch_size * vocab_size:
                    top_prob_indices[vi] = sorted_indices[top_prob_offsets[vi] // vocab_size, top_prob_offsets[vi] % vocab_size]
                    top_prob_probs[vi] = T.if_then_else(
                        0 <= top_prob_indices[vi] and top_prob_indices[vi] < vocab_size,
                        unsorted_probs[top_prob_offsets[vi] // vocab_size, top_prob_indices[vi]],
                        T.float32(0),
                    )
                else:
                    top_prob_indices[vi] = -1
                    top_prob_probs[vi] = T.float32(0)
            else:
                sampled_values[vi - num_positions] = T.if_then_else(
                    0 <= sample_indices[vi - num_positions]
                    and sample_indices[vi - num_positions] < batch_size
                    and 0 <= sampling_results[vi - num_positions]
                    and sampling_results[vi - num_positions] < vocab_size,
                    unsorted_probs[sample_indices[vi - num_positions], sampling_results[vi - num_positions]],
                    T.float32(0),
                )


def _take_probs_func(bb: Any, target: Any) -> None:
    from tvm import relax

    b, n, m, v = _vars("batch_size", "num_samples", "num_positions", "vocab_size")
    args = [
        relax.Var("unsorted_probs", relax.TensorType((b, v), "float32")),
        relax.Var("sorted_indices", relax.TensorType((b, v), "int32")),
        relax.Var("sample_indices", relax.TensorType((n,), "int32")),
        relax.Var("sampling_results", relax.TensorType((n,), "int32")),
        relax.Var("top_prob_offsets", relax.TensorType((m,), "int32")),
    ]
    kernel = bb.add_func(for_target(_take_probs, target, "take"), "sampler_take_probs_kernel")
    with bb.function("sampler_take_probs", args):
        with bb.dataflow():
            out = bb.emit_output(
                relax.call_tir(
                    kernel,
                    args,
                    out_ty=[
                        relax.TensorType((n,), "float32"),
                        relax.TensorType((m,), "float32"),
                        relax.TensorType((m,), "int32"),
                    ],
                )
            )
        bb.emit_func_output(out)


@T.prim_func(private=True, s_tir=True)
def _verify(
    var_draft_probs: T.handle,
    var_draft_tokens: T.handle,
    var_model_probs: T.handle,
    var_first_child: T.handle,
    var_next_sibling: T.handle,
    var_uniform_samples: T.handle,
    var_parent_ptr: T.handle,
) -> None:
    """Walk each batch's token tree from parent_ptr[b]: accept a child when p >= u * q; on a reject,
    model_probs[parent] becomes normalize(max(p - q, 0)) and the next sibling is tried (a residual
    below 1e-7 accepts). parent_ptr[b] ends on the last accepted node."""
    T.func_attr({"tirx.noalias": True})
    num_nodes = T.int32()
    nbatch = T.int32()
    vocab_size = T.int32()
    draft_probs = T.match_buffer(var_draft_probs, (num_nodes, vocab_size), "float32")
    draft_tokens = T.match_buffer(var_draft_tokens, (num_nodes,), "int32")
    model_probs = T.match_buffer(var_model_probs, (num_nodes, vocab_size), "float32")
    first_child = T.match_buffer(var_first_child, (num_nodes,), "int32")
    next_sibling = T.match_buffer(var_next_sibling, (num_nodes,), "int32")
    uniform_samples = T.match_buffer(var_uniform_samples, (num_nodes,), "float32")
    parent_ptr = T.match_buffer(var_parent_ptr, (nbatch,), "int32")
    for b in T.serial(nbatch):
        with T.sblock("verify"):
            vb = T.axis.spatial(nbatch, b)
            T.reads(
                draft_probs[0:num_nodes, 0:vocab_size],
                draft_tokens[0:num_nodes],
                first_child[0:num_nodes],
                next_sibling[0:num_nodes],
                uniform_samples[0:num_nodes],
            )
            T.writes(model_probs[0:num_nodes, 0:vocab_size], parent_ptr[vb])
            parent = T.sblock_alloc_buffer((1,), "int32", scope="local")
            child = T.sblock_alloc_buffer((1,), "int32", scope="local")
            token = T.sblock_alloc_buffer((1,), "int32", scope="local")
            total = T.sblock_alloc_buffer((1,), "float32", scope="local")
            parent[0] = parent_ptr[vb]
            child[0] = T.if_then_else(0 <= parent[0] and parent[0] < num_nodes, first_child[parent[0]], -1)
            while 0 <= child[0] and child[0] < num_nodes:
                token[0] = draft_tokens[child[0]]
                if token[0] < 0 or token[0] >= vocab_size:
                    child[0] = -1
                elif model_probs[parent[0], token[0]] >= uniform_samples[child[0]] * draft_probs[child[0], token[0]]:
                    parent[0] = child[0]
                    child[0] = first_child[child[0]]
                else:
                    total[0] = T.float32(0)
                    for k in T.serial(vocab_size):
                        total[0] = total[0] + T.max(model_probs[parent[0], k] - draft_probs[child[0], k], T.float32(0))
                    if total[0] < T.float32(1e-7):
                        parent[0] = child[0]
                        child[0] = first_child[child[0]]
                    else:
                        for k in T.serial(vocab_size):
                            model_probs[parent[0], k] = T.max(model_probs[parent[0], k] - draft_probs[child[0], k], T.float32(0)) / total[0]
                        child[0] = next_sibling[child[0]]
            parent_ptr[vb] = parent[0]


def _verify_func(bb: Any, target: Any) -> None:
    from tvm import relax

    nodes, nbatch, v = _vars("num_nodes", "nbatch", "vocab_size")
    args = [
        relax.Var("draft_probs", relax.TensorType((nodes, v), "float32")),
        relax.Var("draft_tokens", relax.TensorType((nodes,), "int32")),
        relax.Var("model_probs", relax.TensorType((nodes, v), "float32")),
        relax.Var("token_tree_first_child", relax.TensorType((nodes,), "int32")),
        relax.Var("token_tree_next_sibling", relax.TensorType((nodes,), "int32")),
        relax.Var("uniform_samples", relax.TensorType((nodes,), "float32")),
        relax.Var("token_tree_parent_ptr", relax.TensorType((nbatch,), "int32")),
    ]
    kernel = bb.add_func(for_target(_verify, target, "verify", threads=1 if is_gpu(target) else None), "sampler_verify_kernel")
    with bb.function("sampler_verify_draft_tokens", args):
        with bb.dataflow():
            out = bb.emit_output(
                relax.call_tir_inplace(kernel, args, inplace_indices=[2, 6], out_ty=[args[2].ty, args[6].ty])
            )
        bb.emit_func_output(out)


def attach(target: Any, max_batch_size: int, only: Sequence[str] | None = None) -> Any:
    import tvm
    from tvm import relax

    makers = {
        "argsort_probs": lambda bb: _argsort(bb, target),
        "sample_with_top_p": _sample_with_top_p,
        "multinomial_from_uniform": _multinomial,
        "renormalize_by_top_p": _renormalize_by_top_p,
        "sampler_take_probs": lambda bb: _take_probs_func(bb, target),
        "sampler_verify_draft_tokens": lambda bb: _verify_func(bb, target),
    }
    names = [n for n in FUNCTIONS if only is None or n in only]
    bounds = {"batch_size": max_batch_size, "num_samples": max_batch_size, "num_positions": 6 * max_batch_size}

    @tvm.transform.module_pass(opt_level=0, name="AttachSampler")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        for name in names:
            makers[name](bb)
        mod = bb.finalize()
        for name in names:
            mod[name] = mod[name].with_attr("tir_var_upper_bound", bounds).with_attr("tir_non_negative_var", ["vocab_size"])
        return mod

    return run
