"""A real Ray cluster on 127.0.0.1 for tests and benchmarks: a head with no CPUs (so every task
lands on a worker) and workers with the CPUs and custom resources asked for.

Each node is `ray start --block` in its own session; `stop()` ends exactly those processes and
their descendants (never `ray stop`, which kills every Ray process of the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(roots: set[int]) -> set[int]:
    parent, session = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)], session[int(entry.name)] = int(fields[1]), int(fields[3])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    found = {pid for pid, sid in session.items() if sid in roots} | (roots & set(parent))
    while more := {pid for pid, ppid in parent.items() if ppid in found} - found:
        found |= more
    return found


class LocalRayCluster:
    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.procs: list[subprocess.Popen] = []
        self.offers: dict[int, dict[str, float]] = {}
        """Custom resources of each worker, by its `ray start` pid (= its session id)."""

    def _start(self, *args: str) -> None:
        common = ["--block", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000", "--disable-usage-stats"]
        self.procs.append(
            subprocess.Popen(
                [RAY, "start", *args, *common],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        )

    def start_head(self) -> "LocalRayCluster":
        self._start("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={self.temp}")
        return self

    def add_worker(self, cpus: int = 1, resources: Mapping[str, float] | None = None, timeout: float = 60) -> None:
        """Start a worker and wait until the cluster sees it (two joining at once can lose one)."""
        import ray

        want = self.alive_nodes() + 1
        self._start(f"--address={self.address}", f"--num-cpus={cpus}", f"--resources={json.dumps(dict(resources or {}))}")
        self.offers[self.procs[-1].pid] = dict(resources or {})
        deadline = time.time() + timeout
        while self.alive_nodes() < want:
            if time.time() > deadline:
                raise RuntimeError(f"worker did not join: {ray.nodes()}")
            time.sleep(0.2)

    def alive_nodes(self) -> int:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
        return sum(1 for n in ray.nodes() if n["Alive"])

    def kill_node_running(self, pid: int) -> dict[str, float]:
        """SIGKILL every process of the worker node (its `ray start` session) that runs process `pid`;
        return what that node offered."""
        session = os.getsid(pid)
        assert session in self.offers, "not a worker process of this cluster"
        for victim in _descendants({session}):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.offers.pop(session)

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        roots = {p.pid for p in self.procs}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _descendants(roots):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for proc in self.procs:
            proc.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)
