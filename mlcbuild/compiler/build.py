"""Build one model library: mlc-chat-config.json + target → `lib.<suffix>`.

This is the only place that turns a model family's nn.Module into an artifact; the compile step
is a thin wrapper that gives it files and a key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.compiler.pipeline import CompileOptions, build_pipeline, variable_bounds
from mlcbuild.errors import StepError, UserError
from mlcbuild.targets import ResolvedTarget
from mlcbuild.toolchain import tvm_version

Progress = Callable[[float, str], None]

REPRODUCIBLE_LINK_OPTIONS = ("-Wl,--build-id=sha1",)
"""The GNU build-id as a hash of the linked content, whatever the toolchain's default (none, uuid...):
the same library then has the same bytes."""


@dataclass
class BuildResult:
    path: Path
    metadata: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    device_modules_compiled: int = 0


def make_tvm_target(target: ResolvedTarget) -> Any:
    import tvm

    return tvm.target.Target(target.tvm_target_config())


MOBILE_HOSTS = ("ios", "macabi", "android")
"""Hosts whose apps link several static model libraries into one binary (MLC's iphone, macabi,
android targets): only there are symbols prefixed. TVM's JS runtime (WebLLM) calls `SystemLib()`
without a prefix, so a `.wasm` has none."""


def system_lib_prefix(chat_config: Mapping[str, Any], target: ResolvedTarget) -> str:
    """`{model_type}_{quant}_` for a mobile static library (as MLC names it), else ""."""
    triple = str((target.host or {}).get("mtriple", "")) if isinstance(target.host, Mapping) else ""
    if target.suffix != "tar" or not any(h in triple for h in MOBILE_HOSTS):
        return ""
    raw = f"{chat_config['model_type']}_{chat_config['quantization']}_"
    return "".join(c if c.isalnum() else "_" for c in raw)


def export_model(chat_config: Mapping[str, Any], tvm_target: Any) -> tuple[Any, list[tuple[str, Any]], Any]:
    """(IRModule, named params, model config object) of the model the config describes."""
    from mlcbuild.models import get_family

    family = get_family(str(chat_config["model_type"]))
    config = family.config_from_json(chat_config["model_config"])
    with tvm_target:
        model = family.create_model(config, str(chat_config["quantization"]))
        mod, named_params = model.export_tvm(spec=model.get_default_spec())
    return mod, list(named_params), config


def build_model_lib(
    chat_config: Mapping[str, Any],
    target: ResolvedTarget,
    options: CompileOptions,
    out_dir: Path,
    progress: Progress = lambda fraction, message: None,
) -> BuildResult:
    """Compile the model described by `chat_config` for `target` into `out_dir/lib.<suffix>`."""
    import tvm
    from tvm import relax

    from mlcbuild.compiler.metadata import attach_metadata_pass, make_metadata

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tvm_target = make_tvm_target(target)
    if options.use_cublas(target.tvm_target["kind"]):
        raise UserError(
            "cublas: mlcbuild's pipeline has no cuBLAS dispatch yet (it would split the fused dequantize+matmul "
            "kernels); set `compile: {cublas: false}`",
            field="compile.cublas",
        )
    progress(0.05, "export")
    mod, named_params, config_obj = export_model(chat_config, tvm_target)
    timings["export"] = time.perf_counter() - t0

    metadata = make_metadata(
        chat_config, named_params, config_obj=config_obj, target=target.params(), tvm_version=tvm_version()
    )
    memory_usage: dict[str, int] = {}
    pipeline = build_pipeline(
        tvm_target,
        options,
        variable_bounds(metadata),
        memory_usage,
        after_memory_plan=[attach_metadata_pass(metadata, memory_usage)],
        metadata=metadata,
    )
    static = target.suffix in ("tar", "wasm")
    prefix = system_lib_prefix(chat_config, target) if static else ""
    if prefix:
        mod = mod.with_attr("system_lib_prefix", prefix)
    progress(0.15, "relax build")
    t1 = time.perf_counter()
    config = {"relax.backend.use_cuda_graph": options.use_cudagraph(target.tvm_target["kind"])}
    with tvm.transform.PassContext(opt_level=3, config=config):
        executable = relax.build(mod, target=tvm_target, relax_pipeline=pipeline, system_lib=static or None)
    timings["relax_build"] = time.perf_counter() - t1

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"lib.{target.suffix}"
    progress(0.7, "export library")
    t2 = time.perf_counter()
    compiled = export_library(executable, path, target, options)
    timings["export_library"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return BuildResult(path, metadata, timings, compiled)


def export_library(executable: Any, path: Path, target: ResolvedTarget, options: CompileOptions) -> int:
    """Write the artifact; returns how many device modules were compiled ahead of time."""
    kind = target.tvm_target["kind"]
    suffix = target.suffix
    compiled = [0]
    kwargs: dict[str, Any] = {}
    if suffix == "so" and kind == "cuda":
        from mlcbuild.compiler.cuda import make_fpack_imports

        arch = str(target.attrs.get("arch") or "")
        if not arch:
            raise StepError("cuda target needs an `arch` attribute (e.g. sm_90a)")
        kwargs["fpack_imports"] = make_fpack_imports(arch, embed_ptx=options.embed_ptx, report=lambda n: compiled.__setitem__(0, n))
    if suffix == "so":
        kwargs["options"] = list(REPRODUCIBLE_LINK_OPTIONS)
        cross = [t for t in target.toolchain if t.endswith("-gcc") or t.endswith("-clang")]
        if cross:
            from tvm.support import cc

            kwargs["fcompile"] = cc.cross_compiler(cross[0])
    elif suffix == "tar":
        from mlcbuild.compiler.determinism import reproducible_tar

        kwargs["fcompile"] = reproducible_tar
    elif suffix == "wasm":
        from tvm.contrib import tvmjs

        kwargs["fcompile"] = tvmjs.create_tvmjs_wasm
    elif suffix == "dylib":
        from tvm.support import xcode

        kwargs["fcompile"] = xcode.create_dylib
    tmp = path.with_name(f"{path.stem}.partial.{suffix}")
    try:
        executable.export_library(str(tmp), **kwargs)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if kind == "cuda" and suffix == "so" and compiled[0] == 0:
        raise StepError("cuda library holds no device module to compile; refusing to emit it")
    return compiled[0]
