"""Fake steps for scheduling tests: register them with `mlcbuild.steps.register_step`.

`FakeStep` ("fake") runs in the executor's process, so a test of `-j`, `--keep-going` or failure
handling takes milliseconds; `ChildFakeStep` ("fake-child") runs in a spawned child like a real
step. Params: name (the identity), sleep (s), fail (bool), crash (bool: SIGKILL itself),
toolchain (a `toolchain:<name>` resource for Ray), say (a line it prints to its log), marker (hint: a folder where the step writes
`<name>.<pid>` with its pid and its parent's pid before sleeping, so a test can kill it).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import StepError
from mlcbuild.plan.graph import Node
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.store.manifest import Manifest

EVENTS: list[tuple[str, str, float]] = []
"""(name, "start" | "end", time) of in-process runs."""
_LOCK = threading.Lock()


class FakeStep(Step):
    kind = "fake"
    version = "1"
    in_process = True

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        return {"name": params["name"]}

    def resources(self, params: Mapping[str, JSON], inputs: Mapping[str, Manifest]) -> dict[str, float]:
        needs = {"CPU": 1.0}
        if params.get("toolchain"):
            needs[f"toolchain:{params['toolchain']}"] = 0.001
        return needs

    def run(self, ctx: RunContext) -> None:
        name = ctx.params["name"]
        with _LOCK:
            EVENTS.append((name, "start", time.perf_counter()))
        if ctx.params.get("marker"):
            marker = Path(ctx.params["marker"])
            marker.mkdir(parents=True, exist_ok=True)
            (marker / f"{name}.{os.getpid()}").write_text(f"{os.getpid()} {os.getppid()}")
        if ctx.params.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(ctx.params.get("sleep", 0)))
        ctx.progress(0.5, "half")
        if ctx.params.get("say"):
            print(ctx.params["say"], flush=True)
        if ctx.params.get("fail"):
            raise StepError(f"fake {name} failed on purpose")
        upstream = "".join(sorted((ctx.inputs[r] / "out.txt").read_text() for r in ctx.inputs))
        (ctx.out / "out.txt").write_text(f"{upstream}{name};")
        with _LOCK:
            EVENTS.append((name, "end", time.perf_counter()))


class ChildFakeStep(FakeStep):
    kind = "fake-child"
    in_process = False


def fake(name: str, deps: Mapping[str, Node] | None = None, kind: str = "fake", marker: str | None = None, **params: Any) -> Node:
    hints = {"marker": marker} if marker else None
    return Node.make(kind, {"name": name, **params}, deps or {}, f"{kind} {name}", hints=hints)
