"""How `tacotune auto` spends its budget on this machine: the model size, whether to search
and for how long, and how much time the final model gets — with the reasons, in words.

The rule (the step rate is measured here, on the prepared data, with a few real steps):
- A trial teaches the search something only once the voice metric separates its settings
  from the others'. On the demo corpus that takes about MIN_TRIAL_STEPS steps
  (bench/quality.py); a trial that cannot reach them in its share of the budget is not run.
- The final model matters most: it gets at least FINAL_SHARE of what is left after
  preparing the data, warm-started from the best trial. With room for fewer than
  MIN_TRIALS useful trials there is no search at all, and with fewer than WIDE_SEARCH
  only the settings that matter most on small budgets are tuned (FEW_SETTINGS).
- The paper-size model (base.yaml) needs a GPU and about an hour of speech; anything
  else trains the small model (demo.yaml). An explicit --config always wins.
- A neural vocoder (HiFi-GAN VOCODER_PRESET, trained on the final model's teacher-forced
  mels after it) gets up to VOCODER_SHARE of the time, but only where that buys it
  MIN_VOCODER_STEPS steps at the rate measured here and at least MIN_VOCODER_MINUTES: on
  a GPU. On a CPU one step at the paper's batch takes minutes (bench/vocoder.py), far from
  what it takes to sound better than Griffin-Lim, so the CPU keeps Griffin-Lim and the
  time goes to the acoustic model. Whether the vocoder is then used is decided on its
  validation numbers against Griffin-Lim's (pipeline.vocoder_verdict).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tacotune.config.rules import validate
from tacotune.config.schema import Config, SearchDimension
from tacotune.tuning.space import current_value

MIN_TRIAL_STEPS = 600  # steps before the voice metric tells settings apart (demo corpus)
TRIAL_OVERHEAD_MINUTES = 0.5  # process start, data loading, evaluations of one trial
MIN_TRIALS = 2  # fewer trials than this cannot compare anything
WIDE_SEARCH = 6  # with fewer trials, only FEW_SETTINGS are searched
FEW_SETTINGS = ("train.learning_rate", "loss.guided_attn_weight")  # matter most early on
FINAL_SHARE = 0.5  # of the budget after preparation, at least, for the final model
MIN_FINAL_MINUTES = 1.0
PAPER_SIZE_GPU_GIB = 12.0  # the paper-size model at batch 32 fits in this much GPU memory
PAPER_SIZE_HOURS = 1.0  # of kept speech before the paper-size model is worth its size
VOCODER_PRESET = "hifigan_v2.yaml"  # 0.9M parameters: near V1's quality, fast on a CPU
VOCODER_SHARE = 0.25  # of the time after preparation, at most, for the vocoder
MIN_VOCODER_MINUTES = 10.0  # less is not worth the teacher-forced mels and evaluations
# steps at the paper's batch (16 x 8192 samples) before HiFi-GAN trained from scratch
# sounds better than Griffin-Lim; bench/vocoder.py measured it at a reduced batch on CPU
# (README, "Neural vocoder"), this is that audio scaled to the paper's batch, with margin
MIN_VOCODER_STEPS = 2000
CPU_VOCODER_SECONDS_PER_STEP = 250.0  # one paper-batch step on 2 CPU cores (bench/vocoder.py)
# from random weights these settings speak sooner than the presets' (bench/time_to_voice.py,
# README "Benchmarks"); a base voice keeps those its weights were trained with
SCRATCH_RECIPE: dict[str, Any] = {
    "model.attention": "forward",  # voice metric <= 0.6 at step 1,200 against location's 1,400
    "loss.mel_loss": "l1",  # with forward attention: <= 0.6 at step 1,000 (two seeds), MSE 1,200
    # with both and train.mel_mean_init: <= 0.6 at step 600 / 700 / 650 (three runs), 2e-3: 800
    "train.learning_rate": 3e-3,
    # the paper's 0.5 slows a small corpus: with the three above and train.mel_mean_init,
    # <= 0.6 at step 300 (two seeds) against 550 / 550 / 600 (three), <= 0.5 at 400 / 350
    "model.encoder_dropout": 0.2,
}


@dataclass(frozen=True)
class Hardware:
    """What `auto` trains on."""

    cpu_cores: int
    native_bf16: bool  # the CPU computes bf16 natively (AVX512-BF16 / AMX)
    gpu: str  # the CUDA device's name; "" without one
    gpu_memory_gib: float

    def describe(self) -> str:
        """E.g. "1 GPU (NVIDIA H100, 79 GiB)" or "2 CPU cores (bf16)"."""
        if self.gpu:
            return f"1 GPU ({self.gpu}, {self.gpu_memory_gib:.0f} GiB)"
        return f"{self.cpu_cores} CPU cores" + (" (bf16)" if self.native_bf16 else "")


def detect_hardware() -> Hardware:
    """This machine: CUDA device 0 if any, else the CPU cores this process may use."""
    from tacotune.train.setup import native_cpu_bf16

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return Hardware(cores or 1, False, properties.name, properties.total_memory / 2**30)
    return Hardware(cores or 1, native_cpu_bf16(), "", 0.0)


@dataclass(frozen=True)
class Plan:
    """The split of a budget; `reasons` say why, one sentence each."""

    preset: str  # "demo", "base", or "" for the user's --config
    steps_per_second: float  # the rate the plan assumes
    trials: int  # 0: no search
    trial_minutes: float  # wall clock of one trial (training only)
    tune_minutes: float  # the search's window
    final_minutes: float  # the final model's training
    tuned: tuple[str, ...]  # the settings searched
    reasons: tuple[str, ...]
    vocoder_minutes: float = 0.0  # the neural vocoder's training after the final model; 0: none
    vocoder_steps_per_second: float = 0.0  # the vocoder's rate the plan assumes
    warm_start: str = ""  # every model's train.warm_start (a base voice's name); "": random
    # settings every model trains with on top of the config ("section.key": value)
    recipe: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Plan:
        """The plan as auto.json records it (lists for tuples, extra facts ignored)."""
        return cls(
            preset=str(facts["preset"]),
            steps_per_second=float(facts["steps_per_second"]),
            trials=int(facts["trials"]),
            trial_minutes=float(facts["trial_minutes"]),
            tune_minutes=float(facts["tune_minutes"]),
            final_minutes=float(facts["final_minutes"]),
            tuned=tuple(facts["tuned"]),
            reasons=tuple(facts["reasons"]),
            vocoder_minutes=float(facts.get("vocoder_minutes", 0.0)),  # older auto.json: none
            vocoder_steps_per_second=float(facts.get("vocoder_steps_per_second", 0.0)),
            warm_start=str(facts.get("warm_start", "")),  # older auto.json: from scratch
            recipe=_recipe(facts),
        )


def _recipe(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's recipe; an older auto.json recorded only the attention."""
    if "recipe" in facts:
        return dict(facts["recipe"])
    attention = str(facts.get("attention", ""))
    return {"model.attention": attention} if attention else {}


