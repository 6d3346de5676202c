"""Ctrl-C and `kill`: how a tacotune process is asked to stop.

Training checks a flag: `StopRequests` turns SIGINT and SIGTERM into a request that the
loop reads between steps, so the run stops at a step boundary, saves last.pt once and
records `interrupted` — a signal can never land in the middle of a checkpoint write or
be swallowed by an exception handler (a KeyboardInterrupt raised inside a weakref
callback is lost). A second signal while the stop is under way only says so.

Processes that stop by unwinding (the CLI around non-training commands, tuning workers)
use `interrupt_on_sigterm`: `kill` then behaves like Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While entered (from the main thread), SIGINT/SIGTERM set `requested` instead of
    raising. Elsewhere it does nothing and `requested` stays None."""

    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the first signal received
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.requested is None:
            self.requested = name
            log.warning("%s: stopping after this step (last.pt is saved first)", name)
        else:
            log.warning("%s again: already stopping; saving last.pt, please wait", name)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def ignore_further_interrupts() -> None:
    """The process is already stopping: later SIGINT/SIGTERM change nothing (main thread)."""
    if threading.current_thread() is threading.main_thread():
        for number in HANDLED:
            signal.signal(number, signal.SIG_IGN)


def _raise_interrupt(number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(number).name)
