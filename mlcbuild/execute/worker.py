"""Run one step in a child process.

TVM's compiler is not thread-safe (concurrent builds in one process fail or segfault), a crash in
native code must fail one node rather than the build, and a finished convert should hand its
memory back: so every step runs in its own spawned process. The child dies with its parent, and
its output goes to a log file kept in the cache when the step fails.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.errors import MlcbuildError, StepError, UserError

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _child(kind: str, params: dict, inputs: dict, out: str, scratch: str, log: str, conn: Any) -> None:
    _die_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from mlcbuild.steps import RunContext, get_step

    ctx = RunContext(
        params=params,
        inputs={role: Path(p) for role, p in inputs.items()},
        out=Path(out),
        progress=lambda fraction, message: conn.send(("progress", float(fraction), str(message))),
        scratch=Path(scratch),
        adopter=lambda f: conn.send(("adopt", f.rel, f.path, f.sha256, f.changed)),
    )
    try:
        get_step(kind).run(ctx)
        conn.send(("ok",))
    except UserError as e:
        conn.send(("user", str(e)))
    except MlcbuildError as e:
        conn.send(("step", str(e)))
    except OSError as e:
        from mlcbuild.store.fs import mount_point, os_error_message

        message = os_error_message(e, "file system", mount_point(e.filename2 or e.filename or out))
        if message is None:
            import traceback

            traceback.print_exc()
        conn.send(("step", message or f"{type(e).__name__}: {e}"))
    except BaseException as e:
        import traceback

        traceback.print_exc()
        conn.send(("step", f"{type(e).__name__}: {e}"))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_step_in_child(
    kind: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Path],
    out: Path,
    scratch: Path,
    log: Path,
    progress: Callable[[float, str], None],
    adopt: Callable[[Any], None] | None = None,
) -> None:
    """Run the step; raise UserError/StepError with one line if it fails or its process dies.
    Files the step adopts (see RunContext.adopt) are handed to `adopt` as they come."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child,
        args=(kind, dict(params), {r: str(p) for r, p in inputs.items()}, str(out), str(scratch), str(log), send),
        name=f"mlcbuild-{kind}",
    )
    process.start()
    send.close()
    outcome: tuple | None = None
    try:
        while True:
            try:
                message = receive.recv()
            except EOFError:
                break
            if message[0] == "progress":
                progress(message[1], message[2])
            elif message[0] == "adopt":
                if adopt is None:
                    raise StepError(f"{kind} step adopted a file but this executor cannot ingest files")
                from mlcbuild.store.ingest import SourceFile

                adopt(SourceFile(*message[1:]))
            else:
                outcome = message
    finally:
        process.join()
        receive.close()
    if outcome is None:
        code = process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        raise StepError(f"{kind} step crashed ({how}); log: {log}")
    if outcome[0] == "user":
        raise UserError(outcome[1])
    if outcome[0] == "step":
        raise StepError(outcome[1])
