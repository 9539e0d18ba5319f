"""Registry of step kinds. Adding a step is one module plus one line here."""
from __future__ import annotations

import importlib

from mlcbuild.steps.base import RunContext, Step

_STEP_MODULES = {
    "download": "mlcbuild.steps.download:DownloadStep",
    "convert": "mlcbuild.steps.convert:ConvertStep",
    "gen-config": "mlcbuild.steps.gen_config:GenConfigStep",
    "compile": "mlcbuild.steps.compile:CompileStep",
    "smoke": "mlcbuild.steps.smoke:SmokeStep",
}

_cache: dict[str, Step] = {}


def get_step(kind: str) -> Step:
    """Import a step lazily: a no-op build must not import TVM."""
    if kind not in _cache:
        module, name = _STEP_MODULES[kind].split(":")
        _cache[kind] = getattr(importlib.import_module(module), name)()
    return _cache[kind]


__all__ = ["RunContext", "Step", "get_step"]
