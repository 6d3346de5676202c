"""The names that cross module and process boundaries, in one place.

A run's events.jsonl, the tuner's trial pipes, MLflow tags and `tacotune auto`'s
auto.json are read by other modules, other processes and other programs; their names
are spelled here once (StrEnum members compare equal to their strings, so files written
by an earlier version still read the same). What a voice may be named (a registry
directory, a served model, an MLflow model) is decided here too: `check_model_name`.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from typing import TypedDict

from tacotune.errors import ConfigError, short_repr

# A voice's name is a directory name (ROOT/NAME/) and the NAME of NAME:VERSION, so, like a
# dataset id, it is letters and digits of any script, `_`, `.` and `-`; it starts with a
# letter or digit (never a dot, so never `..` or hidden) and holds no `/`, `:`, space,
# glob or control character.
MODEL_NAME_PATTERN = re.compile(r"[^\W_][\w.-]*")
# characters; at most 4 UTF-8 bytes each, so ROOT/NAME/ and an export's NAME-vN stay under
# every file system's 255-byte limit on a name
MAX_MODEL_NAME_LENGTH = 60
_MODEL_NAME_RULE = (
    "a letter or digit (any script) followed by letters, digits, '_', '.' or '-', "
    f"at most {MAX_MODEL_NAME_LENGTH} characters"
)


class ModelNameError(ConfigError):
    """A voice cannot have the name it was given."""


def model_name_problem(name: str) -> str:
    """Why `name` cannot name a voice, or "" when it can (in its composed form, NFC: a
    folder name macOS wrote decomposed, `й` as `и` + a combining breve, is a name too)."""
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_MODEL_NAME_LENGTH:
        return f"it has {len(name)} characters, the most is {MAX_MODEL_NAME_LENGTH}"
    if MODEL_NAME_PATTERN.fullmatch(name) is None:
        return f"use {_MODEL_NAME_RULE}"
    return ""


def check_model_name(name: str) -> str:
    """`name` composed (NFC) if it can name a voice, else ModelNameError saying why (and
    that --name, which `registry add` and `auto` take, chooses another)."""
    problem = model_name_problem(name)
    if problem:
        raise ModelNameError(
            f"model name {short_repr(name)} is not allowed: {problem}; choose another with --name"
        )
    return unicodedata.normalize("NFC", name)


class Event(StrEnum):
    """The `event` field of a line of RUN/events.jsonl (and of the alert it may become)."""

    STARTED = "started"  # a fresh run's first step is about to run
    RESUMED = "resumed"  # a run continues from its last.pt
    EVALUATION = "evaluation"  # one evaluation is done (metrics.jsonl has its numbers)
    BEST = "best"  # the score improved: best.pt was written
    ALIGNED = "aligned"  # free-running attention counts as aligned for the first time
    VOICE_READY = "voice_ready"  # the voice metric reached supervision.voice_ready_ratio
    VOCODER_BEATS_GRIFFIN_LIM = "vocoder_beats_griffin_lim"  # first eval/mcd < gl/mcd
    STEP_SKIPPED = "step_skipped"  # the divergence guard skipped a bad step
    ROLLBACK = "rollback"  # back to checkpoints/good.pt with a lower learning rate
    EARLY_STOP = "early_stop"  # patience or the alignment deadline ended the run
    DIVERGED = "diverged"  # too many rollbacks: TrainingDiverged
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: last.pt was saved, the run can resume
    STOPPED = "stopped"  # a listener ended the run (e.g. the tuner pruned the trial)
    FINISHED = "finished"  # the run ended normally (see its reason)
    DEBUG_REPORT = "debug_report"  # RUN/debug/step_N.json was written
    AUTO_FINISHED = "auto_finished"  # `tacotune auto` registered a voice that passed its gate
    AUTO_FAILED = "auto_failed"  # `tacotune auto` ended without a usable voice


# the last event of a run: after one of these, nothing more is written
FINAL_EVENTS = frozenset({Event.FINISHED, Event.DIVERGED, Event.INTERRUPTED, Event.STOPPED})


class StopReason(StrEnum):
    """Why a run that ended normally (`finished`) ended."""

    NONE = ""  # still running
    MAX_STEPS = "max_steps"  # train.max_steps reached
    MAX_MINUTES = "max_minutes"  # train.max_minutes of wall clock used
    PATIENCE = "patience"  # the score stopped improving (early stopping)
    NO_ALIGNMENT = "no_alignment"  # not aligned by supervision.align_by_step


class RunStatus(StrEnum):
    """How a run ended, as MLflow and the listeners are told."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"  # an exception (diverged, a bug, a data error)
    KILLED = "KILLED"  # interrupted, or stopped by a listener


class TrialOutcome(StrEnum):
    """The outcome a trial process reports to its worker (tuning/trial.py -> worker.py)."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    INTERRUPTED = "interrupted"  # the trial was stopped from outside; it is queued again
    LOST = "lost"  # the process ended without reporting (the worker's own verdict)


class AutoStage(StrEnum):
    """The stages of `tacotune auto`, in order; OUT/auto.json records each finished one."""

    PREPARE = "prepare"
    PLAN = "plan"
    TUNE = "tune"
    TRAIN = "train"
    VOCODER = "vocoder"  # a neural vocoder fine-tuned on the final model's mels, if planned
    REGISTER = "register"
    SPEAK = "speak"
    REPORT = "report"
    ALERT = "alert"


class PrepareFacts(TypedDict):
    """auto.json: what `prepare` found."""

    rows: int
    kept: int
    excluded: int
    hours: float


class TuneFacts(TypedDict):
    """auto.json: where the search ended."""

    best_trial: int | None
    best_value: float | None
    best_values: dict[str, object]
    counts: dict[str, int]


class TrainFacts(TypedDict):
    """auto.json: how the final training ended."""

    step: int
    stop_reason: str
    best_score: float
    best_step: int
