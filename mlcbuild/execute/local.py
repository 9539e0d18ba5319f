"""Run a build graph on this machine: topological, independent nodes scheduled in parallel
(each step in its own process), each node skipped when its key already has a result
(constructive traces, early cutoff)."""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlcbuild.errors import MlcbuildError
from mlcbuild.execute.base import BuildReport, NullReporter, Outcome, Reporter
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.execute.worker import run_step_in_child
from mlcbuild.plan.keys import diff_preimages, key_preimage, node_key
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.ingest import SourceFile, ingest, merge_adopted
from mlcbuild.store.manifest import Manifest, sha256_json

if TYPE_CHECKING:
    from mlcbuild.store.remote import RemoteCache


def slot(node: Node) -> str:
    """A node's identity across edits of its params: its label (e.g. "compile demo q4f16_1 llvm")."""
    return sha256_json(node.label)[:24]


def changes_since_last_build(store: Store, node: Node, preimage: dict) -> list[str] | None:
    """What in the key changed since this node's last build here; None if it was never built."""
    last = store.last_node_build(slot(node))
    return None if last is None else diff_preimages(last["preimage"], preimage)


def why_it_runs(store: Store, node: Node, preimage: dict, force: bool = False) -> str:
    changes = changes_since_last_build(store, node, preimage)
    if changes is None:
        return "never built"
    if changes:
        return "; ".join(changes[:3])
    return "forced" if force else "result was missing from the cache"


@dataclass
class LocalExecutor:
    store: Store
    jobs: int = 1
    keep_going: bool = False
    force: bool = False
    reporter: Reporter = field(default_factory=NullReporter)
    remote: "RemoteCache | None" = None

    def run(self, graph: BuildGraph, wanted: set[str]) -> BuildReport:
        start = time.perf_counter()
        report = BuildReport()
        closure = graph.closure(wanted)
        todo = [n for n in graph.topological() if n.id in closure]
        pending = {n.id: n for n in todo}
        running: dict[Future, Node] = {}
        stop = False
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            while pending or running:
                for node in list(pending.values()):
                    deps = [report.outcomes.get(d) for _, d in node.deps]
                    if any(d is None for d in deps):
                        continue
                    del pending[node.id]
                    bad = [d for d in deps if not d.ok]
                    if bad or stop:
                        reason = f"needs {bad[0].node.label}" if bad else "build stopped after a failure"
                        report.outcomes[node.id] = outcome = Outcome(node, "skipped", reason=reason)
                        self.reporter.finished(outcome)
                        continue
                    inputs = {role: report.outcomes[d].manifest for role, d in node.deps}
                    running[pool.submit(self._process, node, inputs)] = node
                if not running:
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    node = running.pop(future)
                    outcome = future.result()
                    report.outcomes[node.id] = outcome
                    self.reporter.finished(outcome)
                    if not outcome.ok and not self.keep_going:
                        stop = True
        self.store.save_index()
        report.wall_s = time.perf_counter() - start
        return report

    def _process(self, node: Node, inputs: dict[str, Manifest]) -> Outcome:
        try:
            preimage = key_preimage(node, inputs, self.store)
            key = node_key(preimage)
            if not self.force and (hit := self.store.get_action(key)):
                return Outcome(node, "cached", key, hit.manifest, reason="cached")
            with self.store.lock(key):
                if not self.force and (hit := self.store.get_action(key)):
                    return Outcome(node, "cached", key, hit.manifest, reason="built by another process")
                self.reporter.started(node)
                if not self.force and (hit := self._from_remote(node, key)):
                    self.store.record_node(slot(node), key, preimage)
                    return Outcome(node, "cached", key, hit.manifest, reason="fetched from remote")
                began = time.perf_counter()
                manifest = self._execute(node, inputs)
                duration = time.perf_counter() - began
                result = ActionResult(key, manifest, preimage, duration)
                self.store.put_action(result)
            self._to_remote(node, result)
            why = why_it_runs(self.store, node, preimage, self.force)
            self.store.record_node(slot(node), key, preimage)
            return Outcome(node, "built", key, manifest, duration, reason=why)
        except MlcbuildError as e:
            return Outcome(node, "failed", reason=str(e))
        except Exception as e:  # a bug in a step: still one line here, the CLI offers --debug
            return Outcome(node, "failed", reason=f"{type(e).__name__}: {e}")

    def _from_remote(self, node: Node, key: str) -> ActionResult | None:
        """The seam to the remote cache on a local miss (verified objects, then the entry)."""
        if self.remote is None:
            return None
        return self.remote.fetch_into(self.store, key, lambda f, m: self.reporter.progress(node, f, m))

    def _to_remote(self, node: Node, result: ActionResult) -> None:
        if self.remote is not None:
            self.remote.push(self.store, result, lambda f, m: self.reporter.progress(node, f, m))

    def _execute(self, node: Node, inputs: dict[str, Manifest]) -> Manifest:
        """Run the step in a child process; its log is kept in the cache only if it fails."""
        work = self.store.make_work_dir(f"{node.kind}-")
        log = self.store.log_path(node.id)
        log.unlink(missing_ok=True)
        try:
            input_dirs = {}
            for role, manifest in inputs.items():
                input_dirs[role] = work / "in" / role
                self.store.materialize(manifest, input_dirs[role])
            out = work / "out"
            out.mkdir()
            scratch = work / "scratch"
            scratch.mkdir()
            adopted: list[SourceFile] = []
            run_step_in_child(
                node.kind,
                {**node.params, **node.hints},
                input_dirs,
                out,
                scratch,
                log,
                progress=lambda fraction, message: self.reporter.progress(node, fraction, message),
                adopt=adopted.append,
            )
            manifest = self.store.put_dir(out, move=True)
            if adopted:
                manifest = merge_adopted(manifest, ingest(self.store, adopted))
            log.unlink(missing_ok=True)
            return manifest
        finally:
            self.store.remove_work_dir(work)


def dry_run(graph: BuildGraph, wanted: set[str], store: Store, force: bool = False) -> BuildReport:
    """What a build would do, without running anything: cached, or why it will run."""
    report = BuildReport()
    closure = graph.closure(wanted)
    for node in graph.topological():
        if node.id not in closure:
            continue
        deps = {role: report.outcomes[d] for role, d in node.deps}
        if any(d.manifest is None for d in deps.values()):
            report.outcomes[node.id] = Outcome(node, "pending", reason="runs if its inputs change")
            continue
        try:
            preimage = key_preimage(node, {r: d.manifest for r, d in deps.items()}, store)
        except MlcbuildError as e:
            report.outcomes[node.id] = Outcome(node, "failed", reason=str(e))
            continue
        key = node_key(preimage)
        hit = None if force else store.get_action(key)
        if hit:
            report.outcomes[node.id] = Outcome(node, "cached", key, hit.manifest, reason="cached")
        else:
            why = why_it_runs(store, node, preimage, force)
            report.outcomes[node.id] = Outcome(node, "pending", key, reason=f"will run: {why}")
    return report
