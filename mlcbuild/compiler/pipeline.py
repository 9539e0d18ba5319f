"""The Relax pipeline that turns an exported LLM IRModule into VM bytecode + kernels.

Shaped after MLC-LLM's: bound the symbolic sizes (so memory planning is static), legalize and fuse
(dequantize fuses into the matmul that consumes it), schedule kernels with dlight (GPU rules for
GPU targets, CPU rules for llvm), plan memory, record memory usage for `_metadata`, lower to VM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

OPT_LEVELS = ("O0", "O1", "O2", "O3")


@dataclass(frozen=True)
class CompileOptions:
    """Recipe `compile_options`, resolved against the opt level's defaults."""

    opt: str = "O2"
    cudagraph: bool | None = None
    cublas: bool | None = None
    embed_ptx: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "CompileOptions":
        data = dict(data or {})
        known = {k: data.pop(k) for k in ("opt", "cudagraph", "cublas", "embed_ptx") if k in data}
        if "flashinfer" in data and data["flashinfer"]:
            from mlcbuild.errors import UserError

            raise UserError("flashinfer is not available in this build (apache-tvm wheel)", field="compile_options.flashinfer")
        data.pop("flashinfer", None)
        opts = cls(**known, extra=data)
        if opts.opt not in OPT_LEVELS:
            from mlcbuild.errors import UserError

            raise UserError(f"opt must be one of {', '.join(OPT_LEVELS)}, got {opts.opt!r}", field="compile_options.opt")
        return opts

    @property
    def level(self) -> int:
        return int(self.opt[1])

    def use_cudagraph(self, kind: str) -> bool:
        if kind != "cuda":
            return False
        return self.cudagraph if self.cudagraph is not None else self.level >= 2

    def use_cublas(self, kind: str) -> bool:
        if kind != "cuda":
            return False
        return bool(self.cublas) if self.cublas is not None else False


def variable_bounds(config: Mapping[str, Any]) -> dict[str, int]:
    """Upper bounds of the symbolic sizes the model's spec uses (MLC's AttachVariableBounds)."""
    window = int(config.get("context_window_size") or -1)
    sliding = int(config.get("sliding_window_size") or -1)
    chunk = int(config.get("prefill_chunk_size") or 0)
    total = window if window > 0 else max(sliding, chunk)
    bounds = {
        "seq_len": chunk,
        "total_seq_len": total,
        "batch_size": int(config.get("max_batch_size") or 1),
    }
    return {k: v for k, v in bounds.items() if v > 0}


def _attach_variable_bounds(bounds: Mapping[str, int]):
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="AttachVariableBounds")
    def attach(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                func = func.with_attr("tir_var_upper_bound", dict(bounds))
                func = func.with_attr("tir_non_negative_var", list(bounds))
                out.update_func(gv, func)
        return out

    return attach


def gpu_schedule_rules(level: int, kind: str = "cuda") -> list[Any]:
    """dlight's GPU rules; Matmul is left out on metal, where its simdgroup tensorization
    crashes this TVM (segfault in Tensorize) — GEMV/Fallback still schedule those kernels."""
    from tvm.s_tir import dlight as dl

    if level == 0:
        return [dl.gpu.Fallback()]
    return [
        *([dl.gpu.Matmul()] if kind != "metal" else []),
        dl.gpu.GEMV(),
        dl.gpu.LowBatchGEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def cpu_schedule_rules(level: int) -> list[Any]:
    from tvm.s_tir import dlight as dl

    if level == 0:
        return []
    return [dl.cpu.GEMV(), dl.cpu.Reduction()]


def build_pipeline(
    target: Any,
    options: CompileOptions,
    bounds: Mapping[str, int],
    memory_usage: dict[str, int],
    after_memory_plan: Sequence[Any] = (),
):
    """The Relax pipeline pass; `memory_usage` is filled with per-function planned bytes and
    `after_memory_plan` passes (e.g. attaching `_metadata`) run right after it is known."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    kind = target.kind.name
    is_gpu = "gpu" in target.keys
    level = options.level

    @tvm.transform.module_pass(opt_level=0, name="MlcbuildPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fuse = [relax.transform.FuseOps(), relax.transform.FuseTIR()] if level >= 1 else []
        rules = gpu_schedule_rules(level, kind) if is_gpu else cpu_schedule_rules(level)
        with target:
            seq = tvm.transform.Sequential(
                [
                    _attach_variable_bounds(bounds),
                    relax.backend.DispatchSampling(),
                    relax.backend.DispatchSortScan(),
                    relax.transform.LegalizeOps(),
                    relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(),
                    *fuse,
                    relax.transform.DeadCodeElimination(),
                    *([dl.ApplyDefaultSchedule(*rules)] if rules else []),
                    relax.transform.RewriteDataflowReshape(),
                    relax.transform.ToNonDataflow(),
                    relax.transform.RemovePurityChecking(),
                    relax.transform.CallTIRRewrite(),
                    relax.transform.StaticPlanBlockMemory(),
                    _record_memory_usage(memory_usage),
                    *after_memory_plan,
                    *([relax.transform.RewriteCUDAGraph()] if options.use_cudagraph(kind) else []),
                    relax.transform.LowerAllocTensor(),
                    relax.transform.KillAfterLastUse(),
                    relax.transform.LowerRuntimeBuiltin(),
                    relax.transform.ComputePrimValue(),
                    relax.transform.VMShapeLower(),
                    relax.transform.AttachGlobalSymbol(),
                ]
            )
            return seq(mod)

    return pipeline


def _record_memory_usage(out: dict[str, int]):
    """Sum of statically planned storage per Relax function (what MLC reports as memory_usage)."""
    import tvm
    from tvm import relax

    alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")

    @tvm.transform.module_pass(opt_level=0, name="RecordMemoryUsage")
    def record(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            total = 0

            def visit(expr: Any) -> None:
                nonlocal total
                if isinstance(expr, relax.Call) and expr.op.same_as(alloc_storage):
                    shape = expr.args[0]
                    if isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in shape.values):
                        size = 1
                        for v in shape.values:
                            size *= int(v)
                        total += size

            relax.analysis.post_order_visit(func, visit)
            out[gv.name_hint] = total
        return mod

    return record
