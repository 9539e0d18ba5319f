"""Recipe loading: YAML with positions → schema check → semantic checks → `Recipe`.

Every mistake is one `UserError` naming file:line:column and the field; the first one in
document order wins (a missing field is reported after unknown ones, which are often its typo).
"""
from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from mlcbuild.artifact.names import MODEL_SUFFIX
from mlcbuild.errors import Location, UserError, describe
from mlcbuild.recipe.model import Recipe, Source, TargetRef
from mlcbuild.recipe.schema import InstancePath, Issue, iter_issues, load_schema
from mlcbuild.suggest import closest, unknown

if TYPE_CHECKING:
    from mlcbuild.recipe.yamlmarks import Document

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

DEFAULT_OUTPUT = "dist"


def field_name(path: InstancePath) -> str | None:
    """("source", "hf") → "source.hf"; ("targets", 1) → "targets[1]"; () → None."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


class _Checker:
    """Turns issues into positioned UserErrors for one recipe file."""

    def __init__(self, shown: str, doc: "Document"):
        self.shown = shown
        self.doc = doc

    def location(self, path: InstancePath, at_key: bool = False) -> Location:
        pos = self.doc.marks.get(path)
        while pos is None and path:
            path = path[:-1]
            pos = self.doc.marks.get(path)
        if pos is None:
            return Location(self.shown, 1, 1)
        line, column = pos.key if at_key and pos.key else pos.value
        return Location(self.shown, line, column)

    @staticmethod
    def _order(location: Location | None) -> tuple[int, int]:
        return (location.line or 0, location.column or 0) if location else (0, 0)

    def error(self, path: InstancePath, message: str, at_key: bool = False) -> UserError:
        return UserError(message, self.location(path, at_key), field_name(path))

    def value(self, path: InstancePath) -> Any:
        node: Any = self.doc.data
        for part in path:
            node = node[part]
        return node

    def from_issue(self, issue: Issue) -> UserError:
        kw, path, schema, value = issue.keyword, issue.path, issue.schema, issue.instance
        if kw == "additionalProperties":
            key = issue.detail
            allowed = list((schema.get("properties") or {}))
            guess = closest(key, allowed)
            hint = f" — did you mean {guess!r}?" if guess else f"; allowed: {', '.join(allowed)}"
            return self.error(path + (key,), f"unknown field{hint}", at_key=True)
        if kw == "required":
            return UserError("required field is missing", self.location(path), field_name(path + (issue.detail,)))
        if kw == "dependentRequired":
            key, needed = issue.detail
            if path == ("source",) and key == "revision":
                return self.error(path + (key,), "'revision' applies only to an 'hf' source (a local path has none)", at_key=True)
            return self.error(path + (key,), f"{key!r} requires {needed!r}", at_key=True)
        if kw in ("oneOf", "required", "dependentRequired", "additionalProperties") and not isinstance(value, dict):
            return self.error(path, self._type_message(path, {"type": "object"}, value))
        if kw == "oneOf" and path == ("source",):
            if "hf" in value and "path" in value:
                later = max(("hf", "path"), key=lambda k: self._order(self.location(path + (k,), True)))
                return self.error(path + (later,), "'hf' and 'path' are mutually exclusive; give one", at_key=True)
            return self.error(path, "needs 'hf' (a Hugging Face repo id) or 'path' (a local folder)")
        if kw == "type":
            return self.error(path, self._type_message(path, schema, value))
        if kw == "enum":
            choices = [str(c) for c in schema["enum"]]
            guess = closest(str(value), choices) if isinstance(value, str) else None
            hint = f" — did you mean {guess!r}?" if guess else ""
            if not isinstance(value, str):
                return self.error(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
            return self.error(path, f"{value!r} is not one of {', '.join(choices)}{hint}")
        if kw == "uniqueItems":
            i = issue.detail
            first = next(j for j, item in enumerate(value) if item == value[i])
            line = self.location(path + (first,)).line
            return self.error(path + (i,), f"duplicate entry {value[i]!r} (already at line {line})")
        if kw == "minItems":
            return self.error(path, "must not be empty" if schema["minItems"] == 1 else f"needs at least {schema['minItems']} items")
        if kw == "minLength":
            return self.error(path, "must not be empty")
        if kw == "maxLength":
            return self.error(path, f"is too long ({len(value)} characters; at most {schema['maxLength']})")
        if kw == "pattern" and path == ("source", "hf"):
            return self.error(path, hf_repo_problem(value) or schema.get("errorMessage", "not a repo id"))
        if kw in ("pattern", "not", "minimum") and "errorMessage" in schema:
            return self.error(path, f"{schema['errorMessage']} (got {value!r})")
        bounds = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        if kw in bounds:
            return self.error(path, f"must be {bounds[kw]} {schema[kw]} (got {value!r})")
        return self.error(path, f"{value!r} is not valid here ({kw})")

    def _type_message(self, path: InstancePath, schema: Mapping[str, Any], value: Any) -> str:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        wanted = " or ".join(_TYPE_NAMES[t] for t in types)
        if types == ["integer", "array"]:
            wanted = "an integer or a list of integers"
        message = f"expected {wanted}, got {describe(value)}"
        plain_scalar = path in self.doc.scalar_styles and self.doc.scalar_styles[path] is None
        if "string" in types and plain_scalar and value is not None:
            text = self._source_text(path)
            message += f"; quote it: '{text}'" if text else "; quote it"
        elif isinstance(value, str) and ("integer" in types or "number" in types) and _is_number(value):
            message += "; remove the quotes"
        elif types == ["array"] and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            message += f"; write a list: [{value}]"
        return message

    def _source_text(self, path: InstancePath) -> str | None:
        value = self.value(path)
        return None if isinstance(value, (dict, list)) or value is None else _scalar_text(value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def hf_repo_problem(repo: str) -> str | None:
    """Why `repo` is not a Hugging Face repo id (org/name), or None when it is one."""
    url = re.match(r"^(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/([^/\s]+/[^/\s?#]+)", repo)
    if url:
        return f"expected a repo id, not a URL — did you mean {url.group(1)!r}?"
    if "/" not in repo:
        return f"expected 'org/name', got {repo!r} (no organization)"
    if repo.count("/") > 1:
        return "expected 'org/name' with a single '/'"
    if "--" in repo or ".." in repo:
        return "'--' and '..' are not allowed in a repo id"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", repo):
        return "expected 'org/name' (letters, digits, '.', '_', '-'; starting with a letter or digit)"
    if repo.endswith((".", "-")) or len(repo) > 96:
        return "not a valid repo id (ends with '.' or '-', or longer than 96 characters)"
    return None


MAX_ISSUES = 200
"""Schema problems weighed to find the first in document order: a 20k-item list of wrong types is
reported from its first items without building 20k messages."""

MAX_RECIPE_BYTES = 1 << 20
"""A recipe is a few hundred bytes; anything near a MiB is a mistake (or /dev/zero)."""


def _read(path: Path, shown: str) -> bytes:
    from mlcbuild.inputs import read_bytes, regular_file_problem

    problem = regular_file_problem(path)
    if problem == "not found":
        raise UserError("recipe file not found", Location(shown))
    if problem is not None and path.is_dir():
        raise UserError("is a folder; expected a recipe .yaml file", Location(shown))
    return read_bytes(path, shown, MAX_RECIPE_BYTES, what="recipe")


def _decode(raw: bytes, shown: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError("recipe is not UTF-8 text", Location(shown, line, column)) from None


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def load_recipe(path: Path | str, cache_dir: Path | str | None = None) -> Recipe:
    """Load and validate a recipe; every mistake is a one-line UserError (exit code 2).

    With `cache_dir`, a recipe validated before from the same bytes (and lock file, targets, code)
    comes from `cache_dir/recipes/` without parsing YAML or importing jsonschema.
    """
    shown = str(path)
    file = Path(path)
    raw = _read(file, shown)
    if cache_dir is None:
        return _validate(file, shown, _decode(raw, shown))
    from mlcbuild.recipe import cache

    key = cache.cache_key(file, raw)
    recipe = cache.get(Path(cache_dir), file, key)
    if recipe is None:
        recipe = _validate(file, shown, _decode(raw, shown))
        cache.put(Path(cache_dir), file, key, recipe)
    return recipe


def _validate(file: Path, shown: str, text: str) -> Recipe:
    from mlcbuild.recipe.yamlmarks import YamlProblem, parse

    try:
        doc = parse(text)
    except YamlProblem as e:
        raise UserError(e.message, Location(shown, e.line, e.column), field_name(e.path)) from None
    if doc is None:
        raise UserError("recipe is empty; it needs source, quantizations and targets", Location(shown, 1, 1))
    check = _Checker(shown, doc)
    data = doc.data
    if not isinstance(data, dict):
        raise check.error((), f"a recipe is a mapping of fields (source, quantizations, ...), got {describe(data)}")
    issues = list(itertools.islice(iter_issues(data), MAX_ISSUES))
    if issues:
        def order(issue: Issue) -> tuple[bool, int, int]:
            return (issue.keyword == "required", *check._order(check.from_issue(issue).location))

        raise check.from_issue(min(issues, key=order))
    return _build(check, file.resolve(), data)


def _known(check: _Checker, path: InstancePath, kind: str, value: str, names: Iterable[str]) -> UserError | None:
    names = list(names)
    return None if value in names else check.error(path, unknown(kind, value, names))


def _registry(loader: Callable[[], Mapping[str, Any]], what: str) -> Mapping[str, Any] | None:
    try:
        return loader()
    except ImportError:
        return None
    except UserError:
        raise
    except Exception as e:  # a broken registry file must not become a traceback here
        raise UserError(f"cannot load {what}: {e}") from None


def _templates() -> Mapping[str, Any]:
    from mlcbuild.templates import CONV_TEMPLATES

    return CONV_TEMPLATES


def _targets() -> Mapping[str, Any]:
    from mlcbuild.targets import load_targets

    return load_targets()


def _models() -> Mapping[str, Any]:
    from mlcbuild.models import MODELS

    return MODELS


def _quantizations() -> Mapping[str, Any]:
    from mlcbuild.quantization import SCHEMES

    return SCHEMES


def _source(check: _Checker, base: Path, src: Mapping[str, Any]) -> tuple[Source, str] | UserError:
    if "hf" in src:
        problem = hf_repo_problem(src["hf"])
        if problem:
            return check.error(("source", "hf"), problem)
        return Source(hf=src["hf"], revision=src.get("revision", "main")), name_from_source(src["hf"].split("/")[-1])
    folder = _resolve(base, src["path"])
    if not folder.exists():
        return check.error(("source", "path"), f"folder does not exist: {folder}")
    if not folder.is_dir():
        return check.error(("source", "path"), f"not a folder: {folder}")
    if not (folder / "config.json").is_file() and not (folder / "mlc-chat-config.json").is_file():
        return check.error(
            ("source", "path"),
            f"no config.json in {folder} (expected a Hugging Face model folder, or an MLC weight folder with mlc-chat-config.json)",
        )
    return Source(path=folder), name_from_source(folder.name)


def name_from_source(source_name: str) -> str:
    """The name a recipe gets from its source: an MLC folder's `<name>-<quant>-MLC` gives `<name>`,
    so its outputs are not called `<name>-<quant>-MLC-<quant>-MLC`."""
    if not source_name.endswith(MODEL_SUFFIX):
        return source_name
    return re.sub(r"-q\d+(?:f|bf)\d+(?:_\d+)?$", "", source_name.removesuffix(MODEL_SUFFIX)) or source_name


def _targets_of(check: _Checker, texts: list[str], problems: list[UserError | None]) -> list[TargetRef]:
    targets = _registry(_targets, "target definitions") or {}
    refs: list[TargetRef] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, text in enumerate(texts):
        path: InstancePath = ("targets", i)
        tname, _, variant = text.partition(":")
        err = _known(check, path, "target", tname, targets)
        if err:
            problems.append(err)
            continue
        target = targets[tname]
        variants = dict(getattr(target, "variants", {}) or {})
        if variant and not variants:
            problems.append(check.error(path, f"target {tname!r} has no variants; write {tname!r}"))
            continue
        if variant and variant not in variants:
            guess = closest(variant, variants)
            hint = f" — did you mean '{tname}:{guess}'?" if guess else f"; valid: {', '.join(sorted(variants))}"
            problems.append(check.error(path, f"unknown variant {variant!r} of target {tname!r}{hint}"))
            continue
        effective = (tname, variant or getattr(target, "default_variant", None))
        if effective in seen:
            j = seen[effective]
            line = check.location(("targets", j)).line
            problems.append(check.error(path, f"{text!r} builds the same library as {texts[j]!r} (line {line})"))
            continue
        seen[effective] = i
        refs.append(TargetRef(tname, variant or None))
    return refs


def _build(check: _Checker, recipe_path: Path, data: dict[str, Any]) -> Recipe:
    """Checks that need more than the schema (registries, the file system); the first problem in
    document order is raised."""
    base = recipe_path.parent
    problems: list[UserError | None] = []
    found = _source(check, base, data["source"])
    if isinstance(found, UserError):
        problems.append(found)
        source, default_name = Source(), "model"
    else:
        source, default_name = found
        if "name" not in data and not NAME_RE.match(default_name):
            problems.append(check.error(("source",), f"the default name {default_name!r} is not a valid artifact name; set 'name:'"))
    name = data.get("name", default_name)

    schemes = _registry(_quantizations, "quantization schemes") or {}
    for i, quant in enumerate(data["quantizations"]):
        problems.append(_known(check, ("quantizations", i), "quantization", quant, schemes))
    refs = _targets_of(check, data["targets"], problems)
    templates = _registry(_templates, "conversation templates")
    from mlcbuild.templates import AUTO  # the default: fitted to the checkpoint at gen-config time

    conv_template = data.get("conv_template", AUTO)
    if templates is not None:
        problems.append(_known(check, ("conv_template",), "conv_template", conv_template, [*templates, AUTO]))
    model_type = data.get("model_type")
    if model_type is not None:
        models = _registry(_models, "model families")
        if models is not None:
            problems.append(_known(check, ("model_type",), "model_type", model_type, models))
    overrides = _overrides(check, data.get("overrides") or {}, problems)
    smoke = _smoke(check, data.get("smoke", False), [str(t) for t in data["targets"]], problems)

    real = [p for p in problems if p is not None]
    if real:
        raise min(real, key=lambda e: check._order(e.location))
    locations = {
        field_name(path) or "": Location(check.shown, *(pos.value)) for path, pos in check.doc.marks.items()
    }
    return Recipe(
        path=recipe_path,
        name=name,
        source=source,
        quantizations=tuple(data["quantizations"]),
        targets=tuple(refs),
        conv_template=conv_template,
        overrides=overrides,
        compile_options=_compile_options(check, data.get("compile") or {}),
        output=_resolve(base, data.get("output", DEFAULT_OUTPUT)),
        model_type=model_type,
        smoke=smoke,
        locations=locations,
    )


def _smoke(check: _Checker, given: bool | list[str], targets: list[str], problems: list[UserError | None]) -> tuple[str, ...]:
    """The targets whose libraries get a smoke node (`smoke: true` = all of them)."""
    if given is True:
        return tuple(targets)
    if not given:
        return ()
    for i, text in enumerate(given):
        if text not in targets:
            problems.append(check.error(("smoke", i), f"{text!r} is not one of the recipe's targets ({', '.join(targets)})"))
    return tuple(given)


def _overrides(check: _Checker, given: Mapping[str, Any], problems: list[UserError | None]) -> dict[str, Any]:
    props = load_schema()["properties"]["overrides"]["properties"]
    out: dict[str, Any] = {}
    for key, value in given.items():
        if props[key].get("type") == "integer" and isinstance(value, float):
            value = int(value)
        elif props[key].get("type") == "number" and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, list):
            value = [int(v) for v in value]
        elif isinstance(value, float):
            value = int(value)
        out[key] = value
    window, chunk = out.get("context_window_size"), out.get("prefill_chunk_size")
    if window is not None and chunk is not None and window > 0 and chunk > window:
        problems.append(check.error(("overrides", "prefill_chunk_size"), f"must be ≤ context_window_size ({window}) (got {chunk})"))
    return out


def _compile_options(check: _Checker, given: Mapping[str, Any]) -> dict[str, Any]:
    """As written, plus the default level; `opt` (MLC's --opt syntax) is checked here, with its
    line, and the planner resolves what it implies per target."""
    from mlcbuild.compiler.options import DEFAULT_OPT, CompileOptions

    options = {"opt": DEFAULT_OPT, **given}
    try:
        CompileOptions.from_json(options)
    except UserError as e:
        field = (e.field or "compile.opt").split(".")
        raise check.error(tuple(field), str(e.message)) from None
    return options
