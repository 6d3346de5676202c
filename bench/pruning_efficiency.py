"""Pruning efficiency: the same search with and without a pruner, on the demo corpus.

    python bench/pruning_efficiency.py [--trials 8] [--steps 400] [--pruner median]
                                       [--continue] [--set section.key=value ...]

Runs two studies with the same sampler seed, number of trials and per-trial step
budget: one with `tuning.pruner=none`, one with the chosen pruner. Reports for each
the best score reached, the training steps spent by all trials together (a pruned
trial counts up to the evaluation that stopped it) and the trials' summed wall time.
`--continue` extends the two studies of an earlier run to `--trials` instead of
starting over. The claim to check: pruning saves >= 40 % of the steps at an equal or
better best score.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from common import OUT, demo_prepared, report

from tacotune.config import load_config
from tacotune.runlog import read_jsonl
from tacotune.tuning import run_study
from tacotune.tuning.study import open_study

# a wider learning-rate range than the demo's own search: a real search meets bad regions
SPACE = (
    "tuning.space=["
    "{key: train.learning_rate, low: 0.0002, high: 0.006, log: true},"
    "{key: loss.guided_attn_weight, low: 2.0, high: 30.0, log: true},"
    "{key: model.reduction_factor, choices: [3, 4]}]"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="step budget of each trial")
    parser.add_argument("--pruner", default="median", choices=("median", "patient", "hyperband"))
    parser.add_argument("--continue", dest="extend", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    prepared = demo_prepared()
    rows = []
    for pruner in ("none", args.pruner):
        config = load_config(
            "demo.yaml",
            [
                SPACE,
                f"tuning.pruner={pruner}",
                f"tuning.trial_max_steps={args.steps}",
                "tuning.prune_after_step=150",
                "tuning.startup_trials=2",
                "train.eval_every=50",
                "tracking.tensorboard=false",
                *args.set,
            ],
        )
        study_dir = OUT / "pruning" / pruner
        if not args.extend:
            shutil.rmtree(study_dir, ignore_errors=True)
        result = run_study(config, prepared, study_dir, trials=args.trials)
        trials = json.loads((study_dir / "summary.json").read_text())["trials"]
        study = open_study(study_dir).study
        minutes = sum(
            (t.datetime_complete - t.datetime_start).total_seconds() / 60
            for t in study.trials
            if t.datetime_complete and t.datetime_start
        )
        rows.append(
            {
                "pruner": pruner,
                "trials": len(trials),
                "complete": result.counts["complete"],
                "pruned": result.counts["pruned"],
                "failed": result.counts["fail"],
                "best_score": result.best_value if result.best_value is not None else float("nan"),
                "steps": sum(_steps(t) for t in trials),
                "trial_minutes": minutes,
            }
        )
    base, pruned = rows
    print(
        f"\nsteps saved by pruning: {1 - pruned['steps'] / base['steps']:.1%}; best score "
        f"{pruned['best_score']:.4f} with vs {base['best_score']:.4f} without\n"
    )
    report("pruning_efficiency", rows)


def _steps(trial: dict[str, Any]) -> int:
    """Training steps a trial spent: its last evaluation, or its last record if it failed."""
    if trial["last_step"] is not None and trial["state"] != "fail":
        return int(trial["last_step"])
    metrics = Path(trial["run_dir"]) / "metrics.jsonl"
    records = read_jsonl(metrics) if metrics.exists() else []
    return int(records[-1]["step"]) if records else 0


if __name__ == "__main__":
    main()