def choose_preset(hardware: Hardware, hours: float) -> tuple[str, str]:
    """The model size for this hardware and data, and why."""
    if not hardware.gpu:
        return "demo", (
            f"the small model (demo.yaml): on {hardware.describe()} the paper-size model "
            "trains too slowly to learn within any practical budget"
        )
    if hardware.gpu_memory_gib < PAPER_SIZE_GPU_GIB:
        return "demo", (
            f"the small model (demo.yaml): {hardware.describe()} has less than "
            f"{PAPER_SIZE_GPU_GIB:.0f} GiB for the paper-size model"
        )
    if hours < PAPER_SIZE_HOURS:
        return "demo", (
            f"the small model (demo.yaml): {hours:.2f} h of speech is too little for the "
            f"paper-size model (it needs about {PAPER_SIZE_HOURS:.0f} h)"
        )
    return "base", f"the paper-size model (base.yaml) on {hardware.describe()} with {hours:.1f} h"


def choose_start(config: Config, from_scratch: bool) -> tuple[str, str]:
    """What the models start from (a value of train.warm_start) and why: the config's own
    train.warm_start, else the shipped base voice that fits the model, else random weights."""
    from tacotune.voices import matching_base, misfits

    if from_scratch:
        return "", "start: random weights (--from-scratch)"
    if config.train.warm_start:
        return config.train.warm_start, f"start: {config.train.warm_start} (train.warm_start)"
    voice = matching_base(config)
    if voice is None:
        return (
            "",
            f"start: random weights, no shipped base voice fits this model ({misfits(config)})",
        )
    return voice.name, (
        f"start: the base voice {voice.name} ({voice.summary}); fine-tuning it is far faster "
        "than training from random weights (--from-scratch opts out)"
    )


def choose_recipe(
    config: Config, start: str, chosen_by_user: Collection[str]
) -> tuple[dict[str, Any], str]:
    """The settings every model trains with on top of `config` and why: SCRATCH_RECIPE from
    random weights, less the keys the user chose (--config or --set); nothing for a base
    voice, whose weights were trained with the config's own."""
    if start:
        return {}, f"recipe: the config's, as {start}'s weights were trained with it"
    recipe = {key: value for key, value in SCRATCH_RECIPE.items() if key not in chosen_by_user}
    parts = [f"{key} {value} (not {current_value(config, key)})" for key, value in recipe.items()]
    why = "recipe from random weights: " + (", ".join(parts) or "the config's")
    if recipe:
        why += ", as it speaks sooner (bench/time_to_voice.py)"
    kept = [key for key in SCRATCH_RECIPE if key in chosen_by_user]
    if kept:
        why += "; your config's " + ", ".join(f"{key} {current_value(config, key)}" for key in kept)
    return recipe, why


