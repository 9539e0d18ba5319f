"""The build graph: nodes identified by what they are (kind, params, inputs), so identical
nodes from several recipes collapse into one."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    import networkx as nx

from mlcbuild.store.manifest import canonical_json, sha256_json


@dataclass(frozen=True)
class Node:
    kind: str
    params_json: str
    deps: tuple[tuple[str, str], ...]
    label: str
    hints_json: str = "{}"

    @classmethod
    def make(
        cls,
        kind: str,
        params: Mapping[str, Any],
        deps: Mapping[str, "Node"],
        label: str,
        hints: Mapping[str, Any] | None = None,
    ) -> "Node":
        """`hints` reach the step but not the key: where to find bytes whose digest is in params."""
        return cls(
            kind,
            canonical_json(params).decode(),
            tuple(sorted((role, node.id) for role, node in deps.items())),
            label,
            canonical_json(hints or {}).decode(),
        )

    @property
    def hints(self) -> dict[str, Any]:
        return json.loads(self.hints_json)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def id(self) -> str:
        return sha256_json([self.kind, self.params_json, self.deps])[:16]


@dataclass(frozen=True)
class Artifact:
    """Where a node's output lands in a recipe's output dir (MLC's layout), and what it is: the
    model folder of (recipe, quantization), or its library for `target`. Placement, provenance and
    the no-op check read these fields; none of them parses a path back (`artifact.layout`)."""

    node_id: str
    dest: Path
    rename: Mapping[str, str] = field(default_factory=dict)
    """Library only: the compile output's `lib.<suffix>` → the library's file name in `dest`."""
    kind: str = "model"
    """"model" (a folder several nodes fill) or "library" (one file)."""
    recipe: str = ""
    """The recipe file (`str(recipe.path)`) whose output it is."""
    quantization: str = ""
    target: str | None = None
    """The resolved target id (`cuda-sm_90a`) of a library; None for a model folder."""

    @property
    def path(self) -> Path:
        """The model folder, or the library file."""
        return Path(self.dest) / next(iter(self.rename.values())) if self.kind == "library" else Path(self.dest)


class BuildGraph:
    """Nodes in insertion order, which the planner keeps topological (inputs before users).

    The hot path (a no-op build) needs only that order and a dependency walk, so it does not
    pay networkx's ~200 ms import; `to_networkx()` gives the graph for analysis and export.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.artifacts: list[Artifact] = []
        self.unbuildable: dict[str, str] = {}
        """node id -> what this machine lacks to build it ("needs ...: build it where that is")."""

    def add(self, node: Node) -> Node:
        missing = [dep for _, dep in node.deps if dep not in self.nodes]
        if missing:
            raise ValueError(f"{node.label}: inputs must be added first ({missing})")
        return self.nodes.setdefault(node.id, node)

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def topological(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def edges(self) -> Iterator[tuple[str, str, str]]:
        """(input node id, user node id, role)."""
        for node in self.nodes.values():
            for role, dep in node.deps:
                yield dep, node.id, role

    def closure(self, wanted: set[str]) -> set[str]:
        """The wanted nodes and everything they depend on."""
        seen: set[str] = set()
        stack = list(wanted)
        while stack:
            node_id = stack.pop()
            if node_id not in seen:
                seen.add(node_id)
                stack.extend(dep for _, dep in self.nodes[node_id].deps)
        return seen

    def dependents(self, roots: set[str]) -> set[str]:
        """The roots and every node that (transitively) uses one of them."""
        found = set(roots)
        for node in self.nodes.values():
            if any(dep in found for _, dep in node.deps):
                found.add(node.id)
        return found

    def elsewhere(self, wanted: set[str]) -> set[str]:
        """Of the wanted nodes, those another machine must build: unbuildable here, or using one that is."""
        return self.dependents(set(self.unbuildable)) & wanted

    def find(self, query: str) -> list[Node]:
        """Nodes whose id starts with, or label contains, the query."""
        exact = [n for n in self.nodes.values() if n.id.startswith(query)]
        return exact or [n for n in self.nodes.values() if query in n.label]

    def to_networkx(self) -> "nx.DiGraph":
        import networkx as nx

        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.id, kind=node.kind, label=node.label, params=node.params)
            if node.id in self.unbuildable:
                g.nodes[node.id]["unbuildable_here"] = self.unbuildable[node.id]
        for dep, user, role in self.edges():
            g.add_edge(dep, user, role=role)
        return g
