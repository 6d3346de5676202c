"""Progress for long work, on a terminal and off one, sharing one stderr console with logging.

The CLI calls `configure()` once: on a terminal long work shows rich progress bars; off one
(a pipe, `tee`, nohup, CI, a job scheduler) it writes one log line about every
LINE_SECONDS instead, so a scripted run shows signs of life too. Library code calls
`meter()` or `track()` and stays silent until configured (tests, library use).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

CONSOLE = Console(stderr=True)
LINE_SECONDS = 30.0  # off a terminal: one progress line about this often
_bars = False
_lines = False
log = logging.getLogger("tacotune.progress")


def configure(*, bars: bool, lines: bool) -> None:
    """Show progress bars (a terminal) and/or periodic log lines (anything else) from now on."""
    global _bars, _lines
    _bars, _lines = bars, lines


def enabled() -> bool:
    """Whether progress bars are shown."""
    return _bars


def make_progress(*extra_columns: TextColumn) -> Progress:
    """A rich Progress on the shared console; disabled unless bars are configured."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        disable=not _bars,
        transient=False,
    )


class Meter:
    """Progress of one long task: a bar on a terminal, else a log line about every
    `every` seconds ("training: 120/3000 (4%), loss 1.234, 1.52/s, ETA 31 min")."""

    def __init__(
        self, bar: Progress, task: TaskID, description: str, total: int, done: int, every: float
    ) -> None:
        self._bar, self._task = bar, task
        self.description, self.total, self.every = description, total, every
        self._first, self.done = done, done
        self._started = self._last_line = time.monotonic()
        self._info = ""

    @property
    def rate(self) -> float:
        """Items per second since this meter started (0 before the first item)."""
        seconds = time.monotonic() - self._started
        return (self.done - self._first) / seconds if seconds > 0 else 0.0

    def update(self, done: int, **info: str) -> None:
        """`done` items of `total`; `info` (name -> shown value) goes beside the count."""
        self.done = done
        self._info = ", ".join(f"{name} {value}" for name, value in info.items())
        self._bar.update(self._task, completed=done, info=self._info)
        now = time.monotonic()
        if _lines and now - self._last_line >= self.every and done < self.total:
            self._last_line = now
            self.log_line()

    def advance(self, items: int = 1, **info: str) -> None:
        """`items` more done."""
        self.update(self.done + items, **info)

    def log_line(self) -> None:
        """The progress line, now (also used for a final line off a terminal)."""
        if not _lines:
            return
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        parts = [f"{self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)"]
        parts += [self._info] if self._info else []
        parts += [f"{rate:.2f}/s", f"ETA {format_seconds(eta)}"]
        log.info("%s: %s", self.description, ", ".join(parts))


@contextlib.contextmanager
def meter(
    description: str, total: int, done: int = 0, every: float | None = None
) -> Iterator[Meter]:
    """A `Meter` for the block (its bar closes with it); a line every `every` seconds
    (default LINE_SECONDS) off a terminal."""
    bar = make_progress(TextColumn("{task.fields[info]}"))
    with bar:
        task = bar.add_task(description, total=total, completed=done, info="")
        yield Meter(bar, task, description, total, done, LINE_SECONDS if every is None else every)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield `items` while advancing a progress meter."""
    with meter(description, total) as m:
        for item in items:
            yield item
            m.advance()


def format_seconds(seconds: float) -> str:
    """A duration people read at a glance: "45 s", "12 min", "3 h 05 min", "unknown"."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"
