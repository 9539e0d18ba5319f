"""Registry of step kinds: kind -> "module:Class". Adding a step is one module plus one line here.

Entries are import paths, not objects, so the process that runs a step (a spawned child, a Ray
worker) can load the same step by name: `step_specs()` is what an executor hands it. Tests fill
the registry with fake steps through `register_step` and undo it with `unregister_step`.
"""
from __future__ import annotations

import importlib
from typing import Mapping

from mlcbuild.steps.base import RunContext, Step

BUILTIN_STEPS: Mapping[str, str] = {
    "download": "mlcbuild.steps.download:DownloadStep",
    "convert": "mlcbuild.steps.convert:ConvertStep",
    "gen-config": "mlcbuild.steps.gen_config:GenConfigStep",
    "compile": "mlcbuild.steps.compile:CompileStep",
    "smoke": "mlcbuild.steps.smoke:SmokeStep",
}

_specs: dict[str, str] = dict(BUILTIN_STEPS)
_cache: dict[str, Step] = {}


def register_step(kind: str, spec: str) -> None:
    """Make `kind` run the step class at `spec` ("package.module:Class", importable by workers)."""
    _specs[kind] = spec
    _cache.pop(kind, None)


def unregister_step(kind: str) -> None:
    if kind in BUILTIN_STEPS:
        _specs[kind] = BUILTIN_STEPS[kind]
    else:
        _specs.pop(kind, None)
    _cache.pop(kind, None)


def step_specs() -> dict[str, str]:
    """The registry as data, for a process that must run the same steps."""
    return dict(_specs)


def get_step(kind: str) -> Step:
    """Import a step lazily: a no-op build must not import TVM."""
    if kind not in _cache:
        module, name = _specs[kind].split(":")
        _cache[kind] = getattr(importlib.import_module(module), name)()
    return _cache[kind]


__all__ = ["RunContext", "Step", "get_step", "register_step", "unregister_step", "step_specs"]
