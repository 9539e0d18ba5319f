"""Matrix cells and their CI renderings (GitHub `strategy.matrix`, GitLab child pipeline, JSON).

One cell per target variant: the scarce resource in CI is the runner that has the toolchain (a GPU
box, a Mac), and a runner's setup (Python, apache-tvm, the cache) costs minutes, so each such runner
gets all quantizations of its target (`-q` narrows further). convert and gen-config need no
toolchain and go to one `weights` cell on an ordinary Linux runner; a compile cell builds the
gen-config it needs itself (config and tokenizer only, seconds, the same key everywhere) and never
downloads a weight file.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlcbuild.errors import UserError
from mlcbuild.plan.graph import BuildGraph, Node

WEIGHTS = "weights"
WEIGHTS_RUNNER: tuple[str, ...] = ("ubuntu-latest",)
"""convert and gen-config need CPU, memory and disk, no toolchain."""

GITLAB_MATRIX_LIMIT = 200

GITLAB_HOSTED: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ubuntu-", {"tags": ["saas-linux-small-amd64"], "image": "python:3.11"}),
    ("macos-", {"tags": ["saas-macos-medium-m1"], "image": "macos-15-xcode-16"}),
)
"""Runner labels are written GitHub's way (`runner:` in the target definitions). A GitHub-hosted label
(`ubuntu-latest`, `macos-14`) is a GitLab.com hosted runner's tag and image on GitLab; the other
labels are a self-hosted runner's, and are GitLab tags as they are, less GitHub's `self-hosted`."""


def cell_of(node: Node) -> str | None:
    """The cell that builds this node; None for downloads (each cell fetches what its nodes need)
    and for a smoke test no runner can run (a wasm runs in a browser app)."""
    if node.kind == "smoke":
        from mlcbuild.steps.smoke import no_build_machine

        if no_build_machine(node.params["target"]) is not None:
            return None
    if node.kind in ("compile", "smoke"):
        target = node.params["target"]
        return f"{target['name']}-{target['variant']}" if target.get("variant") else str(target["name"])
    if node.kind in ("convert", "gen-config"):
        return WEIGHTS
    if node.kind == "download" and _is_mlc_weights(node.params):
        return WEIGHTS
    return None


def _is_mlc_weights(params: Mapping[str, Any]) -> bool:
    """The full download of an already-converted MLC source: it is the model folder, placed by the
    weights cell (its config-only download comes along with each compile cell)."""
    from mlcbuild.weights.model_files import matches

    names = list(params.get("files") or params.get("allow_patterns") or ())
    return any(matches(n, ("params_shard_*.bin",)) for n in names)


def cell_nodes(graph: BuildGraph, cell: str) -> set[str]:
    """The nodes `--only CELL` asks for (their inputs come along); a UserError names the valid cells."""
    chosen = {n.id for n in graph.nodes.values() if cell_of(n) == cell}
    if not chosen:
        from mlcbuild.suggest import unknown

        names = {c for c in map(cell_of, graph.nodes.values()) if c}
        raise UserError(unknown("cell", cell, names), field="--only")
    return chosen


@dataclass(frozen=True)
class Cell:
    recipe_name: str
    recipe: str
    """The recipe path as the user gave it: the command runs from the same folder."""
    cell: str
    runner: tuple[str, ...]
    toolchain: tuple[str, ...]
    nodes: tuple[str, ...]
    artifacts: tuple[str, ...]
    unbuildable_here: str | None = None

    @property
    def id(self) -> str:
        return f"{self.recipe_name}-{self.cell}"

    @property
    def command(self) -> str:
        return f"mlcbuild build {shlex.quote(self.recipe)} --only {self.cell}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recipe": self.recipe,
            "cell": self.cell,
            "runner": list(self.runner),
            "toolchain": list(self.toolchain),
            "command": self.command,
            "artifacts": list(self.artifacts),
            "nodes": list(self.nodes),
        }


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def recipe_cells(graph: BuildGraph, recipe_name: str, recipe_arg: str) -> list[Cell]:
    """The cells of one recipe's graph, weights first, then targets in recipe order."""
    from mlcbuild.targets import ResolvedTarget, get_target

    by_cell: dict[str, list[Node]] = {}
    for node in graph.topological():
        cell = cell_of(node)
        if cell is not None:
            by_cell.setdefault(cell, []).append(node)
    cells = []
    for cell, nodes in sorted(by_cell.items(), key=lambda item: item[0] != WEIGHTS):
        ids = {n.id for n in nodes}
        artifacts = []
        for artifact in graph.artifacts:
            if artifact.node_id in ids:
                artifacts.append(_shown(artifact.path) + ("/" if artifact.kind == "model" else ""))
        if cell == WEIGHTS:
            runner, toolchain = WEIGHTS_RUNNER, ()
        else:
            target = ResolvedTarget.from_params(nodes[0].params["target"])
            runner = get_target(target.name).runner_labels(target.variant)
            toolchain = target.toolchain
        reasons = [graph.unbuildable[i] for i in ids if i in graph.unbuildable]
        cells.append(
            Cell(
                recipe_name,
                recipe_arg,
                cell,
                runner,
                toolchain,
                tuple(n.id for n in nodes),
                tuple(dict.fromkeys(artifacts)),
                reasons[0] if reasons else None,
            )
        )
    return cells


