"""The vector CPU attention kernels (mlcbuild/compiler/cpu_attention_kernels.py) against TVM's own
scalar kernels they replace, called with the arguments TVM's paged KV cache passes: several
sequences, keys over several pages in a shuffled page table, causal and not, grouped-query heads,
float16 and float32; and the pass keeps TVM's kernels where the cache rotates inside attention."""
from __future__ import annotations

import numpy as np
import pytest

PAGE = 16


def _compiled(h_kv: int, h_q: int, d: int, dtype: str):
    from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu
    from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_cpu, _attention_prefill_ragged_cpu

    from mlcbuild.compiler.cpu_attention import vector_kernel

    tvm_kernels = {
        "batch_decode_paged_kv_cpu": _attention_decode_cpu(h_kv, h_q, d, dtype, False, {}, PAGE),
        "batch_prefill_paged_kv_cpu": _attention_prefill_cpu(h_kv, h_q, d, dtype, False, {}, PAGE),
        "batch_prefill_ragged_kv": _attention_prefill_ragged_cpu(h_kv, h_q, d, d, dtype, {}),
    }
    funcs = {}
    for name, func in tvm_kernels.items():
        funcs[f"tvm_{name}"] = func
        funcs[f"ours_{name}"] = vector_kernel(name, func)
    return _compile(funcs)


def _compile(funcs: dict):
    """One library of the named PrimFuncs for the portable llvm target."""
    import tvm

    from mlcbuild.targets import resolve_target

    target = tvm.target.Target(resolve_target("llvm", None).tvm_target_config())
    return tvm.compile(tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()}), target=target)


def _run(lib, name: str, arrays: list[np.ndarray], scalars: list, out_shapes: list[tuple], dtype: str) -> dict[str, list[np.ndarray]]:
    import tvm

    dev = tvm.cpu()
    results = {}
    for who in ("tvm", "ours"):
        outs = [np.zeros(out_shapes[0], dtype), np.zeros(out_shapes[1], "float32")]
        args = [tvm.runtime.tensor(a, dev) for a in [*arrays, *outs]]
        lib[f"{who}_{name}"](*args, *scalars)
        results[who] = [args[-2].numpy().astype("float32"), args[-1].numpy()]
    return results


def _close(results: dict, tol: float) -> None:
    """Ours equals TVM's wherever TVM's is finite; TVM leaves a query that sees no key uninitialized
    (NaN here), ours writes zeros and lse -5e4 there."""
    for ours, theirs in zip(results["ours"], results["tvm"]):
        assert np.isfinite(ours).all()
        seen = np.isfinite(theirs)
        np.testing.assert_allclose(ours[seen], theirs[seen], atol=tol, rtol=tol)
    output, lse = results["ours"]
    blind = ~np.isfinite(results["tvm"][1])
    assert (lse[blind] == -5e4).all() and (output[np.broadcast_to(blind[..., None], output.shape)] == 0).all()


