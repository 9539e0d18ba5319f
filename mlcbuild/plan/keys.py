"""Where a node's key is computed.

key = sha256(canonical JSON of {kind, step version, params, input views, toolchain}).
An input's view is what the step says matters of that input's output (by default its manifest
digest), so a re-run upstream node whose relevant bytes did not change leaves the key unchanged:
that is the early cutoff.
"""
from __future__ import annotations

from typing import Any, Mapping

from mlcbuild.plan.graph import Node
from mlcbuild.steps import get_step
from mlcbuild.store.cas import Store
from mlcbuild.store.manifest import Manifest, sha256_json


def key_preimage(node: Node, inputs: Mapping[str, Manifest], store: Store) -> dict[str, Any]:
    step = get_step(node.kind)
    params = node.params
    views = {}
    for role, manifest in sorted(inputs.items()):
        views[role] = step.view(role, manifest, _reader(store, manifest))
    return {
        "kind": node.kind,
        "version": step.version,
        "params": params,
        "inputs": views,
        "toolchain": step.toolchain(params),
    }


def node_key(preimage: Mapping[str, Any]) -> str:
    return sha256_json(preimage)


def _reader(store: Store, manifest: Manifest):
    def read(rel: str) -> bytes:
        return store.read_bytes(manifest.files[rel].digest)

    return read


def diff_preimages(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of what changed between two key preimages."""
    changes: list[str] = []
    for k in sorted(set(old) | set(new)):
        path = f"{prefix}.{k}" if prefix else k
        if k not in old:
            changes.append(f"{path}: added {new[k]!r}")
        elif k not in new:
            changes.append(f"{path}: removed (was {old[k]!r})")
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            changes.extend(diff_preimages(old[k], new[k], path))
        elif old[k] != new[k]:
            changes.append(f"{path}: {_short(old[k])} -> {_short(new[k])}")
    return changes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
