"""Minutes until the voice metric reaches 0.6 and 0.5: from scratch against the base voice.

    python bench/time_to_voice.py                                  # demo corpus, both recipes
    python bench/time_to_voice.py --data corpora/heldout --minutes 10
    python bench/time_to_voice.py --recipes base --set train.learning_rate=0.001 --name lr1e-3

For every corpus (--data, repeatable; default the bundled demo corpus) and recipe, trains
demo.yaml for --minutes of wall clock (no early stopping), evaluating every --eval-every
steps, and reports the first evaluation at or below each level: its step, its training
minutes (time/train_seconds: without evaluations) and its wall-clock minutes (with them).
Recipes: `scratch` (random weights, today's demo recipe) and `base` (train.warm_start=base:
the shipped base voice). A corpus the base never heard: `scripts/make_base_corpus.py
--heldout` (espeak-ng's ru+f4, other sentences than the base's).

Time depends on the machine and on what else runs on it: measure on a quiet machine
(nothing else training), and compare recipes only within one run of this script.
Writes runs/bench/ttv_NAME/ (the runs, curve.png, ttv.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import OUT, ROOT, report

from tacotune.config import load_config
from tacotune.data.prepare import prepare_dataset
from tacotune.runlog import RunListener
from tacotune.train import train

RECIPES = {"scratch": (), "base": ("train.warm_start=base",)}
LEVELS = (0.6, 0.5)


class Curve(RunListener):
    """The voice metric of every evaluation, with training and wall-clock minutes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rows: list[dict[str, float]] = []

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.append(
            {
                "step": float(step),
                "train_minutes": metrics.get("time/train_seconds", 0.0) / 60,
                "wall_minutes": (time.monotonic() - self.started) / 60,
                "mcd_ratio": metrics.get("free/mcd_ratio", math.nan),
            }
        )


def first_at(rows: list[dict[str, float]], level: float) -> dict[str, float] | None:
    """The first evaluation at or below `level` (after step 0), or None."""
    return next((r for r in rows if r["step"] > 0 and r["mcd_ratio"] <= level), None)


def run_recipe(
    prepared: Path, out: Path, recipe: str, args: argparse.Namespace
) -> list[dict[str, float]]:
    """Train one recipe on one prepared corpus; its curve."""
    config = load_config(
        "demo.yaml",
        [
            "train.max_steps=100000",
            f"train.max_minutes={args.minutes}",
            f"train.eval_every={args.eval_every}",
            "supervision.patience=0",
            "tracking.tensorboard=false",
            *RECIPES[recipe],
            *args.set,
        ],
    )
    curve = Curve()
    train(config, prepared, out, listeners=[curve])
    return curve.rows


def summarize(corpus: str, recipe: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    """One table row: the final metric and when each level was first reached."""
    row: dict[str, Any] = {
        "corpus": corpus,
        "recipe": recipe,
        "steps": int(rows[-1]["step"]),
        "final": rows[-1]["mcd_ratio"],
        "best": min(r["mcd_ratio"] for r in rows),
    }
    for level in LEVELS:
        hit = first_at(rows, level)
        row[f"≤{level} step"] = int(hit["step"]) if hit else "-"
        row[f"≤{level} train min"] = round(hit["train_minutes"], 2) if hit else "-"
        row[f"≤{level} wall min"] = round(hit["wall_minutes"], 2) if hit else "-"
    return row


def plot(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, x in zip(axes, ("step", "train_minutes"), strict=True):
        for label, rows in curves.items():
            ax.plot([r[x] for r in rows], [r["mcd_ratio"] for r in rows], marker=".", label=label)
        for level in LEVELS:
            ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel("voice metric (MCD ratio, 1 = chance)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="corpus (repeatable)")
    parser.add_argument(
        "--recipes", nargs="+", choices=sorted(RECIPES), default=["scratch", "base"]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="wall clock per run")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="default", help="runs/bench/ttv_NAME")
    args = parser.parse_args()
    out = OUT / f"ttv_{args.name}"
    shutil.rmtree(out, ignore_errors=True)
    curves: dict[str, list[dict[str, float]]] = {}
    rows = []
    for data in args.data or [ROOT / "data" / "demo"]:
        prepared = OUT / "prepared_ttv" / data.resolve().name
        prepare_dataset(data, prepared, load_config("demo.yaml"))
        for recipe in args.recipes:
            label = f"{data.resolve().name}/{recipe}"
            curves[label] = run_recipe(prepared, out / data.resolve().name / recipe, recipe, args)
            rows.append(summarize(data.resolve().name, recipe, curves[label]))
    plot(curves, out / "curve.png")
    (out / "ttv.json").write_text(json.dumps({"args": vars(args), "curves": curves}, default=str))
    report(f"ttv_{args.name}", rows)


if __name__ == "__main__":
    main()
