"""`tacotune auto DATA_DIR -o OUT --budget MINUTES`: from data to a registered voice.

    1. prepare   DATA_DIR -> OUT/prepared; stops with the dataset report if unusable
    2. tune      OUT/study, for TUNE_SHARE of what is left of the budget
    3. train     OUT/final: the best settings, warm-started from the best trial's weights,
                 for the rest of the budget (minus a reserve for the last steps)
    4. register  OUT/registry, stage candidate (and the MLflow model registry)
    5. speak     OUT/samples: the probe sentences, wav + alignment PNG each
    6. report    OUT/report.md with plots
    7. alert     the final notification

OUT/auto.json records finished stages and the time spent; running the same command
again after an interruption continues where it stopped, within the same budget.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tacotune.config.schema import Config
from tacotune.tracking.mlflow import default_uri
from tacotune.tuning.space import apply

log = logging.getLogger(__name__)

STATE_FILE = "auto.json"
TUNE_SHARE = 0.55  # of the budget left after preparing the data
RESERVE_SECONDS = 45.0  # kept back from training for registration, samples and the report


@dataclass
class AutoState:
    """OUT/auto.json: the budget, what was spent, which stages are done (with their facts)."""

    path: Path
    budget_seconds: float
    spent_seconds: float = 0.0
    stages: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path, budget_minutes: float) -> AutoState:
        """The saved state (its budget wins over a new one), or a fresh one."""
        path = out_dir / STATE_FILE
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["budget_seconds"] != budget_minutes * 60:
                log.warning(
                    "continuing with this run's original budget of %.1f min",
                    saved["budget_seconds"] / 60,
                )
            return cls(path, saved["budget_seconds"], saved["spent_seconds"], saved["stages"])
        return cls(path, budget_minutes * 60)

    @property
    def left(self) -> float:
        """Seconds of budget not yet spent."""
        return max(0.0, self.budget_seconds - self.spent_seconds)

    def done(self, stage: str) -> Any:
        """The facts a finished stage recorded, or None."""
        return self.stages.get(stage)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage (even when it is interrupted) and record its facts when it ends."""
        facts: dict[str, Any] = {}
        started = time.monotonic()
        log.info("auto: %s (%.1f min of budget left)", name, self.left / 60)
        try:
            yield facts
            self.stages[name] = facts
        finally:
            self.spent_seconds += time.monotonic() - started
            self._save()

    def _save(self) -> None:
        data = {
            "budget_seconds": self.budget_seconds,
            "spent_seconds": self.spent_seconds,
            "stages": self.stages,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)


def run_auto(
    config: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    budget_minutes: float,
    name: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Every stage in order, skipping the ones already done; returns the report facts."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = AutoState.load(out, budget_minutes)
    name = name or Path(data_dir).resolve().name
    mlflow_uri = config.tracking.mlflow_uri or default_uri(out)
    config = apply(config, {"tracking.mlflow_uri": mlflow_uri})
    stages: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("prepare", lambda f: _prepare(config, Path(data_dir), out, f)),
        ("tune", lambda f: _tune(config, out, state, workers, f)),
        ("train", lambda f: _train(config, out, state, f)),
        ("register", lambda f: _register(out, name, mlflow_uri, state, f)),
        ("speak", lambda f: _speak(config, out, f)),
        ("report", lambda f: _report(out, name, state, f)),
        ("alert", lambda f: _alert(config, out, name, state, f)),
    ]
    for stage, run in stages:
        if state.done(stage) is None:
            with state.stage(stage) as facts:
                run(facts)
    return state.stages


def _prepare(config: Config, data_dir: Path, out: Path, facts: dict[str, Any]) -> None:
    from tacotune.data.prepare import prepare_dataset

    totals = prepare_dataset(data_dir, out / "prepared", config).report["totals"]
    facts.update(
        rows=totals["rows"],
        kept=totals["kept"],
        excluded=totals["excluded"],
        hours=totals["hours_kept"],
    )


def _tune(config: Config, out: Path, state: AutoState, workers: int, facts: dict[str, Any]) -> None:
    from tacotune.tuning import run_study

    window = TUNE_SHARE * state.left
    per_trial = window / math.ceil(config.tuning.trials / workers)
    minutes = config.tuning.trial_max_minutes or per_trial / 60
    tuned = apply(config, {"tuning.trial_max_minutes": min(minutes, per_trial / 60)})
    result = run_study(tuned, out / "prepared", out / "study", workers=workers, timeout=window)
    facts.update(
        best_trial=result.best_trial,
        best_value=result.best_value,
        best_values=result.best_values,
        counts=result.counts,
    )


