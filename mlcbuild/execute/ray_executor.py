"""Run the nodes that must run as Ray tasks (`mlcbuild build --executor ray [--ray-address ADDR]`).

Same decision and scheduling loop as the local executor (`execute.schedule`); only running a node
differs. Each such node becomes a task asking for what its step says it needs
(`Step.resources`): CPUs and memory for convert, `toolchain:<tool>` for each external tool of a
compile target except `cc`, which every worker is assumed to have (so llvm compiles run anywhere,
cuda ones only where a worker was started with `ray start --resources '{"toolchain:nvcc": 1}'`).

- Cached nodes never leave the driver, and Ray is imported and connected only when the first node
  must run: a no-op build with `--executor ray` starts no Ray.
- A node whose needs no alive worker offers fails at once (its dependents are skipped), instead of
  waiting forever as a pending task.
- Results travel through the cache directory, which every worker opens at the driver's path (a
  shared filesystem): the task writes the objects and the action result and returns only a small
  record; the driver reads the manifest from the store.
- A worker that dies mid-node: Ray retries the task (`max_retries`) on a worker still alive. The
  store writes each object by temp + rename and the result last, so the dead attempt leaves no
  result, only a work dir under `tmp/` for `cache gc`.
- `Outcome.worker` names the Ray node that ran the node and the custom resources it offers.
- With a remote cache (`--remote`), each task asks it on a miss and writes its result through,
  on the worker, as the local executor does in its threads: a worker process opens the remote from
  `RemoteSettings` (URL, read-only, the signing and trusted keys, sent with the task: they stay
  inside the Ray cluster), cloud credentials come from the worker's own environment. The task
  returns what it transferred and any remote warning; the driver adds them to its summary.
- A node that neither the driver nor any worker can build (no toolchain, or a key the driver cannot
  compute) is, with a remote cache, a task on any worker that only fetches it; without one, or on a
  miss, it ends `elsewhere` (exit 3) like everything that needs it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from mlcbuild.errors import StepError, UserError
from mlcbuild.execute.base import BuildReport, NullReporter, Outcome, Reporter
from mlcbuild.execute.decision import Decider, Decision
from mlcbuild.execute.schedule import schedule
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.store.cas import Store
from mlcbuild.store.manifest import Manifest

if TYPE_CHECKING:
    from mlcbuild.store.remote.cache import RemoteCache, RemoteSettings

STANDARD_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom(resources: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if k not in STANDARD_RESOURCES and not k.startswith("node:")}


def _show(resources: Mapping[str, float]) -> str:
    shown = []
    for name, value in sorted(resources.items()):
        if name == "memory":
            shown.append(f"memory={value / 2**30:.1f}GiB")
        elif name != "object_store_memory" and not name.startswith("node:"):
            shown.append(f"{name}={value:g}")
    return ", ".join(shown)


_remotes: dict["RemoteSettings", tuple["RemoteCache", list[str]]] = {}
"""A worker process's remote caches (their connection pools outlive one task) and their warnings."""


def _worker_remote(settings: "RemoteSettings | None") -> tuple["RemoteCache | None", list[str]]:
    if settings is None:
        return None, []
    if settings not in _remotes:
        warnings: list[str] = []
        _remotes[settings] = (settings.open(warn=warnings.append), warnings)
    return _remotes[settings]


def _run_on_worker(
    cache_root: str,
    specs: dict[str, str],
    decision: Decision,
    inputs: dict[str, Manifest],
    force: bool,
    remote_settings: "RemoteSettings | None" = None,
    elsewhere: str | None = None,
) -> dict[str, Any]:
    """The Ray task: build the node into the shared cache (through the remote cache, if any);
    return a record, never the bytes. `elsewhere`: no one here can build it, only fetch it."""
    import ray

    from mlcbuild.execute.runner import build_node
    from mlcbuild.steps import register_step

    for kind, spec in specs.items():
        register_step(kind, spec)
    worker = ray.get_runtime_context().get_node_id()
    decider = Decider(Store(cache_root), BuildGraph(), force)
    remote, warnings = _worker_remote(remote_settings)
    before = dataclasses.replace(remote.stats) if remote is not None else None
    outcome = build_node(
        decider, decision, inputs, lambda fraction, message: None, worker=worker, remote=remote, elsewhere=elsewhere
    )
    record: dict[str, Any] = {
        "status": outcome.status, "key": outcome.key, "duration_s": outcome.duration_s, "reason": outcome.reason, "worker": worker,
    }
    if remote is not None and before is not None:
        record["transferred"] = {k: v - getattr(before, k) for k, v in vars(remote.stats).items()}
        record["warnings"] = warnings[:]
        warnings.clear()
    return record


