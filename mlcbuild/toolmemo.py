"""Facts about installed tools (a TVM library's codegens, nvcc's version), remembered per binary.

Scanning libtvm_compiler.so takes a second and spawning nvcc tens of milliseconds, so a no-op build
must not redo either. Entries are keyed by the binary's (real path, inode, size, mtime): two checkouts
with different TVMs keep one entry each instead of evicting each other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

MAX_ENTRIES = 64


def _memo_file(kind: str) -> Path:
    """In the user cache folder whichever cache builds use: tool facts are per machine, not per project."""
    from mlcbuild.store import user_cache_dir

    return user_cache_dir() / f"{kind}.json"


def remember(kind: str, binary: Path | str, salt: str, compute: Callable[[], Any]) -> Any:
    """compute() for this binary, or what it returned the last time the binary looked the same."""
    real = os.path.realpath(binary)
    st = os.stat(real)
    stamp = f"{real}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{salt}"
    memo = _memo_file(kind)
    try:
        known = json.loads(memo.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if stamp in known:
        return known[stamp]
    value = compute()
    known = {k: v for k, v in known.items() if not k.startswith(f"{real}:")}
    known[stamp] = value
    while len(known) > MAX_ENTRIES:
        known.pop(next(iter(known)))
    try:
        from mlcbuild.store.fs import atomic_write_bytes

        atomic_write_bytes(memo, json.dumps(known).encode())
    except OSError:
        pass
    return value
