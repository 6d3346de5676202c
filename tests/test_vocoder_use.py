"""A trained vocoder in use: `synthesize --vocoder`, loading errors, the registry (add, show,
export, tamper checks), the ONNX export and the server. The vocoders here are untrained
tiny generators saved in the checkpoint format training writes: using one does not depend
on how well it was trained."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tacotune.checkpoint import load_checkpoint, save_checkpoint
from tacotune.cli import main
from tacotune.config import load_config
from tacotune.errors import CheckpointError
from tacotune.registry import Registry, RegistryError
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.neural import HifiGanVocoder, load_vocoder, vocoder_payload
from test_synthesize import untrained_payload


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vocoder_file(path: Path, *overrides: str) -> Path:
    """A tiny untrained vocoder checkpoint (as `tacotune vocoder train` writes its model.pt)."""
    torch.manual_seed(0)
    config = load_config(
        None, ["vocoder.generator=v3", "vocoder.generator_channels=32", *overrides]
    )
    generator = build_generator("v3", config.audio.n_mels, config.audio.hop_length, 32)
    save_checkpoint(path, {**vocoder_payload(generator, config), "state": {"step": 0}})
    return path


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An acoustic checkpoint (a tiny untrained Tacotron2 that decodes 40 steps) and vocoder
    checkpoints: one that fits it, one made for 40-band mels."""
    root = tmp_path_factory.mktemp("voice")
    acoustic = root / "acoustic.pt"
    payload = untrained_payload("model.max_decoder_steps=40")
    save_checkpoint(acoustic, {**payload, "dataset_fingerprint": "test", "code_version": "test"})
    run = root / "vocoder_run" / "checkpoints"
    return {
        "acoustic": acoustic,
        "vocoder": vocoder_file(root / "vocoder.pt"),
        "run": vocoder_file(run / "model.pt").parent.parent,  # a run directory
        "other_mels": vocoder_file(root / "forty.pt", "audio.n_mels=40"),
    }


def test_synthesize_with_a_vocoder_writes_audio_of_the_expected_length(
    voice: dict[str, Path], tmp_path: Path
) -> None:
    text, acoustic = "мама мыла раму.", str(voice["acoustic"])
    assert main(["-q", "synthesize", acoustic, text, "-o", str(tmp_path / "gl.wav")]) == 0
    neural = ["--vocoder", str(voice["run"])]
    assert (
        main(["-q", "synthesize", acoustic, text, "-o", str(tmp_path / "hifi.wav"), *neural]) == 0
    )
    gl, sr = sf.read(tmp_path / "gl.wav")
    hifi, sr_hifi = sf.read(tmp_path / "hifi.wav")
    # the same seed decodes the same mel: T frames -> T * 256 samples from either vocoder
    assert sr == sr_hifi == 22050 and len(hifi) == len(gl) and len(hifi) % 256 == 0
    assert len(hifi) > 0 and not (hifi == gl).all()


