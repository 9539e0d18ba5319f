"""Target device definitions: one YAML file per target kind.

The built-in ones ship as package data (`mlcbuild/builtin_targets/*.yaml`, so a plain `pip install`
has them); `./targets/*.yaml` then `$MLCBUILD_TARGETS_DIR` (os.pathsep-separated folders) add
targets or replace a built-in one of the same name, later folders winning.

A target names a TVM target kind, a host, an output suffix and the external tools needed to
finish the artifact. Variants refine it (GPU arch, OS); a variant may override `host`, `suffix`,
`toolchain`, `toolchain_versions` and `codegen` and its other keys are TVM target attributes.

`toolchain_versions` pins the version of a tool whose version enters the compile key (today: nvcc),
as Bazel toolchains and Nix pins do: the key then uses the pin, so a machine without the tool (a CI
planner, a laptop) computes the same key as a build machine; the machine that builds checks its
tool against the pin (`version_matches`).

What this machine can build (TVM's codegens, LLVM backends, tools, its CPU) is probed in
`mlcbuild.toolchain`; this module only reads definitions.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import Location, UserError
from mlcbuild.toolmemo import remember

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_targets"
USER_DIR = Path("targets")

VARIANT_KEYS = ("host", "suffix", "toolchain", "toolchain_versions", "codegen", "description", "runner")
"""Keys of a variant that are not TVM target attributes."""

VERSIONED_TOOLS = ("nvcc",)
"""Tools whose version enters a compile key (steps/compile.py probes them), so the ones a target may pin."""

PIN_FIELD = "toolchain_versions"
_PIN_PATTERN = re.compile(r"\d+\.\d+(\.\d+)?")


@dataclass(frozen=True)
class Target:
    name: str
    tvm_target: Mapping[str, Any]
    host: Mapping[str, Any] | None
    suffix: str
    toolchain: tuple[str, ...] = ()
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_variant: str | None = None
    description: str = ""
    source: Path | None = None
    codegen: tuple[str, ...] = ()
    variant_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    runner: tuple[str, ...] = ()
    toolchain_versions: Mapping[str, str] = field(default_factory=dict)

    def runner_labels(self, variant: str | None = None) -> tuple[str, ...]:
        """The CI runner labels a machine needs to build this variant (never part of a key).

        Without a `runner:` field: a self-hosted runner labelled with the target's name.
        """
        variant = variant or self.default_variant
        labels = self.variant_overrides.get(variant or "", {}).get("runner", self.runner)
        if isinstance(labels, str):
            labels = (labels,)
        return tuple(labels) or ("self-hosted", self.name)

    def resolve(self, variant: str | None = None) -> "ResolvedTarget":
        """The concrete definition of one variant (a UserError names the valid ones)."""
        variant = variant or self.default_variant
        if self.variants and variant not in self.variants:
            raise UserError(
                f"target {self.name} has no variant {variant!r}; valid: {', '.join(self.variants)}",
                field="targets",
            )
        if not self.variants and variant:
            raise UserError(f"target {self.name} has no variants (got {variant!r})", field="targets")
        over = self.variant_overrides.get(variant or "", {})
        attrs = dict(self.variants.get(variant, {})) if variant else {}
        if attrs.get("mcpu") == NATIVE_CPU:
            from mlcbuild.toolchain import host_cpu

            attrs.update(host_cpu())
        host = over["host"] if "host" in over else self.host
        toolchain = tuple(over.get("toolchain", self.toolchain))
        pins = {**self.toolchain_versions, **over.get(PIN_FIELD, {})}
        return ResolvedTarget(
            name=self.name,
            variant=variant,
            tvm_target=dict(self.tvm_target),
            host=dict(host) if host else None,
            suffix=str(over.get("suffix", self.suffix)),
            attrs=attrs,
            toolchain=toolchain,
            codegen=tuple(over.get("codegen", self.codegen or (self.tvm_target["kind"],))),
            toolchain_versions={tool: str(v) for tool, v in sorted(pins.items()) if tool in toolchain},
        )


@dataclass(frozen=True)
class ResolvedTarget:
    """One buildable target: what enters the compile key and what `tvm.target.Target` gets."""

    name: str
    variant: str | None
    tvm_target: Mapping[str, Any]
    host: Mapping[str, Any] | None
    suffix: str
    attrs: Mapping[str, Any]
    toolchain: tuple[str, ...]
    codegen: tuple[str, ...]
    toolchain_versions: Mapping[str, str] = field(default_factory=dict)
    """Pinned tool versions (`toolchain_versions:`): what the key uses instead of probing the tool."""

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def params(self) -> dict[str, Any]:
        """The compile node's `target` parameter (JSON); `toolchain_versions` only where pinned, so
        an unpinned target's key is what it was before pins existed."""
        params = {
            "name": self.name,
            "variant": self.variant,
            "tvm_target": dict(self.tvm_target),
            "host": dict(self.host) if self.host else None,
            "suffix": self.suffix,
            "attrs": dict(self.attrs),
            "toolchain": list(self.toolchain),
            "codegen": list(self.codegen),
        }
        if self.toolchain_versions:
            params[PIN_FIELD] = dict(self.toolchain_versions)
        return params

    def tvm_target_config(self) -> dict[str, Any]:
        """The dict for `tvm.target.Target(config)`: base definition, variant attrs, host."""
        config = {**self.tvm_target, **self.attrs}
        if self.host:
            config["host"] = dict(self.host)
        return config

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ResolvedTarget":
        """Rebuild from a compile node's `target` parameter (older params lack toolchain/codegen)."""
        tvm_target = dict(params["tvm_target"])
        return cls(
            name=params["name"],
            variant=params.get("variant"),
            tvm_target=tvm_target,
            host=params.get("host"),
            suffix=params["suffix"],
            attrs=dict(params.get("attrs") or {}),
            toolchain=tuple(params.get("toolchain") or ()),
            codegen=tuple(params.get("codegen") or (tvm_target["kind"],)),
            toolchain_versions=dict(params.get(PIN_FIELD) or {}),
        )


