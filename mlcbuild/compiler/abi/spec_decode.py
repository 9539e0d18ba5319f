"""gather/scatter of rows by index, for MLC's speculative decoding (`attach_spec_decode_aux_funcs.py`).

    gather_probs(src [m, n] f32, indices [b] i32, dst [b, n] f32):  dst[i] = src[indices[i]]
    scatter_probs(src [b, n] f32, indices [b] i32, dst [m, n] f32): dst[indices[i]] = src[i]
    gather_hidden_states / scatter_hidden_states: the same over hidden states (model dtype),
    as Relax functions that update `dst` in place and return it.
An index outside `src`/`dst` leaves its row untouched.
"""
from __future__ import annotations

from typing import Any

from mlcbuild.compiler.abi.threads import for_target

FUNCTIONS = ("gather_probs", "scatter_probs", "gather_hidden_states", "scatter_hidden_states")


def _rows(dtype: str, scatter: bool) -> Any:
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_src: T.handle, var_indices: T.handle, var_dst: T.handle) -> None:
        T.func_attr({"tirx.noalias": True})
        batch_size = T.int32()
        m = T.int32()
        n = T.int32()
        src = T.match_buffer(var_src, (batch_size if scatter else m, n), dtype)
        indices = T.match_buffer(var_indices, (batch_size,), "int32")
        dst = T.match_buffer(var_dst, (m if scatter else batch_size, n), dtype)
        for b, j in T.grid(batch_size, n):
            with T.sblock("rows"):
                vb, vj = T.axis.remap("SS", [b, j])
                T.reads(src[0 : (batch_size if scatter else m), vj], indices[vb])
                T.writes(dst[0 : (m if scatter else batch_size), vj])
                if 0 <= indices[vb] and indices[vb] < m:
                    if scatter:
                        dst[indices[vb], vj] = src[vb, vj]
                    else:
                        dst[vb, vj] = src[indices[vb], vj]

    return kernel


def attach(target: Any) -> Any:
    import tvm
    from tvm import relax, tirx

    @tvm.transform.module_pass(opt_level=0, name="AttachSpecDecodeFuncs")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        embed = next((f for gv, f in mod.functions_items() if gv.name_hint == "embed"), None)
        bb = relax.BlockBuilder(mod)
        for scatter in (False, True):
            verb = "scatter" if scatter else "gather"
            bb.add_func(for_target(_rows("float32", scatter).with_attr("global_symbol", f"{verb}_probs"), target, "rows"), f"{verb}_probs")
            if embed is None:
                continue
            dtype = embed.ret_ty.dtype
            b, m, n = (tirx.Var(x, "int64") for x in ("batch_size", "m", "n"))
            src = relax.Var("src", relax.TensorType([b if scatter else m, n], dtype))
            indices = relax.Var("indices", relax.TensorType([b], "int32"))
            dst = relax.Var("dst", relax.TensorType([m if scatter else b, n], dtype))
            kernel = bb.add_func(for_target(_rows(dtype, scatter), target, "rows"), f"_{verb}_hidden_states")
            with bb.function(f"{verb}_hidden_states", [src, indices, dst]):
                with bb.dataflow():
                    out = bb.emit_output(relax.op.call_tir_inplace(kernel, [src, indices, dst], 2, dst.ty))
                bb.emit_func_output(out)
        return bb.finalize()

    return run
