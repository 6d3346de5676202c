"""The training loop on a small synthetic dataset: contract, checkpoints, resume, warm start."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from tacotune.checkpoint import load_checkpoint, save_checkpoint
from tacotune.config import load_config
from tacotune.data.dataset import TextMelDataset, mean_log_mel
from tacotune.data.manifest import load_prepared
from tacotune.errors import CheckpointError, ConfigError
from tacotune.files import OutputError
from tacotune.names import RunStatus
from tacotune.runlog import RunListener
from tacotune.train import resume, train

from conftest import TINY_TRAIN, tiny_train


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def test_tensorboard_holds_one_value_per_tag_and_step(prepared: Path, tmp_path: Path) -> None:
    """Per-step values (`train/...`) and the means an evaluation writes (`train_mean/...`) are
    different numbers: under one tag a curve would jump at every evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tacotune.tracking import TensorBoardListener

    run = tmp_path / "run"
    train(tiny_train("tracking.log_every=1"), prepared, run, listeners=[TensorBoardListener(run)])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/total" in tags and "train_mean/total" in tags
    for tag in tags:
        steps = [scalar.step for scalar in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag} has two values at one step: {steps}"
    assert [s.step for s in events.Scalars("train/total")] == [1, 2, 3, 4, 5, 6]
    assert [s.step for s in events.Scalars("train_mean/total")] == [3, 6]


