"""Rich progress while building, and the summary table after."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterable

from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.plan.graph import Node

if TYPE_CHECKING:
    from rich.console import Console
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
                self._bars().console.print(f"[cyan]built[/] {outcome.node.label} ({outcome.duration_s:.1f}s)")
            elif outcome.status == "cached" and outcome.reason == "fetched from remote":
                self._bars().console.print(f"[green]fetched[/] {outcome.node.label} from the remote cache")
            elif outcome.status == "failed":
                self._bars().console.print(f"[bold red]failed[/] {outcome.node.label}: {outcome.reason}")


def summary_table(report: BuildReport, title: str = "build") -> "Table":
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("node")
    table.add_column("status")
    table.add_column("key", style="dim")
    table.add_column("time", justify="right")
    table.add_column("why")
    for outcome in _ordered(report.outcomes.values()):
        style = STATUS_STYLE.get(outcome.status, "")
        table.add_row(
            outcome.node.label,
            f"[{style}]{outcome.status}[/]",
            (outcome.key or "")[:12],
            f"{outcome.duration_s:.1f}s" if outcome.status == "built" else "",
            outcome.reason if outcome.status != "cached" else "",
        )
    built, cached = report.count("built"), report.count("cached")
    failed, skipped = report.count("failed"), report.count("skipped")
    table.caption = f"{built} built, {cached} cached, {failed} failed, {skipped} skipped in {report.wall_s:.2f}s"
    return table


def _ordered(outcomes: Iterable[Outcome]) -> list[Outcome]:
    order = {"download": 0, "convert": 1, "gen-config": 2, "compile": 3}
    return sorted(outcomes, key=lambda o: (order.get(o.node.kind, 9), o.node.label))
