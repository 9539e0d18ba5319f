"""Build one node that the decision says must run: the same code on the driver's threads and on a
Ray worker, which opens the same cache directory.

Under the key's lock the cache is asked again (another build may have made it meanwhile), the
step runs into a fresh work dir, its output goes into the store, and only then is the action
result written: a process killed at any point leaves no result, only a work dir in `tmp/`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Mapping

from mlcbuild.errors import MlcbuildError, StepError
from mlcbuild.execute.base import ELSEWHERE, Outcome
from mlcbuild.execute.decision import Decider, Decision
from mlcbuild.plan.graph import Node
from mlcbuild.store.cas import Store
from mlcbuild.store.entries import undeclared_output
from mlcbuild.store.ingest import SourceFile, ingest, merge_adopted
from mlcbuild.store.manifest import Manifest

if TYPE_CHECKING:
    from mlcbuild.store.remote import RemoteCache

Progress = Callable[[float, str], None]
FETCHED = "fetched from remote"


def build_node(
    decider: Decider,
    decision: Decision,
    inputs: Mapping[str, Manifest],
    progress: Progress,
    worker: str = "local",
    remote: "RemoteCache | None" = None,
    elsewhere: str | None = None,
) -> Outcome:
    """The remote cache, if any, is asked after the local one (objects verified into the store,
    then the entry) and gets the result after the build, once the key's lock is released.
    `elsewhere`: why this machine cannot build the node; on a miss in both it ends `elsewhere`."""
    node, key, store = decision.node, decision.key, decider.store
    assert key is not None and decision.preimage is not None
    try:
        with store.lock(key):
            if not decider.force and (hit := store.get_action(key)) is not None:
                return Outcome(node, "cached", key, hit.manifest, reason="built by another process", worker=worker)
            if remote is not None and not decider.force and (hit := remote.fetch_into(store, key, progress)) is not None:
                store.record_node(decision.slot, key, decision.preimage, hit.duration_s)
                return Outcome(node, "cached", key, hit.manifest, reason=FETCHED, worker=worker, decision=decision)
            if elsewhere is not None:
                return Outcome(node, ELSEWHERE, key, reason=elsewhere, worker=worker, decision=decision)
            began = time.perf_counter()
            manifest = execute_step(store, node, inputs, progress)
            duration = time.perf_counter() - began
            result = decider.record(decision, manifest, duration)
        if remote is not None:
            remote.push(store, result, progress)
        return Outcome(node, "built", key, manifest, duration, reason=decision.why, worker=worker, decision=decision)
    except MlcbuildError as e:
        return Outcome(node, "failed", key, reason=str(e), worker=worker)
    except Exception as e:  # a bug in a step: still one line here, the CLI offers --debug
        return Outcome(node, "failed", key, reason=f"{type(e).__name__}: {e}", worker=worker)


def execute_step(store: Store, node: Node, inputs: Mapping[str, Manifest], progress: Progress) -> Manifest:
    """Run the step (in a child process unless it is `in_process`); its log is kept only if it fails."""
    from mlcbuild.execute.worker import run_step_in_child
    from mlcbuild.steps import RunContext, get_step

    work = store.make_work_dir(f"{node.kind}-")
    log = store.log_path(node.id)
    log.unlink(missing_ok=True)
    try:
        input_dirs = {}
        for role, manifest in inputs.items():
            input_dirs[role] = work / "in" / role
            store.materialize(manifest, input_dirs[role])
        out = work / "out"
        out.mkdir()
        scratch = work / "scratch"
        scratch.mkdir()
        params = {**node.params, **node.hints}
        step = get_step(node.kind)
        adopted: list[SourceFile] = []
        if step.in_process:
            try:
                step.run(RunContext(params, input_dirs, out, progress, scratch, adopted.append))
            except MlcbuildError:
                raise
            except Exception as e:
                raise StepError(f"{node.kind} step failed: {type(e).__name__}: {e}") from e
        else:
            run_step_in_child(node.kind, params, input_dirs, out, scratch, log, progress, adopt=adopted.append)
        manifest = store.put_dir(out, move=True)
        if adopted:
            manifest = merge_adopted(manifest, ingest(store, adopted))
        undeclared = undeclared_output({"kind": node.kind, "params": node.params}, list(manifest.files))
        if undeclared is not None:
            raise StepError(
                f"{node.kind} step wrote {undeclared!r}, which it does not declare as an output (Step.declares): "
                "no cache would ever serve that result"
            )
        log.unlink(missing_ok=True)
        return manifest
    finally:
        store.remove_work_dir(work)
