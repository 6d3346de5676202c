"""RUN/report.md and RUN/curves.png: what a training run gave, written when it ends.

Every run writes them when it ends, however it ends (finished, stopped early, diverged,
interrupted), from its own files (events.jsonl, metrics.jsonl, samples/), so the report says
what the files say: the verdict, the curves, the best step's samples and the commands that
go on from here. Links are relative to the run directory: the report holds no machine path
and still works when the run is copied elsewhere.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from tacotune.files import write_text_atomic
from tacotune.names import FINAL_EVENTS, Event
from tacotune.plotting import save_figure
from tacotune.runlog import read_jsonl

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"


def training_curves(run_dir: Path, path: Path) -> bool:
    """An acoustic run: the voice metric against steps and against minutes, the score and the
    aligned share; False without metrics."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return False
    steps = [r["step"] for r in records]
    minutes = [(r.get("time/train_seconds") or 0.0) / 60 for r in records]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    ratio = _series(records, "free/mcd_ratio")
    axes[0].plot(steps, ratio, marker=".")
    axes[0].set_xlabel("step")
    axes[0].set_title("voice metric (MCD ratio, 1 = chance)", fontsize=9)
    axes[1].plot(minutes, ratio, marker=".")
    axes[1].set_xlabel("training minutes")
    axes[1].set_title("voice metric against time", fontsize=9)
    for ax in axes[:2]:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    for ax, key in zip(axes[2:], ("score", "free/aligned_rate"), strict=True):
        ax.plot(steps, _series(records, key), marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def vocoder_curves(run_dir: Path, path: Path) -> bool:
    """A vocoder run: its mel L1 and MCD beside Griffin-Lim's; False without metrics."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return False
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, (ours, theirs) in zip(
        axes, (("eval/mel_l1", "gl/mel_l1"), ("eval/mcd", "gl/mcd")), strict=True
    ):
        ax.plot(steps, _series(records, ours), marker=".", label="vocoder")
        ax.plot(steps, _series(records, theirs), linestyle="--", label="Griffin-Lim")
        ax.set_title(f"{ours} (lower is better)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def write_run_report(run_dir: Path, vocoder: bool = False) -> Path | None:
    """Write RUN/report.md (and RUN/curves.png); None, with a warning, if it cannot be
    written: a report must never turn a finished run into a failed one."""
    try:
        curves = (vocoder_curves if vocoder else training_curves)(run_dir, run_dir / CURVES_FILE)
        text = render_run_report(run_dir, curves, vocoder)
        write_text_atomic(run_dir / REPORT_FILE, text)
    except OSError as error:
        log.warning("%s not written (%s); the run itself is complete", REPORT_FILE, error)
        return None
    return run_dir / REPORT_FILE


def render_run_report(run_dir: Path, curves: bool, vocoder: bool = False) -> str:
    """The Markdown of report.md (see the module docstring)."""
    events = read_jsonl(run_dir / "events.jsonl")
    by_name: dict[str, dict[str, Any]] = {}
    for event in events:  # the newest of each kind
        by_name[event["event"]] = event
    best = by_name.get(Event.BEST, {})
    lines = [
        f"# tacotune {'vocoder train' if vocoder else 'train'}: {run_dir.name}",
        "",
        _verdict(events, by_name),
        "",
        *(_vocoder_result(by_name) if vocoder else _voice_result(run_dir, by_name)),
        "",
    ]
    if curves:
        lines += ["![Training curves](curves.png)", ""]
    if best:
        lines += _samples(run_dir, int(best["step"]))
    lines += ["## Next", "", *_next_steps(run_dir, by_name, vocoder), ""]
    return "\n".join(lines)


def _verdict(events: list[dict[str, Any]], by_name: dict[str, dict[str, Any]]) -> str:
    """How the run ended, in one sentence."""
    last = events[-1] if events else {}
    step = last.get("step", 0)
    name = last.get("event")
    if name not in FINAL_EVENTS:
        return f"**Ended without a final event** at step {step} (killed?); see events.jsonl."
    if name == Event.INTERRUPTED:
        return f"**Interrupted** at step {step}; last.pt is saved, the run can go on (below)."
    if name == Event.DIVERGED:
        return f"**Diverged** at step {step}: {last.get('reason', '')}"
    if name == Event.STOPPED:
        return f"**Stopped** at step {step}: {last.get('reason', '')}"
    early = by_name.get(Event.EARLY_STOP)
    if early is not None:
        return f"**Stopped early** at step {step}: {early.get('detail', '')}"
    return f"**Finished** at step {step} ({last.get('reason', '')})."


def _voice_result(run_dir: Path, by_name: dict[str, dict[str, Any]]) -> list[str]:
    best = by_name.get(Event.BEST)
    if best is None:
        return ["No evaluation yet: nothing to judge the voice by."]
    records = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    ratio = records.get(best["step"], {}).get("free/mcd_ratio")
    lines = [
        f"Best score {best['score']:.4f} at step {best['step']}; voice metric "
        f"{_number(ratio)} there (0 = the recordings, ~1 = chance)."
    ]
    ready = by_name.get(Event.VOICE_READY)
    if ready is not None:
        lines.append(
            f"The voice metric first reached {ready.get('level')} at step {ready['step']}."
        )
    return lines


def _vocoder_result(by_name: dict[str, dict[str, Any]]) -> list[str]:
    best = by_name.get(Event.BEST)
    if best is None:
        return ["No evaluation yet: nothing to judge the vocoder by."]
    lines = [f"Best mel L1 {best['score']:.4f} at step {best['step']}."]
    beats = by_name.get(Event.VOCODER_BEATS_GRIFFIN_LIM)
    lines.append(
        f"It first beat Griffin-Lim at step {beats['step']} (MCD {_number(beats.get('eval/mcd'))} "
        f"against {_number(beats.get('gl/mcd'))} dB)."
        if beats is not None
        else "It has not beaten Griffin-Lim yet (MCD): Griffin-Lim still sounds closer."
    )
    return lines


def _samples(run_dir: Path, step: int) -> list[str]:
    """The best step's samples: each wav with its alignment (acoustic) or mel figure."""
    directory = run_dir / "samples" / f"step_{step:07d}"
    wavs = sorted(directory.glob("*.wav"))
    if not wavs:
        return []
    lines = [f"## Samples (step {step})", "", "| sample | audio | figure |", "|---|---|---|"]
    for wav in wavs:
        figure = next(
            (
                p
                for p in (wav.with_name(f"{wav.stem}_{k}.png") for k in ("alignment", "mel"))
                if p.exists()
            ),
            None,
        )
        shown = f"![]({figure.relative_to(run_dir)})" if figure else ""
        link = wav.relative_to(run_dir)
        lines.append(f"| {wav.stem} | [{link}]({link}) | {shown} |")
    return [*lines, ""]


def _next_steps(run_dir: Path, by_name: dict[str, dict[str, Any]], vocoder: bool) -> list[str]:
    run = run_dir.name
    lines = []
    if Event.INTERRUPTED in by_name:
        command = "vocoder train" if vocoder else "train"
        lines.append(f"- go on: `tacotune {command} PREPARED_DIR --resume {run}`")
    if vocoder:
        lines.append(f'- speak with it: `tacotune synthesize VOICE "Привет." --vocoder {run}`')
    else:
        lines += [
            f'- speak: `tacotune synthesize {run} "Привет." -o hello.wav`',
            f"- keep it: `tacotune registry add {run} --name NAME`",
            f"- watch the numbers: `tacotune monitor {run} --once`",
        ]
    return lines


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "—"


def _series(records: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] if r.get(key) is not None else math.nan for r in records]
