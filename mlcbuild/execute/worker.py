"""Run one step in a child process.

TVM's compiler is not thread-safe (concurrent builds in one process fail or segfault), a crash in
native code must fail one node rather than the build, and a finished convert should hand its
memory back: so every real step runs in its own process. It is a plain `python -m` child, not a
multiprocessing one: multiprocessing's spawn context starts a resource tracker that outlives the
build. The child dies with its parent, writes its output to a log file kept in the cache when the
step fails, and reports progress and its result as JSON lines on a pipe.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.errors import MlcbuildError, StepError, UserError

PR_SET_PDEATHSIG = 1
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The child imports the same mlcbuild as its parent, whatever the child's default sys.path."""
_BOOT = "import sys; sys.path.insert(0, {root!r}); from mlcbuild.execute.worker import _child; _child({fd}, {parent})"


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

    The child loads the step this process has registered for `kind` (a test's fake step too).
    Files the step adopts (see RunContext.adopt) are handed to `adopt` as they come; without
    `adopt` the step copies them into `out` (and verifies them) itself."""
    from mlcbuild.steps import step_specs

    request = {
        "kind": kind,
        "spec": step_specs()[kind],
        "params": dict(params),
        "inputs": {role: str(p) for role, p in inputs.items()},
        "out": str(out),
        "scratch": str(scratch),
        "sys_path": sys.path,
        "adopt": adopt is not None,
    }
    receive, send = os.pipe()
    try:
        with open(log, "ab") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(root=str(PACKAGE_ROOT), fd=send, parent=os.getpid())],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(send,),
            )
    except BaseException:
        os.close(receive)
        raise
    finally:
        os.close(send)
    outcome: list[Any] | None = None
    try:
        assert child.stdin is not None
        child.stdin.write(json.dumps(request).encode())
        child.stdin.close()
        with os.fdopen(receive, "rb") as messages:
            for line in messages:
                message = json.loads(line)
                if message[0] == "progress":
                    progress(message[1], message[2])
                elif message[0] == "adopt" and adopt is not None:
                    from mlcbuild.store.ingest import SourceFile

                    adopt(SourceFile(*message[1:]))
                else:
                    outcome = message
    finally:
        child.wait()
    if outcome is None or outcome[0] != "ok":
        _redact_log(log)
    if outcome is None:
        code = child.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise StepError(f"{kind} step crashed ({how}); log: {log}")
    if outcome[0] == "user":
        raise UserError(outcome[1])
    if outcome[0] == "step":
        raise StepError(outcome[1])


def _redact_log(log: Path, limit: int = 64 << 20) -> None:
    """A kept log is read by people and CI artifacts: no token or password a URL carried stays in it."""
    from mlcbuild.errors import redact

    try:
        if log.stat().st_size > limit:
            return
        text = log.read_text(errors="replace")
        clean = redact(text)
        if clean != text:
            from mlcbuild.store.fs import atomic_write_bytes

            atomic_write_bytes(log, clean.encode())
    except OSError:
        pass


def _die_with(parent: int) -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _child(fd: int, parent: int) -> None:
    _die_with(parent)
    request = json.loads(sys.stdin.buffer.read())
    sys.path[:] = request["sys_path"]
    channel = os.fdopen(fd, "w", buffering=1)

    def send(*message: Any) -> None:
        channel.write(json.dumps(message) + "\n")

    from mlcbuild.steps import RunContext, get_step, register_step

    register_step(request["kind"], request["spec"])
    ctx = RunContext(
        params=request["params"],
        inputs={role: Path(p) for role, p in request["inputs"].items()},
        out=Path(request["out"]),
        progress=lambda fraction, message: send("progress", float(fraction), str(message)),
        scratch=Path(request["scratch"]),
        adopter=(lambda f: send("adopt", f.rel, f.path, f.sha256, f.changed)) if request["adopt"] else None,
    )
    try:
        get_step(request["kind"]).run(ctx)
        send("ok")
    except UserError as e:
        send("user", str(e))
    except MlcbuildError as e:
        send("step", str(e))
    except OSError as e:
        from mlcbuild.store.fs import mount_point, os_error_message

        message = os_error_message(e, "file system", mount_point(e.filename2 or e.filename or request["out"]))
        if message is None:
            import traceback

            traceback.print_exc()
        send("step", message or f"{type(e).__name__}: {e}")
    except BaseException as e:
        import traceback

        traceback.print_exc()
        send("step", f"{type(e).__name__}: {e}")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        channel.close()
