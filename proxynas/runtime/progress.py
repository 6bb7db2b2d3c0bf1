"""How a long run shows its progress: a rich bar on a terminal, timestamped lines elsewhere.

A run redirected to a file (a SLURM or CI log) gets plain lines, one at its first step,
then at every 10% and at least every ``interval`` seconds, and one at the end:

    2026-05-01 12:00:03 condense dm 1/20000 (0%) loss 12.3456 | elapsed 0:00:09 | ETA 3:05:00

The ETA always comes from the run's own rate, measured from its first report (a
method reports its starting count before its first step, so that setup and step-plan
timing are not counted as steps; a resumed run starts from its checkpoint's count).
Only the CLI builds these displays; library code calls the ``(done, total, value)``
reporters they hand out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = [
    "LOG_INTERVAL",
    "LineThrottle",
    "RateClock",
    "StageDisplay",
    "clock_text",
    "finished",
    "progress_bar",
    "search_display",
    "use_lines",
]

log = logging.getLogger("proxynas.runtime.progress")

LOG_INTERVAL = 30.0  # seconds: the longest a redirected run stays silent between progress lines
_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TextColumn("{task.fields[value]}"),
    TimeElapsedColumn(),
    TextColumn("ETA {task.fields[eta]}"),
)

Reporter = Callable[[int, int, "float | None"], None]


def clock_text(seconds: float | None) -> str:
    """``H:MM:SS`` (``-`` while unknown), as rich's own elapsed column writes it."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class RateClock:
    """Seconds left at the run's own rate since its first report (None until one step is measured)."""

    now: Callable[[], float] = time.monotonic
    _mark: tuple[int, float] | None = None  # (done, time) of the first report

    def eta(self, done: int, total: int | None) -> float | None:
        t = self.now()
        if self._mark is None or done < self._mark[0]:  # the first report, or a count that went back
            self._mark = (done, t)
            return None
        first, since = self._mark
        if done == first or not total:
            return None
        return (total - done) * (t - since) / (done - first)


@dataclass
class LineThrottle:
    """When a redirected run writes a line: its first report (the starting count), its first step,
    each further 10%, at least every ``interval`` seconds, and once at the end."""

    interval: float = LOG_INTERVAL
    now: Callable[[], float] = time.monotonic
    _first: int | None = None  # the count of the first report
    _last: tuple[int, int, float] | None = None  # (done, tenth, time) of the last line written
    _ended: bool = False

    def due(self, done: int, total: int | None) -> bool:
        t, tenth = self.now(), done * 10 // total if total else 0
        if self._first is None:
            self._first = done
        last_done, last_tenth, last_time = self._last or (-1, -1, -self.interval)
        end = done == total and not self._ended
        first_step = done > self._first and last_done <= self._first
        if self._last is None or end or first_step or tenth > last_tenth or t - last_time >= self.interval:
            if done == total and self._ended:
                return False  # the end said once is enough
            self._ended = self._ended or done == total
            self._last = (done, tenth, t)
            return True
        return False


def use_lines(console: Console, quiet: bool) -> bool:
    """Plain log lines instead of live displays: asked for, or stderr is not a terminal."""
    return quiet or not console.is_terminal


def _metric(value: float | None, name: str) -> str:
    """A progress line's metric: '' when a step has none (coresets), else 'loss 0.1234'."""
    return "" if value is None else f"{name} {value:.4f}"


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def line(description: str, done: int, total: int | None, detail: str, elapsed: float, eta: float | None) -> str:
    """One progress line: timestamp, what, count (and percent), detail, elapsed, ETA; no trailing space."""
    count = f"{done}/{total} ({100 * done // total}%)" if total else f"{done}/?"
    words = [_stamp(), description, count, *([detail] if detail else [])]
    return " ".join(words) + f" | elapsed {clock_text(elapsed)} | ETA {clock_text(eta)}"


@dataclass
class StageDisplay:
    """Progress of one or more stages, each with its own count: one rich display, or log lines."""

    console: Console
    lines: bool  # True: timestamped log lines (use_lines), else a rich bar per stage
    interval: float = LOG_INTERVAL
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._bar = None if self.lines else Progress(*_COLUMNS, console=self.console)

    def stage(self, description: str, metric: str = "loss") -> Reporter:
        """A reporter ``(done, total, value)`` for a new stage; a bar appears at its first report."""
        clock, throttle = RateClock(), LineThrottle(self.interval)
        task: list[TaskID] = []  # the bar's task, added at the first report

        def report(done: int, total: int, value: float | None) -> None:
            eta = 0.0 if clock.eta(done, total) is None and done == total else clock.eta(done, total)
            if self._bar is None:
                if throttle.due(done, total):
                    log.info(
                        line(description, done, total, _metric(value, metric), time.monotonic() - self.started, eta)
                    )
                return
            if not self._bar.live.is_started:  # started at the first report, so an early error prints alone
                self._bar.start()
            if not task:
                task.append(self._bar.add_task(description, total=None, value="", eta="-"))
            self._bar.update(task[0], completed=done, total=total, value=_metric(value, metric), eta=clock_text(eta))

        return report

    def note(self, text: str) -> None:
        """A line between stages (the stage names of a pipeline), timestamped in log mode."""
        if self._bar is None:
            log.info("%s %s", _stamp(), text)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextlib.contextmanager
def progress_bar(console: Console, description: str, quiet: bool, metric: str = "loss") -> Iterator[Reporter]:
    """One stage's reporter: a rich bar on a terminal, else lines (see the module docstring)."""
    display = StageDisplay(console, use_lines(console, quiet))
    try:
        yield display.stage(description, metric)
    finally:
        display.stop()


def finished(counts: dict[str, int]) -> int:
    """Trials that are done for good: complete or pruned (failed ones are retried)."""
    return counts["complete"] + counts["pruned"]


def _search_parts(s: dict, value_format: str) -> tuple[int, int | None, str, float | None]:
    """(finished, total, what is running and the best so far, seconds left) of a study's summary.

    The rate counts trials completed since this command started, so an ETA is the run's own.
    """
    c, total = s["counts"], s["total"]
    done = finished(c)
    seconds = max(time.time() - s["started"], 1e-9)
    fresh = sum(1 for t in s["completed"] if t.timestamp() >= s["started"])
    eta = (total - done) * seconds / fresh if total and fresh else None
    best = f"{value_format.format(s['best_value'])} ({s['best_config']})" if s["best_value"] is not None else "-"
    detail = (
        f"done, {c['running']} running, {c['fail']} failed | best {best} | {fresh / seconds * 3600:.0f} candidates/h"
    )
    return done, total, detail, eta


@contextlib.contextmanager
def search_display(console: Console, name: str, quiet: bool, value_format: str) -> Iterator[Callable[[dict], None]]:
    """A study's progress from its summaries: a live line on a terminal, else throttled log lines."""
    from rich.live import Live

    started = time.monotonic()
    if use_lines(console, quiet):
        throttle = LineThrottle()

        def log_line(s: dict) -> None:
            done, total, detail, eta = _search_parts(s, value_format)
            if throttle.due(done, total):
                log.info(line(name, done, total, detail, time.monotonic() - started, eta))

        yield log_line
        return
    live = Live(console=console, refresh_per_second=2)

    def show(s: dict) -> None:
        if not live.is_started:  # started at the first update, so an early error prints alone
            live.start()
        done, total, detail, eta = _search_parts(s, value_format)
        count = f"{done}/{total}" if total else f"{done}/?"
        live.update(f"[bold]{name}[/bold] {count} {detail} | ETA {clock_text(eta)}")

    try:
        yield show
    finally:
        live.stop()
