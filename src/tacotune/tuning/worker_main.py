"""The entry point of one worker process of `tacotune tune` (study.py starts it): reads the
study's settings back from its directory (study.py) and runs the worker loop (worker.py)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from tacotune.signals import interrupt_on_sigterm
from tacotune.tuning.study import worker_settings
from tacotune.tuning.worker import worker_loop


def main(argv: list[str] | None = None) -> int:
    """`python -m tacotune.tuning.worker_main STUDY_DIR`: one worker process of `tacotune tune`."""
    parser = argparse.ArgumentParser(description="one tuning worker")
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=math.inf)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--index", type=int, default=0, help="this worker's number (0, 1, ...)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    interrupt_on_sigterm()  # `tacotune tune` stops its workers with SIGTERM
    study, settings = worker_settings(
        args.study_dir, args.target, args.deadline, args.threads, args.index
    )
    try:
        worker_loop(study, settings)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
