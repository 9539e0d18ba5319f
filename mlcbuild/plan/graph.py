"""The build graph: nodes identified by what they are (kind, params, inputs), so identical
nodes from several recipes collapse into one."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import networkx as nx

from mlcbuild.store.manifest import canonical_json, sha256_json


@dataclass(frozen=True)
class Node:
    kind: str
    params_json: str
    deps: tuple[tuple[str, str], ...]
    label: str

    @classmethod
    def make(cls, kind: str, params: Mapping[str, Any], deps: Mapping[str, "Node"], label: str) -> "Node":
        return cls(
            kind,
            canonical_json(params).decode(),
            tuple(sorted((role, node.id) for role, node in deps.items())),
            label,
        )

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def id(self) -> str:
        return sha256_json([self.kind, self.params_json, self.deps])[:16]


@dataclass(frozen=True)
class Artifact:
    """Where a node's output lands in a recipe's output dir (MLC's layout)."""

    node_id: str
    dest: Path
    rename: Mapping[str, str] = field(default_factory=dict)
    select: tuple[str, ...] | None = None


class BuildGraph:
    def __init__(self) -> None:
        self.g = nx.DiGraph()
        self.artifacts: list[Artifact] = []

    def add(self, node: Node) -> Node:
        if node.id not in self.g:
            self.g.add_node(node.id, node=node)
            for _, dep in node.deps:
                self.g.add_edge(dep, node.id)
        return self.g.nodes[node.id]["node"]

    def node(self, node_id: str) -> Node:
        return self.g.nodes[node_id]["node"]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def topological(self) -> Iterator[Node]:
        for node_id in nx.lexicographical_topological_sort(self.g, key=lambda n: (self.node(n).kind, self.node(n).label)):
            yield self.node(node_id)

    def closure(self, wanted: set[str]) -> set[str]:
        """The wanted nodes and everything they depend on."""
        out = set(wanted)
        for n in wanted:
            out |= nx.ancestors(self.g, n)
        return out

    def dependents(self, node_id: str) -> set[str]:
        return nx.descendants(self.g, node_id)

    def find(self, query: str) -> list[Node]:
        """Nodes whose id starts with, or label contains, the query."""
        exact = [self.node(n) for n in self.g if n.startswith(query)]
        return exact or [self.node(n) for n in self.g if query in self.node(n).label]