def _pages(rng, h_kv: int, d: int, dtype: str, cached: list[int]):
    counts = [(n + PAGE - 1) // PAGE for n in cached]
    pool = sum(counts) + 3
    pages = rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(dtype)
    table = rng.permutation(pool)[: sum(counts)].astype("int32")
    indptr = np.cumsum([0, *counts]).astype("int32")
    last = np.array([n - (c - 1) * PAGE if c else 0 for n, c in zip(cached, counts)], "int32")
    return [pages, indptr, table, last]


SHAPES = [(2, 4, 16, "float32", 1e-5), (2, 8, 64, "float16", 2e-3), (4, 4, 80, "float16", 2e-3)]


@pytest.mark.parametrize("h_kv,h_q,d,dtype,tol", SHAPES)
def test_vector_kernels_compute_what_tvms_kernels_compute(h_kv: int, h_q: int, d: int, dtype: str, tol: float) -> None:
    lib = _compiled(h_kv, h_q, d, dtype)
    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(d)
    zeros = lambda n: np.zeros(n, "int32")  # noqa: E731  (rope offsets: rotary_mode 0 never reads them)

    cached = [0, 1, 15, 16, 17, 100, 333]
    q = rng.standard_normal((len(cached), h_q, d)).astype(dtype)
    decode = _run(lib, "batch_decode_paged_kv_cpu", [q, *_pages(rng, h_kv, d, dtype, cached), zeros(len(cached)), zeros(len(cached))],
                  [0, 1.0, 1e4, scale], [q.shape, q.shape[:2]], dtype)
    _close(decode, tol)

    for chunk, causal in [([5, 40, 1], 1), ([7, 3], 0)]:
        total = sum(chunk)
        q_indptr = np.cumsum([0, *chunk]).astype("int32")
        q, k, v = (rng.standard_normal((total, heads, d)).astype(dtype) for heads in (h_q, h_kv, h_kv))
        ragged = _run(lib, "batch_prefill_ragged_kv", [q, q_indptr, k, v, q_indptr, zeros(total), zeros(len(chunk))],
                      [causal, 0, 1.0, 1e4, scale], [q.shape, q.shape[:2]], dtype)
        _close(ragged, tol)
        cached = [3, 70, 0][: len(chunk)]  # 3 cached tokens < 5 queries: causal rows that see no key
        paged = _run(lib, "batch_prefill_paged_kv_cpu", [q, q_indptr, *_pages(rng, h_kv, d, dtype, cached), zeros(len(chunk)), zeros(total)],
                     [causal, 0, 1.0, 1e4, scale], [q.shape, q.shape[:2]], dtype)
        _close(paged, tol)


def _module_with_cache(rope_mode: int):
    from tvm import relax
    from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu

    bb = relax.BlockBuilder()
    with bb.function("create_kv_cache", []):
        args = [relax.prim_value(0)] * 8 + [relax.prim_value(rope_mode)]
        cache = bb.emit(relax.call_pure_packed("vm.builtin.paged_attention_kv_cache_create", *args, ty_args=relax.AnyType()))
        bb.emit_func_output(cache)
    bb.add_func(_attention_decode_cpu(2, 4, 16, "float32", False, {}, PAGE), "batch_decode_paged_kv_cpu")
    bb.add_func(_attention_decode_cpu(2, 4, 16, "float32", True, {}, PAGE), "batch_decode_paged_kv_cpu_sliding_window")
    return bb.get()


@pytest.mark.parametrize("rope_mode,sliding_window,vector", [(1, False, True), (0, False, True), (2, False, False), (1, True, False)])
def test_kernels_are_replaced_only_where_the_cache_never_rotates_inside_attention(rope_mode: int, sliding_window: bool, vector: bool) -> None:
    """RopeMode INLINE (2), or NORMAL in a cache created with sliding-window support (TVM's runtime
    then rotates inline), makes the runtime pass rotary_mode 1, which only TVM's kernels implement;
    sliding-window kernels keep TVM's loops either way, with their heads in parallel."""
    from mlcbuild.compiler.cpu_attention import cpu_attention

    mod = cpu_attention(vector_kernels=not sliding_window)(_module_with_cache(rope_mode))
    decode = mod["batch_decode_paged_kv_cpu"].script()
    assert ("float32x8" in decode and "O_local" not in decode) == vector
    assert "for h_qo in T.parallel(" in mod["batch_decode_paged_kv_cpu_sliding_window"].script()


def test_a_rotating_call_is_an_error_never_a_wrong_answer() -> None:
    import tvm

    from mlcbuild.compiler import cpu_attention_kernels as kernels

    lib = _compile({"decode": kernels.decode_func(2, 4, 16, "float32", PAGE)})
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 4, 16)).astype("float32")
    arrays = [q, *_pages(rng, 2, 16, "float32", [5]), np.zeros(1, "int32"), np.zeros(1, "int32"), np.zeros_like(q), np.zeros((1, 4), "float32")]
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    lib["decode"](*args, 0, 1.0, 1e4, 0.25)
    assert np.abs(args[-2].numpy()).max() > 0
    with pytest.raises(Exception, match="do not rotate q and k"):
        lib["decode"](*args, 1, 1.0, 1e4, 0.25)


def test_vector_kernels_keep_their_state_in_registers() -> None:
    """A task's query, output and softmax state are stack arrays LLVM keeps in registers
    (`cpu_schedule.TASK_SCOPE`), the output D lanes wide taken 8 at a time: as TVM "local" buffers they
    were a TVMBackendAllocWorkspace call per task, and one float32x80 output vector was scalarized
    (vinsertps into stack slots, ~280 instructions per key): the 3B shape's decode attention ran 1.6-1.9×
    (pages from DRAM) to 4.5× (cache-hot) slower."""
    from mlcbuild.compiler import cpu_attention_kernels as kernels

    lib = _compile({
        "decode": kernels.decode_func(4, 4, 80, "float16", PAGE),
        "paged": kernels.prefill_paged_func(4, 4, 80, "float16", PAGE),
        "ragged": kernels.prefill_ragged_func(4, 4, 80, "float16"),
    })
    assert "TVMBackendAllocWorkspace" not in lib.mod.inspect_source("ll")
    assert "vinsertps" not in lib.mod.inspect_source("asm")
