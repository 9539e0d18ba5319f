"""The recipe JSON Schema and a small evaluator for the subset of draft 2020-12 it uses.

Why not `jsonschema` at run time: importing it costs ~150 ms (referencing, attrs, every bundled
metaschema), half the budget of a no-op build. The schema file stays the single source of truth
(editors read it; tests check it against the draft 2020-12 metaschema and check that this evaluator
and `jsonschema` agree on every test recipe). A keyword the evaluator does not know is a bug caught
by `SUPPORTED` at load time, never silently ignored.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

SCHEMA_PATH = Path(__file__).with_name("recipe.schema.json")

ANNOTATIONS = {"$schema", "$id", "title", "description", "examples", "default", "errorMessage"}
ASSERTIONS = {
    "type", "properties", "additionalProperties", "required", "enum", "const", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minItems", "uniqueItems", "items", "minLength", "maxLength",
    "pattern", "not", "oneOf", "dependentRequired",
}
SUPPORTED = ANNOTATIONS | ASSERTIONS

InstancePath = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One failed assertion: `keyword` of `schema` failed on the value at `path`.

    `detail` narrows it: the unknown key (additionalProperties), the missing key (required,
    dependentRequired: (key, needed)), the index of the repeated item (uniqueItems), the number
    of matching branches (oneOf).
    """

    keyword: str
    path: InstancePath
    schema: Mapping[str, Any]
    instance: Any
    detail: Any = None


@lru_cache(maxsize=None)
def load_schema() -> Mapping[str, Any]:
    """The shipped schema, checked once for keywords this evaluator cannot honour."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    _check_keywords(schema, "#")
    return schema


def _check_keywords(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        return
    unknown = set(schema) - SUPPORTED
    if unknown:
        raise RuntimeError(f"recipe schema {where} uses unsupported keywords {sorted(unknown)}")
    for name, sub in (schema.get("properties") or {}).items():
        _check_keywords(sub, f"{where}/properties/{name}")
    for key in ("items", "not", "additionalProperties"):
        _check_keywords(schema.get(key), f"{where}/{key}")
    for i, sub in enumerate(schema.get("oneOf") or ()):
        _check_keywords(sub, f"{where}/oneOf/{i}")


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float))
    raise RuntimeError(f"unknown JSON Schema type {name!r}")


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def iter_issues(instance: Any, schema: Mapping[str, Any] | None = None, path: InstancePath = ()) -> Iterator[Issue]:
    """Every assertion of `schema` (default: the recipe schema) that `instance` fails."""
    if schema is None:
        schema = load_schema()
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in types):
            yield Issue("type", path, schema, instance)
            return
    if "enum" in schema and not any(_json_equal(instance, v) for v in schema["enum"]):
        yield Issue("enum", path, schema, instance)
    if "const" in schema and not _json_equal(instance, schema["const"]):
        yield Issue("const", path, schema, instance)
    if "not" in schema and not any(True for _ in iter_issues(instance, schema["not"], path)):
        yield Issue("not", path, schema, instance)
    if "oneOf" in schema:
        matched = sum(1 for sub in schema["oneOf"] if not any(True for _ in iter_issues(instance, sub, path)))
        if matched != 1:
            yield Issue("oneOf", path, schema, instance, matched)
    if _is_type(instance, "number"):
        for keyword, fails in (
            ("minimum", lambda v, b: v < b),
            ("maximum", lambda v, b: v > b),
            ("exclusiveMinimum", lambda v, b: v <= b),
            ("exclusiveMaximum", lambda v, b: v >= b),
        ):
            if keyword in schema and fails(instance, schema[keyword]):
                yield Issue(keyword, path, schema, instance)
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            yield Issue("minLength", path, schema, instance)
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            yield Issue("maxLength", path, schema, instance)
        if "pattern" in schema and not _regex(schema["pattern"]).search(instance):
            yield Issue("pattern", path, schema, instance)
    if isinstance(instance, list):
        yield from _array(instance, schema, path)
    if isinstance(instance, dict):
        yield from _object(instance, schema, path)


def _array(instance: list[Any], schema: Mapping[str, Any], path: InstancePath) -> Iterator[Issue]:
    if "minItems" in schema and len(instance) < schema["minItems"]:
        yield Issue("minItems", path, schema, instance)
    if schema.get("uniqueItems"):
        for i, item in enumerate(instance):
            if any(_json_equal(item, earlier) for earlier in instance[:i]):
                yield Issue("uniqueItems", path, schema, instance, i)
                break
    if "items" in schema:
        for i, item in enumerate(instance):
            yield from iter_issues(item, schema["items"], path + (i,))


def _object(instance: dict[str, Any], schema: Mapping[str, Any], path: InstancePath) -> Iterator[Issue]:
    properties = schema.get("properties") or {}
    for key in schema.get("required") or ():
        if key not in instance:
            yield Issue("required", path, schema, instance, key)
    for key, needed in (schema.get("dependentRequired") or {}).items():
        if key in instance:
            for other in needed:
                if other not in instance:
                    yield Issue("dependentRequired", path, schema, instance, (key, other))
    additional = schema.get("additionalProperties", True)
    for key, value in instance.items():
        if key in properties:
            yield from iter_issues(value, properties[key], path + (key,))
        elif additional is False:
            yield Issue("additionalProperties", path, schema, instance, key)
        elif isinstance(additional, dict):
            yield from iter_issues(value, additional, path + (key,))
