"""MLC's own commands, with MLC's flags, as a front door: `mlcbuild convert_weight`, `gen_config`,
`compile` (also spelled with `-`). Each is a one-step build through the cache (`plan.verbs`):
repeating one is a cache hit, and its output lands where MLC's command writes it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mlcbuild.cli.main import EXIT_ELSEWHERE, command, positive_int
from mlcbuild.errors import UserError

if TYPE_CHECKING:
    from mlcbuild.plan.verbs import VerbPlan

VERB_HELP = "MLC's `mlc_llm {verb}` with MLC's flags, as a one-step build through the cache (a repeat is a cache hit)"


def add_parsers(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    """MLC's flag names and defaults (mlc_llm/cli/{convert_weight,gen_config,compile}.py); a flag
    whose non-default value mlcbuild cannot honour is one line saying why."""

    def common(sp: argparse.ArgumentParser, required_quant: bool = True) -> None:
        sp.add_argument("--quantization", required=required_quant, default=None, help="q0f16, q0f32, q4f16_1, q4f32_1, q3f16_1")
        sp.add_argument("--model-type", default="auto", help='model family (default: "auto", from the config)')

    cw = subcommand("convert_weight", aliases=["convert-weight"], help="quantize a checkpoint into MLC's weight folder", description=VERB_HELP.format(verb="convert_weight"))
    cw.add_argument("config", type=Path, help="the checkpoint folder, or its config.json")
    common(cw)
    cw.add_argument("--device", default="auto", help="accepted for MLC's command lines: conversion runs on the CPU (same bytes on any device)")
    cw.add_argument("--source", default="auto", help='the weights (default: "auto", beside config.json)')
    cw.add_argument("--source-format", default="auto", choices=["auto", "huggingface-torch", "huggingface-safetensor", "awq"])
    cw.add_argument("--lora-adapter", type=Path, default=None, help="not supported")
    cw.add_argument("--output", "-o", type=Path, required=True, help="folder for params_shard_*.bin and tensor-cache.json")

    gc = subcommand("gen_config", aliases=["gen-config"], help="write mlc-chat-config.json and the tokenizer files", description=VERB_HELP.format(verb="gen_config"))
    gc.add_argument("config", type=Path, help="the checkpoint folder, or its config.json")
    common(gc)
    gc.add_argument("--conv-template", default="auto", help='conversation template (`mlcbuild templates`; default: "auto", fitted to the checkpoint)')
    for flag in ("context-window-size", "sliding-window-size", "prefill-chunk-size", "attention-sink-size", "tensor-parallel-shards"):
        gc.add_argument(f"--{flag}", type=positive_int, default=None)
    gc.add_argument("--pipeline-parallel-stages", type=positive_int, default=None, help="not supported above 1")
    gc.add_argument("--disaggregation", default=None, help="not supported")
    gc.add_argument("--max-batch-size", type=positive_int, default=128, help="(default: %(default)s, as MLC's)")
    gc.add_argument("--output", "-o", type=Path, required=True, help="folder for mlc-chat-config.json and the tokenizer files")

    cp = subcommand("compile", help="compile a model library from an mlc-chat-config.json", description=VERB_HELP.format(verb="compile"))
    cp.add_argument("model", type=Path, help="mlc-chat-config.json, or the folder holding it")
    common(cp, required_quant=False)
    cp.add_argument("--device", default="auto", help="cuda, cuda:0, metal, iphone, android, vulkan, rocm, opencl, webgpu, llvm/cpu, or a target variant (cuda:sm_80); auto: a GPU toolchain found here, else llvm")
    cp.add_argument("--host", default="auto", help="set by the target definition (auto only)")
    cp.add_argument("--enable-subgroups", action="store_true", help="not supported")
    cp.add_argument("--opt", default="O2", help='MLC\'s --opt: a level and/or name=0|1 flags, ";"-separated (default: "O2")')
    cp.add_argument("--system-lib-prefix", default="auto", help="auto only: the prefix MLC uses for iOS/Android static libraries")
    cp.add_argument("--overrides", default="", help="not supported: pass sizes to gen_config (--context-window-size ...)")
    cp.add_argument("--debug-dump", type=Path, default=None, help="not supported")
    cp.add_argument("--output", "-o", type=Path, required=True, help="the library file (e.g. dist/libs/model-cuda.so)")


def _refuse(flag: str, given: Any, default: Any, why: str) -> None:
    if given != default:
        raise UserError(f"{why}", field=flag)


def _model_type(args: argparse.Namespace) -> str | None:
    """--model-type, None for auto; --quantization is checked here too (the parser imports nothing)."""
    from mlcbuild.models import get_family
    from mlcbuild.quantization import get_scheme

    if args.quantization is not None:
        try:
            get_scheme(args.quantization)
        except UserError as e:
            raise UserError(e.message, field="--quantization") from None
    if args.model_type == "auto":
        return None
    try:
        get_family(args.model_type)
    except UserError as e:
        raise UserError(e.message, field="--model-type") from None
    return args.model_type


def _run(args: argparse.Namespace, verb: str, make: Callable[[Any], "VerbPlan"], anchor: Path) -> int:
    """Plan with the cache `anchor` (the model's folder) belongs to, run, place where MLC writes."""
    from mlcbuild.cli.common import console, open_remote, open_store
    from mlcbuild.cli.reporting import live_reporter
    from mlcbuild.execute.base import ELSEWHERE
    from mlcbuild.execute.build import place_output, run_build
    from mlcbuild.execute.local import LocalExecutor

    store = open_store([anchor])
    plan = make(store)
    remote = open_remote(args)
    with live_reporter(lambda: console(True)) as reporter:
        executor = LocalExecutor(store, jobs=1, remote=remote, reporter=reporter)
        result = run_build([], plan.graph, store, set(plan.graph.nodes), executor, remote=remote)
    outcome = result.report.outcomes[plan.node.id]
    if outcome.status == "failed":
        print(f"mlcbuild: error: {verb}: {outcome.reason}", file=sys.stderr)
        return 1
    if outcome.status == ELSEWHERE:
        print(f"mlcbuild: {verb}: not built here: {outcome.reason}", file=sys.stderr)
        return EXIT_ELSEWHERE
    written = place_output(store, result.report, plan.node.id, plan.dest, plan.rename)
    shown = written[0] if plan.rename else plan.dest
    how = "cached" if outcome.status == "cached" else f"built in {outcome.duration_s:.1f}s"
    print(f"{verb}: {how} (key {outcome.key[:12] if outcome.key else '?'}): {shown} ({len(written)} file{'' if len(written) == 1 else 's'})")
    return 0


@command("convert-weight")
@command("convert_weight")
def convert_weight_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.plan.verbs import convert_weight_plan, model_folder

    _refuse("--lora-adapter", args.lora_adapter, None, "LoRA adapters are not merged by mlcbuild; merge them into the checkpoint first (PEFT's merge_and_unload)")
    _refuse("--source-format", args.source_format == "awq", False, "AWQ checkpoints are not converted by mlcbuild (the quantization schemes are q0*/q3*/q4*)")
    folder, _ = model_folder(args.config)
    if args.source != "auto" and Path(args.source).resolve() not in (folder, folder / Path(args.source).name):
        raise UserError(f"the weights must sit beside config.json in {folder}", field="--source")
    return _run(args, "convert_weight", lambda store: convert_weight_plan(store, args.config, args.quantization, args.output, _model_type(args)), folder)


@command("gen-config")
@command("gen_config")
def gen_config_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.plan.verbs import gen_config_plan, model_folder

    _refuse("--pipeline-parallel-stages", (args.pipeline_parallel_stages or 1) > 1, False, "mlcbuild builds single-device libraries (no pipeline parallelism)")
    _refuse("--disaggregation", args.disaggregation, None, "mlcbuild builds no disaggregated prefill/decode")
    names = ("context_window_size", "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards", "max_batch_size")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    folder, _ = model_folder(args.config)
    return _run(
        args,
        "gen_config",
        lambda store: gen_config_plan(store, args.config, args.quantization, args.output, args.conv_template, overrides, _model_type(args)),
        folder,
    )


@command("compile")
def compile_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.compiler.options import compile_warnings
    from mlcbuild.errors import print_warning
    from mlcbuild.plan.verbs import compile_plan, model_folder

    _refuse("--host", args.host, "auto", "the host comes from the target definition (`mlcbuild targets`); pick a variant with --device NAME:VARIANT")
    _refuse("--enable-subgroups", args.enable_subgroups, False, "WebGPU subgroups are not supported by mlcbuild's webgpu target")
    _refuse("--system-lib-prefix", args.system_lib_prefix, "auto", "the prefix is MLC's own ({model_type}_{quantization}_ for iOS/Android static libraries)")
    _refuse("--overrides", args.overrides, "", "the compile reads sizes from mlc-chat-config.json: set them with gen_config (--context-window-size, --prefill-chunk-size, ...)")
    _refuse("--debug-dump", args.debug_dump, None, "debug dumps are not written by mlcbuild")
    try:
        warnings = compile_warnings({"opt": args.opt})
    except UserError as e:
        raise UserError(e.message, field="--opt") from None
    for line in warnings:
        print_warning(line.replace("compile.opt", "--opt", 1))
    folder, _ = model_folder(args.model, "mlc-chat-config.json")
    return _run(
        args,
        "compile",
        lambda store: compile_plan(store, args.model, args.device, args.output, args.opt, args.quantization, _model_type(args)),
        folder,
    )
