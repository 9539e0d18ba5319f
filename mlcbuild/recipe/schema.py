"""The recipe JSON Schema, checked with `jsonschema` (draft 2020-12).

jsonschema is imported only when a recipe is actually validated: a no-op build reads the validated
recipe from the recipe cache (`mlcbuild.recipe.cache`) and never pays its ~150 ms import.
Its errors are turned into `Issue`s whose `detail` names what the message needs (the unknown or
missing key, the repeated item), computed here in linear time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

SCHEMA_PATH = Path(__file__).with_name("recipe.schema.json")

InstancePath = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One failed assertion: `keyword` of `schema` failed on the value at `path`.

    `detail` narrows it: the unknown key (additionalProperties), the missing key (required),
    (key, needed) (dependentRequired), the index of the first repeated item (uniqueItems).
    """

    keyword: str
    path: InstancePath
    schema: Mapping[str, Any]
    instance: Any
    detail: Any = None


@lru_cache(maxsize=None)
def load_schema() -> Mapping[str, Any]:
    """The shipped schema (plain JSON; no jsonschema import)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _validator() -> Any:
    """Draft 2020-12, with a linear uniqueItems (jsonschema's falls back to O(n²) on mixed lists)."""
    import jsonschema
    from jsonschema import validators

    def unique_items(validator: Any, unique: bool, instance: Any, schema: Any) -> Iterator[Any]:
        if unique and validator.is_type(instance, "array") and first_repeat(instance) is not None:
            yield jsonschema.ValidationError(f"{instance!r} has non-unique elements")

    cls = validators.extend(jsonschema.Draft202012Validator, {"uniqueItems": unique_items})
    return cls(load_schema())


def _json_key(item: Any) -> Any:
    """A hashable stand-in equal exactly when JSON equality holds (true ≠ 1, 1 == 1.0)."""
    if isinstance(item, bool):
        return ("bool", item)
    if isinstance(item, (int, float)):
        return ("number", item)
    if isinstance(item, str):
        return ("string", item)
    return ("json", json.dumps(item, sort_keys=True))


def first_repeat(items: list[Any]) -> int | None:
    """Index of the first item equal to an earlier one (one pass, hashing)."""
    seen: set[Any] = set()
    for i, item in enumerate(items):
        key = _json_key(item)
        if key in seen:
            return i
        seen.add(key)
    return None


def iter_issues(instance: Any) -> Iterator[Issue]:
    """Every assertion of the recipe schema that `instance` fails (each once)."""
    seen: set[tuple[str, InstancePath, str]] = set()
    for issue in _issues(instance):
        marker = (issue.keyword, issue.path, repr(issue.detail))
        if marker not in seen:
            seen.add(marker)
            yield issue


def _issues(instance: Any) -> Iterator[Issue]:
    for error in _validator().iter_errors(instance):
        path: InstancePath = tuple(error.absolute_path)
        schema, value, kw = error.schema, error.instance, str(error.validator)
        if kw == "additionalProperties":
            known = schema.get("properties") or {}
            for key in value:
                if key not in known:
                    yield Issue(kw, path, schema, value, key)
        elif kw == "required":
            for key in error.validator_value:
                if key not in value:
                    yield Issue(kw, path, schema, value, key)
        elif kw == "dependentRequired":
            for key, needed in error.validator_value.items():
                for other in needed if key in value else ():
                    if other not in value:
                        yield Issue(kw, path, schema, value, (key, other))
        elif kw == "uniqueItems":
            yield Issue(kw, path, schema, value, first_repeat(value))
        else:
            yield Issue(kw, path, schema, value)
