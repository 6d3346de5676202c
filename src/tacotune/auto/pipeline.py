"""`tacotune auto DATA_DIR -o OUT --budget MINUTES`: from data to a registered voice.

    1. prepare   DATA_DIR -> OUT/prepared; stops with the dataset report if unusable
    2. plan      measure this machine; choose the model size (unless --config) and how the
                 budget splits between the search and the final model (auto/plan.py)
    3. tune      OUT/study, when the plan has room for trials that can learn something
    4. train     OUT/final: the best settings, warm-started from the best trial's weights,
                 for the rest of the budget (minus a reserve for the stages after it, and
                 the vocoder's time if the plan has one)
    4b. vocoder  OUT/vocoder, only if the plan gave it time: HiFi-GAN on the final model's
                 teacher-forced mels; used from here on only if it beats Griffin-Lim on the
                 validation utterances (MCD, and PESQ where installed)
    5. register  OUT/registry: stage candidate if the voice passes the quality gate (its
                 voice metric clearly below chance, its attention reaching the end of the
                 texts), else stage rejected; the MLflow model registry only for a voice;
                 with the vocoder (vocoder.pt) if it is used
    6. speak     OUT/samples: the probe sentences, wav + alignment PNG each
    7. report    OUT/report.md with plots: the plan and why, the search, the voice metric
                 against steps and minutes, the gate's verdict, which vocoder speaks and
                 why, the budget
    8. alert     the final notification (voice ready, or why there is none)

OUT/auto.json records finished stages and the time spent; running the same command
again after an interruption continues where it stopped, within the same budget. A model
that fails the gate ends the command with exit status 3 (`NoVoiceError`), after the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tacotune.auto.inputs import check_arguments
from tacotune.auto.job import AutoJob, AutoState
from tacotune.auto.plan import Plan
from tacotune.config.load import load_config, parse_overrides
from tacotune.config.schema import Config
from tacotune.errors import TacotuneError
from tacotune.files import write_text_atomic
from tacotune.names import AutoStage, Event
from tacotune.outputs import Kind, check_output
from tacotune.runlog import read_jsonl
from tacotune.tuning.space import apply

log = logging.getLogger(__name__)

RESERVE_SECONDS = 60.0  # kept back for the final evaluation, registration, samples, report
MIN_FINAL_MINUTES = 1.0  # the final model trains at least this long, whatever is left
UNLIMITED_STEPS = 10_000_000  # the final model of a preset auto chose trains for its minutes
MIN_REACHED_END = 0.5  # the quality gate: share of texts whose end the attention must reach


class NoVoiceError(TacotuneError):
    """`tacotune auto` trained a model that fails the quality gate: it is not a voice."""


def run_auto(
    config: Config | None,
    data_dir: str | Path,
    out_dir: str | Path,
    budget_minutes: float,
    *,
    overrides: Sequence[str] = (),
    name: str | None = None,
    workers: int = 1,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """Every stage in order, skipping the ones already done; returns the stages' facts.

    `config` None lets the plan choose the preset for this machine and data (with
    `overrides` applied to it); a config given explicitly is used as it is. Every model
    starts from the shipped base voice that fits it, unless `from_scratch`. Raises
    NoVoiceError at the end when the final model fails the quality gate.
    """
    name = check_arguments(budget_minutes, workers, name, data_dir)  # before any work
    out = check_output(out_dir, Kind.AUTO).resolve()  # new, empty or auto's (outputs.py)
    out.mkdir(parents=True, exist_ok=True)
    state = AutoState.load(out, budget_minutes)
    state._save()  # auto.json from the start: OUT is recognisably auto's if interrupted
    base = config if config is not None else load_config(None, overrides)
    job = AutoJob(
        out,
        name,
        state,
        base,
        explicit=config is not None,
        overrides=overrides,
        from_scratch=from_scratch,
    )
    stages: list[tuple[AutoStage, Callable[[dict[str, Any]], None]]] = [
        (AutoStage.PREPARE, lambda f: _prepare(job, Path(data_dir), f)),
        (AutoStage.PLAN, lambda f: _plan(job, f)),
        (AutoStage.TUNE, lambda f: _tune(job, workers, f)),
        (AutoStage.TRAIN, lambda f: _train(job, f)),
        (AutoStage.VOCODER, lambda f: _vocoder(job, f)),
        (AutoStage.REGISTER, lambda f: _register(job, f)),
        (AutoStage.SPEAK, lambda f: _speak(job, f)),
        (AutoStage.REPORT, lambda f: _report(job, f)),
        (AutoStage.ALERT, lambda f: _alert(job, f)),
    ]
    for stage, run in stages:
        if state.done(stage) is None:
            with state.stage(stage) as facts:
                run(facts)
    gate = state.done(AutoStage.REGISTER)["gate"]
    if not gate["usable"]:
        raise NoVoiceError(
            f"the final model is not a voice ({gate['verdict']}); it is registered as "
            f"{state.done(AutoStage.REGISTER)['ref']} (stage rejected); see {out / 'report.md'}"
        )
    return state.stages


def _prepare(job: AutoJob, data_dir: Path, facts: dict[str, Any]) -> None:
    from tacotune.data.prepare import prepare_dataset

    totals = prepare_dataset(data_dir, job.out / "prepared", job.base).report["totals"]
    facts.update(
        rows=totals["rows"],
        kept=totals["kept"],
        excluded=totals["excluded"],
        hours=totals["hours_kept"],
    )


def _plan(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.auto.plan import (
        SCRATCH_RECIPE,
        choose_preset,
        choose_recipe,
        choose_start,
        detect_hardware,
        make_plan,
        plan_vocoder,
        run_rate,
    )
    from tacotune.auto.vocoder import measure_vocoder_rate

    hardware = detect_hardware()
    hours = job.state.done(AutoStage.PREPARE)["hours"]
    reasons = [f"hardware: {hardware.describe()}; {hours:.2f} h of speech"]
    if job.explicit:
        preset, config = "", job.base
        reasons.append("model: your --config (an explicit config always wins)")
    else:
        preset, why = choose_preset(hardware, hours)
        config = load_config(f"{preset}.yaml", job.overrides)
        reasons.append(f"model: {why}")
    start, why = choose_start(config, job.from_scratch)
    reasons.append(why)
    overrides = parse_overrides(job.overrides).items()
    chosen = {f"{section}.{key}" for section, keys in overrides for key in keys}
    chosen = set(SCRATCH_RECIPE) if job.explicit else chosen  # an explicit config: all its own
    recipe, why = choose_recipe(config, start, chosen)
    reasons.append(why)
    config = apply(config, recipe)
    rate = run_rate(apply(config, {"train.warm_start": start}), job.out / "prepared", reasons)
    minutes = (job.state.left - RESERVE_SECONDS) / 60
    vocoder_rate = measure_vocoder_rate(config) if hardware.gpu else 0.0
    vocoder_minutes, why = plan_vocoder(hardware, minutes, vocoder_rate)
    reasons.append(why)
    plan = make_plan(config, preset, rate, minutes - vocoder_minutes, reasons, warm_start=start)
    plan = dataclasses.replace(
        plan,
        vocoder_minutes=vocoder_minutes,
        vocoder_steps_per_second=vocoder_rate,
        warm_start=start,
        recipe=recipe,
    )
    for reason in plan.reasons:
        log.info("auto plan: %s", reason)
    facts.update(dataclasses.asdict(plan), hardware=dataclasses.asdict(hardware))


def _tune(job: AutoJob, workers: int, facts: dict[str, Any]) -> None:
    plan = job.state.done(AutoStage.PLAN)
    if plan["trials"] == 0:
        facts.update(best_trial=None, best_value=None, best_values={}, counts={}, skipped=True)
        return
    from tacotune.tuning import run_study

    config = job.config()
    # out of time (a resumed auto): a 1 s window starts no new trial (none could finish in
    # it), and the trials finished before still count
    window = max(min(plan["tune_minutes"] * 60, job.state.left - RESERVE_SECONDS), 1.0)
    result = run_study(
        config, job.out / "prepared", job.out / "study", workers=workers, timeout=window
    )
    facts.update(
        best_trial=result.best_trial,
        best_value=result.best_value,
        best_values=result.best_values,
        counts=result.counts,
        skipped=False,
    )


def _train(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.tracking import run_listeners
    from tacotune.tracking.mlflow import MlflowRun
    from tacotune.train import resume, train

    tuned, state = job.state.done(AutoStage.TUNE), job.state
    vocoder_seconds = Plan.from_facts(state.done(AutoStage.PLAN)).vocoder_minutes * 60
    minutes = max(MIN_FINAL_MINUTES, (state.left - RESERVE_SECONDS - vocoder_seconds) / 60)
    final = job.out / "final"
    budget: dict[str, Any] = {"train.max_minutes": minutes, "tracking.mlflow": True}
    if not job.explicit:  # the time is the limit, not the preset's step count
        budget["train.max_steps"] = UNLIMITED_STEPS
    settings = apply(job.config(), {**tuned["best_values"], **budget})
    uri, experiment = settings.tracking.mlflow_uri, settings.tracking.mlflow_experiment
    mlflow = MlflowRun(uri, experiment, run_id=state.context.get("final_run_id"), run_name="final")
    state.remember("final_run_id", mlflow.run_id)
    listeners = run_listeners(settings, final, mlflow_run=mlflow)
    if (final / "checkpoints" / "last.pt").exists():  # an interrupted final training
        overrides = [f"train.max_minutes={minutes}"]
        result = resume(final, job.out / "prepared", overrides, listeners=listeners)
    else:
        start = _best_trial_weights(job.out, tuned["best_trial"])
        if start is None and not tuned["skipped"]:
            log.warning(
                "auto: no trial completed; the final model starts from %s",
                settings.train.warm_start or "random weights",
            )
        result = train(settings, job.out / "prepared", final, warm_start=start, listeners=listeners)
    facts.update(
        step=result.step,
        stop_reason=str(result.stop_reason),
        best_score=result.best_score,
        best_step=result.best_step,
        mlflow_run_id=mlflow.run_id,
    )


def _vocoder(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.auto.vocoder import train_stage

    train_stage(job, facts, RESERVE_SECONDS)


def _best_trial_weights(out: Path, trial: int | None) -> Path | None:
    if trial is None:
        return None
    path = out / "study" / "trials" / f"trial_{trial:04d}" / "run" / "checkpoints" / "model.pt"
    return path if path.exists() else None


def quality_gate(run_dir: Path, best_step: int, usable_ratio: float) -> dict[str, Any]:
    """Whether the run's best evaluation is a voice: its voice metric clearly below chance
    (<= usable_ratio) and its attention reaching the end of most texts without running
    into the step limit. Returns {"usable", "verdict", and the numbers it judged}."""
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step") == best_step]
    best = records[-1] if records else {}
    ratio = best.get("free/mcd_ratio")
    reached = best.get("free/reached_end")
    limited = best.get("free/max_steps_rate")
    problems = []
    if ratio is None or ratio > usable_ratio:
        shown = "none" if ratio is None else f"{ratio:.2f}"
        problems.append(
            f"its voice metric is {shown} (chance is ~1; a voice needs <= {usable_ratio:g})"
        )
    if reached is None or reached < MIN_REACHED_END:
        problems.append("its attention does not reach the end of most texts")
    if limited is not None and limited >= MIN_REACHED_END:
        problems.append("most decodes run into the step limit")
    verdict = "; ".join(problems) or (
        f"voice metric {ratio:.2f} (<= {usable_ratio:g}), attention reaches the end"
    )
    return {
        "usable": not problems,
        "verdict": verdict,
        "mcd_ratio": ratio,
        "reached_end": reached,
        "max_steps_rate": limited,
        "step": best_step,
    }


def _register(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.registry import Registry
    from tacotune.tracking.mlflow import register_model

    final = job.state.done(AutoStage.TRAIN)
    usable_ratio = job.config().supervision.usable_ratio
    gate = quality_gate(job.out / "final", final["best_step"], usable_ratio)
    stage = "candidate" if gate["usable"] else "rejected"
    if not gate["usable"]:
        log.error("auto: the final model is NOT a voice: %s", gate["verdict"])
    version = Registry(job.out / "registry").register(
        job.name,
        job.out / "final" / "checkpoints" / "model.pt",
        score=final["best_score"],
        metrics={
            "best_score": final["best_score"],
            "steps": float(final["step"]),
            **({"mcd_ratio": gate["mcd_ratio"]} if gate["mcd_ratio"] is not None else {}),
        },
        source=str(job.out / "final"),
        stage=stage,
        vocoder=job.state.done(AutoStage.VOCODER).get("checkpoint"),  # only if it speaks
    )
    mlflow_version = (
        register_model(job.mlflow_uri, job.name, final["mlflow_run_id"], "model/model.pt")
        if gate["usable"]
        else None
    )
    facts.update(ref=version.ref, stage=stage, gate=gate, mlflow_version=mlflow_version)


def _speak(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.audio import save_wav
    from tacotune.plotting import alignment_figure, save_figure
    from tacotune.synthesize import Synthesizer

    synthesizer = Synthesizer(job.out / "final" / "checkpoints" / "model.pt")
    vocoder = job.state.done(AutoStage.VOCODER).get("checkpoint")
    if vocoder is not None:  # it beat Griffin-Lim (auto/vocoder.py)
        from tacotune.vocoder.neural import load_vocoder

        synthesizer.vocoder = load_vocoder(vocoder, synthesizer.config.audio)
    samples = []
    (job.out / "samples").mkdir(exist_ok=True)
    texts = list(job.config().train.probe_sentences)
    for index, speech in enumerate(synthesizer.speak_all(texts)):
        wav, png = f"samples/probe_{index}.wav", f"samples/probe_{index}_alignment.png"
        save_wav(job.out / wav, speech.audio, speech.sample_rate)
        piece = speech.pieces[0]
        save_figure(alignment_figure(piece.alignment, piece.text[:80]), job.out / png)
        samples.append({"text": speech.text, "wav": wav, "png": png, "complete": speech.complete})
    facts["samples"] = samples


def _report(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.auto import report
    from tacotune.supervision.report import training_curves

    out, state = job.out, job.state
    study = dict(state.done(AutoStage.TUNE))
    if not study["skipped"]:
        from tacotune.tuning.study import setting_importances

        summary = json.loads((out / "study" / "summary.json").read_text(encoding="utf-8"))
        report.optimization_history(summary["trials"], out / "optimization_history.png")
        importances, study["importance_note"] = setting_importances(out / "study")
        report.importance_plot(importances, out / "importances.png")
    training_curves(out / "final", out / "training_curves.png")
    text = report.render(
        out,
        {
            "name": job.name,
            "data": state.done(AutoStage.PREPARE),
            "plan": state.done(AutoStage.PLAN),
            "study": study,
            "final": state.done(AutoStage.TRAIN),
            "vocoder": state.done(AutoStage.VOCODER),
            "registered": state.done(AutoStage.REGISTER),
            "samples": state.done(AutoStage.SPEAK)["samples"],
            "budget": state.budget_facts(),
        },
    )
    write_text_atomic(out / "report.md", text)
    facts["report"] = str(out / "report.md")


def _alert(job: AutoJob, facts: dict[str, Any]) -> None:
    from tacotune.alerts import build_dispatcher

    config = job.config()
    dispatcher = build_dispatcher(config.alerts, job.out)
    final, registered = job.state.done(AutoStage.TRAIN), job.state.done(AutoStage.REGISTER)
    usable = registered["gate"]["usable"]
    dispatcher.on_event(
        {
            "time": time.time(),
            "step": final["step"],
            "event": Event.AUTO_FINISHED if usable else Event.AUTO_FAILED,
            "reason": f"registered as {registered['ref']} (stage {registered['stage']})"
            if usable
            else f"no voice: {registered['gate']['verdict']}",
            "mcd_ratio": registered["gate"]["mcd_ratio"],
            "best_score": final["best_score"],
            "report": str(job.out / "report.md"),
        }
    )
    delivery = dispatcher.close(timeout=config.alerts.timeout_seconds)
    facts.update(delivered=delivery.complete, failed=delivery.failed, dropped=delivery.dropped)
