"""What a build shows: rich progress on a terminal, plain timed lines in a log (CI), the summary
table after, and a Markdown summary for GitHub Actions."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TextIO

from mlcbuild.cli.common import human_size
from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.plan.graph import Node

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.measure import Measurement
    from rich.text import Text
    from rich.progress import Progress
    from rich.table import Table

LOG_WIDTH = 10_000
"""Off a terminal a line is as long as it needs: a CI log has no right edge to fit, and a cut label
(`compile ti…q0f32 cuda`) hides what matters."""

HEARTBEAT_S = 15.0
"""Off a terminal, a step still running says so this often: a log silent for minutes looks hung."""


def make_console(stderr: bool = False) -> "Console":
    """A terminal keeps rich's width; a log (no terminal, no $COLUMNS) gets full-width lines."""
    from rich.console import Console

    screen = Console(stderr=stderr, highlight=False)
    if screen.is_terminal or os.environ.get("COLUMNS"):
        return screen
    return Console(stderr=stderr, highlight=False, width=LOG_WIDTH)


STATUS_STYLE = {
    "cached": "green",
    "built": "cyan",
    "failed": "bold red",
    "skipped": "yellow",
    "pending": "magenta",
    "elsewhere": "blue",
}


class RichReporter:
    """Progress bars for running nodes; rich is imported when the first node actually runs."""

    def __init__(self, console: Callable[[], "Console"]):
        self.console = console
        self.bars: Progress | None = None
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> "RichReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def _bars(self) -> "Progress":
        if self.bars is None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bars = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[message]}"),
                TimeElapsedColumn(),
                console=self.console(),
                transient=True,
            )
            self.bars.start()
        return self.bars

    def started(self, node: Node) -> None:
        with self.lock:
            self.tasks[node.id] = self._bars().add_task(node.label, total=1.0, message="")

    def progress(self, node: Node, fraction: float, message: str) -> None:
        with self.lock:
            task = self.tasks.get(node.id)
            if task is not None and self.bars is not None:
                self.bars.update(task, completed=max(0.0, min(1.0, fraction)), message=message)

    def finished(self, outcome: Outcome) -> None:
        with self.lock:
            task = self.tasks.pop(outcome.node.id, None)
            if task is not None and self.bars is not None:
                self.bars.remove_task(task)
            if outcome.status == "built":
                where = f" on {outcome.worker}" if outcome.worker not in ("", "local") else ""
                self._bars().console.print(f"[cyan]built[/] {outcome.node.label} ({outcome.duration_s:.1f}s){where}")
            elif outcome.status == "cached" and outcome.reason == "fetched from remote":
                self._bars().console.print(f"[green]fetched[/] {outcome.node.label} from the remote cache")
            elif outcome.status == "failed":
                self._bars().console.print(f"[bold red]failed[/] {outcome.node.label}: {outcome.reason}", soft_wrap=True)


@dataclass
class _Running:
    node: Node
    start: float
    last_line: float
    message: str = ""


