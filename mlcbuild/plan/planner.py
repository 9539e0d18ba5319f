"""Recipes -> build graph: one download per source, a convert and a gen-config per quantization,
a compile per (quantization, target). A source MLC already converted (`is_mlc_source`) has no
convert or gen-config: its files are the model folder and its mlc-chat-config.json is compiled.
The node makers (`convert_node`, `gen_config_node`, `compile_node`) are shared with MLC's verbs
(`mlcbuild convert_weight|gen_config|compile`), so a verb and a recipe asking the same get one key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mlcbuild.artifact.layout import lib_path, model_dir
from mlcbuild.errors import UserError
from mlcbuild.plan.architecture import check_architecture, check_mlc_source
from mlcbuild.plan.graph import Artifact, BuildGraph, Node
from mlcbuild.recipe.model import Recipe, TargetRef
from mlcbuild.steps import get_step
from mlcbuild.compiler.options import resolve_options
from mlcbuild.store.cas import Store
from mlcbuild.store.hashing import tree_digest
from mlcbuild.store.manifest import sha256_json
from mlcbuild.targets import ResolvedTarget, get_target


@dataclass
class PlanOptions:
    quantizations: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    revisions: dict[str, str] = field(default_factory=dict)
    fetch_config: bool = False
    """Fetch a Hub source's config.json to check its architecture (build), or only look in the cache."""


def source_nodes(recipe: Recipe, store: Store, revision: str | None, mlc: bool | None = None) -> tuple[Node, Node]:
    """(everything, config + tokenizer only): convert reads the weights, gen-config never does,
    so a machine that builds only gen-config and compile nodes downloads no weight file.
    Both are `download` nodes (the step that brings a model's files into the cache); a local
    folder's are labelled `local <folder>`, a Hub repo's `download <repo>@<sha>`.

    gen-config's key sees only non-weight files, which both nodes hold the same: splitting the
    download leaves its key unchanged. An MLC source (`mlc`, default: `is_mlc_source`) has MLC's
    files: everything, and its mlc-chat-config.json + tokenizer. A local folder's files are hashed once; their digests ride
    along as hints, so the download step adopts them and the store ingests them without re-hashing.
    """
    from mlcbuild.weights.model_files import (
        DEFAULT_PATTERNS,
        META_PATTERNS,
        MLC_META_PATTERNS,
        MLC_PATTERNS,
        local_model_files,
        matches,
    )

    src = recipe.source
    mlc = is_mlc_source(recipe) if mlc is None else mlc
    everything, meta_only = (MLC_PATTERNS, MLC_META_PATTERNS) if mlc else (DEFAULT_PATTERNS, META_PATTERNS)
    if src.path is not None:
        root = Path(src.path)
        files = local_model_files(root, everything)
        if not files:
            raise UserError(f"no model files (config.json, *.safetensors, ...) in {root}", field="source.path")
        _, digests, _ = tree_digest(root, files, store.stat_index)
        nodes = []
        for chosen, suffix in ((files, ""), ([f for f in files if matches(f, meta_only)], " (config, tokenizer)")):
            known = {f: digests[f] for f in chosen}
            params: dict[str, Any] = {"files": chosen, "content": sha256_json(known)}
            hints = {"path": str(root.resolve()), "digests": known}
            nodes.append(Node.make("download", params, {}, f"local {root.name}{suffix}", hints=hints))
        return nodes[0], nodes[1]
    shown = revision[:8] if revision else f"{src.revision} (unresolved)"
    label = f"download {src.hf}@{shown}"
    full = {"repo": src.hf, "revision": revision, "allow_patterns": list(everything)}
    meta = {"repo": src.hf, "revision": revision, "allow_patterns": list(meta_only)}
    return Node.make("download", full, {}, label), Node.make("download", meta, {}, f"{label} (config, tokenizer)")


def is_mlc_source(recipe: Recipe) -> bool:
    """A source MLC already converted (a folder with mlc-chat-config.json, an `mlc-ai/*-MLC` repo):
    its weights are placed as they are and its config is compiled; nothing is converted."""
    from mlcbuild.weights.model_files import is_mlc_folder, is_mlc_repo

    src = recipe.source
    return is_mlc_folder(Path(src.path)) if src.path is not None else is_mlc_repo(str(src.hf))


def convert_node(recipe: Recipe, quant: str, source: Node) -> Node:
    return Node.make("convert", {"quantization": quant, "model_type": recipe.model_type}, {"source": source}, f"convert {recipe.name} {quant}")


def gen_config_node(recipe: Recipe, quant: str, source_meta: Node) -> Node:
    params = {
        "quantization": quant,
        "conv_template": recipe.conv_template,
        "overrides": dict(recipe.overrides),
        "model_type": recipe.model_type,
    }
    return Node.make("gen-config", params, {"source": source_meta}, f"gen-config {recipe.name} {quant}")


