"""A third model on the run engine (train/engine.py): a tiny linear regression supplies
only its step, evaluation and checkpoint contents, and gets the lifecycle: deferred
reads, checkpoints and aliases, events, exact resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tacotune.checkpoint import code_version, config_payload, load_checkpoint, rng_state
from tacotune.config import Config, load_config
from tacotune.runlog import RunLog
from tacotune.supervision.guard import DivergenceGuard
from tacotune.train.engine import Evaluated, RunLimits, RunSession, StepNumbers, run
from tacotune.train.inputs import Position
from tacotune.train.readout import masked_step
from tacotune.train.records import TrainState
from tacotune.train.resuming import read_resume
from tacotune.train.setup import Environment, setup_environment

X = torch.linspace(-1, 1, 64).reshape(16, 4)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


@dataclass
class Batches:
    """Four-row batches of (X, Y) in a seeded order per epoch, from `position`."""

    position: Position = field(default_factory=Position)

    def stream(self) -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(16, generator=torch.Generator().manual_seed(self.position.epoch))
            for start in range(self.position.batch_in_epoch * 4, 16, 4):
                self.position.batch_in_epoch += 1
                yield order[start : start + 4]
            self.position = Position(self.position.epoch + 1, 0)


@dataclass
class Tiny(RunSession):
    INFERENCE_KEYS = ("config", "model", "state")  # what model.pt keeps

    config: Config
    env: Environment
    run_dir: Path
    fingerprint: str
    data: Batches
    net: torch.nn.Linear
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    guard: DivergenceGuard
    run_log: RunLog
    state: TrainState = field(default_factory=TrainState)

    @property
    def limits(self) -> RunLimits:
        t = self.config.train
        return RunLimits(t.max_steps, 0, t.eval_every, sync_every=2, label="tiny")

    def train_step(self, batch: torch.Tensor) -> StepNumbers:
        loss = (self.net(X[batch]).squeeze(1) - Y[batch]).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.net.parameters()])
        judged = self.judge(loss, grad_norm)
        masked_step(self.optimizer, self.scaler, judged.bad)
        return StepNumbers(judged, {"total": loss}, {})

    def evaluate(self, elapsed: float) -> Evaluated:
        with torch.no_grad():
            score = float((self.net(X).squeeze(1) - Y).square().mean())
        return Evaluated(score, True, {"val/mse": score}, {}, f"mse {score:.4f}")

    def payload(self) -> dict[str, Any]:
        return {
            "config": config_payload(self.config),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": self.state.saved(),
            "guard": self.guard.state_dict(),
            "epoch": self.data.position.epoch,
            "batch_in_epoch": self.data.position.batch_in_epoch,
            "rng": rng_state(),
            "dataset_fingerprint": self.fingerprint,
            "code_version": code_version(),
        }

    def load_training_state(self, checkpoint: dict[str, Any]) -> None:
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def after_rollback(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.guard.lr_scale


def open_tiny(config: Config, run_dir: Path, run_log: RunLog, checkpoint: Any = None) -> Tiny:
    env = setup_environment(config.train)
    net = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.05, fused=True)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    session = Tiny(
        config,
        env,
        run_dir,
        "tiny-data",
        Batches(),
        net,
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        DivergenceGuard(config.supervision),
        run_log,
    )
    if checkpoint is not None:
        session.restore(checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    session.announce(checkpoint is not None, dataset="tiny-data")
    return session


def tiny_config(*overrides: str) -> Config:
    return load_config(None, ["train.eval_every=3", "train.seed=1", *overrides])


def train_tiny(config: Config, run_dir: Path, checkpoint: Any = None) -> Tiny:
    session, _ = run(lambda log: open_tiny(config, run_dir, log, checkpoint), run_dir, [])
    return session


def test_a_third_model_trains_checkpoints_and_resumes_exactly_on_the_engine(
    tmp_path: Path,
) -> None:
    straight = train_tiny(tiny_config("train.max_steps=9"), tmp_path / "straight")
    assert straight.state.step == 9
    files = {p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "model.pt"} <= files and "good.pt" not in files  # no bad step
    events = [
        json.loads(line)["event"]
        for line in (tmp_path / "straight" / "events.jsonl").read_text().splitlines()
    ]
    assert events[0] == "started" and events[-1] == "finished"
    assert events.count("evaluation") == 3
    metrics = (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert "train_mean/total" in metrics and "val/mse" in metrics

    train_tiny(tiny_config("train.max_steps=4"), tmp_path / "split")  # 4: mid-epoch, mid-read
    point = read_resume(
        tmp_path / "split",
        ["train.max_steps=9"],
        {"train.max_steps"},
        lambda c: c.train.max_steps,
        "train.max_steps",
    )
    resumed = train_tiny(point.config, tmp_path / "split", point.checkpoint)
    assert resumed.state.step == 9
    for name, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name
    last = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 9
