"""What `tacotune auto` reads before any work, checked: its arguments and OUT/auto.json.

A budget that is no positive number of minutes, fewer than one worker, a voice name the
registry would refuse at the end, and an auto.json that is damaged (no JSON, or facts
of the wrong type) are each one ConfigError before anything is prepared or trained.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

from tacotune.errors import ConfigError, short_repr
from tacotune.names import AutoStage, ModelNameError, check_model_name, model_name_problem

MAX_STATE_BYTES = 1 << 20  # auto.json is a few KB of facts

# What each finished stage records in auto.json and a later stage (or the report) reads:
# field -> the JSON types it may have, or the schema of the object it holds; a list of
# one schema is a list of such objects; a field ending in "?" may be missing.
Schema = dict[str, Any]
NUMBER = (int, float)
NULL = (type(None),)
FACTS: dict[str, Schema] = {
    AutoStage.PREPARE: {"rows": (int,), "kept": (int,), "excluded": (int,), "hours": NUMBER},
    AutoStage.PLAN: {
        "preset": (str,),
        "steps_per_second": NUMBER,
        "trials": (int,),
        "trial_minutes": NUMBER,
        "tune_minutes": NUMBER,
        "final_minutes": NUMBER,
        "tuned": [(str,)],
        "reasons": [(str,)],
        "vocoder_minutes?": NUMBER,
        "vocoder_steps_per_second?": NUMBER,
        "warm_start?": (str,),
        "attention?": (str,),  # older auto.json: the recipe's model.attention alone
        "recipe?": (dict,),
    },
    AutoStage.TUNE: {
        "best_trial": (int, *NULL),
        "best_value": (*NUMBER, *NULL),
        "best_values": (dict,),
        "counts": (dict,),
        "skipped": (bool,),
    },
    AutoStage.TRAIN: {
        "step": (int,),
        "stop_reason": (str,),
        "best_score": NUMBER,
        "best_step": (int,),
        "mlflow_run_id": (str, *NULL),
    },
    AutoStage.VOCODER: {
        "trained": (bool,),
        "used": (bool,),
        "reason": (str,),
        "checkpoint?": (str,),
        "step?": (int,),
        "best_step?": (int,),
        **{f"{key}?": (*NUMBER, *NULL) for key in ("mcd", "gl_mcd", "pesq", "gl_pesq")},
    },
    AutoStage.REGISTER: {
        "ref": (str,),
        "stage": (str,),
        "gate": {"usable": (bool,), "verdict": (str,), "mcd_ratio": (*NUMBER, *NULL)},
    },
    AutoStage.SPEAK: {
        "samples": [{"text": (str,), "wav": (str,), "png": (str,), "complete": (bool,)}]
    },
    AutoStage.REPORT: {"report": (str,)},
    AutoStage.ALERT: {},
}


def check_arguments(
    budget_minutes: float, workers: int, name: str | None, data_dir: str | Path
) -> str:
    """The voice's registry name (`name`, else the data folder's); ConfigError for a budget
    that is no positive number of minutes, fewer than one worker, or a name the registry
    would refuse after the whole budget was spent."""
    from tacotune.tuning.study import check_study_arguments

    if not (isinstance(budget_minutes, int | float) and 0 < budget_minutes * 60 < math.inf):
        raise ConfigError(
            f"--budget must be a positive number of minutes, found {short_repr(budget_minutes)}"
        )
    check_study_arguments(None, workers, None, None)  # --workers, checked as `tune` does
    if name is not None:
        return check_model_name(name)
    folder = Path(data_dir).resolve().name
    problem = model_name_problem(folder)
    if problem:
        raise ModelNameError(
            f"the voice would be named after the data folder, but {short_repr(folder)} is no "
            f"allowed model name ({problem}); give it a name with --name NAME"
        )
    return folder


def read_state(path: Path) -> dict[str, Any]:
    """OUT/auto.json as an earlier run saved it; ConfigError naming the file and what is
    wrong when it cannot be read, is no JSON or holds facts of the wrong type."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_STATE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from error
    saved: Any = None
    if len(raw) > MAX_STATE_BYTES:
        problem = f"it is larger than {MAX_STATE_BYTES} bytes"
    else:
        try:
            saved = json.loads(raw.decode("utf-8"))
            problem = _state_problem(saved)
        except UnicodeDecodeError as error:
            problem = f"it is not UTF-8 text (byte {error.start})"
        except json.JSONDecodeError as error:
            problem = f"it is not valid JSON ({error})"
        except RecursionError:
            problem = "it is nested too deeply"
    if problem:
        raise ConfigError(
            f"{path} is damaged: {problem}; it records the stages of an earlier `tacotune "
            "auto` run in this directory: restore it, or run auto with a new -o directory"
        )
    return typing.cast(dict[str, Any], saved)


def _state_problem(saved: Any) -> str:
    """What is wrong with the data of auto.json, or ""."""
    if not isinstance(saved, dict):
        return f"it holds {type(saved).__name__}, not an object"
    budget: Any = saved.get("budget_seconds")
    spent: Any = saved.get("spent_seconds")
    if not (_fits(budget, NUMBER) and 0 < budget < math.inf):
        return f"budget_seconds must be a positive number, found {short_repr(budget)}"
    if not (_fits(spent, NUMBER) and 0 <= spent < math.inf):
        return f"spent_seconds must be a number >= 0, found {short_repr(spent)}"
    stages, context = saved.get("stages"), saved.get("context", {})
    if not isinstance(stages, dict) or not isinstance(context, dict):
        return "stages and context must be objects"
    order = [str(stage) for stage in FACTS]
    if set(stages) != set(order[: len(stages)]):
        return f"stages holds {list(stages)}, but stages finish in the order {order}, none skipped"
    for stage, facts in stages.items():
        problem = _problem(facts, {**FACTS[stage], "seconds": NUMBER}, f"stages.{stage}")
        if problem:
            return problem
    context_schema: Schema = {"final_run_id?": (str, *NULL)}
    context_schema.update({f"{key}?": NUMBER for key in context if key.endswith("_seconds")})
    return _problem(context, context_schema, "context")


def _problem(value: Any, schema: Schema | tuple[type, ...] | list[Any], where: str) -> str:
    """Where `value` does not fit `schema` (see FACTS), or ""."""
    if isinstance(schema, tuple):
        fits = _fits(value, schema)
        kinds = "/".join("null" if t is type(None) else t.__name__ for t in schema)
        return "" if fits else f"{where} must be {kinds}, found {short_repr(value)}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} must be a list, found {short_repr(value)}"
        problems = (_problem(item, schema[0], f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for p in problems if p), "")
    if not isinstance(value, dict):
        return f"{where} must be an object, found {short_repr(value)}"
    for key, inner in schema.items():
        field = key.removesuffix("?")
        if field not in value:
            if key.endswith("?"):
                continue
            return f"{where} lacks {field}"
        problem = _problem(value[field], inner, f"{where}.{field}")
        if problem:
            return problem
    return ""


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is no number."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
