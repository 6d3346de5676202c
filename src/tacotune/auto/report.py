"""The `tacotune auto` report: what the data, the search and the final training gave.

Plots: the optimization history (every trial's score and the best so far), the
importance of each tuned setting (when enough trials completed), the final run's
curves; then the probe samples with their alignment images.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from tacotune.plotting import save_figure

log = logging.getLogger(__name__)


def optimization_history(trials: list[dict[str, Any]], path: Path) -> bool:
    """Score per trial and the best so far (summary.json rows); False if nothing completed."""
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    numbers, values = [t["number"] for t in done], [t["value"] for t in done]
    ax.scatter(numbers, values, label="complete")
    best, so_far = [], math.inf
    for value in values:
        so_far = min(so_far, value)
        best.append(so_far)
    ax.step(numbers, best, where="post", color="red", label="best so far")
    stopped = [t["number"] for t in trials if t["state"] in ("pruned", "fail")]
    for number in stopped:
        ax.axvline(number, color="grey", alpha=0.3)
    ax.set_xlabel("trial (grey: pruned or failed)")
    ax.set_ylabel("score (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def importance_plot(importances: dict[str, float], path: Path) -> bool:
    """Horizontal bars of setting importances; False when there are none."""
    if not importances:
        return False
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def render(out_dir: Path, facts: dict[str, Any]) -> str:
    """The markdown report; `facts` is what auto/pipeline.py gathered (see there)."""
    data, plan, final = facts["data"], facts["plan"], facts["final"]
    registered, gate = facts["registered"], facts["registered"]["gate"]
    verdict = (
        f"**A voice** ({gate['verdict']}): registered as `{registered['ref']}`, stage candidate."
        if gate["usable"]
        else f"**NOT A VOICE**: {gate['verdict']}. Registered as `{registered['ref']}` with "
        "stage *rejected* so that nobody mistakes it for a usable voice; give `auto` more "
        "time or more data (see the plan below)."
    )
    lines = [
        f"# tacotune auto: {facts['name']}",
        "",
        verdict,
        "",
        f"Data: {data['kept']} utterances kept of {data['rows']} ({data['hours']:.2f} h), "
        f"{data['excluded']} excluded — see `prepared/report.md`.",
        "",
        "## Plan",
        "",
        *[f"- {reason}" for reason in plan["reasons"]],
        "",
        *_search(out_dir, facts["study"]),
        "## Final model",
        "",
        f"Trained {final['step']} steps ({final['stop_reason']}); best score "
        f"{final['best_score']:.4f} at step {final['best_step']}, voice metric "
        f"{_ratio(gate['mcd_ratio'])} there (0 = the recordings, ~1 = chance).",
        "",
    ]
    if (out_dir / "training_curves.png").exists():
        lines += ["![Training curves](training_curves.png)", ""]
    lines += _vocoder(facts.get("vocoder") or {})
    lines += ["## Samples", "", "| text | audio | alignment | complete |", "|---|---|---|---|"]
    for sample in facts["samples"]:
        lines.append(
            f"| {sample['text']} | [{sample['wav']}]({sample['wav']}) | "
            f"![]({sample['png']}) | {'yes' if sample['complete'] else 'NO'} |"
        )
    budget = facts["budget"]
    lines += ["", "## Budget", "", _budget_line(budget), "", "| stage | minutes |", "|---|---|"]
    lines += [f"| {name} | {minutes:.1f} |" for name, minutes in budget["stage_minutes"].items()]
    return "\n".join(lines) + "\n"


def _vocoder(vocoder: dict[str, Any]) -> list[str]:
    """Which vocoder the samples and the registered voice speak with, and why."""
    lines = ["## Vocoder", ""]
    if not vocoder.get("trained"):
        reason = vocoder.get("reason", "the plan had none")
        return [*lines, f"Griffin-Lim: no neural vocoder was trained ({reason}).", ""]
    used = "HiFi-GAN (`vocoder/`)" if vocoder["used"] else "Griffin-Lim"
    lines += [
        f"**{used}** speaks. {vocoder['reason']}.",
        "",
        f"HiFi-GAN trained {vocoder['step']} steps on the final model's teacher-forced mels; "
        f"its best validation (step {vocoder['best_step']}) against Griffin-Lim on the same "
        "mels:",
        "",
        "| | MCD, dB (lower is better) | PESQ (higher is better) |",
        "|---|---|---|",
        f"| HiFi-GAN | {_number(vocoder.get('mcd'))} | {_number(vocoder.get('pesq'))} |",
        f"| Griffin-Lim | {_number(vocoder.get('gl_mcd'))} | {_number(vocoder.get('gl_pesq'))} |",
        "",
    ]
    return lines


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _search(out_dir: Path, study: dict[str, Any]) -> list[str]:
    lines = ["## Search", ""]
    if study["skipped"]:
        return [*lines, "No search: the plan gave all the time to the final model.", ""]
    lines += [f"Trials: {study['counts']}.", ""]
    if study["best_trial"] is not None:
        lines += [f"Best trial {study['best_trial']}, score {study['best_value']:.4f}:", ""]
        lines += [f"- `{k}` = {v}" for k, v in study["best_values"].items()] + [""]
    else:
        lines += ["No trial completed: the final model trained with the base settings.", ""]
    for image, caption in (
        ("optimization_history.png", "Optimization history"),
        ("importances.png", "Setting importances"),
    ):
        if (out_dir / image).exists():
            lines += [f"![{caption}]({image})", ""]
    if study.get("importance_note"):
        lines += [study["importance_note"], ""]
    return lines


def _ratio(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _budget_line(budget: dict[str, Any]) -> str:
    used = f"{budget['spent_minutes']:.1f} of {budget['budget_minutes']:.1f} minutes"
    if round(budget["over_minutes"], 1) > 0:  # "0.0 min over" is within budget to a reader
        return (
            f"Over budget: {used} ({budget['over_minutes']:.1f} min over, before this "
            "report); the stages took:"
        )
    return f"Within budget: {used} before this report; the stages took:"
