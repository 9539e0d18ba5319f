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
