"""Model cards: what a voice is, made of what, how good, under which license, how to run it.

One card (Markdown with Hugging Face style YAML front matter) for every registered version
and every export. Its facts come from the checkpoint and, when the voice was registered from
a run directory, from the run's own files (`run_facts`): the best step, its score and
metrics. A card names files relative to itself and never holds a path of the machine that
wrote it, so it stays true when the voice is copied, exported or published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from tacotune.names import Event
from tacotune.runlog import read_jsonl

# metrics a card shows first, with what they mean
KEY_METRICS = {
    "free/mcd_ratio": "voice metric: MCD of free-running speech against the recordings, "
    "relative to chance (0 = the recordings, ~1 = says nothing right)",
    "free/mcd": "MCD of free-running speech, dB",
    "free/aligned_rate": "share of validation sentences whose attention aligned",
    "val/mel_postnet": "validation mel loss (teacher-forced)",
}
UNKNOWN_LICENSE = "other"


@dataclass(frozen=True)
class RunFacts:
    """What a training run's files say about its best weights."""

    step: int | None = None  # the step of the best checkpoint
    score: float | None = None  # its composite score (lower is better)
    metrics: dict[str, float] = field(default_factory=dict)  # its evaluation, finite numbers
    trained_steps: int | None = None  # the run's last step
    data_hours: float | None = None  # hours of speech it trained on (the training split)


def run_facts(run_dir: Path) -> RunFacts:
    """The best evaluation of a run (its last `best` event and that step's metrics.jsonl
    line); empty facts for a directory that is no run or has no evaluation yet."""
    events = read_jsonl(run_dir / "events.jsonl")
    best = [e for e in events if e.get("event") == Event.BEST]
    if not best:
        return RunFacts()
    step = int(best[-1]["step"])
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step") == step]
    metrics = {
        key: float(value)
        for key, value in (rows[-1] if rows else {}).items()
        if key not in ("step", "wall_time") and _finite(value)
    }
    score = best[-1].get("score")
    hours = next((e.get("data_hours") for e in events if e.get("event") == Event.STARTED), None)
    return RunFacts(
        step=step,
        score=float(score) if isinstance(score, int | float) else None,
        metrics=metrics,
        trained_steps=int(events[-1]["step"]) if events else None,
        data_hours=float(hours) if _finite(hours) else None,
    )


@dataclass(frozen=True)
class CardFacts:
    """Everything a card says."""

    title: str  # e.g. "anna v3"
    code_version: str  # the tacotune that trained it
    data_fingerprint: str
    data_hours: float | None  # of speech in the training split, if known
    sample_rate: int
    n_mels: int
    reduction_factor: int
    steps: int | None  # of the weights in the card's voice
    score: float | None
    metrics: Mapping[str, float]
    warm_start: str  # what training started from ("" = random weights)
    license: str  # SPDX id, or "other" when tacotune cannot know it
    license_note: str  # why that license
    vocoder: str  # "Griffin-Lim" or a neural vocoder's description
    usage: Sequence[str]  # shell commands, run where the card lies


def payload_facts(payload: Mapping[str, Any]) -> dict[str, Any]:
    """CardFacts fields a voice checkpoint holds itself (its config, step, fingerprint)."""
    from tacotune.voices import ANY_BASE, base_voices

    config = payload.get("config", {})
    warm = str(config.get("train", {}).get("warm_start", "") or "")
    bases = {voice.name: voice for voice in base_voices()}
    base = bases.get(warm) or (next(iter(bases.values()), None) if warm == ANY_BASE else None)
    if base is not None:
        license_id, note = (
            base.license,
            (
                f"fine-tuned from the base voice {base.name}, whose weights are {base.license} "
                "(see its model card): the weights carry that license; the recordings it was "
                "fine-tuned on may add their own terms"
            ),
        )
    else:
        license_id, note = (
            UNKNOWN_LICENSE,
            (
                "tacotune cannot know the license of the recordings and texts this voice was "
                "trained on; whoever publishes it states it here"
            ),
        )
    audio, model = config.get("audio", {}), config.get("model", {})
    step = payload.get("state", {}).get("step")
    return {
        "code_version": str(payload.get("code_version", "unknown")),
        "data_fingerprint": str(payload.get("dataset_fingerprint", "unknown")),
        "sample_rate": int(audio.get("sample_rate", 0)),
        "n_mels": int(audio.get("n_mels", 0)),
        "reduction_factor": int(model.get("reduction_factor", 0)),
        "steps": int(step) if isinstance(step, int) else None,
        "warm_start": base.name if base is not None else warm,
        "license": license_id,
        "license_note": note,
    }


def model_card(facts: CardFacts) -> str:
    """The Markdown model card."""
    front = {
        "language": ["ru"],
        "license": facts.license,
        "library_name": "tacotune",
        "pipeline_tag": "text-to-speech",
        "tags": ["tacotron2", "text-to-speech", "russian", "tacotune"],
    }
    lines = [
        "---",
        yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(),
        "---",
        "",
        f"# {facts.title}",
        "",
        f"A Russian Tacotron2 text-to-speech voice trained with tacotune {facts.code_version}: "
        f"{facts.sample_rate} Hz, {facts.n_mels} log-mels, {facts.reduction_factor} frames per "
        f"decoder step, vocoder: {facts.vocoder}.",
        "",
        "## Data and training",
        "",
        f"- data: {_hours(facts.data_hours)}the prepared dataset with fingerprint "
        f"`{facts.data_fingerprint}` (`tacotune prepare` writes it into the dataset's report)",
        f"- started from: {facts.warm_start or 'random weights'}",
        f"- steps: {facts.steps if facts.steps is not None else 'unknown'} (these weights)",
        "",
        "## Metrics",
        "",
        *_metrics(facts),
        "",
        "## License",
        "",
        f"`{facts.license}`: {facts.license_note}.",
        "",
        "## Intended use and limits",
        "",
        "Reading Russian text aloud in the voice it was trained on: prototypes, accessibility, "
        "personal projects, research. Numbers, abbreviations and `ё` are normalized; stress is "
        "guessed where the text has no `+` mark, and guesses can be wrong. Text in other "
        "alphabets is spelled letter by letter. Do not use it to impersonate the speaker or "
        "anyone else, or without the speaker's consent.",
        "",
        "## How to run it",
        "",
        "```bash",
        *facts.usage,
        "```",
        "",
    ]
    return "\n".join(lines)


def _metrics(facts: CardFacts) -> list[str]:
    rows = ["| metric | value | meaning |", "|---|---|---|"]
    if facts.score is not None:
        rows.append(f"| score | {facts.score:.4f} | the run's composite score, lower is better |")
    for key, meaning in KEY_METRICS.items():
        if key in facts.metrics:
            rows.append(f"| {key} | {facts.metrics[key]:.4g} | {meaning} |")
    others = sorted(k for k in facts.metrics if k not in KEY_METRICS and k != "score")
    rows += [f"| {key} | {facts.metrics[key]:.4g} | |" for key in others]
    return rows if len(rows) > 2 else ["No evaluation was recorded with this voice."]


def _hours(hours: float | None) -> str:
    """ "2.35 h of speech (its training split) in " or, unknown, "" (a card's data line)."""
    return "" if hours is None else f"{hours:.2f} h of speech (its training split) in "


def _finite(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
