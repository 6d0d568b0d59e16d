"""The live dashboard of ``edgesplit run`` (issue #7): a rich table under the progress bar on a
terminal, plain periodic lines otherwise (CI logs stay readable).

Both take the run's callbacks (``on_phase``, ``on_progress``, ``on_live``) and throttle the
rendering themselves; the numbers come from :mod:`edgesplit.runtime.live`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgesplit.runtime.live import LiveSnapshot, pipeline_line, plain_lines, state_of

TERMINAL_REFRESH_PER_S = 1.0
PLAIN_EVERY_S = 3.0


def _f(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


def live_table(snapshot: LiveSnapshot, total: int | None = None) -> Table:
    """One row per device: stage, utilisation, frequency, temperature, queue, throughput."""
    table = Table(title=pipeline_line(snapshot, total), title_justify="left")
    for header in (
        "Device", "Stage", "State", "CPU % (proc)", "CPU % (sys)", "CPU MHz", "Temp °C",
        "Mem %", "Queue", "Send queue", "img/s", "Images", "Failures",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header in ("Device", "State") else "right")
    for d in snapshot.devices:
        table.add_row(
            d.name,
            _f(d.stage, "d"),
            state_of(d) if state_of(d) in ("ok", "healthy") else f"[red]{state_of(d)}[/red]",
            _f(d.process_cpu_percent),
            _f(d.cpu_percent),
            _f(d.cpu_freq_mhz),
            _f(d.temperature_c),
            _f(d.memory_percent),
            _f(d.queue_depth, "d"),
            _f(d.send_queue_depth, "d"),
            f"{d.throughput_ips:.1f}",
            str(d.images),
            str(d.failures),
        )
    captions = [f"last failure: {snapshot.last_failure}"] if snapshot.last_failure else []
    captions += [snapshot.adaptive] if snapshot.adaptive else []
    if captions:
        table.caption = "\n".join(captions)
    return table


class TerminalDashboard:
    """The progress bar and, unless ``show_table`` is False, the live device table below it,
    redrawn about once a second by rich's refresh thread (callbacks only store the numbers)."""

    def __init__(self, console: Console, show_table: bool = True) -> None:
        self.show_table = show_table
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("starting", total=None, rate="")
        self.total: int | None = None
        self.snapshot: LiveSnapshot | None = None
        self.live = Live(
            console=console,
            refresh_per_second=TERMINAL_REFRESH_PER_S,
            get_renderable=self.render,
        )

    def render(self) -> RenderableType:
        snapshot = self.snapshot
        if not self.show_table or snapshot is None:
            return self.progress
        return Group(self.progress, live_table(snapshot, self.total))

    def on_phase(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def on_progress(self, done: int, total: int, elapsed_s: float) -> None:
        self.total = total
        rate = f"{done / elapsed_s:.1f} img/s" if elapsed_s > 0 else ""
        self.progress.update(
            self.task, completed=done, total=total, rate=rate, description="running"
        )

    def on_live(self, snapshot: LiveSnapshot) -> None:
        self.snapshot = snapshot

    def __enter__(self) -> TerminalDashboard:
        self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.live.stop()


class PlainDashboard:
    """For logs: phases as lines; every ``every_s`` seconds of run time the pipeline line and
    one line per device (throttled by the snapshots' own clock, so it is testable); the final
    image count when the run completes. ``show_table=False`` keeps only the progress lines."""

    def __init__(
        self,
        echo: Callable[[str], None],
        every_s: float = PLAIN_EVERY_S,
        show_table: bool = True,
    ) -> None:
        self.echo = echo
        self.every_s = every_s
        self.show_table = show_table
        self.total: int | None = None
        self._last_live: float | None = None
        self._last_progress = 0.0

    def on_phase(self, text: str) -> None:
        self.echo(f"edgesplit: {text}")

    def on_progress(self, done: int, total: int, elapsed_s: float) -> None:
        self.total = total
        periodic = not self.show_table and elapsed_s - self._last_progress >= self.every_s
        if done == total or periodic:
            self._last_progress = elapsed_s
            rate = done / elapsed_s if elapsed_s > 0 else 0.0
            self.echo(f"  {done}/{total} images, {rate:.1f} images/s, {elapsed_s:.1f} s")

    def on_live(self, snapshot: LiveSnapshot) -> None:
        if not self.show_table:
            return
        if self._last_live is not None and snapshot.t - self._last_live < self.every_s:
            return
        if self._last_live is None and snapshot.elapsed_s < min(self.every_s, 1.0):
            return  # let the first readings of every device arrive
        self._last_live = snapshot.t
        lines = plain_lines(snapshot, self.total)
        self.echo(f"  live {snapshot.elapsed_s:.0f} s: {lines[0]}")
        for line in lines[1:]:
            self.echo(f"    {line}")

    def __enter__(self) -> PlainDashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
