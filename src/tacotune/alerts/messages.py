"""Alert messages: which run events are alerted, and their plain text and attachments."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.names import Event

log = logging.getLogger(__name__)

_MAX_FACT = 300  # characters of one detail value
_SAMPLE_EVENTS = frozenset({Event.FINISHED, Event.ALIGNED, Event.AUTO_FINISHED})
_SAMPLE_FILES = ("probe_0_alignment.png", "probe_0.wav")


@dataclass(frozen=True)
class Alert:
    """One message: the event it came from, plain text, files to send along."""

    event: str
    text: str
    attachments: tuple[Path, ...] = ()


def real_number(value: Any) -> float | None:
    """A finite float for real numbers (bools excluded), else None."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if real and math.isfinite(value) else None


def _num(value: Any) -> str:
    """Integers as such, other numbers with 4 significant digits, anything else as text."""
    number = real_number(value)
    if number is None:
        return str(value)[:_MAX_FACT]
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.4g}"


def _count(value: Any) -> str:
    number = real_number(value)
    if number is None or abs(number) < 1e3:
        return _num(value)
    return f"{number / 1e6:.1f} M" if abs(number) >= 1e6 else f"{number / 1e3:.1f} k"


def _percent(value: Any) -> str:
    number = real_number(value)
    return _num(value) if number is None else f"{number * 100:.0f}%"


def _duration(value: Any) -> str:
    seconds = real_number(value)
    if seconds is None or seconds < 0:
        return _num(value)
    hours, minutes = divmod(round(seconds / 60), 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _times(value: Any, factor: float) -> Any:
    """A real number times `factor`; anything else as it is (shown as text)."""
    number = real_number(value)
    return value if number is None else number * factor


_HEADLINES = {  # alerted events and the start of their first line
    Event.STARTED: "started",
    Event.RESUMED: "resumed",
    Event.EVALUATION: "summary",
    Event.BEST: "new best score",
    Event.ALIGNED: "attention aligned",
    Event.VOICE_READY: "the voice says the words",
    Event.VOCODER_BEATS_GRIFFIN_LIM: "the neural vocoder beats Griffin-Lim",
    Event.ROLLBACK: "rollback",
    Event.EARLY_STOP: "early stop",
    Event.DIVERGED: "training diverged",
    Event.FINISHED: "finished",
    Event.INTERRUPTED: "interrupted",
    Event.AUTO_FINISHED: "voice ready (tacotune auto)",
    Event.AUTO_FAILED: "NO VOICE: the final model failed the quality gate (tacotune auto)",
}
_FACTS: dict[str, tuple[str, Callable[[Any], str]]] = {  # detail: label, format; in this order
    "reason": ("reason", _num),
    "detail": ("detail", _num),
    "device": ("device", _num),
    "world_size": ("processes", _num),
    "precision": ("precision", _num),
    "parameters": ("parameters", _count),
    "dataset": ("dataset", _num),
    "score": ("score", _num),
    "free/mcd_ratio": ("voice metric (0 = the recordings, 1 = chance)", _num),
    "mcd_ratio": ("voice metric (0 = the recordings, 1 = chance)", _num),
    "free/aligned_rate": ("free-running samples aligned", _percent),
    "aligned_rate": ("free-running samples aligned", _percent),
    "val/mel_postnet": ("validation mel loss (postnet)", _num),
    "eval/mcd": ("vocoder MCD, dB (lower is better)", _num),
    "gl/mcd": ("Griffin-Lim MCD, dB", _num),
    "eval/pesq": ("vocoder PESQ (up to 4.5)", _num),
    "gl/pesq": ("Griffin-Lim PESQ", _num),
    "minutes": ("training time", lambda value: _duration(_times(value, 60))),
    "steps_per_second": ("steps per second", _num),
    "eta_seconds": ("time left (estimate)", _duration),
    "bad_steps": ("bad steps", _num),
    "rollbacks": ("rollbacks", _num),
    "resume_with": ("resume with", _num),
    "report": ("report", _num),
}


def _at(step: Any) -> str:
    return "" if step is None else f" at step {_num(step)}"


def _rollback(d: Mapping[str, Any]) -> str:
    """E.g. "rollback #2 at step 1200 → step 1000, learning rate ×0.50; reason: ..."."""
    text = "rollback" + ("" if d.get("attempt") is None else f" #{_num(d['attempt'])}")
    text += _at(d.get("from_step", d.get("step")))
    text += "" if d.get("to_step") is None else f" → step {_num(d['to_step'])}"
    scale = real_number(d.get("lr_scale"))
    text += "" if scale is None else f", learning rate ×{scale:.2f}"
    return text + ("" if d.get("reason") is None else f"; reason: {_num(d['reason'])}")


def _best(d: Mapping[str, Any]) -> list[str]:
    if "best_score" not in d:
        return []
    score = real_number(d["best_score"])
    if score is None:
        return ["best score: none (no evaluation yet)"]
    return [f"best score: {_num(score)}{_at(d.get('best_step'))}"]


def _newest_samples(run_dir: Path) -> tuple[Path, ...]:
    """probe_0's alignment PNG and wav from the newest samples/step_* holding either, or
    from samples/ itself (where `tacotune auto` puts its final samples)."""

    def step_of(path: Path) -> int:
        digits = path.name.removeprefix("step_")
        return int(digits) if digits.isdigit() else -1

    try:
        steps = sorted((run_dir / "samples").glob("step_*"), key=step_of, reverse=True)
        for directory in [*steps, run_dir / "samples"]:
            files = tuple(directory / f for f in _SAMPLE_FILES if (directory / f).is_file())
            if files:
                return files
    except OSError as err:
        log.debug("alerts: cannot list samples in %s: %s", run_dir, err)
    return ()


def format_alert(event: Mapping[str, Any], run_dir: Path, send_samples: bool) -> Alert | None:
    """The alert for a run event, or None for events that are not alerted."""
    name = event.get("event")
    if not isinstance(name, str) or name not in _HEADLINES:
        return None
    if name == Event.ROLLBACK:  # everything in one line
        headline, facts = _rollback(event), []
    else:
        headline = _HEADLINES[Event(name)] + _at(event.get("step"))
        facts = [
            f"{label}: {fmt(event[key])}"
            for key, (label, fmt) in _FACTS.items()
            if event.get(key) is not None
        ]
    text = "\n".join([f"tacotune run {run_dir.name or run_dir}: {headline}", *facts, *_best(event)])
    attachments = _newest_samples(run_dir) if send_samples and name in _SAMPLE_EVENTS else ()
    return Alert(event=str(name), text=text, attachments=attachments)
