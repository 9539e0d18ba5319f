"""Provenance of materialized artifacts: in-toto Statement v1 with an SLSA provenance v1 predicate.

One statement per artifact, written beside it (never inside the objects whose digests must
reproduce): `<name>-<quant>-MLC.provenance.json` beside the model folder, `<lib>.provenance.json`
beside each library. Its subjects are the artifact's files with their sha256; its build definition
names the recipe (path relative to the statement, sha256), the resolved source (HF repo + commit
sha, or a local folder's content digest), every node that produced the artifact (key, input
digests, output digest, toolchain; `builtWith`, the exact nvcc that ran where the key holds only a
pinned version) and the versions of mlcbuild, apache-tvm and nvcc (the one that ran). No times
and no absolute paths: the same build gives the same statement, so it can be compared and cached.
`verify_artifact` re-hashes an artifact on disk against its statement.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mlcbuild.execute.base import BuildReport
from mlcbuild.plan.graph import Artifact, BuildGraph, Node
from mlcbuild.artifact.layout import lib_path, model_dir
from mlcbuild.recipe.model import Recipe
from mlcbuild.store.cas import Store
from mlcbuild.store.fs import atomic_write_bytes, fs_errors
from mlcbuild.store.hashing import sha256_file
from mlcbuild.store.manifest import FileEntry, sha256_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://mlcbuild.dev/provenance/build/v1"
SUFFIX = ".provenance.json"


def provenance_path(artifact: Path) -> Path:
    """`dist/x-q4f16_1-MLC` → `dist/x-q4f16_1-MLC.provenance.json`; `lib.so` → `lib.so.provenance.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


@dataclass
class _Product:
    """One artifact being described: a model folder or one library file."""

    path: Path
    recipe: Recipe
    quantization: str
    nodes: list[str]  # the ids of the nodes whose outputs it is made of
    files: dict[str, FileEntry]  # subject name (relative to the statement's folder) → entry
    target: str | None = None


def _owner(recipes: Iterable[Recipe], artifact: Artifact, graph: BuildGraph) -> tuple[Recipe, str, str | None] | None:
    """(recipe, quantization, target id) an artifact belongs to, from where the planner put it."""
    from mlcbuild.targets import ResolvedTarget

    node = graph.node(artifact.node_id)
    quant = str(node.params.get("quantization"))
    for recipe in recipes:
        if not artifact.rename:
            if Path(artifact.dest) == model_dir(recipe, quant):
                return recipe, quant, None
            continue
        target = ResolvedTarget.from_params(node.params["target"])
        if Path(artifact.dest) / next(iter(artifact.rename.values())) == lib_path(recipe, quant, target):
            return recipe, quant, target.id
    return None


def _products(recipes: list[Recipe], graph: BuildGraph, report: BuildReport) -> list[_Product]:
    products: dict[Path, _Product] = {}
    broken: set[Path] = set()
    for artifact in graph.artifacts:
        owner = _owner(recipes, artifact, graph)
        outcome = report.outcomes.get(artifact.node_id)
        if owner is None:
            continue
        recipe, quant, target = owner
        path = Path(artifact.dest) / next(iter(artifact.rename.values())) if artifact.rename else Path(artifact.dest)
        if outcome is None or not outcome.ok or outcome.manifest is None:
            broken.add(path)
            continue
        product = products.setdefault(path, _Product(path, recipe, quant, [], {}, target))
        product.nodes.append(artifact.node_id)
        for rel, entry in outcome.manifest.files.items():
            name = artifact.rename.get(rel, rel)
            product.files[name if artifact.rename else f"{path.name}/{name}"] = entry
    return [p for path, p in sorted(products.items()) if path not in broken]


def _closure(graph: BuildGraph, roots: Iterable[str]) -> list[Node]:
    ids = graph.closure(set(roots))
    return [n for n in graph.topological() if n.id in ids]


def _relpath(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).absolute(), Path(start).absolute())).as_posix()


def _source(recipe: Recipe, download: Node, here: Path) -> dict[str, Any]:
    """A download node as an SLSA resource: the HF repo at its commit, or the local folder's files."""
    params = download.params
    if params.get("repo"):
        return {
            "name": download.label,
            "uri": f"https://huggingface.co/{params['repo']}",
            "digest": {"gitCommit": params.get("revision")},
            "annotations": {
                "repo": params["repo"],
                "revision": params.get("revision"),
                "requested": recipe.source.revision,
                "allow_patterns": params.get("allow_patterns"),
            },
        }
    where = _relpath(Path(download.hints.get("path") or recipe.source.path or "."), here)
    return {
        "name": download.label,
        "uri": f"file:{where}",
        "digest": {"sha256": params.get("content")},
        "annotations": {"files": params.get("files")},
    }


def _node_record(node: Node, report: BuildReport, store: Store) -> dict[str, Any]:
    outcome = report.outcomes[node.id]
    action = store.get_action(outcome.key) if outcome.key else None
    preimage = action.preimage if action is not None else {}
    return {
        "kind": node.kind,
        "label": node.label,
        "key": outcome.key,
        "stepVersion": preimage.get("version"),
        "inputs": {role: {"sha256": sha256_json(view)} for role, view in sorted((preimage.get("inputs") or {}).items())},
        "output": {"sha256": outcome.manifest.digest if outcome.manifest else None},
        "toolchain": preimage.get("toolchain"),
        **({"builtWith": action.built_with} if action is not None and action.built_with else {}),
    }


def _recipe_digest(path: Path) -> str:
    """A recipe is a few hundred bytes the loader just read: hashed whole, not via the store's file hasher."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def statement(product: _Product, graph: BuildGraph, report: BuildReport, store: Store) -> dict[str, Any]:
    """The in-toto statement for one artifact (deterministic: no times, no absolute paths)."""
    from mlcbuild import __version__
    from mlcbuild.targets import tvm_version

    here = product.path.parent
    nodes = _closure(graph, product.nodes)
    records = [_node_record(n, report, store) for n in nodes]
    toolchain: dict[str, Any] = {"mlcbuild": __version__, "apache-tvm": tvm_version()}
    for record in records:
        for facts in (record["toolchain"], record.get("builtWith")):
            if isinstance(facts, dict) and facts.get("nvcc"):
                toolchain["nvcc"] = facts["nvcc"]
    external: dict[str, Any] = {
        "recipe": {"path": _relpath(product.recipe.path, here), "digest": {"sha256": _recipe_digest(product.recipe.path)}},
        "name": product.recipe.name,
        "quantization": product.quantization,
    }
    if product.target is not None:
        compile_node = next(n for n in nodes if n.kind == "compile")
        external["target"] = {"id": product.target, **compile_node.params["target"]}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": e.digest}} for name, e in sorted(product.files.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"toolchain": toolchain, "nodes": records},
                "resolvedDependencies": [
                    {"name": "recipe", "uri": f"file:{external['recipe']['path']}", "digest": external["recipe"]["digest"]},
                    *(_source(product.recipe, n, here) for n in nodes if n.kind == "download"),
                ],
            },
            "runDetails": {"builder": {"id": f"https://mlcbuild.dev/builder/mlcbuild@{__version__}"}},
        },
    }


def dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_provenance(recipes: list[Recipe], graph: BuildGraph, report: BuildReport, store: Store) -> list[Path]:
    """Write (or leave, when unchanged) the statement of every fully materialized artifact."""
    written = []
    for product in _products(recipes, graph, report):
        path = provenance_path(product.path)
        data = dumps(statement(product, graph, report, store))
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        with fs_errors("output folder", path.parent):
            atomic_write_bytes(path, data)
        written.append(path)
    return written


def verify_artifact(artifact: Path) -> list[str]:
    """Mismatches between an artifact on disk and its statement (empty when everything matches).

    `artifact` is the model folder, a library, or the statement itself.
    """
    from mlcbuild.errors import UserError

    artifact = Path(artifact)
    path = artifact if artifact.name.endswith(SUFFIX) else provenance_path(artifact)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{artifact}: no provenance beside it ({path.name} missing)") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if data.get("_type") != STATEMENT_TYPE or data.get("predicateType") != PREDICATE_TYPE:
        raise UserError(f"{path}: not an in-toto statement with SLSA provenance v1")
    here = path.parent
    problems: list[str] = []
    listed = set()
    for subject in data.get("subject", []):
        name, want = subject["name"], subject["digest"].get("sha256")
        listed.add(name)
        file = here / name
        if not file.is_file():
            problems.append(f"{name}: missing")
            continue
        got = sha256_file(file)
        if got != want:
            problems.append(f"{name}: sha256 {got} but the provenance says {want}")
    folder = here / path.name[: -len(SUFFIX)]
    if folder.is_dir():
        for dirpath, _, filenames in os.walk(folder):
            for fname in filenames:
                name = (Path(dirpath) / fname).relative_to(here).as_posix()
                if name not in listed and not fname.startswith("."):
                    problems.append(f"{name}: not in the provenance")
    return sorted(problems)