def compile_node(recipe: Recipe, quant: str, ref: TargetRef, config: Node) -> tuple[Node, ResolvedTarget]:
    """The compile of `config`'s mlc-chat-config.json (a gen-config result, or an MLC folder's
    own) for one target, with the recipe's options made explicit for it."""
    definition = get_target(ref.name)
    resolved = definition.resolve(ref.variant)
    target = resolved.params()
    pinned = {"target_file": str(definition.source)} if resolved.toolchain_versions else None
    options = resolve_options(recipe.compile_options, target["tvm_target"]["kind"])
    node = Node.make(
        "compile",
        {"quantization": quant, "target": target, "options": options},
        {"config": config},
        f"compile {recipe.name} {quant} {ref.id}",
        hints=pinned,
    )
    return node, resolved


def mark_unbuildable(graph: BuildGraph, check: Callable[[Node], None] | None = None) -> None:
    """Each node's own check (bad parameters: a UserError now), and the nodes this machine cannot build."""
    for node in graph.topological():
        if check is not None:
            check(node)
        reason = get_step(node.kind).unavailable({**node.params, **node.hints})
        if reason is not None:
            graph.unbuildable[node.id] = reason


def _selected(values: Iterable[Any], wanted: tuple[str, ...], what: str) -> list[Any]:
    values = list(values)
    if not wanted:
        return values
    chosen = [v for v in values if str(v) in wanted or getattr(v, "name", None) in wanted]
    if not chosen:
        have = ", ".join(str(v) for v in values)
        raise UserError(f"{what} {', '.join(wanted)} not in recipe (it has: {have})", field=what)
    return chosen


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_location(recipe: Recipe, store: Store, folders: list[Path]) -> None:
    """Refuse output folders that would overwrite or delete what a build reads (the source folder,
    the cache) or that cannot be folders, before anything runs."""
    written = "output" in recipe.locations
    where, what = (recipe.where("output"), "output") if written else (recipe.where("source.path"), "source.path")
    out = recipe.output.resolve()
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{probe} is a file, not a folder; choose another output folder", recipe.where("output"), "output")
    source = recipe.source.path.resolve() if recipe.source.path is not None else None
    for folder in (f.resolve() for f in folders):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a file, not a folder; move it or choose another output folder", recipe.where("output"), "output")
        if source is not None and _overlaps(folder, source):
            raise UserError(
                f"output {folder} overlaps the source folder {source}; a build would overwrite or delete its files",
                where,
                what,
            )
        if _overlaps(folder, store.root.resolve()):
            raise UserError(f"output {folder} overlaps the cache {store.root}; choose another output folder", recipe.where("output"), "output")


def plan(recipes: list[Recipe], store: Store, options: PlanOptions, check: Callable[[Node], None] | None = None) -> BuildGraph:
    graph = BuildGraph()
    for recipe in recipes:
        first_artifact = len(graph.artifacts)
        revision = options.revisions.get(str(recipe.path))
        mlc = is_mlc_source(recipe)
        if mlc:
            check_mlc_source(recipe)
        else:
            check_architecture(recipe, revision, options.fetch_config)
        full, meta = source_nodes(recipe, store, revision, mlc)
        download, download_meta = graph.add(full), graph.add(meta)
        for quant in _selected(recipe.quantizations, options.quantizations, "quantization"):
            folder = model_dir(recipe, quant)
            owner = {"recipe": str(recipe.path), "quantization": quant}
            if mlc:
                convert, gen_config = download, download_meta
                graph.artifacts.append(Artifact(download.id, folder, **owner))
            else:
                convert = graph.add(convert_node(recipe, quant, download))
                gen_config = graph.add(gen_config_node(recipe, quant, download_meta))
                graph.artifacts.append(Artifact(convert.id, folder, **owner))
                graph.artifacts.append(Artifact(gen_config.id, folder, **owner))
            for ref in _selected(recipe.targets, options.targets, "target"):
                compiled, resolved = compile_node(recipe, quant, ref, gen_config)
                compiled = graph.add(compiled)
                target = resolved.params()
                lib = lib_path(recipe, quant, resolved)
                graph.artifacts.append(
                    Artifact(compiled.id, lib.parent, {f"lib.{resolved.suffix}": lib.name}, "library", target=resolved.id, **owner)
                )
                if str(ref) in recipe.smoke or ref.name in recipe.smoke:
                    graph.add(
                        Node.make(
                            "smoke",
                            {"quantization": quant, "target": target, "tokens": 8},
                            {"weights": convert, "config": gen_config, "lib": compiled},
                            f"smoke {recipe.name} {quant} {ref.id}",
                        )
                    )
        check_output_location(recipe, store, sorted({a.dest for a in graph.artifacts[first_artifact:]}))
    mark_unbuildable(graph, check)
    return graph
