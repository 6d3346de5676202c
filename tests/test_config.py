"""Configuration: YAML + overrides, unknown keys, types, cross-field rules, legacy hparams."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tacotune.config import Config, all_keys, config_to_dict, load_config, save_config
from tacotune.config.legacy import LEGACY, Mapped, translate_hparams
from tacotune.config.load import PRESETS
from tacotune.errors import ConfigError


def test_base_yaml_is_exactly_the_defaults() -> None:
    on_disk = yaml.safe_load((PRESETS / "base.yaml").read_text(encoding="utf-8"))
    assert on_disk == config_to_dict(Config()), "run scripts/update_base_config.py"


def test_demo_yaml_is_a_small_valid_model() -> None:
    cfg = load_config("demo.yaml")
    assert cfg.model.decoder_rnn_dim < Config().model.decoder_rnn_dim
    assert cfg.audio == Config().audio  # the demo changes the model, never the features


def test_set_overrides_yaml_and_parses_types() -> None:
    cfg = load_config(
        "demo.yaml",
        [
            "train.learning_rate=1e-4",
            "model.ddc=true",
            "model.reduction_schedule=[[0, 4], [500, 2]]",
        ],
    )
    assert cfg.train.learning_rate == 1e-4
    assert cfg.model.ddc is True
    assert cfg.model.reduction_schedule == ((0, 4), (500, 2))


def test_unknown_key_names_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'train\.learning_rate'"):
        load_config(None, ["train.learning_rat=1e-3"])


def test_unknown_section_names_the_closest_section() -> None:
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(None, ["modle.ddc=true"])


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("audio:\n  sampling_rate: 16000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"did you mean 'audio\.sample_rate'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=sixteen", "train.batch_size must be an integer"),
        ("train.batch_size=16.5", "train.batch_size must be an integer"),
        ("model.ddc=1", "model.ddc must be true or false"),
        ("text.stress=sometimes", r"text.stress must be one of \['auto', 'manual', 'off'\]"),
        ("model.reduction_schedule=[[0, 2, 3]]", "must have 2 items"),
        ("train", "--set needs key=value"),
    ],
)
def test_wrong_values_are_rejected_with_the_field_name(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_cross_field_rules_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["audio.win_length=2048", "model.encoder_dim=511"])
    assert "win_length (2048) must be <= n_fft (1024)" in str(error.value)
    assert "encoder_dim must be even" in str(error.value)


def test_ddc_coarse_factor_must_exceed_fine_factors() -> None:
    with pytest.raises(ConfigError, match="ddc_reduction_factor"):
        load_config(None, ["model.ddc=true", "model.ddc_reduction_factor=2"])


def test_missing_config_file_lists_bundled_ones() -> None:
    with pytest.raises(ConfigError, match=r"demo\.yaml"):
        load_config("nonexistent.yaml")


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config("demo.yaml", ["model.reduction_schedule=[[0, 4], [100, 2]]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_legacy_hparams_map_onto_sections() -> None:
    cfg = load_config(
        None,
        hparams="learning_rate=1e-3,batch_size=16,use_guided_attn=True,"
        "fp16_run=False,n_frames_per_step=3,p_attention_dropout=0.2",
    )
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.batch_size == 16
    assert cfg.loss.guided_attn is True
    assert cfg.train.precision == "fp32"
    assert cfg.model.reduction_factor == 3
    assert cfg.model.attention_dropout == 0.2


def test_legacy_hparams_rejections_say_what_to_use_instead() -> None:
    with pytest.raises(ConfigError) as error:
        translate_hparams("epochs=500,distributed_run=True,use_gaf=True,learnin_rate=1")
    message = str(error.value)
    assert "'epochs' is not supported: tacotune counts optimizer steps" in message
    assert "torchrun" in message
    assert "'use_gaf' is not supported: it had no effect" in message
    assert "did you mean 'learning_rate'" in message


def test_every_legacy_mapping_targets_a_real_key() -> None:
    keys = set(all_keys())
    targets = {e.target for e in LEGACY.values() if isinstance(e, Mapped)}
    assert targets - keys == set()


def test_legacy_list_values_keep_their_commas() -> None:
    assert translate_hparams("batch_size=8,learning_rate=[1,2]")["train"]["learning_rate"] == [1, 2]


def test_yaml_off_means_the_word_off_for_choice_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("text:\n  stress: off\n", encoding="utf-8")  # YAML 1.1 reads off as False
    assert load_config(path).text.stress == "off"
    assert load_config(None, ["text.stress=off"]).text.stress == "off"


def test_a_prepared_datasets_config_is_read_with_the_same_guarded_loader(tmp_path: Path) -> None:
    from tacotune.data.manifest import load_prepared

    (tmp_path / "manifest.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "config.yaml").write_text("text: &t {stress: 'off'}\ndata: *t\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_prepared(tmp_path)


def test_legacy_hparams_values_refuse_aliases_too() -> None:
    with pytest.raises(ConfigError, match=r"--hparams batch_size: anchors and aliases"):
        translate_hparams("batch_size=&n 16")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vocoder.generator_channels=1000000000", r"generator_channels must be in \[0, 4096\]"),
        ("vocoder.segment_size=1073741824", r"vocoder.segment_size must be in \[1, 262144\]"),
        ("vocoder.batch_size=100000", r"vocoder.batch_size must be in \[1, 1024\]"),
        ("train.batch_size=100000", r"train.batch_size must be in \[1, 1024\]"),
        ("train.shape_bucket=1000000000", r"train.shape_bucket must be in \[1, 1024\]"),
        ("train.data_workers=100000", r"train.data_workers must be in \[0, 256\]"),
        ("train.threads=100000", r"train.threads must be in \[0, 256\]"),
        ("audio.hop_length=1000000000", r"audio.hop_length must be in \[1, 16384\]"),
        ("audio.win_length=1000000000", r"audio.win_length must be in \[1, 16384\]"),
        (
            "tuning.space=[{key: train.batch_size, choices: [16, 1000000]}]",
            r"tuning.space 'train.batch_size': every value must be in \[1, 1024\]",
        ),
        (
            "tuning.space=[{key: model.reduction_factor, low: 1, high: 100}]",
            r"tuning.space 'model.reduction_factor': every value must be in \[1, 16\]",
        ),
    ],
)
def test_every_setting_that_sizes_memory_has_an_upper_bound(
    override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    capsys.readouterr()
    assert main(["config", "--set", override]) == 1
    captured = capsys.readouterr()
    assert re.search(message, captured.err) and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
