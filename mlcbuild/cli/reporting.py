"""Rich progress while building, and the summary table after."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterable

from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.plan.graph import Node

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.measure import Measurement
    from rich.text import Text
    from rich.progress import Progress
    from rich.table import Table

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

    One line per node at any width (80 columns when piped): the node and why columns shrink, a label
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
    counts = [(report.count(s), s) for s in ("built", "cached", "pending", "elsewhere", "failed", "skipped")]
    text = ", ".join(f"{n} {'to run' if s == 'pending' else s}" for n, s in counts if n)
    table.caption = f"{text} in {report.wall_s:.2f}s" if ran else text
    return table


def _ordered(outcomes: Iterable[Outcome]) -> list[Outcome]:
    order = {"download": 0, "convert": 1, "gen-config": 2, "compile": 3}
    return sorted(outcomes, key=lambda o: (order.get(o.node.kind, 9), o.node.label))