def plan_vocoder(hardware: Hardware, minutes: float, rate: float) -> tuple[float, str]:
    """Minutes for the neural vocoder out of `minutes` (0: none) and why; `rate`: its
    measured training steps per second at the preset's batch (0: not measured)."""
    share = VOCODER_SHARE * minutes
    if not hardware.gpu:
        steps = share * 60 / CPU_VOCODER_SECONDS_PER_STEP
        return 0.0, (
            f"vocoder: Griffin-Lim. HiFi-GAN would get ~{steps:.0f} steps on "
            f"{hardware.describe()} (~{CPU_VOCODER_SECONDS_PER_STEP:.0f} s per step at the "
            f"paper's batch), it needs ~{MIN_VOCODER_STEPS} to sound better"
        )
    steps = share * 60 * rate
    if share < MIN_VOCODER_MINUTES or steps < MIN_VOCODER_STEPS:
        return 0.0, (
            f"vocoder: Griffin-Lim. HiFi-GAN would get {share:.1f} min, ~{steps:.0f} steps at "
            f"the measured {rate:.2f} steps/s; it needs >= {MIN_VOCODER_MINUTES:.0f} min and "
            f"~{MIN_VOCODER_STEPS} steps to sound better"
        )
    return share, (
        f"vocoder: HiFi-GAN ({VOCODER_PRESET}) trains {share:.1f} min (~{steps:.0f} steps at "
        f"{rate:.2f} steps/s) on the final model's teacher-forced mels, and speaks only if it "
        "beats Griffin-Lim on the validation utterances"
    )


def run_rate(config: Config, prepared: Path, reasons: list[str]) -> float:
    """Steps per second of a whole run here: training steps and the evaluations between
    them (every train.eval_every steps), both measured on the prepared data."""
    from tacotune.train.throughput import measure_evaluation_seconds, measure_step_rate

    rate = measure_step_rate(config, prepared).steps_per_second
    evaluation = measure_evaluation_seconds(config, prepared)
    every = config.train.eval_every
    overall = 1 / (1 / rate + evaluation / every)
    reasons.append(
        f"measured here: {rate:.2f} training steps per second and {evaluation:.1f} s per "
        f"evaluation (every {every} steps): {overall:.2f} steps per second in a run"
    )
    return overall


def make_plan(
    config: Config,
    preset: str,
    rate: float,
    minutes: float,
    reasons: list[str],
    warm_start: str = "",
) -> Plan:
    """Split `minutes` (the budget left after preparing the data) between the search and
    the final model, for a model that trains at `rate` steps per second. A model that
    starts from `warm_start`'s weights keeps their shape: no `model.*` setting is searched
    (a trial with another reduction factor or width could not load them)."""
    trial_minutes = MIN_TRIAL_STEPS / rate / 60
    per_trial = trial_minutes + TRIAL_OVERHEAD_MINUTES
    room = (1 - FINAL_SHARE) * minutes
    trials = min(config.tuning.trials, math.floor(room / per_trial))
    if trials < MIN_TRIALS:
        reasons.append(
            f"no search: a trial needs about {per_trial:.1f} min to reach {MIN_TRIAL_STEPS} "
            f"steps (~{rate:.2f} steps/s), and {room:.1f} min leave room for fewer than "
            f"{MIN_TRIALS}; the final model gets all {minutes:.1f} min"
        )
        return Plan(preset, rate, 0, 0.0, 0.0, minutes, (), tuple(reasons))
    keys = tuple(d.key for d in config.tuning.space)
    if warm_start:
        fixed = [k for k in keys if k.startswith("model.")]
        keys = tuple(k for k in keys if k not in fixed)
        if fixed:
            reasons.append(
                f"not searched: {', '.join(fixed)} (the weights of {warm_start} fix them)"
            )
        if not keys:
            reasons.append(
                f"no search: nothing left to tune; the final model gets all {minutes:.1f} min"
            )
            return Plan(preset, rate, 0, 0.0, 0.0, minutes, (), tuple(reasons))
    if trials < WIDE_SEARCH:
        keys = tuple(k for k in keys if k in FEW_SETTINGS) or keys
        reasons.append(
            f"a narrow search: {trials} trials of {trial_minutes:.1f} min tune only "
            f"{', '.join(keys)} (the settings that matter most early on)"
        )
    else:
        reasons.append(f"a search of {trials} trials of {trial_minutes:.1f} min each")
    tune = trials * per_trial
    reasons.append(f"the final model trains {minutes - tune:.1f} min from the best trial's weights")
    return Plan(preset, rate, trials, trial_minutes, tune, minutes - tune, keys, tuple(reasons))


def planned_config(config: Config, plan: Plan) -> Config:
    """`config` with the plan's search: its trial count, trial length and searched keys."""
    space: tuple[SearchDimension, ...] = tuple(
        d for d in config.tuning.space if d.key in plan.tuned
    )
    space = tuple(d for d in space if not d.when or d.when in plan.tuned)
    tuning = dataclasses.replace(
        config.tuning,
        trials=max(plan.trials, 1),
        trial_max_minutes=plan.trial_minutes,
        space=space or config.tuning.space,
    )
    return validate(config.replace(tuning=tuning))
