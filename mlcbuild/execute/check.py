"""`mlcbuild build --check` (Nix's --check): rebuild cached nodes in scratch space and compare.

Each selected node whose result is cached is run again from its cached inputs, in a temporary
directory outside the cache and the output dirs, and its outputs are compared with the cached
ones file by file. Same key ⇒ same bytes is what makes a shared cache trustworthy; a difference
here is a reproducibility bug in a step (or a corrupt cache), never something to paper over.
Nothing is written to the cache: not the rebuilt outputs, not logs.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.base import Outcome
from mlcbuild.execute.decision import Decider, dry_run
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.cas import Store
from mlcbuild.store.hashing import CHUNK, sha256_file
from mlcbuild.store.manifest import Manifest


@dataclass(frozen=True)
class FileDifference:
    path: str
    cached_size: int | None  # None: the rebuild made a file the cache does not have
    rebuilt_size: int | None  # None: the rebuild did not make this file
    offset: int | None = None  # first differing byte (when both exist)
    region: str | None = None  # ELF section (or header) holding that byte
    note: str = ""

    def describe(self) -> str:
        if self.rebuilt_size is None:
            return f"{self.path}: in the cache ({self.cached_size} bytes), not made by the rebuild"
        if self.cached_size is None:
            return f"{self.path}: made by the rebuild ({self.rebuilt_size} bytes), not in the cache"
        sizes = f"{self.cached_size} bytes" if self.cached_size == self.rebuilt_size else f"sizes {self.cached_size} vs {self.rebuilt_size}"
        if self.note:
            return f"{self.path}: {self.note}"
        where = f", section {self.region}" if self.region else ""
        return f"{self.path}: {sizes}, first difference at byte {self.offset} (0x{self.offset:x}{where})"


@dataclass
class NodeCheck:
    node: Node
    status: str  # same | differs | not-cached | failed
    key: str | None = None
    files: int = 0
    differences: list[FileDifference] = field(default_factory=list)
    reason: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "same"


def first_difference(a: Path, b: Path) -> int | None:
    """Offset of the first byte where two files differ (the shorter one's length if one is a prefix)."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                for i in range(n):
                    if ca[i] != cb[i]:
                        return offset + i
                return offset + n
            if not ca:
                return None
            offset += len(ca)


def _region(path: Path, offset: int) -> str | None:
    from mlcbuild.compiler.elf import is_elf64, region_at

    with open(path, "rb") as f:
        head = f.read(64)
    if not is_elf64(head + b"\0"):
        return None
    return region_at(path.read_bytes(), offset)


def compare_outputs(store: Store, manifest: Manifest, rebuilt: Path) -> list[FileDifference]:
    """Every file of `rebuilt` against the cached manifest: missing, extra, or different bytes."""
    made = {
        (Path(d) / n).relative_to(rebuilt).as_posix()
        for d, _, names in os.walk(rebuilt)
        for n in names
    }
    out: list[FileDifference] = []
    for rel in sorted(set(manifest.files) | made):
        entry = manifest.files.get(rel)
        if entry is None:
            out.append(FileDifference(rel, None, (rebuilt / rel).stat().st_size))
            continue
        if rel not in made:
            out.append(FileDifference(rel, entry.size, None))
            continue
        new = rebuilt / rel
        if new.stat().st_size == entry.size and sha256_file(new) == entry.digest:
            continue
        if store.check_object(entry.digest) is None:
            note = "the cached object is missing or corrupt (set aside by the store): rebuild with `mlcbuild build`"
            out.append(FileDifference(rel, entry.size, new.stat().st_size, note=note))
            continue
        offset = first_difference(store.object_path(entry.digest), new)
        if offset is None:
            offset = 0
        out.append(FileDifference(rel, entry.size, new.stat().st_size, offset, _region(new, offset)))
    return out


def check_node(node: Node, key: str, cached: Manifest, inputs: dict[str, Manifest], store: Store) -> NodeCheck:
    """Run one node again in scratch space and compare with its cached output."""
    from mlcbuild.execute.worker import run_step_in_child

    work = Path(tempfile.mkdtemp(prefix=f"mlcbuild-check-{node.kind}-"))
    began = time.perf_counter()
    try:
        input_dirs = {}
        for role, manifest in inputs.items():
            input_dirs[role] = work / "in" / role
            store.materialize(manifest, input_dirs[role])
        out, scratch = work / "out", work / "scratch"
        out.mkdir()
        scratch.mkdir()
        log = work / "step.log"
        try:
            run_step_in_child(node.kind, {**node.params, **node.hints}, input_dirs, out, scratch, log, lambda f, m: None)
        except MlcbuildError as e:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            return NodeCheck(node, "failed", key, reason=str(e) + (f" ({tail[0]})" if tail else ""))
        differences = compare_outputs(store, cached, out)
        return NodeCheck(
            node,
            "differs" if differences else "same",
            key,
            files=len(cached.files),
            differences=differences,
            duration_s=time.perf_counter() - began,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_graph(
    graph: BuildGraph,
    wanted: Iterable[str],
    store: Store,
    on_result: Callable[[NodeCheck], None] = lambda result: None,
    on_start: Callable[[Node], None] = lambda node: None,
) -> list[NodeCheck]:
    """Check every wanted node (not their inputs: each node is rebuilt from its cached inputs)."""
    wanted = set(wanted)
    report = dry_run(graph, wanted, Decider(store, graph))
    results: list[NodeCheck] = []
    for node in graph.topological():
        if node.id not in wanted:
            continue
        outcome: Outcome = report.outcomes[node.id]
        if outcome.status != "cached" or outcome.manifest is None:
            result = NodeCheck(node, "not-cached", outcome.key, reason="not in the cache: build it first")
        else:
            inputs = {role: report.outcomes[dep].manifest for role, dep in node.deps}
            on_start(node)
            result = check_node(node, outcome.key or "", outcome.manifest, inputs, store)  # type: ignore[arg-type]
        results.append(result)
        on_result(result)
    return results


def format_result(result: NodeCheck) -> list[str]:
    """One line per node, then one per differing file."""
    label = result.node.label
    if result.status == "same":
        files = f"{result.files} file{'' if result.files == 1 else 's'}"
        return [f"same: {label} ({files} identical, rebuilt in {result.duration_s:.1f}s)"]
    if result.status == "differs":
        lines = [f"DIFFERS: {label} (key {(result.key or '')[:12]})"]
        return lines + [f"  {d.describe()}" for d in result.differences]
    return [f"{'NOT CHECKED' if result.status == 'not-cached' else 'FAILED'}: {label}: {result.reason}"]


def run_check(graph: BuildGraph, wanted: Iterable[str], store: Store, echo: Callable[[str], None] = print) -> int:
    """The `build --check` command: print each node's verdict; exit 1 unless every node matched."""

    def started(node: Node) -> None:
        print(f"rebuilding {node.label} in scratch space...", file=sys.stderr, flush=True)

    results = check_graph(graph, wanted, store, on_result=lambda r: [echo(line) for line in format_result(r)], on_start=started)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("same", "differs", "not-cached", "failed")}
    echo(
        f"check: {counts['same']} identical, {counts['differs']} differ, "
        f"{counts['not-cached']} not cached, {counts['failed']} failed"
    )
    return 0 if all(r.ok for r in results) else 1