class LogReporter:
    """Off a terminal (a CI log): one line when a node starts, one when it ends with its time, and a
    heartbeat while it runs. stdout is flushed before each line so a log that captures both streams
    reads in order."""

    def __init__(self, stream: TextIO | None = None, heartbeat_s: float = HEARTBEAT_S):
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat_s = heartbeat_s
        self.running: dict[str, _Running] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "LogReporter":
        if self.heartbeat_s > 0:
            self.thread = threading.Thread(target=self._beat, name="mlcbuild-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def _line(self, text: str) -> None:
        sys.stdout.flush()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        while not self.done.wait(min(self.heartbeat_s, 1.0)):
            now = time.monotonic()
            with self.lock:
                for run in self.running.values():
                    if now - run.last_line >= self.heartbeat_s:
                        run.last_line = now
                        doing = f" ({run.message})" if run.message else ""
                        self._line(f"still running {run.node.label}: {now - run.start:.0f}s{doing}")

    def started(self, node: Node) -> None:
        with self.lock:
            now = time.monotonic()
            self.running[node.id] = _Running(node, now, now)
            self._line(f"start {node.label}")

    def progress(self, node: Node, fraction: float, message: str) -> None:
        with self.lock:
            if node.id in self.running:
                self.running[node.id].message = message

    def finished(self, outcome: Outcome) -> None:
        with self.lock:
            run = self.running.pop(outcome.node.id, None)
            label = outcome.node.label
            took = time.monotonic() - run.start if run is not None else 0.0
            if outcome.status == "built":
                where = f" on {outcome.worker}" if outcome.worker not in ("", "local") else ""
                self._line(f"built {label} in {outcome.duration_s:.1f}s{where}")
            elif outcome.status == "cached" and run is not None:
                fetched = status_word(outcome) == "pulled from remote"
                self._line(f"pulled {label} from the remote cache in {took:.1f}s" if fetched else f"cached {label}: {outcome.reason}")
            elif outcome.status == "failed":
                self._line(f"failed {label}" + (f" after {took:.1f}s" if run is not None else "") + f": {outcome.reason}")
            elif run is not None:
                self._line(f"{outcome.status} {label}: {outcome.reason}")


def live_reporter(console: Callable[[], "Console"]) -> "RichReporter | LogReporter":
    """Rich bars on a terminal; timed lines in a log, on the same stream."""
    screen = console()
    if screen.is_terminal:
        return RichReporter(console)
    return LogReporter(screen.file)


def status_word(outcome: Outcome) -> str:
    """A node's status as a summary says it: a result fetched from the remote is not a local hit."""
    if outcome.status == "cached" and outcome.reason == "fetched from remote":
        return "pulled from remote"
    return outcome.status


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def write_step_summary(report: BuildReport, artifacts: Iterable[Path], path: str | None = None) -> Path | None:
    """In GitHub Actions ($GITHUB_STEP_SUMMARY), append the build as Markdown: each node, what happened
    to it, its time and output size, then each artifact placed and its size. Elsewhere: nothing."""
    target = path if path is not None else os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["### mlcbuild build", "", "| node | status | time | output size | why |", "|---|---|---:|---:|---|"]
    for outcome in _ordered(report.outcomes.values()):
        took = f"{outcome.duration_s:.1f}s" if outcome.status == "built" else ""
        size = human_size(outcome.manifest.size) if outcome.manifest is not None else ""
        why = outcome.reason if outcome.status not in ("cached", "built") else ""
        lines.append(f"| {cell(outcome.node.label)} | {status_word(outcome)} | {took} | {size} | {cell(why)} |")
    counts = [(report.count(s), s) for s in ("built", "cached", "elsewhere", "failed", "skipped")]
    lines += ["", ", ".join(f"{n} {s}" for n, s in counts if n) + f" in {report.wall_s:.1f}s"]
    placed = sorted(set(artifacts))
    if placed:
        lines += ["", "| artifact | size |", "|---|---:|"]
        lines += [f"| `{cell(str(p))}` | {human_size(_size_of(p))} |" for p in placed]
    try:
        with open(target, "a", encoding="utf-8") as summary:
            summary.write("\n".join(lines) + "\n\n")
    except OSError as e:
        print(f"mlcbuild: warning: cannot write the step summary to {target}: {e.strerror}", file=sys.stderr)
        return None
    return Path(target)


class MiddleEllipsis:
    """A one-line cell that fits its column by cutting the middle, so both ends of a node label
    (its kind, and its quantization and target) stay visible."""

    def __init__(self, text: str):
        self.text = text

    def __rich_measure__(self, console: "Console", options: "ConsoleOptions") -> "Measurement":
        from rich.measure import Measurement

        return Measurement(min(len(self.text), 12), len(self.text))

    def __rich_console__(self, console: "Console", options: "ConsoleOptions") -> "Iterable[Text]":
        from rich.text import Text

        width, text = options.max_width, self.text
        if len(text) > width:
            head = (width - 1) // 2
            text = text[:head] + "…" + text[len(text) - (width - 1 - head) :]
        yield Text(text, no_wrap=True)


def summary_table(report: BuildReport, title: str = "build") -> "Table":
    """A build's table has a time column and its wall time; a plan (nothing ran) has neither.

    One line per node at any width (an 80-column terminal, $COLUMNS=80; a log has no edge, see
    `make_console`): the node and why columns shrink, a label
    loses its middle and a reason its end, instead of wrapping (rich hides no_wrap columns that do
    not fit, so these two stay wrappable and their cells cut themselves).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def cell(text: str) -> Text:
        return Text(text, no_wrap=True, overflow="ellipsis")

    ran = title == "build"
    remote = any(o.worker not in ("", "local") for o in report.outcomes.values())
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left", caption_justify="left")
    table.add_column("node")
    table.add_column("status", no_wrap=True)
    table.add_column("key", style="dim", no_wrap=True)
    if ran:
        table.add_column("time", justify="right", no_wrap=True)
    if remote:
        table.add_column("worker", max_width=24)
    table.add_column("why")
    for outcome in _ordered(report.outcomes.values()):
        style = STATUS_STYLE.get(outcome.status, "")
        cells = [MiddleEllipsis(outcome.node.label), f"[{style}]{outcome.status}[/]", (outcome.key or "")[:12]]
        if ran:
            cells.append(f"{outcome.duration_s:.1f}s" if outcome.status == "built" else "")
        if remote:
            cells.append(cell(outcome.worker))
        cells.append(cell(outcome.reason if outcome.status != "cached" else ""))
        table.add_row(*cells)
    maybe = sum(1 for o in report.outcomes.values() if o.status == "pending" and not _certain(o))
    counts = [(report.count(s) - (maybe if s == "pending" else 0), s) for s in ("built", "cached", "pending")]
    counts += [(maybe, "may run (if their inputs change)")]
    counts += [(report.count(s), s) for s in ("elsewhere", "failed", "skipped")]
    text = ", ".join(f"{n} {'to run' if s == 'pending' else s}" for n, s in counts if n)
    table.caption = f"{text} in {report.wall_s:.2f}s" if ran else text
    return table


def _certain(outcome: Outcome) -> bool:
    """A pending node that will run for sure; the others wait for an upstream output to know their key."""
    decision = outcome.decision
    return decision is None or bool(getattr(decision, "certain", True))


def _ordered(outcomes: Iterable[Outcome]) -> list[Outcome]:
    order = {"download": 0, "convert": 1, "gen-config": 2, "compile": 3}
    return sorted(outcomes, key=lambda o: (order.get(o.node.kind, 9), o.node.label))
