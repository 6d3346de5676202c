"""Vocoder training (`tacotune vocoder train`): the run directory, the Griffin-Lim baseline,
exact resume, the guard, teacher-forced mels. Tiny sizes throughout: a 32-channel V3
generator, discriminators with 1/16 of their channels, 1024-sample segments."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tacotune.checkpoint import config_payload, load_checkpoint, save_checkpoint
from tacotune.config import Config, load_config
from tacotune.data.manifest import load_prepared
from tacotune.data.segments import SegmentDataset
from tacotune.errors import CheckpointError, ConfigError
from tacotune.files import OutputError
from tacotune.runlog import RunListener
from tacotune.vocoder import session as vocoder_session
from tacotune.vocoder import teacher
from tacotune.vocoder.evaluate import Clip, score
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.losses import GeneratorLoss
from tacotune.vocoder.neural import load_vocoder, vocoder_payload
from tacotune.vocoder.teacher import teacher_forced_mels
from tacotune.vocoder.train import resume_vocoder, train_vocoder
from test_synthesize import untrained_payload

# the smallest vocoder that still is HiFi-GAN's structure: steps take ~0.3 s on one core
TINY_VOCODER = [
    "vocoder.generator=v3",
    "vocoder.generator_channels=32",
    "vocoder.discriminator_divisor=16",
    "vocoder.segment_size=1024",
    "vocoder.batch_size=2",
    "vocoder.eval_every=3",
    "vocoder.max_steps=6",
    "vocoder.eval_utterances=1",
    "train.precision=fp32",
    "train.keep_checkpoints=1",
    "tracking.tensorboard=false",
]
CPU = torch.device("cpu")


def tiny_vocoder(*overrides: str) -> Config:
    """The tiny vocoder config with overrides."""
    return load_config(None, [*TINY_VOCODER, *overrides])


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions on a busy 2-core machine run ~10x faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_a_short_run_lowers_mel_l1_and_reports_griffin_lim_beside_it(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "voc"
    result = train_vocoder(tiny_vocoder("vocoder.learning_rate=0.001"), prepared, run)
    assert (result.step, result.stop_reason) == (6, "max_steps")
    metrics = _lines(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [3, 6]
    for prefix in ("eval", "gl"):
        for name in ("mel_l1", "mcd", "pesq", "stoi"):
            assert all(math.isfinite(m[f"{prefix}/{name}"]) for m in metrics), (prefix, name)
    # the generator learns: its whole-utterance mel L1 falls; Griffin-Lim does not train
    assert metrics[1]["eval/mel_l1"] < metrics[0]["eval/mel_l1"]
    assert metrics[0]["gl/mcd"] == metrics[1]["gl/mcd"]
    assert metrics[1]["score"] == metrics[1]["eval/mel_l1"] == result.best_score
    assert {"train_mean/g_mel", "train_mean/d_total", "train_mean/grad_norm_g", "epoch"} <= set(
        metrics[1]
    )
    events = [e["event"] for e in _lines(run / "events.jsonl")]
    assert events[0] == "started" and events[-1] == "finished" and "best" in events
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "last.pt",  # full state, the rollback target too: no step was bad
        "best.pt",  # without optimizer or discriminator state: what synthesis loads
        "model.pt",  # the same
        "step_0000006.pt",
    }
    assert "discriminator" not in load_checkpoint(run / "checkpoints" / "best.pt")
    listened = run / "samples" / "step_0000006"
    assert {p.suffix for p in listened.iterdir()} == {".wav", ".png"}
    assert len(list((run / "samples" / "griffin_lim").glob("*.wav"))) == 1
    inference = load_checkpoint(run / "checkpoints" / "model.pt")
    assert "optim_g" not in inference and inference["mels"] == {"source": "recordings"}
    vocoder = load_vocoder(run, expected_audio=load_prepared(prepared).config.audio)
    assert vocoder(torch.randn(80, 7) - 5).shape == (7 * 256,)


class SignalAt(RunListener):
    """Sends this process SIGINT at an evaluation, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    prepared: Path, tmp_path: Path
) -> None:
    # 10 training utterances at batch 4: epochs of 3 steps, so the run is cut at an epoch's
    # end and the resumed half decays the learning rates (lr_decay 0.5 makes that visible)
    config = tiny_vocoder("vocoder.batch_size=4", "vocoder.lr_decay=0.5")
    train_vocoder(config, prepared, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train_vocoder(config, prepared, tmp_path / "split", listeners=[SignalAt(3)])
    events = _lines(tmp_path / "split" / "events.jsonl")
    assert events[-1]["event"] == "interrupted" and events[-1]["step"] == 3
    assert resume_vocoder(tmp_path / "split", prepared).step == 6
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for network in ("generator", "discriminator"):
        different = [
            k
            for k in straight[network]
            if not torch.equal(straight[network][k], resumed[network][k])
        ]
        assert different == [], network
    # step 6 was the last of epoch 1: both epochs have decayed the learning rates
    assert (resumed["epoch"], resumed["batch_in_epoch"]) == (straight["epoch"], 3) == (1, 3)
    for optimizer in ("optim_g", "optim_d"):
        assert resumed[optimizer]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.5**2)


