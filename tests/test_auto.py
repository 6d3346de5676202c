"""`tacotune auto`: data to a registered voice, and resuming after an interruption."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tacotune.auto import pipeline as auto
from tacotune.config import Config, load_config
from tacotune.registry import Registry

from conftest import TINY_TRAIN, good_rows

AUTO = [
    *TINY_TRAIN,
    "train.eval_every=3",
    "train.max_steps=6",
    "tuning.trials=2",
    "tuning.trial_max_steps=6",
    "tuning.startup_trials=1",
    "tuning.prune_after_step=3",
    "tuning.space=[{key: train.learning_rate, low: 0.001, high: 0.003, log: true}]",
]


def auto_config() -> Config:
    return load_config(None, AUTO)


@pytest.fixture
def data_dir(make_ljspeech: Callable[..., Path]) -> Path:
    return make_ljspeech(good_rows(12), name="voice")


def test_auto_goes_from_data_to_a_registered_voice_with_a_report(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    stages = auto.run_auto(auto_config(), data_dir, out, budget_minutes=5)
    assert list(stages) == ["prepare", "tune", "train", "register", "speak", "report", "alert"]
    assert stages["prepare"]["kept"] == 12
    assert stages["tune"]["counts"]["complete"] + stages["tune"]["counts"]["pruned"] == 2
    version = Registry(out / "registry").get("voice")
    assert version.ref == stages["register"]["ref"] == "voice:1" and version.stage == "candidate"
    report = (out / "report.md").read_text(encoding="utf-8")
    for piece in (
        "## Search",
        "## Final model",
        "optimization_history.png",
        "training_curves.png",
        "samples/probe_0.wav",
        "voice:1",
    ):
        assert piece in report, piece
    assert (out / "samples" / "probe_0.wav").exists()
    state = json.loads((out / "auto.json").read_text())
    assert 0 < state["spent_seconds"] < state["budget_seconds"]


def test_auto_continues_where_it_was_interrupted(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_speak = auto._speak

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(auto, "_speak", interrupted)
    with pytest.raises(KeyboardInterrupt):
        auto.run_auto(auto_config(), data_dir, out, budget_minutes=5)
    done = json.loads((out / "auto.json").read_text())["stages"]
    assert list(done) == ["prepare", "tune", "train", "register"]

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(auto, "_speak", real_speak)
    for stage in ("_prepare", "_tune", "_train", "_register"):
        monkeypatch.setattr(auto, stage, must_not_run)
    stages = auto.run_auto(auto_config(), data_dir, out, budget_minutes=5)
    assert stages["speak"]["samples"] and (out / "report.md").exists()
    assert len(Registry(out / "registry").versions()) == 1  # registered once


def test_an_unusable_dataset_stops_auto_with_its_report(
    make_ljspeech: Callable[..., Path], tmp_path: Path
) -> None:
    from tacotune.errors import DatasetError

    data = make_ljspeech([(f"x{i}", "тишина.", None) for i in range(5)], name="broken")
    with pytest.raises(DatasetError, match="were excluded"):
        auto.run_auto(auto_config(), data, tmp_path / "out", budget_minutes=5)
    assert (tmp_path / "out" / "prepared" / "report.md").exists()
    assert not (tmp_path / "out" / "study").exists()
