"""compile: mlc-chat-config.json (architecture fields only) + target → model library.

The key sees the architecture fields of the config, the target definition, the options and the
toolchain (apache-tvm version, nvcc version for CUDA): a new fine-tune of the same architecture,
a new temperature or a new conversation template reuses the compiled library. A target that pins
nvcc (`toolchain_versions:`) puts the pin in the key, so any machine computes it, nvcc or not; the
machine that compiles checks its nvcc against the pin first, and the action entry records the
nvcc that actually ran (`built_with`, for provenance).
Importing this module must not import TVM (planning computes keys with it).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

from mlcbuild.artifact import CHAT_CONFIG, ChatConfig
from mlcbuild.compiler.options import cublas_available
from mlcbuild.errors import StepError, UserError
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.store.manifest import Manifest
from mlcbuild.targets import PIN_FIELD, VERSIONED_TOOLS, ResolvedTarget, pin_matches
from mlcbuild.toolchain import check_resolved, tvm_version

TOOL_UNIT = 0.001
"""How much of a worker's `toolchain:<tool>` resource one compile takes."""


def _target(params: Mapping[str, JSON]) -> ResolvedTarget:
    try:
        return ResolvedTarget.from_params(params["target"])
    except (KeyError, TypeError) as exc:
        raise UserError(f"compile target is malformed: {exc}", field="targets") from None


def tool_version(tool: str) -> str | None:
    """The version a tool of `targets.VERSIONED_TOOLS` reports here, or None without the tool."""
    from mlcbuild.compiler.cuda import nvcc_version

    return {"nvcc": nvcc_version}[tool]()


def check_pins(target: ResolvedTarget, target_file: str | None) -> None:
    """This machine's tools against the target's pins: a library keyed as nvcc 13.0 is built by an
    nvcc 13.0 or not at all (one line naming the file, field, pinned and found version)."""
    for tool, pin in target.toolchain_versions.items():
        found = tool_version(tool)
        where = f"{target_file or 'target ' + target.name}: {PIN_FIELD}.{tool}"
        if found is None:
            raise StepError(f"{where} pins {tool} {pin}, and this machine has no {tool} on PATH")
        if not pin_matches(pin, found):
            raise StepError(
                f"{where} pins {tool} {pin}, but this machine's {tool} is {found}: "
                f"build it where {tool} {pin} is, or change the pin"
            )


class CompileStep(Step):
    kind: ClassVar[str] = "compile"
    version: ClassVar[str] = "12"  # 2: canonical TIR store order, content build-id (same key ⇒ same bytes); 3: llvm kernels scheduled (cpu_schedule.py); 4: llvm gelu with fast_erf; 5: MLC's ABI functions (compiler/abi), clamped embed, GPT-NeoX fp32 MLP; 6: llvm decode GEMVs as integer dot products (compiler/int8_gemv.py); 7: llvm: long GEMV rows in chunks, every PrimFunc noalias (compiler/llvm_alias.py), one-digit prefill GEMM, ragged prefill attention's queries in parallel; 8: llvm attention kernels vectorized (compiler/cpu_attention_kernels.py); 9: llvm prefill GEMM on q4f16_1 integer with two digits too, lanes over W's rows; 10: llvm decode GEMVs prefetch their weights 4 KB ahead; 11: llvm kernels keep per-task buffers on the stack (cpu_schedule.TASK_SCOPE), attention vectors LANES at a time; 12: llvm decode GEMVs take long rows whole, their weights prefetched into L2 (int8_gemv.ROW_BYTES_IN_L1)

    def check(self, params: Mapping[str, JSON]) -> None:
        from mlcbuild.compiler.options import CompileOptions
        from mlcbuild.quantization import get_scheme

        get_scheme(str(params.get("quantization")))
        target = _target(params)
        options = CompileOptions.from_json(params.get("options"))
        options.resolved(target.tvm_target["kind"], cublas_available=cublas_available(target.tvm_target["kind"]))

    def unavailable(self, params: Mapping[str, JSON]) -> str | None:
        missing = check_resolved(_target(params))
        return None if missing is None else missing.elsewhere

    def keyable_here(self, params: Mapping[str, JSON]) -> bool:
        """A tool whose version enters the key (nvcc) must be pinned or present here."""
        target = _target(params)
        return all(
            tool in target.toolchain_versions or tool_version(tool) is not None
            for tool in VERSIONED_TOOLS
            if tool in target.toolchain
        )

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        """Quantization and target name + variant: options and target attributes are settings."""
        target = params.get("target") or {}
        return {"quantization": params.get("quantization"), "target": [target.get("name"), target.get("variant")]}

    def resources(self, params: Mapping[str, JSON], inputs: Mapping[str, Manifest]) -> dict[str, float]:
        """One CPU and `toolchain:<tool>` per external tool of the target; `cc` is assumed on every worker.

        So an llvm compile runs anywhere and a cuda one only where a worker advertises
        `toolchain:nvcc`. A token amount, so the CPU count, not the tool, limits parallelism.
        """
        tools = [t for t in _target(params).toolchain if t != "cc"]
        return {"CPU": 1, **{f"toolchain:{tool}": TOOL_UNIT for tool in tools}}

    def toolchain(self, params: Mapping[str, JSON]) -> JSON:
        target = _target(params)
        fingerprint: dict[str, Any] = {
            "apache-tvm": tvm_version(),
            "target": target.tvm_target_config(),
        }
        if target.tvm_target.get("kind") == "cuda":
            fingerprint["nvcc"] = target.toolchain_versions.get("nvcc") or tool_version("nvcc")
        return fingerprint

    def built_with(self, params: Mapping[str, JSON]) -> JSON:
        """The nvcc that compiles here, as it reports itself (the key may hold only a pin)."""
        if _target(params).tvm_target.get("kind") != "cuda":
            return None
        return {"nvcc": tool_version("nvcc")}

    def view(self, role: str, manifest: Manifest, read: Callable[[str], bytes]) -> JSON:
        if role != "config" or CHAT_CONFIG not in manifest.files:
            return manifest.digest
        return {CHAT_CONFIG: ChatConfig.loads(read(CHAT_CONFIG), CHAT_CONFIG).architecture()}

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        """Its one library, `lib.<suffix>` (the planner renames it into the output folder)."""
        return rel == f"lib.{_target(params).suffix}"

    def run(self, ctx: RunContext) -> None:
        check_pins(_target(ctx.params), ctx.params.get("target_file"))
        from mlcbuild.compiler.build import build_model_lib
        from mlcbuild.compiler.options import CompileOptions

        config_path = ctx.inputs["config"] / CHAT_CONFIG
        if not config_path.exists():
            raise StepError(f"compile: {CHAT_CONFIG} missing from the gen-config output")
        chat_config = ChatConfig.read(config_path)
        quant = ctx.params.get("quantization")
        if quant and chat_config.quantization != quant:
            raise StepError(
                f"compile: {CHAT_CONFIG} is for quantization {chat_config.quantization!r}, node asks {quant!r}"
            )
        build_model_lib(
            chat_config.architecture(),
            _target(ctx.params),
            CompileOptions.from_json(ctx.params.get("options")),
            ctx.out,
            progress=ctx.progress,
        )
