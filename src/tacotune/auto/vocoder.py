"""`tacotune auto`, stage 4b: a neural vocoder for the final model, if the plan gave it time.

HiFi-GAN (plan.VOCODER_PRESET) trains from scratch on the final acoustic model's
teacher-forced mels (OUT/vocoder) for the plan's minutes, or what is left of the budget.
Its best checkpoint (lowest validation mel L1) is used for the registered voice and the
samples only if it beats Griffin-Lim there: a lower MCD (the issue's criterion) and, where
PESQ is installed, a higher PESQ, because MCD alone also rewards vocoders that still sound
worse than Griffin-Lim (README, "Neural vocoder").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tacotune.auto import plan as planning
from tacotune.auto.job import AutoJob
from tacotune.auto.plan import Plan
from tacotune.config.load import load_config
from tacotune.config.schema import Config
from tacotune.names import AutoStage
from tacotune.runlog import read_jsonl

log = logging.getLogger(__name__)

VOCODER_DIR = "vocoder"
UNLIMITED_STEPS = 10_000_000  # the vocoder trains for its minutes


def train_stage(job: AutoJob, facts: dict[str, Any], reserve_seconds: float) -> None:
    """Train (or continue) the vocoder and decide whether it speaks; `facts` gets
    trained, used, reason and, when used, the checkpoint."""
    plan = Plan.from_facts(job.state.done(AutoStage.PLAN))
    minutes = min(plan.vocoder_minutes, (job.state.left - reserve_seconds) / 60)
    if not plan.vocoder_minutes:
        why = next((r for r in plan.reasons if r.startswith("vocoder:")), "the plan has none")
        facts.update(trained=False, used=False, reason=why)
        return
    if minutes < planning.MIN_VOCODER_MINUTES:  # the stages before it overran
        reason = f"only {max(minutes, 0):.1f} of its {plan.vocoder_minutes:.1f} min were left"
        facts.update(trained=False, used=False, reason=reason)
        return
    result = _train(job, minutes)
    verdict = vocoder_verdict(job.out / VOCODER_DIR, result.best_step)
    checkpoint = job.out / VOCODER_DIR / "checkpoints" / "model.pt"
    facts.update(trained=True, step=result.step, best_step=result.best_step, **verdict)
    if verdict["used"]:
        facts["checkpoint"] = str(checkpoint)
    log.info("auto vocoder: %s", verdict["reason"])


def vocoder_config(config: Config) -> Config:
    """`config` with the plan's vocoder section (plan.VOCODER_PRESET)."""
    return config.replace(vocoder=load_config(planning.VOCODER_PRESET).vocoder)


def measure_vocoder_rate(config: Config) -> float:
    """Training steps per second of the plan's vocoder here (a few real steps)."""
    from tacotune.device import resolve_device
    from tacotune.vocoder.throughput import measure_vocoder_rate as measure

    vocoder = vocoder_config(config)
    return measure(vocoder, resolve_device(vocoder.train.device)).steps_per_second


def _train(job: AutoJob, minutes: float) -> Any:
    from tacotune.checkpoint import load_checkpoint
    from tacotune.tracking import run_listeners
    from tacotune.tuning.space import apply
    from tacotune.vocoder.train import resume_vocoder, train_vocoder

    run, prepared = job.out / VOCODER_DIR, job.out / "prepared"
    budget = {"vocoder.max_minutes": minutes, "vocoder.max_steps": UNLIMITED_STEPS}
    config = apply(vocoder_config(job.config()), budget)
    listeners = run_listeners(config, run)
    if (run / "checkpoints" / "last.pt").exists():  # an interrupted vocoder stage
        done = load_checkpoint(run)["state"]["elapsed"] / 60
        overrides = [f"vocoder.max_minutes={done + minutes}"]
        return resume_vocoder(run, prepared, overrides, listeners=listeners)
    acoustic = job.out / "final" / "checkpoints" / "model.pt"
    return train_vocoder(config, prepared, run, from_acoustic=acoustic, listeners=listeners)


def vocoder_verdict(run_dir: Path, best_step: int) -> dict[str, Any]:
    """Whether the vocoder's best evaluation beats Griffin-Lim's on the same mels: a lower
    eval/mcd than gl/mcd and, where both have PESQ, a higher eval/pesq. Returns {"used",
    "reason", and the numbers it judged}."""
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step") == best_step]
    best = records[-1] if records else {}
    numbers = {k: best.get(k) for k in ("eval/mcd", "gl/mcd", "eval/pesq", "gl/pesq")}
    mcd, gl_mcd = numbers["eval/mcd"], numbers["gl/mcd"]
    pesq, gl_pesq = numbers["eval/pesq"], numbers["gl/pesq"]
    problems = []
    if mcd is None or gl_mcd is None:
        problems.append("it was never evaluated")
    elif mcd >= gl_mcd:
        problems.append(f"its MCD {mcd:.2f} dB is not below Griffin-Lim's {gl_mcd:.2f}")
    if pesq is not None and gl_pesq is not None and pesq <= gl_pesq:
        problems.append(f"its PESQ {pesq:.2f} is not above Griffin-Lim's {gl_pesq:.2f}")
    if problems:
        reason = "Griffin-Lim speaks: the neural vocoder " + "; ".join(problems)
    else:
        reason = f"the neural vocoder speaks: MCD {mcd:.2f} dB < Griffin-Lim's {gl_mcd:.2f}"
        if pesq is not None and gl_pesq is not None:
            reason += f", PESQ {pesq:.2f} > {gl_pesq:.2f}"
    keys = {"eval/mcd": "mcd", "gl/mcd": "gl_mcd", "eval/pesq": "pesq", "gl/pesq": "gl_pesq"}
    return {"used": not problems, "reason": reason, **{keys[k]: v for k, v in numbers.items()}}