def _train(config: Config, out: Path, state: AutoState, facts: dict[str, Any]) -> None:
    from tacotune.train import resume, train

    tuned = state.done("tune")
    minutes = max(1.0, (state.left - RESERVE_SECONDS) / 60)
    final = out / "final"
    if (final / "checkpoints" / "last.pt").exists():  # an interrupted final training
        result = resume(final, out / "prepared", [f"train.max_minutes={minutes}"])
    else:
        settings = apply(
            config, {**tuned["best_values"], "train.max_minutes": minutes, "tracking.mlflow": True}
        )
        start = _best_trial_weights(out, tuned["best_trial"])
        if start is None:
            log.warning("auto: no trial completed; the final model starts from scratch")
        result = train(settings, out / "prepared", final, warm_start=start)
    facts.update(
        step=result.step,
        stop_reason=result.stop_reason,
        best_score=result.best_score,
        best_step=result.best_step,
    )


def _best_trial_weights(out: Path, trial: int | None) -> Path | None:
    if trial is None:
        return None
    path = out / "study" / "trials" / f"trial_{trial:04d}" / "run" / "checkpoints" / "model.pt"
    return path if path.exists() else None


def _register(
    out: Path, name: str, mlflow_uri: str, state: AutoState, facts: dict[str, Any]
) -> None:
    from tacotune.registry import Registry

    final = state.done("train")
    version = Registry(out / "registry").register(
        name,
        out / "final" / "checkpoints" / "model.pt",
        score=final["best_score"],
        metrics={"best_score": final["best_score"], "steps": float(final["step"])},
        source=str(out / "final"),
    )
    facts.update(ref=version.ref, mlflow_version=_register_in_mlflow(out, name, mlflow_uri))


def _register_in_mlflow(out: Path, name: str, uri: str) -> str | None:
    from tacotune.tracking import read_jsonl
    from tacotune.tracking.mlflow import register_model

    started = read_jsonl(out / "final" / "events.jsonl")
    run_ids = [e["mlflow_run_id"] for e in started if e.get("mlflow_run_id")]
    return register_model(uri, name, run_ids[-1], "model/model.pt") if run_ids else None


def _speak(config: Config, out: Path, facts: dict[str, Any]) -> None:
    from tacotune.audio import save_wav
    from tacotune.plotting import alignment_figure, save_figure
    from tacotune.synthesize import Synthesizer

    synthesizer = Synthesizer(out / "final" / "checkpoints" / "model.pt")
    samples = []
    texts = list(config.train.probe_sentences)
    for index, speech in enumerate(synthesizer.speak_all(texts)):
        wav, png = f"samples/probe_{index}.wav", f"samples/probe_{index}_alignment.png"
        (out / "samples").mkdir(exist_ok=True)
        save_wav(out / wav, speech.audio, speech.sample_rate)
        save_figure(
            alignment_figure(speech.pieces[0].alignment, speech.pieces[0].text[:80]), out / png
        )
        samples.append({"text": speech.text, "wav": wav, "png": png, "complete": speech.complete})
    facts["samples"] = samples


def _report(out: Path, name: str, state: AutoState, facts: dict[str, Any]) -> None:
    from tacotune.auto import report

    study = dict(state.done("tune"))
    summary = json.loads((out / "study" / "summary.json").read_text(encoding="utf-8"))
    report.optimization_history(summary["trials"], out / "optimization_history.png")
    importances, note = _importances(out)
    report.importance_plot(importances, out / "importances.png")
    study["importance_note"] = note
    report.training_curves(out / "final", out / "training_curves.png")
    text = report.render(
        out,
        {
            "name": name,
            "data": state.done("prepare"),
            "study": study,
            "final": state.done("train"),
            "registered": state.done("register")["ref"],
            "samples": state.done("speak")["samples"],
        },
    )
    (out / "report.md").write_text(text, encoding="utf-8")
    facts["report"] = str(out / "report.md")


def _importances(out: Path) -> tuple[dict[str, float], str]:
    import optuna

    from tacotune.config.load import load_config
    from tacotune.tuning.storage import load_or_create_study

    meta = json.loads((out / "study" / "study.json").read_text(encoding="utf-8"))
    study = load_or_create_study(
        meta["name"], meta["storage"], load_config(out / "study" / "config.yaml").tuning
    )
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as error:  # too few completed trials to fit fANOVA
        return {}, f"Setting importances need more completed trials ({error})."


def _alert(config: Config, out: Path, name: str, state: AutoState, facts: dict[str, Any]) -> None:
    from tacotune.alerts import build_dispatcher

    dispatcher = build_dispatcher(config.alerts, out)
    final = state.done("train")
    dispatcher.on_event(
        {
            "time": time.time(),
            "step": final["step"],
            "event": "auto_finished",
            "reason": f"registered as {state.done('register')['ref']}",
            "best_score": final["best_score"],
            "report": str(out / "report.md"),
        }
    )
    dispatcher.close(timeout=config.alerts.timeout_seconds)
    facts["sent"] = True
