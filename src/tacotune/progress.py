"""Progress bars for long work, sharing one stderr console with logging.

The CLI calls `enable()` once; library code calls `track()` and stays silent
when progress is disabled (tests, library use).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

CONSOLE = Console(stderr=True)
_enabled = False


def enable(on: bool = True) -> None:
    """Show progress bars from now on (the CLI does this)."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    """Whether progress bars are shown."""
    return _enabled


def make_progress(*extra_columns: TextColumn) -> Progress:
    """A rich Progress on the shared console; disabled unless `enable()` was called."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        disable=not _enabled,
        transient=False,
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield `items` while advancing a progress bar."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