NATIVE_CPU = "native"
"""`mcpu: native` in a variant is resolved when the plan is made to this machine's CPU (LLVM's host
detection, run by TVM): CPU name, triple and the features the CPU (a VM) lacks or adds. So the key and
the provenance name the CPU, and a library built for one CPU is never served for another (llama.cpp's
GGML_NATIVE, with the cache's keys)."""


def targets_dirs() -> list[Path]:
    """Where target files are read from, lowest precedence first."""
    extra = [Path(p) for p in os.environ.get("MLCBUILD_TARGETS_DIR", "").split(os.pathsep) if p]
    return list(dict.fromkeys([BUILTIN_DIR, USER_DIR.resolve(), *extra]))


def _split_variant(spec: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = dict(spec or {})
    over = {k: spec.pop(k) for k in VARIANT_KEYS if k in spec}
    return spec, over


def _target_data(file: Path) -> dict[str, Any]:
    """A target file's YAML as data, remembered by the file's stat: a no-op build parses no YAML."""

    def parse() -> dict[str, Any]:
        import yaml

        from mlcbuild.inputs import read_bytes

        raw = read_bytes(file, str(file), 1 << 20, what="target definition")
        try:
            data = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = Location(str(file), mark.line + 1, mark.column + 1) if mark else Location(str(file))
            raise UserError(f"not valid YAML: {getattr(e, 'problem', None) or e}", where) from None
        _check_target_data(file, data)
        return data

    return remember("target-definitions", file, _CHECKS_VERSION, parse)


_CHECKS_VERSION = "2"
"""Part of the memo's stamp: a file validated by older checks is checked again (2: toolchain_versions)."""

_TARGET_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "tvm_target": (dict,),
    "suffix": (str,),
    "host": (dict, type(None)),
    "toolchain": (list,),
    "codegen": (list,),
    "variants": (dict, type(None)),
    "default_variant": (str, type(None)),
    "description": (str,),
    "runner": (str, list),
    PIN_FIELD: (dict,),
}
_REQUIRED = ("name", "tvm_target", "suffix")


