"""The Relax pipeline that turns an exported LLM IRModule into VM bytecode + kernels.

Shaped after MLC-LLM's: bound the symbolic sizes (so memory planning is static), legalize and fuse
(dequantize fuses into the matmul that consumes it), schedule kernels with dlight (GPU rules for
GPU targets, CPU rules for llvm), plan memory, record memory usage for `_metadata`, lower to VM.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mlcbuild.compiler.options import OPT_LEVELS, CompileOptions  # noqa: F401  (re-exported)


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


def matmul_rule_crashes(kind: str, arch: str) -> bool:
    """dlight's Matmul tensorization segfaults this TVM (in Tensorize) on metal (simdgroup) and
    on sm_80..sm_89 (mma) for real-size prefill matmuls; sm_90a builds. GEMV/Fallback schedule
    those kernels instead, slower for prefill but correct."""
    return kind == "metal" or (kind == "cuda" and arch.startswith("sm_8"))


def gpu_schedule_rules(level: int, kind: str = "cuda", arch: str = "") -> list[Any]:
    """dlight's GPU rules (see matmul_rule_crashes for what is left out where)."""
    from tvm.s_tir import dlight as dl

    if level == 0:
        return [dl.gpu.Fallback()]
    return [
        *([] if matmul_rule_crashes(kind, arch) else [dl.gpu.Matmul()]),
        dl.gpu.GEMV(),
        dl.gpu.LowBatchGEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def cpu_schedule_rules(level: int) -> list[Any]:
    """mlcbuild's CPU matmul/GEMV rule (compiler/cpu_schedule.py), dlight's CPU Reduction rule
    (softmax, layer norm), then mlcbuild's injective rule. dlight's CPU GEMV rule is left out: on
    the fused NT_matmul kernels it emits code that LLVM needs minutes to compile (190 s vs 3 s for
    a tiny model)."""
    from tvm.s_tir import dlight as dl

    from mlcbuild.compiler.cpu_schedule import Injective, Matmul

    if level == 0:
        return []
    return [Matmul(), dl.cpu.Reduction(), Injective()]


def cpu_legalize_map(level: int) -> dict[str, Any] | None:
    """Vectorizable legalizations for llvm (`cpu_schedule.LEGALIZE`: gelu with a polynomial erf)
    wherever kernels are scheduled."""
    from mlcbuild.compiler.cpu_schedule import LEGALIZE

    return dict(LEGALIZE) if level >= 1 else None


def cpu_kernel_passes(target: Any, options: CompileOptions, sliding_window: bool = True) -> list[Any]:
    """Where llvm kernels are scheduled: matmuls on q4f16_1 weights as integer dot products
    (compiler/int8_gemv.py) where the target has them (x86 AVX2, AVX-512 VNNI / AVX-VNNI, AArch64
    dotprod), and attention as vector kernels (compiler/cpu_attention.py).
    `compile: {cpu_int8_digits: 1}` quantizes activations to one int8 digit (llama.cpp's Q8_0)
    instead of two (the default); 0 keeps the float path. `sliding_window`:
    the model may run with a sliding window (unknown counts as yes): its runtime cache then rotates
    q and k inside attention, which only TVM's attention kernels do."""
    if options.level < 1 or "cpu" not in target.keys:
        return []
    from mlcbuild.compiler.cpu_attention import cpu_attention
    from mlcbuild.compiler.int8_gemv import Isa, int8_matmuls

    digits = options.cpu_int8_digits
    isa = Isa.of(target)
    return [*([int8_matmuls(isa, digits)] if isa is not None and digits else []), cpu_attention(vector_kernels=not sliding_window)]


def apply_schedule_rules(rules: Sequence[Any]):
    """dlight's ApplyDefaultSchedule, except that a rule which raises on a kernel is skipped
    (the next rule, ending with Fallback on GPUs, gets it) instead of failing the build."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="ApplyScheduleRules")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0) if func.attrs else 0):
                continue
            target = (func.attrs.get("target") if func.attrs else None) or tvm.target.Target.current(allow_none=False)
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except Exception:  # noqa: BLE001 - a rule that cannot handle this kernel
                    continue
                if space is None:
                    continue
                sch = space[0] if isinstance(space, list) else space
                out.update_func(gv, sch.mod["main"].with_attr("tirx.is_scheduled", True))
                break
        return out

    return apply


def schedule_passes(
    target: Any, options: CompileOptions, bounds: Mapping[str, int], metadata: Mapping[str, Any] | None = None
) -> list[Any]:
    """The pipeline's passes up to scheduled kernels (MLC's ABI functions, legalize, fuse, schedule
    rules); run them under `with target:` to see the TIR a library is compiled from."""
    from tvm import relax

    from mlcbuild.compiler.abi import abi_passes

    from mlcbuild.compiler.fusion import (
        fuse_dequantize_matmul,
        rewrite_transpose_matmul,
    )

    kind = target.kind.name
    level = options.level
    arch = str(target.attrs.get("arch", "")) if kind == "cuda" else ""
    rules = gpu_schedule_rules(level, kind, arch) if "gpu" in target.keys else cpu_schedule_rules(level)
    return [
        *(abi_passes(target, metadata) if metadata is not None else []),
        _attach_variable_bounds(bounds),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        *([rewrite_transpose_matmul()] if level >= 1 else []),
        relax.transform.LegalizeOps(cpu_legalize_map(level) if "cpu" in target.keys else None),
        relax.transform.AnnotateTIROpPattern(),
        *cpu_kernel_passes(target, options, sliding_window=metadata is None or int(metadata.get("sliding_window_size") or -1) > 0),
        *([fuse_dequantize_matmul()] if level >= 1 else []),
        relax.transform.FoldConstant(),
        *([relax.transform.FuseOps(), relax.transform.FuseTIR()] if level >= 1 else []),
        relax.transform.DeadCodeElimination(),
        *([apply_schedule_rules(rules)] if rules else []),
    ]


def build_pipeline(
    target: Any,
    options: CompileOptions,
    bounds: Mapping[str, int],
    memory_usage: dict[str, int],
    after_memory_plan: Sequence[Any] = (),
    metadata: Mapping[str, Any] | None = None,
):
    """The Relax pipeline pass; `memory_usage` is filled with per-function planned bytes and
    `after_memory_plan` passes (e.g. attaching `_metadata`) run right after it is known. With
    `metadata` (prefill_chunk_size, max_batch_size, active_vocab_size), MLC's ABI functions are added."""
    import tvm
    from tvm import relax

    kind = target.kind.name

    @tvm.transform.module_pass(opt_level=0, name="MlcbuildPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from mlcbuild.compiler.determinism import canonical_store_order
        from mlcbuild.compiler.llvm_alias import noalias_everywhere

        with target:
            seq = tvm.transform.Sequential(
                [
                    *schedule_passes(target, options, bounds, metadata),
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
                    canonical_store_order(),
                    *([noalias_everywhere()] if kind == "llvm" else []),
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
