"""The content-addressed store. The cache root is known here, without importing the store itself,
so that the CLI's stat-only no-op check (execute/noop.py) imports nothing heavy."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "MLCBUILD_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or "cache")