def test_a_mismatched_or_broken_vocoder_is_one_clear_error(
    voice: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = load_config(None).audio
    with pytest.raises(CheckpointError, match=r"n_mels 40 \(expected 80\)"):
        load_vocoder(voice["other_mels"], expected_audio=audio)
    with pytest.raises(CheckpointError, match="not a HiFi-GAN vocoder checkpoint"):
        load_vocoder(voice["acoustic"], expected_audio=audio)
    with pytest.raises(CheckpointError, match="holds no vocoder checkpoint"):
        load_vocoder(tmp_path, expected_audio=audio)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(voice["vocoder"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_vocoder(broken)
    other_rate = tmp_path / "other_rate.pt"
    vocoder_file(other_rate, "audio.sample_rate=16000")
    for bad, message in ((other_rate, "sample_rate 16000 (expected 22050)"), (broken, "cannot")):
        args = [str(voice["acoustic"]), "да.", "-o", str(tmp_path / "x.wav"), "--vocoder", str(bad)]
        capsys.readouterr()
        assert main(["-q", "synthesize", *args]) == 1
        errors = capsys.readouterr().err.strip().splitlines()  # one line, no traceback
        assert len(errors) == 1 and " ERROR " in errors[0] and message in errors[0], errors
    assert not (tmp_path / "x.wav").exists()


def test_the_registry_keeps_a_vocoder_with_the_voice(
    voice: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(tmp_path / "registry")]
    add = ["registry", "add", str(voice["acoustic"]), "--name", "voice", *root]
    assert main([*add, "--vocoder", str(voice["run"])]) == 0
    added = json.loads(capsys.readouterr().out)
    directory = Path(added["directory"])
    assert (directory / "vocoder.pt").read_bytes() == (
        voice["run"] / "checkpoints" / "model.pt"
    ).read_bytes()
    assert len(added["vocoder_sha256"]) == 64
    assert main(["registry", "show", "voice:1", *root]) == 0
    assert json.loads(capsys.readouterr().out)["vocoder_sha256"] == added["vocoder_sha256"]
    assert main(["registry", "export", "voice:1", "-o", str(tmp_path / "out"), *root]) == 0
    exported = tmp_path / "out"
    assert (exported / "vocoder.pt").is_file() and (exported / "model.pt").is_file()
    assert "--vocoder" in (exported / "README.md").read_text(encoding="utf-8")
    registry = Registry(tmp_path / "registry")
    vocoder = registry.get("voice:1").vocoder()
    assert vocoder is not None and isinstance(HifiGanVocoder.load(vocoder), HifiGanVocoder)
    # a version without a vocoder speaks with Griffin-Lim
    assert main([*add]) == 0
    assert (
        registry.get("voice:2").vocoder() is None and registry.get("voice:2").vocoder_sha256 == ""
    )
    # a vocoder for other mels is refused at registration; a changed vocoder.pt at use
    assert main([*add, "--vocoder", str(voice["other_mels"])]) == 1
    assert [v.version for v in registry.versions("voice")] == [1, 2]
    with pytest.raises(RegistryError, match=r"n_mels 40 \(expected 80\)"):
        registry.register("voice", voice["acoustic"], vocoder=voice["other_mels"])
    (directory / "vocoder.pt").write_bytes(voice["other_mels"].read_bytes())
    with pytest.raises(RegistryError, match="was changed after registration"):
        registry.get("voice:1").vocoder()
    assert main(["registry", "export", "voice:1", "-o", str(tmp_path / "again"), *root]) == 1


@pytest.mark.parametrize("command", ["synthesize", "registry add"])
def test_a_vocoder_checkpoint_sized_past_its_bounds_is_refused_before_allocating(
    command: str, voice: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crafted, out, root = tmp_path / "huge.pt", tmp_path / "a.wav", tmp_path / "registry"
    payload = load_checkpoint(voice["vocoder"])
    payload["vocoder_config"]["generator_channels"] = 10**9  # a generator of 2.2 TB
    save_checkpoint(crafted, payload)
    args = {
        "synthesize": ["synthesize", str(voice["acoustic"]), "да.", "-o", str(out)],
        "registry add": ["registry", "add", str(voice["acoustic"]), "--root", str(root)],
    }[command]
    capsys.readouterr()
    started = time.monotonic()
    assert main(["-q", *args, "--vocoder", str(crafted)]) == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(re.findall(" ERROR ", err)) == 1, err
    assert f"vocoder {crafted} has an invalid vocoder config" in err
    assert "vocoder.generator_channels must be in [0, 4096], found 1000000000" in err
    assert not out.exists()
    assert not root.exists() or not Registry(root).versions()  # nothing registered


@pytest.mark.slow
def test_onnx_export_and_the_server_use_the_registered_vocoder(
    voice: dict[str, Path], tmp_path: Path
) -> None:
    from tacotune.export.bundle import read_manifest
    from tacotune.export.exporter import export_voice
    from tacotune.export.synthesizer import OnnxSynthesizer
    from tacotune.serve.voices import load_voice

    registry = Registry(tmp_path / "registry")
    registry.register("voice", voice["acoustic"], vocoder=voice["vocoder"], stage="production")
    served = load_voice("voice", registry)
    assert served.vocoder == "HifiGanVocoder" and served.source == "voice:1"
    directory = export_voice("voice:1", tmp_path / "onnx", registry_root=registry.root)
    assert read_manifest(directory)["vocoder"] == {"kind": "onnx"}
    assert (directory / "vocoder.onnx").is_file()
    mel = torch.randn(80, 9) - 5
    torch_audio = served.engine.vocoder(mel)
    onnx_audio = OnnxSynthesizer(directory).vocoder(mel)
    assert onnx_audio.shape == torch_audio.shape == (9 * 256,)
    assert abs(onnx_audio - torch_audio).max() < 1e-4
    # a voice given as a checkpoint: --vocoder exports one, checked against its mels
    assert (
        main(
            [
                "-q",
                "export",
                str(voice["acoustic"]),
                "-o",
                str(tmp_path / "x"),
                "--vocoder",
                str(voice["other_mels"]),
            ]
        )
        == 1
    )
    assert not (tmp_path / "x").exists()
