"""Fusions that make a quantized decode step read each weight once.

Left to the generic FuseOps, `x @ permute_dims(dequantize(q_weight, q_scale))` becomes two
kernels: one writing the float16 weight to memory, one reading it back — ~9x the bytes of the
packed weight per token. As in MLC-LLM:

1. `rewrite_transpose_matmul`: matmul(x, permute_dims(w)) → one NT_matmul TIR kernel reading w
   in its [N, K] layout (float16 inputs accumulate in float32, then cast back);
2. `fuse_dequantize_matmul`: dequantize → NT_matmul grouped into one kernel (FuseOpsByPattern +
   FuseTIR), then marked output-elementwise-fusable so FuseOps still folds bias/activation/
   residual epilogues into it. dlight's GEMV/Matmul rules then schedule the single kernel.
"""
from __future__ import annotations

from typing import Any

OP_PATTERN_OUT_EWISE_FUSABLE = 4


def _nt_matmul_te(x: Any, w: Any, out_dtype: str) -> Any:
    from tvm import te

    k_dim = x.shape[-1]
    k = te.reduce_axis((0, k_dim), name="k")
    acc = "float32" if out_dtype == "float16" and x.dtype == "float16" else out_dtype
    shape = [*x.shape[:-1], w.shape[0]]

    def body(*idx: Any) -> Any:
        *lead, n = idx
        return te.sum(x[(*lead, k)].astype(acc) * w[n, k].astype(acc), axis=k)

    out = te.compute(shape, body, name="NT_matmul")
    if acc != out_dtype:
        out = te.compute(shape, lambda *idx: out(*idx).astype(out_dtype), name="NT_matmul_cast")
    return out


def rewrite_transpose_matmul():
    """Relax pass: matmul(x, permute_dims(w2d)) → call_tir(NT_matmul, x, w)."""
    import tvm
    from tvm import relax

    matmul_op = tvm.ir.Op.get("relax.matmul")
    permute_op = tvm.ir.Op.get("relax.permute_dims")

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule) -> None:
            super().__init__(mod)
            self.mod_ = mod

        def transform(self) -> tvm.IRModule:
            for gv, func in self.mod_.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

        def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op) or not call.op.same_as(matmul_op):
                return call
            x, wt = call.args
            producer = self.lookup_binding(wt) if isinstance(wt, relax.Var) else wt
            if not (isinstance(producer, relax.Call) and isinstance(producer.op, tvm.ir.Op) and producer.op.same_as(permute_op)):
                return call
            w = producer.args[0]
            w_info, x_info = w.ty, x.ty
            axes = producer.attrs.axes
            if w_info.ndim != 2 or x_info.ndim < 2 or (axes is not None and [int(a) for a in axes] != [1, 0]):
                return call
            out_dtype = str(call.attrs.out_dtype)
            if out_dtype in ("", "void", "None"):
                out_dtype = str(x_info.dtype)
            if str(x_info.dtype) != str(w_info.dtype):
                return call
            return self.builder_.call_te(_nt_matmul_te, x, w, out_dtype, primfunc_name_hint="NT_matmul")

    @tvm.transform.module_pass(opt_level=0, name="RewriteTransposeMatmul")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # The replaced permute_dims bindings are dead now; left in, they would keep each
        # dequantized weight alive as a second output of the fused kernel.
        return relax.transform.DeadCodeElimination()(Rewriter(mod).transform())

    return transform


def _callee_name(call: Any) -> str:
    from tvm import relax

    if isinstance(call, relax.Call) and len(call.args) > 0 and isinstance(call.args[0], relax.GlobalVar):
        return call.args[0].name_hint
    return ""


def fuse_dequantize_matmul():
    """After LegalizeOps: group dequantize → NT_matmul into one PrimFunc, fusable with epilogues."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl.pattern import GlobalVarPattern, TuplePattern, is_op, wildcard

    q_weight, q_scale, x = wildcard(), wildcard(), wildcard()
    dequant = is_op("relax.call_tir")(GlobalVarPattern(), TuplePattern([q_weight, q_scale]), add_constraint=False)
    matmul = is_op("relax.call_tir")(GlobalVarPattern(), TuplePattern([x, dequant]), add_constraint=False)
    annotations = {"dequantize": dequant, "matmul": matmul}

    def check(ctx: Any) -> bool:
        return _callee_name(ctx.annotated_expr["dequantize"]).startswith("dequantize") and _callee_name(
            ctx.annotated_expr["matmul"]
        ).startswith("NT_matmul")

    pattern = relax.transform.FusionPattern("dequantize_NT_matmul", matmul, annotations, check)

    @tvm.transform.module_pass(opt_level=0, name="FuseDequantizeMatmul")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = relax.transform.FuseOpsByPattern([pattern], bind_constants=False)(mod)
        mod = relax.transform.FuseTIR()(mod)
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and "NT_matmul" in gv.name_hint:
                out.update_func(gv, func.with_attr("op_pattern", OP_PATTERN_OUT_EWISE_FUSABLE))
        return out

    return transform
