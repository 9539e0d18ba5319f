"""An action entry (`ActionResult`: a node's output manifest and how it was made) and what makes
one usable for a key, wherever it was read (the local `ac/` or a remote).

An entry is made by `Decider.record` under `node_key(preimage)`, so its preimage hashes to its key
and names the node's kind and params. A remote entry must show that (a writer cannot relabel a
compile as a download), and an entry whose preimage does show it may name only the files its
kind declares (`Step.declares`): a poisoned entry naming `NOTES.txt` or another variant's library
is a miss, and nothing of it is fetched or placed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcbuild.errors import MlcbuildError
from mlcbuild.store.fs import read_regular
from mlcbuild.store.manifest import Manifest, parse_json, sha256_json

MAX_ENTRY_BYTES = 4 << 20
"""Entries are a manifest and a key preimage: kilobytes, about 110 bytes per file (a 6000-shard
convert is 0.7 MiB). Anything larger is refused unread; parsing 4 MiB of the worst JSON costs
about 130 MiB of memory."""


@dataclass
class ActionResult:
    key: str
    manifest: Manifest
    preimage: dict[str, Any]
    duration_s: float = 0.0
    created: float = field(default_factory=time.time)
    built_with: dict[str, Any] | None = None
    """The exact tools that made it (`Step.built_with`: nvcc's full version where the key has a pin)."""
    label: str = ""
    """The node that made it (`gen-config tiny-talker q0f32`), for `cache ls`/`gc`; not in the key, so
    a result another recipe reuses keeps the first one's name."""

    def to_json(self) -> dict[str, Any]:
        entry = {
            "key": self.key,
            "manifest": self.manifest.to_json(),
            "preimage": self.preimage,
            "duration_s": round(self.duration_s, 3),
            "created": round(self.created, 3),
        }
        if self.built_with:
            entry["built_with"] = self.built_with
        if self.label:
            entry["label"] = self.label
        return entry

    @classmethod
    def load(cls, path: Path) -> "ActionResult":
        """An entry file of the local cache, read within MAX_ENTRY_BYTES and MAX_JSON_DEPTH (a FIFO,
        a huge or a deeply nested file there is a ValueError, never a hang or a RecursionError)."""
        return cls.from_json(parse_json(read_regular(path, MAX_ENTRY_BYTES), MAX_ENTRY_BYTES))

    @classmethod
    def from_json(cls, data: Any) -> "ActionResult":
        """Parse a stored entry; anything malformed (wrong types, missing fields) is a ValueError."""
        if not isinstance(data, dict):
            raise ValueError("entry is not a JSON object")
        key, preimage = data.get("key"), data.get("preimage", {})
        if not isinstance(key, str) or not key:
            raise ValueError("entry has no key")
        if not isinstance(preimage, dict):
            raise ValueError("entry's preimage is not a mapping")
        numbers = [data.get("duration_s", 0.0), data.get("created", 0.0)]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 <= n < 1e11 for n in numbers):
            raise ValueError("entry's duration_s/created are not plausible numbers of seconds")
        built_with = data.get("built_with")
        if built_with is not None and not isinstance(built_with, dict):
            raise ValueError("entry's built_with is not a mapping")
        label = data.get("label", "")
        if not isinstance(label, str) or len(label) > 300 or not label.isprintable():
            raise ValueError("entry's label is not one printable line")
        return cls(key, Manifest.from_json(data.get("manifest")), preimage, *numbers, built_with=built_with, label=label)


def check_entry(result: ActionResult, key: str, *, strict: bool) -> None:
    """ValueError saying why `result` may not serve `key`. `strict` (remote entries): the preimage
    must hash to the key; otherwise (the local cache, which tests and tools also fill by hand) the
    declared-output rule applies to every entry whose preimage does."""
    if result.key != key:
        raise ValueError(f"filed under {key[:12]} but made for {str(result.key)[:12]!r}")
    own = sha256_json(result.preimage) == key
    if strict and not own:
        raise ValueError("its preimage does not hash to its key")
    if own:
        undeclared = undeclared_output(result.preimage, list(result.manifest.files))
        if undeclared is not None:
            raise ValueError(f"names {undeclared!r}, which a {result.preimage.get('kind')} step never writes")


def undeclared_output(preimage: dict[str, Any], names: list[str]) -> str | None:
    """The first of `names` the preimage's step kind does not declare as an output, else None."""
    from mlcbuild.steps import get_step

    kind, params = preimage.get("kind"), preimage.get("params")
    try:
        step = get_step(str(kind))
    except KeyError:
        return None
    try:
        return next((name for name in names if not isinstance(params, dict) or not step.declares(params, name)), None)
    except (MlcbuildError, KeyError, TypeError, ValueError):
        return names[0] if names else None