class RayBackend:
    def __init__(self, decider: Decider, address: str | None, max_retries: int, remote: "RemoteCache | None" = None):
        self.decider = decider
        self.remote = remote
        self._remote_settings = None if remote is None else remote.settings()
        self._warned: set[str] = set()
        self.address = address
        self.max_retries = max_retries
        self.slots = 1
        self.fetches = remote is not None
        self.running: dict[Any, Node] = {}
        self._ray: Any = None
        self._task: Any = None
        self._owned = False
        self._error: UserError | None = None

    def _connect(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._ray is None:
            import ray

            if not ray.is_initialized():
                try:
                    ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    where = self.address or "a local Ray"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    self._error = UserError(f"cannot start or reach Ray at {where}: {first}", field="--ray-address")
                    raise self._error from None
                self._owned = True
            self._ray = ray
            self._task = ray.remote(_run_on_worker)
            self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self._ray

    def _nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._connect().nodes() if n.get("Alive")]

    def describe(self, node_id: str) -> str:
        """A worker as tests and users see it: node id, address, custom resources."""
        for n in self._nodes():
            if n["NodeID"] == node_id:
                extra = ",".join(sorted(_custom(n.get("Resources", {}))))
                return f"{node_id[:12]} {n.get('NodeManagerAddress', '?')} [{extra}]"
        return node_id[:12]

    def requirements(self, node: Node, inputs: Mapping[str, Manifest]) -> dict[str, float]:
        from mlcbuild.steps import get_step

        return get_step(node.kind).resources({**node.params, **node.hints}, inputs)

    def builds_elsewhere(self, node: Node, inputs: Mapping[str, Manifest]) -> bool:
        """A node the driver cannot build goes to a worker that offers what it needs, when the
        driver computes its true key (a pinned tool version)."""
        from mlcbuild.steps import get_step

        if not get_step(node.kind).keyable_here({**node.params, **node.hints}):
            return False
        return self.unrunnable(node, inputs) is None

    def unrunnable(self, node: Node, inputs: Mapping[str, Manifest]) -> str | None:
        needs = self.requirements(node, inputs)
        workers = [n.get("Resources", {}) for n in self._nodes()]
        if any(all(have.get(k, 0) >= v for k, v in needs.items()) for have in workers):
            return None
        offered = " | ".join(_show(w) for w in workers)
        return f"no worker in the Ray cluster can run it: it needs {_show(needs)}; workers offer: {offered or 'nothing'}"

    def submit(self, decision: Decision, inputs: Mapping[str, Manifest]) -> Any:
        from mlcbuild.steps import step_specs

        self._connect()
        node = decision.node
        away = self.decider.graph.unbuildable.get(node.id)
        if away is not None and self.builds_elsewhere(node, inputs):
            away = None
        # a node nobody here can build only asks the remote cache: any worker, no toolchain
        needs = {"CPU": 1.0} if away is not None else self.requirements(node, inputs)
        options: dict[str, Any] = {
            "num_cpus": needs.get("CPU", 1),
            "resources": _custom(needs),
            "max_retries": self.max_retries,
            "retry_exceptions": False,
            "name": decision.node.label,
        }
        if needs.get("memory"):
            options["memory"] = needs["memory"]
        if needs.get("GPU"):
            options["num_gpus"] = needs["GPU"]
        store = self.decider.store
        ref = self._task.options(**options).remote(
            str(store.root), step_specs(), decision, dict(inputs), self.decider.force, self._remote_settings, away
        )
        self.running[ref] = decision.node
        return ref

    def wait(self, running: list[Any]) -> list[tuple[Any, Outcome]]:
        ray = self._ray
        done, _ = ray.wait(running, num_returns=1)
        results = []
        for ref in done:
            node = self.running.pop(ref)
            results.append((ref, self._outcome(node, ref)))
        return results

    def _outcome(self, node: Node, ref: Any) -> Outcome:
        try:
            record = self._ray.get(ref)
        except Exception as e:  # the task died more often than max_retries, or Ray itself failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return Outcome(node, "failed", reason=f"ray task failed: {type(e).__name__}: {first}"[:300])
        worker = self.describe(record["worker"])
        self._count_transfers(record)
        if record["status"] not in ("built", "cached"):
            return Outcome(node, record["status"], record["key"], reason=record["reason"], worker=worker)
        hit = self.decider.store.get_action(record["key"])
        if hit is None:
            error = StepError(
                f"worker {worker} built it but its result is not in {self.decider.store.root}: "
                "every worker must open the driver's cache dir (a shared filesystem)"
            )
            return Outcome(node, "failed", record["key"], reason=str(error), worker=worker)
        return Outcome(node, record["status"], record["key"], hit.manifest, record["duration_s"], record["reason"], worker)

    def _count_transfers(self, record: dict[str, Any]) -> None:
        if self.remote is None or "transferred" not in record:
            return
        from mlcbuild.store.remote.cache import TransferStats

        self.remote.add_stats(TransferStats(**record["transferred"]))
        for message in record.get("warnings", []):
            if message not in self._warned:
                self._warned.add(message)
                self.remote.warn(message)

    def close(self) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()


@dataclass
class RayExecutor:
    store: Store
    address: str | None = None
    keep_going: bool = False
    force: bool = False
    reporter: Reporter = field(default_factory=NullReporter)
    max_retries: int = 3
    remote: "RemoteCache | None" = None
    """Asked on a miss and written through by the task, on its worker."""

    def run(self, graph: BuildGraph, wanted: set[str]) -> BuildReport:
        decider = Decider(self.store, graph, self.force)
        backend = RayBackend(decider, self.address, self.max_retries, self.remote)
        return schedule(graph, wanted, decider, backend, self.reporter, self.keep_going)
