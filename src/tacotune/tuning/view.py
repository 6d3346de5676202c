"""`tacotune monitor STUDY_DIR`: a study's trials read live from its storage."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tacotune.tuning.space import short_values
from tacotune.tuning.study import open_study

SHOWN_TRIALS = 15  # the newest trials in the table
STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}


@dataclass(frozen=True)
class StudySnapshot:
    """What the study view shows."""

    study_dir: Path
    name: str
    counts: dict[str, int]  # per trial state
    best: tuple[int, float] | None  # (trial, score)
    best_values: dict[str, Any]
    trials: list[dict[str, Any]]  # number, state, score, step, values, note


def snapshot_study(study_dir: Path) -> StudySnapshot:
    """Read the study from its storage (works while workers are running)."""
    name, study = _open_study(Path(study_dir).resolve())
    trials = study.get_trials(deepcopy=False)
    counts = {name: sum(t.state.name == name for t in trials) for name in STATE_STYLE}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.values[0]) if complete else None
    rows = []
    for t in trials[-SHOWN_TRIALS:]:
        step = t.last_step
        score = t.values[0] if t.values else (t.intermediate_values.get(step) if step else None)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "score": score,
                "step": step,
                "values": t.params,
                "note": t.user_attrs.get("fail_reason", ""),
            }
        )
    return StudySnapshot(
        study_dir,
        name,
        counts,
        (best.number, best.values[0]) if best else None,
        dict(best.params) if best else {},
        rows,
    )


@functools.lru_cache(maxsize=4)
def _open_study(study_dir: Path) -> tuple[str, optuna.Study]:
    """The study's name and handle, opened once per directory: the live view refreshes every
    few seconds, and a reopened journal storage would replay the whole log each time (an open
    one reads only what was appended)."""
    opened = open_study(study_dir)
    return opened.meta["name"], opened.study


def render_study(snap: StudySnapshot) -> RenderableType:
    """Header with counts and the best trial, then the newest trials."""
    counts = ", ".join(f"{n.lower()} {c}" for n, c in snap.counts.items() if c)
    header = Text(f"study {snap.name}   {counts or 'no trials yet'}", style="bold")
    best = Text(
        "best: none yet"
        if snap.best is None
        else f"best: trial {snap.best[0]}, score {snap.best[1]:.4f}  "
        + short_values(snap.best_values)
    )
    table = Table(
        "trial", "state", "score", "step", "values", "note", title="trials", title_justify="left"
    )
    for row in snap.trials:
        score = row["score"]
        table.add_row(
            str(row["number"]),
            Text(row["state"].lower(), STATE_STYLE.get(row["state"], "")),
            "" if score is None or not math.isfinite(score) else f"{score:.4f}",
            "" if row["step"] is None else str(row["step"]),
            short_values(row["values"]),
            row["note"].splitlines()[0][:60] if row["note"] else "",
        )
    return Group(header, best, table)


def study_active(snap: StudySnapshot) -> bool:
    """The live view refreshes while trials run."""
    return snap.counts.get("RUNNING", 0) > 0
