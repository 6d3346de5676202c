"""The `tacotune` command line: parse arguments, configure logging once, call the library.

A `TacotuneError` becomes one line on stderr and exit code 1; anything else is a
bug and keeps its traceback. `parser.py` declares the commands, `commands.py` runs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.logging import RichHandler

from tacotune import progress
from tacotune.cli.parser import build_parser
from tacotune.errors import TacotuneError
from tacotune.signals import ignore_further_interrupts, interrupt_on_sigterm

__all__ = ["build_parser", "main"]

log = logging.getLogger("tacotune")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tacotune` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt_on_sigterm()  # `kill` stops like Ctrl-C (training saves a resumable last.pt)
    _configure_logging(args.verbose)
    terminal = sys.stderr.isatty()  # bars on a terminal; off one, a progress line now and then
    progress.configure(bars=terminal and not args.quiet, lines=not terminal and not args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TacotuneError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        ignore_further_interrupts()  # a second Ctrl-C on the way out must not print a traceback
        log.error("interrupted")
        return 130


def _configure_logging(verbose: bool) -> None:
    """Once, here: rich records on a terminal, plain one-line records anywhere else
    (pipes, CI logs, files), so that every message stays one greppable line."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(
            console=progress.CONSOLE,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for noisy in ("matplotlib", "numba", "PIL", "urllib3", "pymorphy3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not to the stream of
    the moment logging was configured: a caller that swaps stderr (a notebook, a test
    harness capturing each test) never gets "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """StreamHandler assigns its stream; this handler always follows sys.stderr."""