def test_progress_lines_off_a_terminal(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a pipe, nohup or CI a run logs its progress (step, loss, rate, ETA, the newest
    voice metric) and says when it evaluates."""
    from tacotune import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    progress.configure(bars=False, lines=True)
    try:
        with caplog.at_level("INFO"):
            train(tiny_train(), prepared, tmp_path / "run")
    finally:
        progress.configure(bars=False, lines=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "tacotune.progress"]
    assert any(line.startswith("training: 1/6 (17%), loss ") for line in lines), lines
    assert any("voice metric" in line and "(step 3)" in line for line in lines), lines
    assert all("ETA" in line and "/s" in line for line in lines)
    messages = [r.getMessage() for r in caplog.records]
    assert "step 6: evaluating" in messages
    assert any(m.startswith("step 6 evaluated in ") for m in messages)


def test_run_directory_contract(prepared: Path, tmp_path: Path) -> None:
    result = train(tiny_train(), prepared, tmp_path / "run")
    run = tmp_path / "run"
    assert (result.step, result.stop_reason) == (6, "max_steps")
    assert load_config(run / "config.yaml") == tiny_train()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]
    for key in (
        "wall_time",
        "score",
        "val/mel_postnet",
        "val/gate_accuracy",
        "free/diagonality",
        "free/aligned_rate",
        "train_mean/total",
        "train_mean/grad_norm",
    ):
        assert key in metrics[-1], key
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[0] == "started" and events[-1] == "finished" and "best" in events
    report = (run / "report.md").read_text(encoding="utf-8")  # every run reports, as auto does
    assert "**Finished** at step 6 (max_steps)." in report and "voice metric" in report
    assert "![Training curves](curves.png)" in report and (run / "curves.png").is_file()
    assert str(tmp_path) not in report  # links inside the run: no machine path
    assert "](samples/step_000000" in report
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "last.pt",  # full state; also the rollback target (no bad step: no good.pt)
        "best.pt",  # weights, config and state only: synthesis, the registry, warm start
        "model.pt",  # the same as best.pt, the name the registry and auto use
        "step_0000006.pt",  # weights only as well
    }
    full, light = (load_checkpoint(run / "checkpoints" / n) for n in ("last.pt", "best.pt"))
    assert "optimizer" in full and "optimizer" not in light and "model" in light
    sample = run / "samples" / "step_0000006"
    assert (sample / "probe_0.wav").exists() and (sample / "probe_0_alignment.png").exists()


def test_checkpoint_is_self_describing_and_atomic(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train(), prepared, tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run")  # a run directory means its last.pt
    assert payload["state"]["step"] == 6
    assert payload["config"]["model"]["decoder_rnn_dim"] == 24
    assert payload["text_frontend"]["stress"] == "off"
    assert len(payload["text_frontend"]["symbols"]) == payload["n_symbols"]
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "dataset_fingerprint",
        "code_version",
        "epoch",
        "batch_in_epoch",
    } <= set(payload)
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, payload)
    assert not list(tmp_path.glob(".copy.pt*.tmp"))
    assert torch.equal(
        load_checkpoint(copy)["model"]["postnet.blocks.0.conv.weight"],
        payload["model"]["postnet.blocks.0.conv.weight"],
    )
    copy.write_bytes(copy.read_bytes()[:1000])  # what a crash mid-write would have left
    with pytest.raises(CheckpointError, match="not a tacotune checkpoint or is damaged"):
        load_checkpoint(copy)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    prepared: Path, tmp_path: Path
) -> None:
    train(tiny_train(), prepared, tmp_path / "straight")
    train(tiny_train("train.max_steps=3"), prepared, tmp_path / "split")
    result = resume(tmp_path / "split", prepared, ["train.max_steps=6"])
    assert result.step == 6
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert different == []


def test_resume_refuses_to_change_the_model(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train("train.max_steps=3"), prepared, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model\.decoder_rnn_dim"):
        resume(tmp_path / "run", prepared, ["model.decoder_rnn_dim=32"])


class SignalAt(RunListener):
    """Sends this process a signal at an evaluation, as Ctrl-C or `kill` would."""

    def __init__(self, number: signal.Signals, times: int = 1) -> None:
        self.number, self.times = number, times

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        if step == 3:
            for _ in range(self.times):
                os.kill(os.getpid(), self.number)


@pytest.mark.parametrize(("number", "times"), [(signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_a_stop_request_saves_once_and_leaves_a_resumable_run(
    prepared: Path, tmp_path: Path, number: signal.Signals, times: int
) -> None:
    def before(signum: int, frame: object) -> None:  # the caller's own handler
        raise AssertionError("training must handle the signal itself")

    signal.signal(number, before)  # not inherited: a background shell starts with SIG_IGN
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train(), prepared, tmp_path / "run", listeners=[SignalAt(number, times)])
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    assert [e["event"] for e in events][-1] == "interrupted" and events[-1]["step"] == 3
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))  # no temp file left
    assert signal.getsignal(number) is before  # the caller's handler was put back
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "**Interrupted** at step 3" in report and "--resume run`" in report
    assert resume(tmp_path / "run", prepared).step == 6
    assert "**Finished** at step 6 (max_steps)" in (tmp_path / "run" / "report.md").read_text()


def test_warm_start_skips_layers_whose_shape_differs(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train("train.max_steps=3"), prepared, tmp_path / "source")
    payload = load_checkpoint(tmp_path / "source")
    embedding = payload["model"]["encoder.embedding.weight"]
    payload["model"]["encoder.embedding.weight"] = torch.zeros(
        embedding.shape[0] + 5, embedding.shape[1]
    )
    save_checkpoint(tmp_path / "other_symbols.pt", payload)
    frozen = ["train.max_steps=1", "train.learning_rate=1e-12", "train.min_learning_rate=1e-12"]
    train(
        tiny_train(*frozen), prepared, tmp_path / "warm", warm_start=tmp_path / "other_symbols.pt"
    )
    started = json.loads((tmp_path / "warm" / "events.jsonl").read_text().splitlines()[0])
    assert [s.split(":")[0] for s in started["warm_start_skipped"]] == ["encoder.embedding.weight"]
    warm = _weights(tmp_path / "warm")
    assert torch.allclose(
        warm["decoder.attention_rnn.weight_hh"],
        payload["model"]["decoder.attention_rnn.weight_hh"],
        atol=1e-9,
    )
    assert not torch.allclose(warm["encoder.embedding.weight"][:5], embedding[:5])
    # the mean log-mel start is for random weights: the source's projection is kept
    bias = "decoder.projection.bias"
    assert torch.allclose(warm[bias], payload["model"][bias], atol=1e-9)


@pytest.mark.parametrize("mel_mean_init", [True, False])
def test_a_run_from_random_weights_starts_at_the_mean_log_mel(
    prepared: Path, tmp_path: Path, mel_mean_init: bool
) -> None:
    """train.mel_mean_init: the decoder's first frames are the training mels' mean, not ~0."""
    frozen = ["train.max_steps=1", "train.learning_rate=1e-12", "train.min_learning_rate=1e-12"]
    config = tiny_train(*frozen, f"train.mel_mean_init={str(mel_mean_init).lower()}")
    train(config, prepared, tmp_path / "run")
    data = load_prepared(prepared)
    mean = mean_log_mel(TextMelDataset(data.split("train"), data.root))  # (n_mels,)
    assert mean.mean() < -1.0  # far from a fresh projection's ~0, or the test shows nothing
    bias = _weights(tmp_path / "run")["decoder.projection.bias"].view(-1, mean.numel())
    assert torch.allclose(bias, mean.expand_as(bias), atol=1e-5) is mel_mean_init
    assert (bias.abs().max() < 1.0) is not mel_mean_init  # off: PyTorch's own small init
    last = f"postnet.blocks.{config.model.postnet_layers - 1}.norm.weight"  # its BatchNorm scale
    assert bool((_weights(tmp_path / "run")[last].abs() < 1e-6).all()) is mel_mean_init  # off: 1


def test_training_refuses_a_dataset_prepared_with_other_audio(
    prepared: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"audio\.n_mels"):
        train(tiny_train("audio.n_mels=40"), prepared, tmp_path / "run")


def test_listeners_hear_every_evaluation_and_are_closed_once(
    prepared: Path, tmp_path: Path
) -> None:
    class Recorder(RunListener):
        def __init__(self) -> None:
            self.scores: list[tuple[int, float]] = []
            self.events: list[str] = []
            self.closed: list[RunStatus] = []

        def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
            self.scores.append((step, metrics["score"]))

        def on_event(self, record: Mapping[str, Any]) -> None:
            self.events.append(record["event"])

        def on_close(self, status: RunStatus) -> None:
            self.closed.append(status)

    recorder = Recorder()
    train(tiny_train(), prepared, tmp_path / "run", listeners=[recorder])
    assert [s for s, _ in recorder.scores] == [3, 6]
    assert all(score > 0 for _, score in recorder.scores)
    assert recorder.events[0] == "started" and recorder.events[-1] == "finished"
    assert recorder.closed == [RunStatus.FINISHED]
    failing = Recorder()  # a run that cannot start still closes its listeners
    with pytest.raises(OutputError):
        train(tiny_train(), prepared, tmp_path / "run", listeners=[failing])
    assert failing.closed == [RunStatus.FAILED] and failing.events == []


def test_two_process_ddp_run_on_cpu(prepared: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    overrides = [arg for item in TINY_TRAIN for arg in ("--set", item)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "tacotune",
        "-q",
        "train",
        str(prepared),
        "-o",
        str(tmp_path / "run"),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [
        json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    ]
    assert events[0]["event"] == "started" and events[0]["world_size"] == 2
    assert events[-1]["event"] == "finished" and events[-1]["step"] == 6
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_training_into_an_existing_run_is_refused(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train("train.max_steps=3"), prepared, tmp_path / "run")
    with pytest.raises(OutputError, match="already holds a training run"):
        train(tiny_train(), prepared, tmp_path / "run")


@pytest.mark.parametrize("content", [b"\x00garbage" * 50, "list"])
def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "not_a_checkpoint.pt"
    if content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"cannot be read|not a tacotune checkpoint"):
        load_checkpoint(path)


def test_checkpoint_copies_survive_damage_to_one_of_them(prepared: Path, tmp_path: Path) -> None:
    train(tiny_train(), prepared, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    with (checkpoints / "last.pt").open("r+b") as f:  # damaged in place, not replaced
        f.truncate(1000)
    for name in ("best.pt", "model.pt", "step_0000006.pt"):  # their own bytes, not links
        assert load_checkpoint(checkpoints / name)["state"]["step"] in (3, 6), name
    with pytest.raises(CheckpointError, match="not a tacotune checkpoint or is damaged"):
        load_checkpoint(checkpoints / "last.pt")


def test_a_checkpoint_after_bad_steps_moves_the_good_one_aside_and_a_good_one_removes_it(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tacotune.train.records import rollback_checkpoint, write_checkpoints

    checkpoints = tmp_path / "run" / "checkpoints"
    train(tiny_train(), prepared, tmp_path / "run")
    payload = load_checkpoint(checkpoints / "last.pt")
    keys = ("config", "model", "state")

    def write(good: bool, step: int) -> None:
        state = {**payload["state"], "step": step}
        flags = {"is_best": False, "step_copy": False, "keep": 0, "inference_keys": keys}
        write_checkpoints(checkpoints, {**payload, "state": state}, good=good, **flags)

    def step_of(path: Path | None) -> int:
        assert path is not None
        return int(load_checkpoint(path)["state"]["step"])

    write(False, 7)  # bad steps before it: step 6 stays the rollback target, as good.pt
    assert step_of(rollback_checkpoint(checkpoints)) == 6 and step_of(checkpoints / "last.pt") == 7
    write(False, 8)  # still not good: good.pt keeps step 6
    assert step_of(checkpoints / "good.pt") == 6
    write(True, 9)
    assert not (checkpoints / "good.pt").exists()
    assert rollback_checkpoint(checkpoints) == checkpoints / "last.pt"
    # a run stopped between moving last.pt aside and writing the next resumes from good.pt
    write(False, 10)
    (checkpoints / "last.pt").unlink()
    caplog.set_level(logging.WARNING)
    resumed = resume(tmp_path / "run", prepared, ["train.max_steps=12"])
    assert resumed.step == 12
    assert "has no last.pt (the run stopped while writing it): resuming from" in caplog.text


def test_one_evaluation_is_timed_on_the_model_a_run_starts_from(prepared: Path) -> None:
    from tacotune.train.throughput import measure_evaluation_seconds

    config = tiny_train()
    assert 0 < measure_evaluation_seconds(config, prepared) < 60
    with pytest.raises(ConfigError, match="no shipped base voice fits"):
        measure_evaluation_seconds(tiny_train("train.warm_start=base"), prepared)


def test_resume_reads_the_checkpoint_once_and_listeners_hear_its_overrides(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --resume RUN --set tracking.tensorboard=false` builds no TensorBoard listener
    (the listeners come from the config with the overrides), and last.pt is read once."""
    from tacotune.cli import main

    run = tmp_path / "run"
    sets = [a for item in [*TINY_TRAIN, "train.max_steps=3"] for a in ("--set", item)]
    assert main(["-q", "train", str(prepared), "-o", str(run), *sets]) == 0
    assert not (run / "tensorboard").exists()
    reads: list[str] = []
    real_load = torch.load

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    resumed = ["--set", "train.max_steps=4", "--set", "tracking.tensorboard=true"]
    assert main(["-q", "train", str(prepared), "--resume", str(run), *resumed]) == 0
    assert reads.count("last.pt") == 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # the override took
    files = set((run / "tensorboard").iterdir())
    resumed = ["--set", "train.max_steps=5", "--set", "tracking.tensorboard=false"]
    assert main(["-q", "train", str(prepared), "--resume", str(run), *resumed]) == 0
    assert set((run / "tensorboard").iterdir()) == files  # no new writer
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == 5
