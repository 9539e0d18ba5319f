"""MLC's output layout: one canonical library name per (target, variant), as the README promises."""
from __future__ import annotations

import re
from pathlib import Path

from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.store.cas import Store

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "models" / "tiny-redpajama"


def _offline_copy(recipe: Path, folder: Path, **replace: str) -> Path:
    """The recipe with its HF source swapped for the bundled tiny model, so planning needs no network."""
    text = re.sub(r"source:\n(  .*\n)+", f"source:\n  path: {TINY}\n", recipe.read_text())
    for old, new in replace.items():
        text = text.replace(old, new)
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    out = folder / "recipes" / recipe.name
    out.write_text(text)
    return out


def _libs(recipe_path: Path, cache: Path) -> dict[str, str]:
    """Library path (relative to the recipe's parent folder) -> compile node id (kind, params, inputs: what its key is computed from)."""
    graph = plan([load_recipe(recipe_path)], Store(cache), PlanOptions())
    base = recipe_path.parent.parent
    libs = {}
    for artifact in graph.artifacts:
        for name in artifact.rename.values():
            libs[str((artifact.dest / name).relative_to(base))] = artifact.node_id
    return libs


def test_readme_library_name_is_what_the_planner_produces(tmp_path: Path) -> None:
    promised = re.findall(r"^\s+(dist/libs/\S+)$", (ROOT / "README.md").read_text(), re.M)
    assert promised == ["dist/libs/RedPajama-INCITE-Chat-3B-v1-q4f16_1-cuda-sm_90a.so"]
    libs = _libs(_offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path), tmp_path / "cache")
    assert promised[0] in libs
    assert "dist/libs/RedPajama-INCITE-Chat-3B-v1-q0f16-llvm-x86_64.so" in libs


def test_default_variant_written_or_not_is_one_library(tmp_path: Path) -> None:
    plain = _libs(_offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path / "a"), tmp_path / "cache")
    explicit = _libs(
        _offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path / "b", **{"targets: [cuda, llvm]": "targets: [cuda:sm_90a, llvm:x86_64]"}),
        tmp_path / "cache",
    )
    assert plain == explicit
    other = _libs(
        _offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path / "c", **{"targets: [cuda, llvm]": "targets: [cuda:sm_80]"}),
        tmp_path / "cache",
    )
    name = "dist/libs/RedPajama-INCITE-Chat-3B-v1-q4f16_1-cuda-sm_80.so"
    assert name in other and other[name] != plain["dist/libs/RedPajama-INCITE-Chat-3B-v1-q4f16_1-cuda-sm_90a.so"]


def test_artifact_records_say_what_they_are_and_layout_maps_both_ways(tmp_path: Path) -> None:
    """The planner's Artifact knows kind, recipe, quantization and target; its path is layout's, and
    layout's path → artifact (`artifact_of`, `find_library`, `provenance_path`) lead back to it."""
    from mlcbuild.artifact.layout import artifact_of, find_library, lib_path, model_dir, provenance_path
    from mlcbuild.targets import resolve_target

    recipe = load_recipe(_offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path))
    graph = plan([recipe], Store(tmp_path / "cache"), PlanOptions())
    kinds = {(a.kind, a.quantization, a.target) for a in graph.artifacts}
    assert {("model", q, None) for q in recipe.quantizations} | {
        ("library", q, resolve_target(t.name, t.variant).id) for q in recipe.quantizations for t in recipe.targets} == kinds
    for artifact in graph.artifacts:
        assert artifact.recipe == str(recipe.path) and graph.node(artifact.node_id).params["quantization"] == artifact.quantization
        if artifact.kind == "model":
            assert artifact.path == model_dir(recipe, artifact.quantization)
            assert artifact_of(artifact.path / "mlc-chat-config.json") == artifact.path
            continue
        target = resolve_target(*(artifact.target.split("-", 1)))
        assert artifact.path == lib_path(recipe, artifact.quantization, target) and artifact_of(artifact.path) == artifact.path
        artifact.path.parent.mkdir(parents=True, exist_ok=True)
        artifact.path.touch()
        assert find_library(model_dir(recipe, artifact.quantization), artifact.target) == artifact.path
    assert provenance_path(Path("dist/x-q4f16_1-MLC")) == Path("dist/x-q4f16_1-MLC.provenance.json")


def test_layout_leads_back_from_statements_libraries_and_names(tmp_path: Path) -> None:
    """The reverse maps `prune`, `verify` and `run LIB.so` use live in layout too, and agree with
    the planner's records: a statement → its artifact, a library → its model folder, a name in an
    output folder → whether it is one of the recipe's artifacts (any quantization, any target)."""
    from mlcbuild.artifact.layout import (
        artifact_of_statement, envelope_path, is_library_name, is_model_dir_name, model_dir_of_library, provenance_path,
    )

    recipe = load_recipe(_offline_copy(ROOT / "recipes" / "redpajama.yaml", tmp_path))
    graph = plan([recipe], Store(tmp_path / "cache"), PlanOptions())
    quants = recipe.quantizations
    for artifact in graph.artifacts:
        assert artifact_of_statement(provenance_path(artifact.path)) == artifact.path
        assert artifact_of_statement(envelope_path(artifact.path)) is None
        if artifact.kind == "model":
            assert is_model_dir_name(artifact.path.name, recipe.name, quants) and not is_library_name(artifact.path.name, "other", quants)
            (artifact.path / "mlc-chat-config.json").parent.mkdir(parents=True, exist_ok=True)
            (artifact.path / "mlc-chat-config.json").write_text("{}")
    assert not is_model_dir_name(f"{recipe.name}-q9f9-MLC", recipe.name, quants)
    libraries = [a for a in graph.artifacts if a.kind == "library"]
    assert libraries
    for artifact in libraries:
        assert is_library_name(artifact.path.name, recipe.name, quants) and not is_model_dir_name(artifact.path.name, recipe.name, quants)
        owner = next(a.path for a in graph.artifacts if a.kind == "model" and a.quantization == artifact.quantization)
        assert model_dir_of_library(artifact.path) == owner
    assert model_dir_of_library(tmp_path / "elsewhere" / libraries[0].path.name) is None
