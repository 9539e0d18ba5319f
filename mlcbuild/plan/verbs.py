"""MLC's own verbs as one-step builds: `convert_weight`, `gen_config`, `compile` take MLC's
arguments and become the same nodes a recipe plans (the planner's `convert_node`, `gen_config_node`,
`compile_node`), so a verb and a recipe asking the same thing share one cache entry, and repeating a
verb is a cache hit. The result is placed where MLC's command writes it (OUT, or the library file).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.plan.planner import compile_node, convert_node, gen_config_node, mark_unbuildable, source_nodes
from mlcbuild.recipe.model import Recipe, Source, TargetRef
from mlcbuild.store.cas import Store
from mlcbuild.weights.model_files import MLC_CONFIG

DEVICE_ALIASES = {"cpu": "llvm", "iphone": "metal:ios", "android": "opencl:android", "macabi": "metal:macos"}
"""MLC's --device presets that are one of our target variants under another name."""
AUTO_DEVICES = ("cuda", "rocm", "metal", "vulkan")


@dataclass(frozen=True)
class VerbPlan:
    """The graph, the node whose output the verb places, and where: `dest` (a folder), its file
    `lib.<suffix>` renamed to the library's name for compile."""

    graph: BuildGraph
    node: Node
    dest: Path
    rename: Mapping[str, str] = field(default_factory=dict)


def model_folder(given: Path, config_name: str = "config.json") -> tuple[Path, Path]:
    """MLC's positional MODEL/CONFIG: a folder holding `config_name`, or that file itself →
    (folder, config file). Anything else is one line saying what to give."""
    path = Path(given)
    if path.is_dir():
        if not (path / config_name).is_file():
            raise UserError(f"{path} has no {config_name}; give the folder holding it, or the file")
        return path.resolve(), (path / config_name).resolve()
    if path.is_file():
        if path.name != config_name:
            raise UserError(f"{path} is not a {config_name}; give it, or the folder holding it")
        return path.parent.resolve(), path.resolve()
    if "/" in str(given) and not path.parent.exists():
        raise UserError(f"{given} is not a local folder; download it first (`huggingface-cli download {given} --local-dir DIR`) and give DIR")
    raise UserError(f"{given}: no such file or folder")


def _recipe(folder: Path, config: Path, quantization: str, **fields: Any) -> Recipe:
    """A recipe in memory for one verb: errors point at the config file the user gave."""
    from mlcbuild.recipe.load import name_from_source

    name = name_from_source(folder.name)
    return Recipe(path=config, name=name, source=Source(path=folder), quantizations=(quantization,), targets=(), conv_template=fields.pop("conv_template", "auto"), **fields)


def _check_output(dest: Path, store: Store) -> None:
    root = store.root.resolve()
    dest = dest.resolve()
    if dest == root or root in dest.parents or dest in root.parents:
        raise UserError(f"output {dest} overlaps the cache {store.root}; choose another output", field="--output")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"output {dest} is a file, not a folder", field="--output")


def convert_weight_plan(store: Store, model: Path, quantization: str, output: Path, model_type: str | None = None) -> VerbPlan:
    """`convert_weight MODEL --quantization Q -o OUT`: params_shard_*.bin + tensor-cache.json in OUT."""
    folder, config = model_folder(model)
    recipe = _recipe(folder, config, quantization, model_type=model_type, output=output)
    _check_output(output, store)
    full, _ = source_nodes(recipe, store, None, mlc=False)
    return VerbPlan(*_graph(full, convert_node(recipe, quantization, full)), output)


def gen_config_plan(
    store: Store,
    model: Path,
    quantization: str,
    output: Path,
    conv_template: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    model_type: str | None = None,
) -> VerbPlan:
    """`gen_config MODEL --quantization Q --conv-template T -o OUT`: mlc-chat-config.json and the
    tokenizer files in OUT."""
    from mlcbuild.templates import AUTO, CONV_TEMPLATES
    from mlcbuild.suggest import unknown

    if conv_template != AUTO and conv_template not in CONV_TEMPLATES:
        raise UserError(unknown("conversation template", conv_template, [AUTO, *CONV_TEMPLATES]), field="--conv-template")
    folder, config = model_folder(model)
    recipe = _recipe(folder, config, quantization, model_type=model_type, conv_template=conv_template, overrides=dict(overrides or {}), output=output)
    _check_output(output, store)
    _, meta = source_nodes(recipe, store, None, mlc=False)
    return VerbPlan(*_graph(meta, gen_config_node(recipe, quantization, meta)), output)


def target_for_device(device: str) -> TargetRef:
    """MLC's --device (`cuda`, `cuda:0`, `metal`, `iphone`, `android`, `webgpu`, `auto`, ...) →
    one of our targets (`llvm`, `cuda:sm_80`, ...); a device index (`:0`) picks the default variant."""
    from mlcbuild.suggest import unknown
    from mlcbuild.targets import load_targets
    from mlcbuild.toolchain import check_available

    targets = load_targets()
    if device == "auto":
        found = next((t for t in AUTO_DEVICES if t in targets and check_available(targets[t], targets[t].default_variant) is None), "llvm")
        return TargetRef(found)
    name, _, variant = DEVICE_ALIASES.get(device, device).partition(":")
    if name not in targets:
        raise UserError(unknown("device", name, [*targets, *DEVICE_ALIASES, "auto"]), field="--device")
    if variant.isdigit():
        variant = ""
    if variant and variant not in targets[name].variants:
        raise UserError(unknown(f"{name} variant", variant, targets[name].variants), field="--device")
    return TargetRef(name, variant or None)


def compile_plan(
    store: Store,
    config: Path,
    device: str,
    output: Path,
    opt: str = "O2",
    quantization: str | None = None,
    model_type: str | None = None,
) -> VerbPlan:
    """`compile OUT/mlc-chat-config.json --device D [--opt ...] -o LIB`: the library at LIB. The key
    sees the config's architecture fields only, as for a recipe's compile (so it is shared)."""
    from mlcbuild.inputs import read_json

    folder, config_file = model_folder(config, MLC_CONFIG)
    data = read_json(config_file, str(config_file))
    found_quant, found_type = data.get("quantization"), data.get("model_type")
    if quantization is not None and quantization != found_quant:
        raise UserError(f"{config_file} is for quantization {found_quant!r}, not {quantization!r}", field="--quantization")
    if model_type is not None and model_type != found_type:
        raise UserError(f"{config_file} is for model_type {found_type!r}, not {model_type!r}", field="--model-type")
    if not isinstance(found_quant, str):
        raise UserError(f"{config_file}: no quantization field; give a config written by gen_config", field="quantization")
    output = Path(output)
    if output.is_dir():
        raise UserError(f"output {output} is a folder; give the library's file name (e.g. {output}/model-{device}.so)", field="--output")
    ref = target_for_device(device)
    recipe = _recipe(folder, config_file, found_quant, compile_options={"opt": opt}, output=output.parent)
    _check_output(output.parent, store)
    _, meta = source_nodes(recipe, store, None, mlc=True)
    node, resolved = compile_node(recipe, found_quant, ref, meta)
    return VerbPlan(*_graph(meta, node), output.parent, {f"lib.{resolved.suffix}": output.name})


def _graph(source: Node, node: Node) -> tuple[BuildGraph, Node]:
    """A verb's graph: its one step `node` on its `source` (download) node, each node checked and
    those this machine cannot build marked."""
    graph = BuildGraph()
    graph.add(source)
    node = graph.add(node)
    mark_unbuildable(graph, _check)
    return graph, node


def _check(node: Node) -> None:
    from mlcbuild.execute.build import check_node

    check_node(node)