@pytest.mark.slow
def test_bad_steps_are_skipped_and_a_streak_rolls_back(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_loss = vocoder_session.generator_loss

    def poisoned(*args: Any) -> GeneratorLoss:
        calls["n"] += 1
        terms = real_loss(*args)
        if calls["n"] in (2, 3):  # steps 2 and 3: a NaN loss, as an overflow would give
            return terms._replace(total=terms.total * math.nan)
        return terms

    monkeypatch.setattr(vocoder_session, "generator_loss", poisoned)
    config = tiny_vocoder("supervision.max_bad_steps=2", "vocoder.eval_every=6")
    result = train_vocoder(config, prepared, tmp_path / "voc")
    events = _lines(tmp_path / "voc" / "events.jsonl")
    skipped = [e for e in events if e["event"] == "step_skipped"]
    assert [e["step"] for e in skipped] == [2, 3]
    assert skipped[0]["reason"].startswith("non-finite loss")
    (rollback,) = [e for e in events if e["event"] == "rollback"]
    assert (rollback["from_step"], rollback["to_step"], rollback["lr_scale"]) == (3, 0, 0.5)
    assert result.step == 6 and events[-1]["event"] == "finished"
    assert events[-1]["rollbacks"] == 1 and events[-1]["bad_steps"] == 2
    last = load_checkpoint(tmp_path / "voc" / "checkpoints" / "last.pt")
    # halved by the rollback, decayed by the end of epoch 0 (5 steps of 2 segments)
    assert last["optim_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.5 * 0.999)
    assert all(torch.isfinite(t).all() for t in last["generator"].values())


def test_resume_refuses_to_change_the_model_and_finished_runs(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "voc"
    payload = {
        **vocoder_payload(build_generator("v3", 80, 256, 32), tiny_vocoder()),
        "config": config_payload(tiny_vocoder()),
        "discriminator": {},
        "state": {"step": 6},
    }
    save_checkpoint(run / "checkpoints" / "last.pt", payload)
    with pytest.raises(ConfigError, match=r"vocoder\.generator"):
        resume_vocoder(run, prepared, ["vocoder.generator=v1"])
    with pytest.raises(ConfigError, match="nothing is left to do"):
        resume_vocoder(run, prepared)
    acoustic = tmp_path / "acoustic"
    save_checkpoint(acoustic / "checkpoints" / "last.pt", untrained_payload())
    with pytest.raises(ConfigError, match="not a vocoder training run"):
        resume_vocoder(acoustic, prepared)


def test_training_into_an_existing_run_and_on_other_mels_is_refused(
    prepared: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"different audio settings \(audio\.fmax\)"):
        train_vocoder(tiny_vocoder("audio.fmax=7000"), prepared, tmp_path / "voc")
    save_checkpoint(tmp_path / "voc" / "checkpoints" / "last.pt", {"step": 1})
    with pytest.raises(OutputError, match="--resume"):
        train_vocoder(tiny_vocoder(), prepared, tmp_path / "voc")


# --- evaluation ---------------------------------------------------------------------------


def test_the_metrics_tell_the_recording_from_noise() -> None:
    audio = load_config(None).audio
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )[: 80 * 256]
    from tacotune.audio import MelSpectrogram

    mel = MelSpectrogram(audio)(torch.from_numpy(speech))
    clip = Clip("a", speech, mel, mel)
    perfect = score([speech], [clip], audio, "eval").metrics
    noise = (0.1 * rng.standard_normal(len(speech))).astype(np.float32)
    broken = score([noise], [clip], audio, "eval").metrics
    assert perfect["eval/mel_l1"] == 0 and perfect["eval/mcd"] == 0
    assert perfect["eval/pesq"] > 4 and perfect["eval/stoi"] > 0.99
    assert broken["eval/mel_l1"] > 1 and broken["eval/mcd"] > 5
    assert broken["eval/pesq"] < 2 and broken["eval/stoi"] < 0.5
    with pytest.raises(ValueError, match="rendered 10 samples"):
        score([speech[:10]], [clip], audio, "eval")


# --- teacher-forced mels ------------------------------------------------------------------


@pytest.fixture
def acoustic(tmp_path: Path) -> Path:
    """An untrained tiny Tacotron2 at r = 4, so that batches are padded past the frames."""
    path = tmp_path / "acoustic" / "model.pt"
    save_checkpoint(path, untrained_payload("model.reduction_factor=4"))
    return path


def test_teacher_forced_mels_have_exactly_the_recordings_frames(
    prepared: Path, acoustic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_prepared(prepared)
    mels = teacher_forced_mels(acoustic, data, tmp_path / "cache", CPU)
    assert mels.directory.name == mels.sha256[:16] and mels.checkpoint == acoustic
    assert any(e.n_frames % 4 for e in data.entries)  # some are cropped back from padding
    for entry in data.entries:
        mel = np.load(mels.directory / f"{entry.id}.npy")
        assert mel.shape == (80, entry.n_frames), entry.id
        assert not np.allclose(mel, np.load(prepared / entry.mel_path))  # the model's, not ours
    # the segment data accepts them (it checks every length against the audio up front)
    segments = SegmentDataset(
        data.split("train"), prepared, data.config.audio, 1024, 0, mels.directory
    )
    assert segments[0].mel.shape == (80, 4)

    def must_not_run(*args: object) -> None:
        raise AssertionError("the cached mels should have been reused")

    monkeypatch.setattr(teacher, "write_teacher_forced", must_not_run)
    assert teacher_forced_mels(acoustic, data, tmp_path / "cache", CPU) == mels


def test_teacher_forcing_refuses_a_model_of_other_mels(prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    other = tmp_path / "other.pt"
    save_checkpoint(other, untrained_payload("audio.n_mels=40"))
    with pytest.raises(CheckpointError, match=r"audio\.n_mels 40 \(dataset: 80\)"):
        teacher_forced_mels(other, data, tmp_path / "cache", CPU)
    with pytest.raises(CheckpointError, match="does not exist"):
        teacher_forced_mels(tmp_path / "missing.pt", data, tmp_path / "cache", CPU)
    vocoder = tmp_path / "vocoder.pt"
    save_checkpoint(vocoder, vocoder_payload(build_generator("v3", 80, 256, 32), tiny_vocoder()))
    with pytest.raises(CheckpointError, match="not an acoustic"):
        teacher_forced_mels(vocoder, data, tmp_path / "cache", CPU)


def test_teacher_forcing_accepts_a_model_that_listens_differently(
    prepared: Path, tmp_path: Path
) -> None:
    """Griffin-Lim's settings do not change the mels: a model trained before their defaults
    changed makes teacher-forced mels for a dataset prepared after."""
    data = load_prepared(prepared)
    older = tmp_path / "older.pt"
    save_checkpoint(
        older, untrained_payload("audio.griffin_lim_iters=60", "audio.griffin_lim_power=1.5")
    )
    assert data.config.audio.griffin_lim_iters != 60
    mels = teacher_forced_mels(older, data, tmp_path / "cache", CPU)
    assert all((mels.directory / f"{e.id}.npy").is_file() for e in data.entries)


@pytest.mark.slow
def test_fine_tuning_on_teacher_forced_mels_from_a_warm_start(
    prepared: Path, acoustic: Path, tmp_path: Path
) -> None:
    config = tiny_vocoder("vocoder.max_steps=2", "vocoder.eval_every=2")
    torch.manual_seed(1)
    start = tmp_path / "pretrained.pt"
    generator = build_generator("v3", 80, 256, 32)
    save_checkpoint(start, vocoder_payload(generator, config))
    run = tmp_path / "finetuned"
    train_vocoder(config, prepared, run, from_acoustic=acoustic, warm_start=start)
    started = _lines(run / "events.jsonl")[0]
    sha = started["mels"]["sha256"]
    assert started["warm_start_skipped"] == [] and started["mels"]["checkpoint"] == str(acoustic)
    assert (run / "teacher_mels" / sha[:16] / "complete.json").is_file()
    assert load_checkpoint(run / "checkpoints" / "model.pt")["mels"]["sha256"] == sha
    # a resumed run must find the same acoustic checkpoint
    save_checkpoint(acoustic, untrained_payload("model.reduction_factor=2"))
    with pytest.raises(CheckpointError, match="changed since this vocoder run started"):
        resume_vocoder(run, prepared, ["vocoder.max_steps=4"])


# --- the command line ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_vocoder_command_trains_data_parallel_under_torchrun(
    prepared: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    short = ["vocoder.max_steps=2", "vocoder.eval_every=2"]
    overrides = [arg for item in [*TINY_VOCODER, *short] for arg in ("--set", item)]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"),
        *("--master_port=29523", "-m", "tacotune", "-q", "vocoder", "train", str(prepared)),
        *("-o", str(tmp_path / "voc"), "--config", "hifigan_v3.yaml", *overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    events = _lines(tmp_path / "voc" / "events.jsonl")
    assert events[0]["event"] == "started" and events[0]["world_size"] == 2
    assert events[-1]["event"] == "finished" and events[-1]["step"] == 2
    assert [m["step"] for m in _lines(tmp_path / "voc" / "metrics.jsonl")] == [2]


def test_the_vocoder_command_refuses_contradictory_arguments(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    assert main(["vocoder", "train", str(prepared)]) == 1
    assert "needs -o VOC" in capsys.readouterr().err
    resume = ["vocoder", "train", str(prepared), "--resume", str(tmp_path), "-o", str(tmp_path)]
    assert main(resume) == 1
    assert "--resume continues VOC in place" in capsys.readouterr().err