def _check_target_data(file: Path, data: Any) -> None:
    """A target file a user wrote gets one line naming the file and field, never a KeyError."""
    if not isinstance(data, dict):
        raise UserError(f"a target definition is a mapping, got {type(data).__name__}", Location(str(file)))
    for key in _REQUIRED:
        if key not in data:
            raise UserError("missing (every target needs name, tvm_target and suffix)", Location(str(file)), field=key)
    for key, value in data.items():
        types = _TARGET_FIELDS.get(key)
        if types is None:
            from mlcbuild.suggest import unknown

            raise UserError(unknown("field", key, _TARGET_FIELDS), Location(str(file)), field=key)
        if not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else {"dict": "a mapping", "list": "a list", "str": "a string"}[t.__name__] for t in types)
            raise UserError(f"must be {names}, got {type(value).__name__}", Location(str(file)), field=key)
    if not isinstance(data["tvm_target"].get("kind"), str):
        raise UserError("needs a `kind` (llvm, cuda, metal, ...)", Location(str(file)), field="tvm_target")
    toolchain = data.get("toolchain", [])
    _check_pins(file, PIN_FIELD, data.get(PIN_FIELD, {}), toolchain)
    for vname, spec in (data.get("variants") or {}).items():
        if isinstance(spec, dict) and PIN_FIELD in spec:
            _check_pins(file, f"variants.{vname}.{PIN_FIELD}", spec[PIN_FIELD], spec.get("toolchain", toolchain))


def _check_pins(file: Path, where: str, pins: Any, toolchain: Any) -> None:
    """`toolchain_versions: {nvcc: "13.0"}`: a tool of this target whose version we can probe, and a
    quoted MAJOR.MINOR[.PATCH] (YAML reads an unquoted 13.0 as a float, 13.10 as 13.1)."""
    loc = Location(str(file))
    if not isinstance(pins, dict):
        raise UserError(f'must be a mapping of tool to version, e.g. {{nvcc: "13.0"}}; got {type(pins).__name__}', loc, field=where)
    for tool, version in pins.items():
        if tool not in VERSIONED_TOOLS:
            from mlcbuild.suggest import unknown

            raise UserError(unknown("tool", str(tool), VERSIONED_TOOLS) + " (only tools whose version enters the key can be pinned)", loc, field=f"{where}.{tool}")
        if not isinstance(toolchain, list) or tool not in toolchain:
            raise UserError(f"pins {tool}, which is not in this target's toolchain {toolchain}", loc, field=f"{where}.{tool}")
        if not isinstance(version, str):
            raise UserError(f'must be a quoted version string like "13.0" (YAML read {version!r}, a {type(version).__name__})', loc, field=f"{where}.{tool}")
        if not _PIN_PATTERN.fullmatch(version):
            raise UserError(f"must be MAJOR.MINOR or MAJOR.MINOR.PATCH (as {tool} --version prints it), got {version!r}", loc, field=f"{where}.{tool}")


def pin_matches(pin: str, found: str) -> bool:
    """Whether a tool's reported version (nvcc: "13.0, V13.0.88") satisfies a pin, compared at the
    pin's precision: "13.0" takes any 13.0.x, "13.0.88" only that release."""
    versions = re.findall(r"\d+(?:\.\d+)+", found)
    if not versions:
        return False
    full = max(versions, key=lambda v: v.count(".")).split(".")
    wanted = pin.split(".")
    return full[: len(wanted)] == wanted


@lru_cache(maxsize=None)
def load_targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for folder in targets_dirs():
        for file in sorted(folder.glob("*.yaml")):
            data = _target_data(file)
            attrs: dict[str, Mapping[str, Any]] = {}
            overrides: dict[str, Mapping[str, Any]] = {}
            for vname, spec in (data.get("variants") or {}).items():
                attrs[str(vname)], overrides[str(vname)] = _split_variant(spec)
            found[data["name"]] = Target(
                name=data["name"],
                tvm_target=data["tvm_target"],
                host=data.get("host"),
                suffix=data["suffix"],
                toolchain=tuple(data.get("toolchain", ())),
                variants=attrs,
                default_variant=data.get("default_variant"),
                description=data.get("description", ""),
                source=file,
                codegen=tuple(data.get("codegen", ())),
                variant_overrides=overrides,
                runner=tuple([data["runner"]] if isinstance(data.get("runner"), str) else data.get("runner") or ()),
                toolchain_versions=dict(data.get(PIN_FIELD) or {}),
            )
    return found


def get_target(name: str) -> Target:
    targets = load_targets()
    if name not in targets:
        raise UserError(f"unknown target {name!r}; known: {', '.join(sorted(targets))}", field="targets")
    return targets[name]


def resolve_target(name: str, variant: str | None = None) -> ResolvedTarget:
    return get_target(name).resolve(variant)


def target_params(name: str, variant: str | None = None) -> dict[str, Any]:
    """What the planner puts in a compile node's `target` parameter."""
    return resolve_target(name, variant).params()