def check_unique(cells: Iterable[Cell]) -> None:
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.id in seen and seen[cell.id] != cell.recipe:
            raise UserError(f"recipes {seen[cell.id]} and {cell.recipe} are both named {cell.recipe_name!r}: cell ids must be unique", field="name")
        seen[cell.id] = cell.recipe


def github(cells: list[Cell]) -> str:
    """`strategy.matrix` JSON for `fromJSON`: `include` entries; `artifacts` newline-joined for upload-artifact."""
    include = []
    for cell in cells:
        entry = cell.to_json()
        entry["artifacts"] = "\n".join(cell.artifacts)
        del entry["nodes"]
        include.append(entry)
    return json.dumps({"include": include}, separators=(",", ":"))


def gitlab_runner(labels: tuple[str, ...]) -> dict[str, Any]:
    """The GitLab job fields (`tags`, and `image` for a hosted runner) for a cell's runner labels."""
    for prefix, job in GITLAB_HOSTED:
        if any(label.startswith(prefix) for label in labels):
            return {"tags": list(job["tags"]), "image": job["image"]}
    return {"tags": [label for label in labels if label != "self-hosted"]}


def gitlab(cells: list[Cell]) -> str:
    """A child pipeline: one job per runner (`gitlab_runner`: its tags), `parallel: matrix` over its cells."""
    import yaml

    doc: dict[str, Any] = {"stages": ["build"]}
    groups: dict[str, tuple[dict[str, Any], list[Cell]]] = {}
    for cell in cells:
        job = gitlab_runner(cell.runner)
        groups.setdefault("build " + " ".join(job["tags"]), (job, []))[1].append(cell)
    for name, (job, group) in groups.items():
        if len(group) > GITLAB_MATRIX_LIMIT:
            raise UserError(f"{len(group)} cells for runner tags {job['tags']}: GitLab allows {GITLAB_MATRIX_LIMIT} per parallel matrix; split the recipes")
        doc[name] = {
            "stage": "build",
            **job,
            "script": [
                "pip install -e .",
                'mlcbuild build "$RECIPE" --only "$CELL"',
                'mkdir -p mlcbuild-artifacts && cp -r --parents $ARTIFACTS mlcbuild-artifacts/',
            ],
            "parallel": {
                "matrix": [
                    {"CELL_ID": c.id, "RECIPE": c.recipe, "CELL": c.cell, "ARTIFACTS": " ".join(c.artifacts)}
                    for c in group
                ]
            },
            "artifacts": {"name": "$CELL_ID", "paths": ["mlcbuild-artifacts/"]},
        }
    if not groups:
        doc["nothing to build"] = {"stage": "build", "script": ["echo every cell is cached in the remote"]}
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def json_cells(cells: list[Cell]) -> str:
    """Everything, plus what this machine lacks for each cell (`unbuildable_here`, null when it can build it)."""
    return json.dumps({"cells": [{**c.to_json(), "unbuildable_here": c.unbuildable_here} for c in cells]}, indent=2)


FORMATS = {"github": github, "gitlab": gitlab, "json": json_cells}
