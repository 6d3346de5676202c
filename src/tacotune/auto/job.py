"""What every stage of one `tacotune auto` run shares: the saved state (OUT/auto.json) and
the job (output, name, budget state, the config every stage after the plan uses)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tacotune.auto.inputs import read_state
from tacotune.auto.plan import Plan, planned_config
from tacotune.config.load import load_config
from tacotune.config.schema import Config
from tacotune.files import write_json_atomic
from tacotune.names import AutoStage
from tacotune.tracking.mlflow import default_uri
from tacotune.tuning.space import apply

log = logging.getLogger(__name__)

STATE_FILE = "auto.json"


@dataclass
class AutoState:
    """OUT/auto.json: the budget, what was spent, which stages are done (with their facts)."""

    path: Path
    budget_seconds: float
    spent_seconds: float = 0.0
    stages: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # facts an unfinished stage needs

    @classmethod
    def load(cls, out_dir: Path, budget_minutes: float) -> AutoState:
        """The saved state (its budget wins over a new one), or a fresh one."""
        path = out_dir / STATE_FILE
        if path.exists():
            saved = read_state(path)  # checked: a damaged file is one ConfigError
            if saved["budget_seconds"] != budget_minutes * 60:
                log.warning(
                    "continuing with this run's original budget of %.1f min",
                    saved["budget_seconds"] / 60,
                )
            return cls(
                path,
                saved["budget_seconds"],
                saved["spent_seconds"],
                saved["stages"],
                saved.get("context", {}),
            )
        return cls(path, budget_minutes * 60)

    @property
    def left(self) -> float:
        """Seconds of budget not yet spent."""
        return max(0.0, self.budget_seconds - self.spent_seconds)

    def done(self, stage: AutoStage) -> Any:
        """The facts a finished stage recorded, or None."""
        return self.stages.get(stage)

    def budget_facts(self) -> dict[str, Any]:
        """Minutes of budget, spent so far, over (0 when within it), and per stage."""
        return {
            "budget_minutes": self.budget_seconds / 60,
            "spent_minutes": self.spent_seconds / 60,
            "over_minutes": max(0.0, self.spent_seconds - self.budget_seconds) / 60,
            "stage_minutes": {name: f["seconds"] / 60 for name, f in self.stages.items()},
        }

    def remember(self, key: str, value: Any) -> None:
        """Save a fact at once (e.g. an MLflow run id) for a stage that may be interrupted."""
        self.context[key] = value
        self._save()

    @contextmanager
    def stage(self, name: AutoStage) -> Iterator[dict[str, Any]]:
        """Time a stage (even when it is interrupted) and record its facts when it ends;
        `seconds` in the facts is its time over every attempt."""
        facts: dict[str, Any] = {}
        started = time.monotonic()
        log.info("auto: %s (%.1f min of budget left)", name, self.left / 60)
        try:
            yield facts
            self.stages[name] = facts
        finally:
            seconds = time.monotonic() - started
            self.spent_seconds += seconds
            self.context[f"{name}_seconds"] = self.context.get(f"{name}_seconds", 0.0) + seconds
            facts["seconds"] = self.context[f"{name}_seconds"]
            self._save()

    def _save(self) -> None:
        data = {
            "budget_seconds": self.budget_seconds,
            "spent_seconds": self.spent_seconds,
            "stages": self.stages,
            "context": self.context,
        }
        write_json_atomic(self.path, data)


@dataclass
class AutoJob:
    """What every stage of one `tacotune auto` run shares."""

    out: Path
    name: str
    state: AutoState
    base: Config  # the explicit config, or the defaults with the overrides
    explicit: bool  # --config was given: it wins over the plan's preset
    overrides: Sequence[str]
    from_scratch: bool = False  # --from-scratch: random weights even where a base voice fits

    @property
    def mlflow_uri(self) -> str:
        """The job's MLflow store: the config's, else OUT/mlflow.db."""
        return self.base.tracking.mlflow_uri or default_uri(self.out)

    def config(self) -> Config:
        """The config every stage after the plan uses: the chosen preset (or --config) with
        the plan's start, recipe and search and the job's MLflow store."""
        plan = self.state.done(AutoStage.PLAN)
        config = self.base
        if plan is not None and not self.explicit:
            config = load_config(f"{plan['preset']}.yaml", self.overrides)
        config = apply(config, {"tracking.mlflow_uri": self.mlflow_uri})
        if plan is None:
            return config
        planned = Plan.from_facts(plan)
        config = apply(config, {"train.warm_start": planned.warm_start, **planned.recipe})
        return planned_config(config, planned)
