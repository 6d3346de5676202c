"""Early stopping, the divergence guard with rollback, and debug reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tacotune.checkpoint import load_checkpoint
from tacotune.config import load_config
from tacotune.losses import LossTerms
from tacotune.supervision.early_stopping import EarlyStopping
from tacotune.supervision.guard import DivergenceGuard, TrainingDiverged
from tacotune.train import loop, train
from tacotune.train import session as acoustic
from tacotune.train.session import Session

from conftest import TINY_TRAIN, tiny_train

SUPERVISION = load_config(
    None,
    [
        "supervision.max_bad_steps=3",
        "supervision.max_rollbacks=2",
        "supervision.guard_warmup=5",
        "supervision.guard_window=10",
    ],
)


def events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


# --- early stopping -------------------------------------------------------------------------


def test_patience_stops_on_a_plateau_after_exactly_patience_evaluations() -> None:
    stopper = EarlyStopping(
        patience=3, min_delta=0.01, aligned_share=1.0, align_by_step=0, voice_ready_ratio=0.6
    )
    scores = [1.0, 0.8, 0.795, 0.799, 0.7951]  # improvements after 0.8 are below min_delta
    reasons = [stopper.update(100 * i, s, 1.0, 1.0).stop_reason for i, s in enumerate(scores)]
    assert reasons == ["", "", "", "", "patience"]
    assert (stopper.best_score, stopper.best_step) == (0.795, 200)  # best.pt still follows any gain


def test_early_stopping_state_survives_a_checkpoint() -> None:
    first = EarlyStopping(
        patience=2, min_delta=0.0, aligned_share=1.0, align_by_step=0, voice_ready_ratio=0.6
    )
    first.update(100, 1.0, 0.0, 1.0)
    first.update(200, 1.5, 0.0, 1.0)
    second = EarlyStopping(
        patience=2, min_delta=0.0, aligned_share=1.0, align_by_step=0, voice_ready_ratio=0.6
    )
    second.load_state_dict(first.state_dict())
    assert second.update(300, 1.2, 0.0, 1.0).stop_reason == "patience"


def test_alignment_deadline_and_the_aligned_event() -> None:
    stopper = EarlyStopping(
        patience=0, min_delta=0.0, aligned_share=0.75, align_by_step=300, voice_ready_ratio=0.6
    )
    first = stopper.update(100, 1.0, 0.5, 1.0)
    assert not first.newly_aligned and first.stop_reason == ""
    assert stopper.update(200, 0.9, 0.75, 1.0).newly_aligned
    assert not stopper.update(300, 0.8, 1.0, 1.0).newly_aligned  # only the first time
    late = EarlyStopping(
        patience=0, min_delta=0.0, aligned_share=1.0, align_by_step=300, voice_ready_ratio=0.6
    )
    late.update(200, 1.0, 0.9, 1.0)
    stop = late.update(300, 1.0, 0.9, 1.0)
    assert stop.stop_reason == "no_alignment" and "step 300" in stop.detail


# --- the guard --------------------------------------------------------------------------------


def healthy(guard: DivergenceGuard, steps: int = 10) -> None:
    for i in range(steps):
        assert not guard.check(2.0 + 0.01 * i, 1.0 + 0.01 * i).bad


@pytest.mark.parametrize(
    ("loss", "grad", "reason"),
    [
        (math.nan, 1.0, "non-finite loss"),
        (math.inf, 1.0, "non-finite loss"),
        (2.0, math.nan, "non-finite gradient"),
        (2.0, 5e4, "above the ceiling"),
        (2.0, 40.0, "times its running median"),
        (30.0, 1.0, "running median"),
    ],
)
def test_guard_recognises_bad_steps(loss: float, grad: float, reason: str) -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    healthy(guard)
    verdict = guard.check(loss, grad)
    assert verdict.bad and reason.split(" ")[-1] in verdict.reason, verdict.reason


def test_relative_checks_wait_for_history_and_ignore_bad_steps() -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    assert not guard.check(2.0, 1.0).bad
    assert not guard.check(2.0, 300.0).bad  # no history yet: only the absolute ceiling applies
    healthy(guard)
    guard.check(math.nan, 1.0)
    assert math.nan not in guard.losses and len(guard.losses) == 10  # bad steps never enter


def test_a_streak_of_bad_steps_asks_for_a_rollback_and_a_good_step_resets_it() -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    healthy(guard)
    assert [guard.check(math.nan, 1.0).roll_back for _ in range(2)] == [False, False]
    assert not guard.check(2.0, 1.0).bad  # the streak ends
    assert [guard.check(math.nan, 1.0).roll_back for _ in range(3)] == [False, False, True]
    assert guard.bad_steps == 5


def test_rollbacks_lower_the_learning_rate_then_give_up_with_the_history() -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    assert guard.rolled_back(50, 40, "non-finite loss")["lr_scale"] == 0.5
    assert guard.rolled_back(60, 40, "non-finite loss")["lr_scale"] == 0.25
    with pytest.raises(TrainingDiverged, match="after 2 rollbacks") as error:
        guard.rolled_back(70, 40, "non-finite loss")
    assert [r["from_step"] for r in error.value.history] == [50, 60, 70]


def test_fp16_leaves_infinite_gradients_to_the_grad_scaler() -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    assert not guard.check(2.0, math.inf, loss_finite_only=True).bad
    assert guard.check(math.nan, 1.0, loss_finite_only=True).bad


def test_guard_state_survives_a_checkpoint() -> None:
    guard = DivergenceGuard(SUPERVISION.supervision)
    healthy(guard)
    guard.check(math.nan, 1.0)
    guard.rolled_back(20, 10, "x")
    other = DivergenceGuard(SUPERVISION.supervision)
    other.load_state_dict(guard.state_dict())
    assert other.state_dict() == guard.state_dict() and other.lr_scale == 0.5


# --- wired into training -----------------------------------------------------------------------

GUARDED = [
    "train.max_steps=12",
    "train.eval_every=4",
    "supervision.max_bad_steps=2",
    "supervision.max_rollbacks=2",
]


def nan_loss_on_calls(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """Make the training loss NaN on the given (1-based) loss calls: injected bad batches."""
    real = acoustic.tacotron2_loss
    count = [0]

    def poisoned(*args: Any, **kwargs: Any) -> LossTerms:
        terms = real(*args, **kwargs)
        count[0] += 1
        if count[0] in calls:
            return LossTerms(terms.total * math.nan, terms.mel, terms.mel_postnet, terms.gate)
        return terms

    monkeypatch.setattr(acoustic, "tacotron2_loss", poisoned)


def test_injected_nan_is_skipped_then_rolled_back_to_the_good_checkpoint(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_on_calls(monkeypatch, {6, 7})  # steps 6 and 7 go bad after the step-4 checkpoint
    restored: list[bool] = []
    real_roll_back = Session.roll_back

    def checked_roll_back(self: Session, reason: str) -> dict[str, Any]:
        good = self.checkpoints / "last.pt"  # step 4's, written before the bad steps
        assert not (self.checkpoints / "good.pt").exists()  # so no copy of it was made
        target = load_checkpoint(good)["model"]
        record = real_roll_back(self, reason)
        restored.append(all(torch.equal(v, target[k]) for k, v in self.model.state_dict().items()))
        return record

    monkeypatch.setattr(Session, "roll_back", checked_roll_back)
    result = train(tiny_train(*GUARDED), prepared, tmp_path / "run")
    kinds = [e["event"] for e in events(tmp_path / "run")]
    assert kinds.count("step_skipped") == 2 and "rollback" in kinds and kinds[-1] == "finished"
    rollback = next(e for e in events(tmp_path / "run") if e["event"] == "rollback")
    assert (rollback["from_step"], rollback["to_step"], rollback["lr_scale"]) == (7, 4, 0.5)
    assert "non-finite loss" in rollback["reason"]
    assert restored == [True]  # the weights right after the rollback are the checkpoint's
    metrics = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics[-1]["learning_rate_scale"] == 0.5 and metrics[-1]["rollbacks"] == 1
    assert result.step == 12 and result.stop_reason == "max_steps"
    debug = sorted((tmp_path / "run" / "debug").glob("*.json"))
    assert debug and "non-finite loss" in json.loads(debug[0].read_text())["reason"]


def test_absurd_learning_rate_rolls_back_twice_then_diverges(
    prepared: Path,
    tmp_path: Path,
) -> None:
    config = tiny_train(
        *GUARDED,
        "train.learning_rate=1000",
        "train.warmup_steps=1",
        "supervision.grad_norm_ceiling=1e3",
    )
    with pytest.raises(TrainingDiverged, match="after 2 rollbacks") as error:
        train(config, prepared, tmp_path / "run")
    assert len(error.value.history) == 3
    kinds = [e["event"] for e in events(tmp_path / "run")]
    assert kinds.count("rollback") == 2 and kinds[-1] == "diverged"


def test_an_exploding_layer_is_caught_by_the_gradient_ceiling(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = loop.open_session

    def open_with_exploding_layer(*args: Any, **kwargs: Any) -> Session:
        session = real_open(*args, **kwargs)
        weight = session.model.postnet.blocks[1].conv.weight
        weight.register_hook(lambda grad: grad * (1e8 if session.state.step >= 5 else 1.0))
        return session

    monkeypatch.setattr(loop, "open_session", open_with_exploding_layer)
    with pytest.raises(TrainingDiverged):
        train(tiny_train(*GUARDED), prepared, tmp_path / "run")
    skipped = [e for e in events(tmp_path / "run") if e["event"] == "step_skipped"]
    assert skipped[0]["step"] == 6 and "ceiling" in skipped[0]["reason"]
    report = json.loads(sorted((tmp_path / "run" / "debug").glob("*.json"))[0].read_text())
    worst = max(report["layers"], key=lambda n: report["layers"][n]["grad_norm"] or 0)
    assert worst == "postnet.blocks.1.conv.weight"  # the report points at the exploding layer


def test_cli_reports_divergence_in_one_line_and_exits_non_zero(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    diverging = [
        *TINY_TRAIN,
        *GUARDED,
        "train.learning_rate=1000",
        "train.warmup_steps=1",
        "supervision.grad_norm_ceiling=1e3",
    ]
    overrides = [a for item in diverging for a in ("--set", item)]
    code = main(["-q", "train", str(prepared), "-o", str(tmp_path / "run"), *overrides])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "tacotune: training diverged: gradient norm" in errors[0]


def test_early_stop_and_alignment_deadline_end_the_run(
    prepared: Path,
    tmp_path: Path,
) -> None:
    plateau = train(
        tiny_train(
            "train.max_steps=30",
            "train.eval_every=3",
            "supervision.patience=1",
            "supervision.min_delta=100",
        ),
        prepared,
        tmp_path / "plateau",
    )
    assert (plateau.stop_reason, plateau.step) == ("patience", 6)
    late = train(
        tiny_train("train.max_steps=30", "train.eval_every=3", "supervision.align_by_step=3"),
        prepared,
        tmp_path / "late",
    )
    assert (late.stop_reason, late.step) == ("no_alignment", 3)
    finished = events(tmp_path / "late")[-1]
    assert finished["event"] == "finished" and finished["reason"] == "no_alignment"
    assert any(e["event"] == "early_stop" for e in events(tmp_path / "late"))


def test_resume_keeps_counting_patience(prepared: Path, tmp_path: Path) -> None:
    from tacotune.train import resume

    config = tiny_train(
        "train.max_steps=3",
        "train.eval_every=3",
        "supervision.patience=2",
        "supervision.min_delta=100",
    )
    train(config, prepared, tmp_path / "run")  # evaluation 1: the first score sets the bar
    result = resume(tmp_path / "run", prepared, ["train.max_steps=30"])
    assert (result.stop_reason, result.step) == ("patience", 9)  # evaluations 2 and 3


def test_periodic_debug_reports(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train("supervision.debug_every=2"), prepared, tmp_path / "run")
    reports = sorted(p.name for p in (tmp_path / "run" / "debug").glob("*.json"))
    assert reports == ["step_0000002.json", "step_0000004.json", "step_0000006.json"]
    report = json.loads((tmp_path / "run" / "debug" / reports[0]).read_text())
    assert report["reason"] == "periodic" and "decoder.decoder_rnn.weight_hh" in report["layers"]
    assert {"teacher_forced/diagonality", "teacher_forced/focus"} <= set(report["attention"])
    assert "| layer |" in (tmp_path / "run" / "debug" / "step_0000002.md").read_text()


def test_the_voice_ready_event_fires_once_when_the_voice_metric_reaches_its_level() -> None:
    stopper = EarlyStopping(
        patience=0, min_delta=0.0, aligned_share=1.0, align_by_step=0, voice_ready_ratio=0.6
    )
    ratios = [1.1, 0.8, 0.6, 0.4, 0.7]
    voiced = [stopper.update(100 * i, r, 1.0, r).newly_voiced for i, r in enumerate(ratios)]
    assert voiced == [False, False, True, False, False]
    assert stopper.voice_ready_step == 200
