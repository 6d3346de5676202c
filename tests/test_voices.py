"""The shipped base voice: its file is the one its card records, it loads safely, `base`
finds it for the configs it fits and refuses the others, training and auto start from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tacotune.auto.plan import SCRATCH_RECIPE, choose_recipe, choose_start
from tacotune.checkpoint import checkpoint_config, load_checkpoint, warm_start_state
from tacotune.cli import main
from tacotune.config import load_config
from tacotune.errors import CheckpointError, ConfigError
from tacotune.files import file_sha256
from tacotune.model.tacotron2 import Tacotron2
from tacotune.text.symbols import SYMBOLS
from tacotune.voices import BaseVoice, base_voices, matching_base, resolve_warm_start

NAME = "ru-base-small"


def demo_step(prepared: Path, run: Path) -> list[str]:
    """`tacotune train` arguments for one step of the demo-size model, evaluated at once."""
    return [
        "train", str(prepared), "-o", str(run), "--config", "demo.yaml",
        "--set", "text.stress=off", "--set", "train.max_steps=1", "--set", "train.eval_every=1",
        "--set", "model.max_decoder_steps=20", "--set", "tracking.tensorboard=false",
        "--set", "supervision.free_running_val_utterances=1",
        "--set", "train.probe_sentences=['мама мыла раму.']",
    ]  # fmt: skip


def shipped() -> BaseVoice:
    (voice,) = [v for v in base_voices() if v.name == NAME]
    return voice


def test_the_shipped_base_voice_is_the_file_its_card_records() -> None:
    voice = shipped()
    assert voice.path.stat().st_size <= 25 * 2**20
    assert file_sha256(voice.path) == voice.sha256
    payload = load_checkpoint(voice.verified_path())  # weights_only=True inside
    tensors = [t for t in payload["model"].values() if t.is_floating_point()]
    assert tensors and all(t.dtype == torch.float16 for t in tensors)
    card = voice.card_path.read_text(encoding="utf-8")
    assert card.startswith(f"# {NAME}") and voice.sha256 in card and "License" in card
    config = checkpoint_config(payload)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    _, skipped = warm_start_state(model, payload["model"])
    assert skipped == []


def test_base_names_the_shipped_voice_that_fits_the_config() -> None:
    demo = load_config("demo.yaml")
    assert matching_base(demo) == shipped()
    for name in ("base", NAME):
        path, voice = resolve_warm_start(name, demo)
        assert voice == shipped() and path == shipped().path
    # dropout, inference limits and trimming change no tensor and no mel: it still fits
    loose = ["model.prenet_dropout=0.3", "model.max_decoder_steps=50", "audio.trim_top_db=30"]
    assert matching_base(load_config("demo.yaml", loose)) == shipped()
    assert matching_base(load_config(None)) is None  # the paper size has no base yet
    # a schedule that ends at r=4 but starts higher needs a larger output layer: no fit
    schedule = load_config("demo.yaml", ["model.reduction_schedule=[[0, 6], [500, 4]]"])
    assert "decoder.projection" in shipped().matches(schedule)


def test_a_base_that_does_not_fit_is_refused_with_what_differs() -> None:
    with pytest.raises(
        ConfigError,
        match=r"no shipped base voice fits.*memory_layer.weight \(64, 256\) \(base\) vs "
        r"\(128, 512\).*and 66 more tensors",
    ):
        resolve_warm_start("base", load_config(None))
    with pytest.raises(
        ConfigError, match=r"ru-base-small: its weights do not fit.*audio.n_mels 80 \(base\) vs 64"
    ):
        resolve_warm_start(NAME, load_config("demo.yaml", ["audio.n_mels=64"]))


def test_a_warm_start_that_is_neither_a_file_nor_a_base_names_the_bases(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such checkpoint.*shipped: base, ru-base-small"):
        resolve_warm_start(tmp_path / "nope.pt", load_config("demo.yaml"))


def test_a_changed_base_voice_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / f"{NAME}.pt"
    shutil.copy(shipped().path, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(BaseVoice, "path", property(lambda self: copy))
    with pytest.raises(CheckpointError, match=r"sha256 .* was changed or damaged; reinstall"):
        shipped().verified_path()
    copy.unlink()
    with pytest.raises(CheckpointError, match=r"file .* is missing; reinstall"):
        shipped().verified_path()


def test_train_warm_start_base_starts_from_the_base_and_records_it(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    code = main(
        [*demo_step(prepared, run), "--warm-start", "base",
         "--set", "train.learning_rate=1e-12", "--set", "train.min_learning_rate=1e-12"]
    )  # fmt: skip
    assert code == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["warm_start"] == "base"
    started = json.loads((run / "events.jsonl").read_text().splitlines()[0])
    assert started["base_voice"] == NAME and started["warm_start_skipped"] == []
    # one step at a vanishing learning rate: the weights are still the base's (batch-norm
    # statistics move with the batch whatever the learning rate)
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    base = load_checkpoint(shipped().path)["model"]
    assert trained.keys() == base.keys()
    weights = [name for name in base if ".running_" not in name and "num_batches" not in name]
    assert len(weights) > 50
    for name in weights:
        assert torch.allclose(trained[name], base[name].float(), atol=1e-6), name


def test_train_from_random_weights_says_that_a_base_voice_fits(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(demo_step(prepared, run))
    assert code == 0
    hint = (
        "training from random weights; the shipped base voice ru-base-small fits this model: "
        "--warm-start base fine-tunes it and speaks far sooner"
    )
    recipe = (
        "from random weights `auto` adds --set model.attention=forward --set loss.mel_loss=l1 "
        "--set train.learning_rate=0.003 --set model.encoder_dropout=0.2: a voice speaks sooner "
        "with them than with this config's model.attention location, loss.mel_loss mse, "
        "train.learning_rate 0.002, model.encoder_dropout 0.5"
    )
    err = capsys.readouterr().err
    assert err.count(hint) == 1 and err.count(recipe) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["warm_start"] == ""


def test_train_from_random_weights_names_only_the_recipe_settings_the_config_lacks(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = ["--set", "model.attention=forward", "--set", "train.learning_rate=0.003"]
    given += ["--set", "model.encoder_dropout=0.2"]
    assert main([*demo_step(prepared, tmp_path / "run"), *given]) == 0
    err = capsys.readouterr().err
    assert "`auto` adds --set loss.mel_loss=l1: a voice speaks sooner" in err
    assert "config's loss.mel_loss mse (bench" in err
    assert main([*demo_step(prepared, tmp_path / "all"), *given, "--set", "loss.mel_loss=l1"]) == 0
    assert "`auto` adds" not in capsys.readouterr().err


def test_train_warm_start_refuses_an_unknown_name_before_any_work(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", str(prepared), "-o", str(run), "--warm-start", "bsae"]) == 1
    assert "--warm-start 'bsae': no such checkpoint file" in capsys.readouterr().err
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()


def test_auto_starts_from_the_base_that_fits_unless_told_otherwise() -> None:
    demo = load_config("demo.yaml")
    start, why = choose_start(demo, from_scratch=False)
    assert start == NAME and "--from-scratch opts out" in why
    assert choose_start(demo, from_scratch=True) == ("", "start: random weights (--from-scratch)")
    start, why = choose_start(load_config(None), from_scratch=False)
    assert start == "" and "no shipped base voice fits" in why
    own = load_config("demo.yaml", ["train.warm_start=runs/mine"])
    assert choose_start(own, from_scratch=False)[0] == "runs/mine"


def test_auto_trains_the_scratch_recipe_from_random_weights_only() -> None:
    """The base voice's weights were trained with the preset's settings and keep them; from
    random weights auto trains the recipe that speaks sooner; a user's own choice wins."""
    demo = load_config("demo.yaml")
    assert demo.model.attention != SCRATCH_RECIPE["model.attention"]  # else nothing is shown
    assert demo.loss.mel_loss != SCRATCH_RECIPE["loss.mel_loss"]
    assert demo.train.learning_rate != SCRATCH_RECIPE["train.learning_rate"]
    assert demo.model.encoder_dropout != SCRATCH_RECIPE["model.encoder_dropout"]
    assert choose_recipe(demo, NAME, chosen_by_user=()) == (
        {},
        f"recipe: the config's, as {NAME}'s weights were trained with it",
    )
    recipe, why = choose_recipe(demo, "", chosen_by_user=())
    assert recipe == SCRATCH_RECIPE
    assert why.startswith("recipe from random weights: model.attention forward (not location)")
    assert "speaks sooner" in why and "your config" not in why
    recipe, why = choose_recipe(demo, "", chosen_by_user={"model.attention"})
    assert recipe == {
        "loss.mel_loss": "l1",
        "train.learning_rate": 3e-3,
        "model.encoder_dropout": 0.2,
    }
    assert why.endswith("; your config's model.attention location")
    recipe, why = choose_recipe(demo, "", chosen_by_user=set(SCRATCH_RECIPE))
    assert recipe == {} and "speaks sooner" not in why
