"""The voice metric against training steps and minutes on the demo corpus (not a test).

    python bench/quality.py                                  # the demo preset, 10 minutes
    python bench/quality.py --minutes 60 --name hour         # the one-hour curve
    python bench/quality.py --set model.reduction_factor=3 --name r3 --steps 1500
    python bench/quality.py --noise runs/bench/quality_demo  # metric noise of a finished run
    python bench/quality.py --prenet-dropout CHECKPOINT      # inference prenet dropout

Trains the preset (no early stopping) on the prepared demo corpus, evaluating every
--eval-every steps, and writes runs/bench/quality_NAME/: the run itself, curve.png (voice
metric against steps and against training minutes) and quality.json; prints a markdown
table. Minutes are wall-clock training time without evaluations (time/train_seconds), so
they depend on the machine and on what else runs on it; steps do not.

--noise RUN re-evaluates RUN's best checkpoint with different free-running seeds and with
4, 8 and 16 validation utterances: the spread of the voice metric between evaluations of the
same weights, i.e. how large a difference between two evaluations means anything.

--prenet-dropout CHECKPOINT evaluates one checkpoint with the prenet's inference dropout
at 0.5 (Tacotron2's, what training uses), 0.4, 0.3 and 0.2, three seeds each.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import OUT, demo_prepared, report

from tacotune.config import load_config
from tacotune.config.load import override_config
from tacotune.runlog import RunListener
from tacotune.train import train

COLUMNS = ("free/mcd_ratio", "free/mcd", "free/duration_ratio", "free/aligned_rate", "score")


class Curve(RunListener):
    """Collects the metrics of every evaluation."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": float(step), "minutes": metrics.get("time/train_seconds", 0.0) / 60}
        row.update({key: metrics.get(key, math.nan) for key in COLUMNS})
        self.rows.append(row)


def train_curve(args: argparse.Namespace) -> None:
    out = OUT / f"quality_{args.name}"
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        args.config,
        [
            f"train.max_steps={args.steps}",
            f"train.max_minutes={args.minutes}",
            f"train.eval_every={args.eval_every}",
            "supervision.patience=0",
            "tracking.tensorboard=false",
            *args.set,
        ],
    )
    curve = Curve()
    train(config, demo_prepared(), out / "run", listeners=[curve])
    plot(curve.rows, out / "curve.png", args.name)
    (out / "quality.json").write_text(json.dumps({"set": args.set, "rows": curve.rows}, indent=1))
    report(f"quality_{args.name}", curve.rows)


def plot(rows: list[dict[str, float]], path: Path, name: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, x in zip(axes, ("step", "minutes"), strict=True):
        ax.plot([r[x] for r in rows], [r["free/mcd_ratio"] for r in rows], marker=".")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.axhline(0.5, color="green", linestyle=":", linewidth=1, label="target 0.5")
        ax.set_xlabel("training " + x)
        ax.set_ylabel("voice metric (MCD ratio)")
        ax.legend(fontsize=8)
    fig.suptitle(f"demo corpus, {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def voice_metric_of(checkpoint: Path) -> tuple[Any, Callable[[list[str]], float]]:
    """`checkpoint`'s model, and a function: config overrides -> the voice metric of that
    model as it is then, evaluated on the demo corpus with them."""
    import torch

    from tacotune.checkpoint import checkpoint_config, load_checkpoint
    from tacotune.data.manifest import load_prepared
    from tacotune.model.tacotron2 import Tacotron2
    from tacotune.text.symbols import SYMBOLS
    from tacotune.train.evaluate import evaluate
    from tacotune.train.inputs import build_training_data

    payload = load_checkpoint(checkpoint)
    base = checkpoint_config(payload)
    model = Tacotron2(base.model, len(SYMBOLS), base.audio.n_mels)
    model.load_state_dict(payload["model"])
    prepared = load_prepared(demo_prepared())
    step, r = payload["state"]["step"], model.final_reduction_factor

    def measure(overrides: list[str]) -> float:
        config = override_config(base, overrides)
        data = build_training_data(prepared, config, 0, 1)
        evaluation = evaluate(model, [], data.utterances, config, step, r, torch.device("cpu"))
        return evaluation.metrics["free/mcd_ratio"]

    return model, measure


def prenet_dropout(checkpoint: Path) -> None:
    """The voice metric of one checkpoint with less prenet dropout at inference."""
    model, measure = voice_metric_of(checkpoint)
    rows: list[dict[str, Any]] = []
    for dropout in (0.5, 0.4, 0.3, 0.2):
        model.decoder.prenet.dropout = dropout
        ratios = [measure([f"train.seed={seed}"]) for seed in range(3)]
        rows.append({"dropout": dropout, "mean": statistics.mean(ratios), "min": min(ratios)})
    report("quality_prenet_dropout", rows)


def noise(run_dir: Path, seeds: int) -> None:
    """The voice metric of one checkpoint, evaluated again and again."""
    _, measure = voice_metric_of(run_dir / "checkpoints" / "best.pt")
    rows: list[dict[str, Any]] = []
    for utterances in (4, 8, 16):
        ratios = [
            measure([f"supervision.free_running_val_utterances={utterances}", f"train.seed={seed}"])
            for seed in range(seeds)
        ]
        rows.append(
            {
                "utterances": utterances,
                "evaluations": seeds,
                "mean": statistics.mean(ratios),
                "stdev": statistics.stdev(ratios),
                "min": min(ratios),
                "max": max(ratios),
            }
        )
    report("quality_noise", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall clock")
    parser.add_argument("--steps", type=int, default=100_000, help="step cap")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--name", default="demo", help="runs/bench/quality_NAME")
    parser.add_argument("--noise", type=Path, help="re-evaluate this bench run's best.pt")
    parser.add_argument("--seeds", type=int, default=5, help="--noise: evaluations per setting")
    parser.add_argument("--prenet-dropout", type=Path, help="evaluate this checkpoint")
    args = parser.parse_args()
    if args.noise is not None:
        noise(args.noise / "run", args.seeds)
    elif args.prenet_dropout is not None:
        prenet_dropout(args.prenet_dropout)
    else:
        train_curve(args)


if __name__ == "__main__":
    main()
