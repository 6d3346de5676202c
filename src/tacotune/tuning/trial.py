"""One trial, in its own process: train with the sampled settings and report every evaluation.

    python -m tacotune.tuning.trial --config STUDY/config.yaml --prepared DIR --run-dir DIR
        --values '{"train.learning_rate": 0.001}' --report-fd N --verdict-fd M

Its worker owns the Optuna trial. After each evaluation the trial's run listener
writes {"step", "score"} to the report pipe and waits for "continue" or "prune" on
the verdict pipe: trial.report / should_prune run in the worker. The last line
written is the outcome (names.TrialOutcome). Memory (and GPU memory) is freed by
the process exiting; the trial starts from fresh weights, never from another trial's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tacotune.config.load import load_config
from tacotune.errors import TacotuneError
from tacotune.names import TrialOutcome
from tacotune.runlog import RunListener, StopTraining
from tacotune.signals import interrupt_on_sigterm
from tacotune.supervision.guard import TrainingDiverged
from tacotune.tracking import run_listeners
from tacotune.train import train
from tacotune.tuning.space import apply

log = logging.getLogger(__name__)


class Pruned(StopTraining):
    """The worker said prune: ends training from inside the evaluation callback."""


class WorkerGone(Exception):
    """The worker closed its pipe (it died): there is nobody left to report to."""


class Channel(RunListener):
    """The trial's two pipes to its worker; as a run listener it reports every evaluation."""

    def __init__(self, report_fd: int, verdict_fd: int) -> None:
        self.report: IO[str] = os.fdopen(report_fd, "w", buffering=1, encoding="utf-8")
        self.verdict: IO[str] = os.fdopen(verdict_fd, "r", encoding="utf-8")

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Report the evaluation's score, then obey the verdict."""
        value = metrics.get("score", math.inf)
        score = value if math.isfinite(value) else None
        self._send({"type": "evaluation", "step": step, "score": score})
        answer = self.verdict.readline()
        if not answer:
            raise WorkerGone("the worker process is gone")
        if answer.strip() == "prune":
            raise Pruned(f"pruned at step {step}")

    def outcome(self, state: TrialOutcome, **fields: Any) -> None:
        """The last message: complete / pruned / fail / interrupted."""
        self._send({"type": "outcome", "state": str(state), **fields})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.report.write(json.dumps(message) + "\n")
        except BrokenPipeError as error:
            raise WorkerGone("the worker process is gone") from error


def run(args: argparse.Namespace) -> int:
    """Train one trial and tell the worker how it ended."""
    channel = Channel(args.report_fd, args.verdict_fd)
    try:
        base = load_config(args.config)
        budget = {
            "train.max_steps": base.tuning.trial_max_steps,
            "train.max_minutes": (
                base.tuning.trial_max_minutes if args.max_minutes is None else args.max_minutes
            ),
            "train.threads": args.threads,
        }
        config = apply(base, {**json.loads(args.values), **budget})
        listeners = [*run_listeners(config, args.run_dir), channel]
        result = train(config, args.prepared, args.run_dir, listeners=listeners)
    except Pruned as pruned:
        channel.outcome(TrialOutcome.PRUNED, reason=str(pruned))
        return 0
    except TrainingDiverged as diverged:
        channel.outcome(TrialOutcome.FAIL, reason=str(diverged))
        return 0
    except TacotuneError as error:  # an impossible combination of values, a data problem...
        channel.outcome(TrialOutcome.FAIL, reason=f"{type(error).__name__}: {error}")
        return 0
    except KeyboardInterrupt:
        channel.outcome(TrialOutcome.INTERRUPTED, reason="interrupted (last.pt was saved)")
        return 130
    except WorkerGone:
        log.error("the worker is gone; stopping this trial")
        return 3
    if not math.isfinite(result.best_score):
        channel.outcome(TrialOutcome.FAIL, reason="no evaluation produced a finite score")
        return 0
    channel.outcome(
        TrialOutcome.COMPLETE,
        value=result.best_score,
        best_step=result.best_step,
        step=result.step,
        stop_reason=str(result.stop_reason),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the trial process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--values", required=True, help="JSON {config key: value}")
    parser.add_argument("--report-fd", required=True, type=int)
    parser.add_argument("--verdict-fd", required=True, type=int)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--max-minutes", type=float, help="wall-clock budget (default: tuning.trial_max_minutes)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    interrupt_on_sigterm()  # the worker stops a trial with SIGTERM (training saves first)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
