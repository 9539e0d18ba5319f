"""YAML → plain data plus the line/column of every key and value, so errors can point at them.

PyYAML's composer keeps marks on nodes; we build the data ourselves from the node tree instead of
letting the constructor drop them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple[str | int, ...]

MAX_VALUES = 100_000
"""Values (after alias expansion) a recipe may hold: a 1 MiB recipe written out plainly has fewer
than this, an alias bomb ("billion laughs") reaches it after a few milliseconds instead of 24 GB."""


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a key (None for list items and the root) and of its value."""

    value: tuple[int, int]
    key: tuple[int, int] | None = None


class YamlProblem(Exception):
    """A YAML document we cannot turn into data; carries the 1-based position of the problem."""

    def __init__(self, message: str, line: int | None, column: int | None, path: Path_ = ()):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path


def _at(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self) -> None:
        self.marks: dict[Path_, Pos] = {}
        self.scalar_styles: dict[Path_, str | None] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._built: set[int] = set()
        self._aliased = False
        self._count = 0

    def build(self, node: Node, path: Path_, key_at: tuple[int, int] | None) -> Any:
        value_at = _at(node.start_mark)
        self._count += 1
        if self._count > MAX_VALUES:
            reason = "YAML aliases expand" if self._aliased else "recipe holds"
            raise YamlProblem(f"{reason} to more than {MAX_VALUES} values; a recipe is a few dozen", *value_at, path)
        if isinstance(node, (SequenceNode, MappingNode)):
            self._aliased = self._aliased or id(node) in self._built
            self._built.add(id(node))
        if key_at is not None and isinstance(node, ScalarNode) and node.value == "" and not node.style:
            value_at = key_at
        self.marks[path] = Pos(value_at, key_at)
        if id(node) in self._active:
            raise YamlProblem("recursive YAML alias", *value_at, path)
        if isinstance(node, ScalarNode):
            self.scalar_styles[path] = node.style or None
            return self._scalar(node, value_at, path)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, path + (i,), None) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
        finally:
            self._active.discard(id(node))
        raise YamlProblem(f"unsupported YAML node {type(node).__name__}", *value_at, path)

    def _scalar(self, node: ScalarNode, at: tuple[int, int], path: Path_) -> Any:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except Exception as e:  # a bad tag or an impossible date: report, never a traceback
            problem = getattr(e, "problem", None) or str(e)
            raise YamlProblem(f"invalid YAML value: {problem}", *at, path) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise YamlProblem(f"{node.value!r} is not a finite number (NaN and infinities are not allowed)", *at, path)
        return value

    def _mapping(self, node: MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_at = _at(key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem("YAML merge keys ('<<') are not supported in recipes", *key_at, path)
            if not isinstance(key_node, ScalarNode):
                raise YamlProblem("mapping keys must be plain names", *key_at, path)
            key = key_node.value if key_node.tag == "tag:yaml.org,2002:str" else self._scalar(key_node, key_at, path)
            if not isinstance(key, str):
                raise YamlProblem(f"mapping key {key_node.value!r} must be a name (quote it)", *key_at, path)
            if key in out:
                first = self.marks[path + (key,)].key or (0, 0)
                raise YamlProblem(f"duplicate key {key!r} (first at line {first[0]})", *key_at, path + (key,))
            out[key] = self.build(value_node, path + (key,), key_at)
        return out


@dataclass
class Document:
    data: Any
    marks: dict[Path_, Pos]
    scalar_styles: dict[Path_, str | None]


def parse(text: str) -> Document | None:
    """The single YAML document in `text` with positions, or None when it holds no document."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise YamlProblem("recipe nests too deeply", None, None) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join((e.problem or e.context or "invalid YAML").split())
        if e.context and e.problem and "expected a single document" in e.context:
            problem = "expected a single YAML document, found more ('---')"
        elif e.context and e.problem and e.context_mark is not None:
            where = f"line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
            problem = f"{e.problem} ({e.context} at {where})"
        if mark is None:
            raise YamlProblem(f"invalid YAML: {problem}", None, None) from None
        raise YamlProblem(f"invalid YAML: {problem}", mark.line + 1, mark.column + 1) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character or "\0")
        raise YamlProblem(f"invalid YAML: character U+{char:04X} is not allowed ({e.reason})", line, column) from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"invalid YAML: {' '.join(str(e).split())}", None, None) from None
    if root is None:
        return None
    builder = _Builder()
    try:
        data = builder.build(root, (), None)
    except RecursionError:
        raise YamlProblem("recipe nests too deeply", None, None) from None
    return Document(data, builder.marks, builder.scalar_styles)
