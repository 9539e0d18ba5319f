"""Recipes -> build graph: one download per source, a convert and a gen-config per quantization,
a compile per (quantization, target)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mlcbuild.artifact.layout import lib_path, model_dir
from mlcbuild.errors import UserError
from mlcbuild.plan.architecture import check_architecture
from mlcbuild.plan.graph import Artifact, BuildGraph, Node
from mlcbuild.recipe.model import Recipe
from mlcbuild.steps import get_step
from mlcbuild.compiler.options import resolve_options
from mlcbuild.store.cas import Store
from mlcbuild.store.hashing import tree_digest
from mlcbuild.store.manifest import sha256_json
from mlcbuild.targets import get_target


@dataclass
class PlanOptions:
    quantizations: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    revisions: dict[str, str] = field(default_factory=dict)
    fetch_config: bool = False
    """Fetch a Hub source's config.json to check its architecture (build), or only look in the cache."""


def source_nodes(recipe: Recipe, store: Store, revision: str | None) -> tuple[Node, Node]:
    """(everything, config + tokenizer only): convert reads the weights, gen-config never does,
    so a machine that builds only gen-config and compile nodes downloads no weight file.
    Both are `download` nodes (the step that brings a model's files into the cache); a local
    folder's are labelled `local <folder>`, a Hub repo's `download <repo>@<sha>`.

    gen-config's key sees only non-weight files, which both nodes hold the same: splitting the
    download leaves its key unchanged. A local folder's files are hashed once; their digests ride
    along as hints, so the download step adopts them and the store ingests them without re-hashing.
    """
    from mlcbuild.weights.model_files import DEFAULT_PATTERNS, META_PATTERNS, is_weight_file, local_model_files

    src = recipe.source
    if src.path is not None:
        root = Path(src.path)
        files = local_model_files(root)
        if not files:
            raise UserError(f"no model files (config.json, *.safetensors, ...) in {root}", field="source.path")
        _, digests, _ = tree_digest(root, files, store.stat_index)
        nodes = []
        for chosen, suffix in ((files, ""), ([f for f in files if not is_weight_file(f)], " (config, tokenizer)")):
            known = {f: digests[f] for f in chosen}
            params: dict[str, Any] = {"files": chosen, "content": sha256_json(known)}
            hints = {"path": str(root.resolve()), "digests": known}
            nodes.append(Node.make("download", params, {}, f"local {root.name}{suffix}", hints=hints))
        return nodes[0], nodes[1]
    shown = revision[:8] if revision else f"{src.revision} (unresolved)"
    label = f"download {src.hf}@{shown}"
    full = {"repo": src.hf, "revision": revision, "allow_patterns": list(DEFAULT_PATTERNS)}
    meta = {"repo": src.hf, "revision": revision, "allow_patterns": list(META_PATTERNS)}
    return Node.make("download", full, {}, label), Node.make("download", meta, {}, f"{label} (config, tokenizer)")


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
        check_architecture(recipe, revision, options.fetch_config)
        full, meta = source_nodes(recipe, store, revision)
        download, download_meta = graph.add(full), graph.add(meta)
        for quant in _selected(recipe.quantizations, options.quantizations, "quantization"):
            folder = model_dir(recipe, quant)
            convert = graph.add(
                Node.make(
                    "convert",
                    {"quantization": quant, "model_type": recipe.model_type},
                    {"source": download},
                    f"convert {recipe.name} {quant}",
                )
            )
            gen_config = graph.add(
                Node.make(
                    "gen-config",
                    {
                        "quantization": quant,
                        "conv_template": recipe.conv_template,
                        "overrides": dict(recipe.overrides),
                        "model_type": recipe.model_type,
                    },
                    {"source": download_meta},
                    f"gen-config {recipe.name} {quant}",
                )
            )
            graph.artifacts.append(Artifact(convert.id, folder))
            graph.artifacts.append(Artifact(gen_config.id, folder))
            for ref in _selected(recipe.targets, options.targets, "target"):
                definition = get_target(ref.name)
                resolved = definition.resolve(ref.variant)
                target = resolved.params()
                pinned = {"target_file": str(definition.source)} if resolved.toolchain_versions else None
                compile_options = resolve_options(recipe.compile_options, target["tvm_target"]["kind"])
                compile_node = graph.add(
                    Node.make(
                        "compile",
                        {"quantization": quant, "target": target, "options": compile_options},
                        {"config": gen_config},
                        f"compile {recipe.name} {quant} {ref.id}",
                        hints=pinned,
                    )
                )
                lib = lib_path(recipe, quant, resolved)
                graph.artifacts.append(Artifact(compile_node.id, lib.parent, rename={f"lib.{resolved.suffix}": lib.name}))
                if str(ref) in recipe.smoke or ref.name in recipe.smoke:
                    graph.add(
                        Node.make(
                            "smoke",
                            {"quantization": quant, "target": target, "tokens": 8},
                            {"weights": convert, "config": gen_config, "lib": compile_node},
                            f"smoke {recipe.name} {quant} {ref.id}",
                        )
                    )
        check_output_location(recipe, store, sorted({a.dest for a in graph.artifacts[first_artifact:]}))
    for node in graph.topological():
        if check is not None:
            check(node)
        reason = get_step(node.kind).unavailable({**node.params, **node.hints})
        if reason is not None:
            graph.unbuildable[node.id] = reason
    return graph
