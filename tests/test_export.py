"""ONNX export: the files, parity with the torch model, the runtime, its errors, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tacotune.audio import MelSpectrogram, griffin_lim
from tacotune.checkpoint import checkpoint_config, save_checkpoint
from tacotune.config import load_config
from tacotune.export.bundle import FORMAT_VERSION, MANIFEST, ExportError, read_manifest
from tacotune.export.exporter import export_voice
from tacotune.export.readme import PARITY_TOLERANCE
from tacotune.export.runtime import OnnxVoice
from tacotune.export.runtime import griffin_lim as runtime_griffin_lim
from tacotune.export.synthesizer import OnnxSynthesizer
from tacotune.extras import MissingExtraError
from tacotune.files import OutputError
from tacotune.model.decoder import Stopping
from tacotune.registry import Registry, RegistryError
from tacotune.synthesize import Piece, Synthesizer, split_text
from tacotune.text.symbols import EOS_ID
from tacotune.vocoder.griffin_lim import GriffinLim
from test_synthesize import untrained_payload

from conftest import speechlike

TEXTS = [
    "а.",
    "кот.",
    "мама мыла раму.",
    "в лесу родилась ёлочка, в лесу она росла.",
    "дети играют во дворе до вечера и не хотят домой.",
]
GATE_THRESHOLD = 0.505  # the sign-flipped untrained gate crosses it at different steps per item


def stopping_payload() -> dict[str, Any]:
    """An untrained tiny model whose items stop for all three reasons: its gate logit is
    negated so that its stop probability drifts up from 0.5 at a text-dependent pace; an
    attention hold of one step ends an item whose only symbol is EOS."""
    payload = untrained_payload(
        f"model.gate_threshold={GATE_THRESHOLD}",
        "model.end_hold_frames=2",
        "model.max_decoder_steps=40",
    )
    for name in ("decoder.gate_layer.weight", "decoder.gate_layer.bias"):
        payload["model"][name] = -payload["model"][name]
    return {**payload, "dataset_fingerprint": "test", "code_version": "test"}


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, export directory) of `stopping_payload`."""
    root = tmp_path_factory.mktemp("export")
    save_checkpoint(root / "model.pt", stopping_payload())
    return root / "model.pt", export_voice(root / "model.pt", root / "onnx")


def reasons(piece: Piece) -> tuple[bool, bool, bool]:
    return piece.stopped_by_gate, piece.stopped_at_end, piece.hit_max_steps


def test_export_writes_graphs_frontend_config_readme_and_checksums(
    voice: tuple[Path, Path],
) -> None:
    checkpoint, directory = voice
    names = {p.name for p in directory.iterdir()}
    assert names == {
        "encoder.onnx",
        "decoder_step.onnx",
        "postnet.onnx",
        "frontend.json",
        "config.yaml",
        "README.md",
        MANIFEST,
    }
    manifest = read_manifest(directory)
    assert set(manifest["files"]) == names - {MANIFEST}
    assert (
        manifest["model"]["reduction_factor"] == 2 and manifest["vocoder"]["kind"] == "griffin-lim"
    )
    payload = torch.load(checkpoint, weights_only=True)
    frontend = json.loads((directory / "frontend.json").read_text(encoding="utf-8"))
    assert frontend == payload["text_frontend"]
    assert load_config(directory / "config.yaml") == checkpoint_config(payload)
    readme = (directory / "README.md").read_text(encoding="utf-8")
    assert "OnnxSynthesizer" in readme and "OnnxVoice" in readme and str(GATE_THRESHOLD) in readme


def test_same_mel_and_stop_step_as_torch_for_every_item(voice: tuple[Path, Path]) -> None:
    torch_synth = Synthesizer(stopping_payload())
    onnx_synth = OnnxSynthesizer(voice[1])
    chunks = [split_text(torch_synth.frontend, text)[0] for text in TEXTS]
    chunks.append(("", (EOS_ID,)))  # nothing but EOS: the attention holds the end at once
    expected, found = torch_synth.decode(chunks), onnx_synth.decode(chunks)
    assert {reasons(p) for p in expected} == {
        (True, False, False),
        (False, True, False),
        (False, False, True),
    }, "the batch must exercise every stopping rule"
    assert len({p.mel.shape[1] for p in expected}) >= 4, "items must stop at different steps"
    for want, got in zip(expected, found, strict=True):
        assert reasons(got) == reasons(want), want.text
        assert got.mel.shape == want.mel.shape, want.text  # the same stop step
        assert float((got.mel - want.mel).abs().max()) < PARITY_TOLERANCE, want.text
        assert torch.allclose(got.alignment, want.alignment, atol=PARITY_TOLERANCE), want.text


def fast_griffin_lim(seed: int = 0) -> GriffinLim:
    """Griffin-Lim with a few iterations: the same code, a fraction of the time."""
    audio = load_config(None).audio
    return GriffinLim(dataclasses.replace(audio, griffin_lim_iters=4), seed)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.gst=true", "model.prenet_dropout=0"),  # style tokens; no prenet_masks input
        ("model.reduction_schedule=[[0, 3], [100, 2]]", "model.ddc=true"),  # r < the max r
        ("model.attention=forward",),  # another attention: its own state, carried by name
    ],
)
def test_parity_holds_for_model_variants(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    payload = untrained_payload(*overrides, "model.max_decoder_steps=12")
    save_checkpoint(tmp_path / "model.pt", payload)
    onnx_synth = OnnxSynthesizer(export_voice(tmp_path / "model.pt", tmp_path / "onnx"))
    torch_synth = Synthesizer(payload)
    chunks = [split_text(torch_synth.frontend, text)[0] for text in TEXTS[1:3]]
    for want, got in zip(torch_synth.decode(chunks), onnx_synth.decode(chunks), strict=True):
        assert got.mel.shape == want.mel.shape and reasons(got) == reasons(want)
        assert float((got.mel - want.mel).abs().max()) < PARITY_TOLERANCE


def test_speak_gives_the_same_audio_length_as_torch(voice: tuple[Path, Path]) -> None:
    text = "Мама мыла раму. " * 12 + "Кот спит."  # over MAX_CHUNK_CHARS: several pieces
    want = Synthesizer(stopping_payload(), vocoder=fast_griffin_lim(3), seed=3).speak(text)
    got = OnnxSynthesizer(voice[1], vocoder=fast_griffin_lim(3), seed=3).speak(text)
    assert len(got.pieces) == len(want.pieces) > 1
    assert len(got.audio) == len(want.audio) and got.sample_rate == want.sample_rate == 22050
    # Griffin-Lim (torch, same seed) of mels that agree to PARITY_TOLERANCE
    assert np.abs(got.audio - want.audio).max() < 1e-2 * np.abs(want.audio).max()


def test_numpy_masks_are_seeded_and_used(voice: tuple[Path, Path]) -> None:
    onnx_voice = OnnxVoice(voice[1])
    text = np.array([[5, 6, 7, 8, EOS_ID]], dtype=np.int64)
    lengths = np.array([5], dtype=np.int64)
    first, again = onnx_voice.decode(text, lengths, seed=1), onnx_voice.decode(text, lengths, 1)
    other = onnx_voice.decode(text, lengths, seed=2)
    assert np.array_equal(first.mel_postnet, again.mel_postnet)
    assert not np.allclose(first.mel_postnet, other.mel_postnet, atol=1e-3)


def test_runtime_griffin_lim_reconstructs_like_torch(voice: tuple[Path, Path]) -> None:
    onnx_voice = OnnxVoice(voice[1])
    audio_config = fast_griffin_lim().config
    mel_of = MelSpectrogram(audio_config)
    mel = mel_of(torch.from_numpy(speechlike(0.3)))
    frames = mel.shape[1]
    ours = runtime_griffin_lim(mel.numpy(), audio_config, onnx_voice.manifest["vocoder"])
    reference = griffin_lim(mel, audio_config).numpy()
    assert ours.dtype == np.float32 and len(ours) == len(reference) == frames * 256
    error = float((mel_of(torch.from_numpy(ours)) - mel).abs().mean())
    reference_error = float((mel_of(torch.from_numpy(reference)) - mel).abs().mean())
    assert error < 1.5 * reference_error + 0.05
    assert len(onnx_voice.vocode(mel[:, :2].numpy())) == 2 * 256  # shorter than one FFT


class FrameVocoder(nn.Module):
    """A stand-in neural vocoder: (B, n_mels, T) -> (B, 1, T * 256)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.up = nn.ConvTranspose1d(80, 1, 256, stride=256)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(mel))


def test_a_neural_vocoder_is_exported_and_used(voice: tuple[Path, Path], tmp_path: Path) -> None:
    vocoder = FrameVocoder().eval()
    directory = export_voice(voice[0], tmp_path / "with_vocoder", vocoder=vocoder)
    assert read_manifest(directory)["vocoder"] == {"kind": "onnx"}
    assert "vocoder.onnx" in (directory / "README.md").read_text(encoding="utf-8")
    speech = OnnxSynthesizer(directory).speak("кот.")
    (piece,) = speech.pieces
    with torch.no_grad():
        expected = vocoder(piece.mel[None]).flatten().numpy()
    assert len(speech.audio) == piece.mel.shape[1] * 256
    np.testing.assert_allclose(speech.audio, expected, atol=1e-5)


def test_stopping_counters_list_every_tensor_that_advance_changes() -> None:
    """decoder_step.onnx carries exactly `Stopping.COUNTERS` from step to step."""
    mask = torch.tensor([[False, False, True], [False, False, False]])
    stopping = Stopping(mask, torch.tensor([5, 1]), gate_threshold=0.5, end_hold_steps=1)
    before = dict(vars(stopping))
    stopping.advance(torch.tensor([9.0, -9.0]), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    changed = {name for name, value in vars(stopping).items() if value is not before[name]}
    assert changed == set(Stopping.COUNTERS)


def test_missing_or_incomplete_export_directory_is_a_clear_error(
    voice: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match=r"does not exist.*tacotune export"):
        OnnxSynthesizer(tmp_path / "nowhere")
    copy = Path(shutil.copytree(voice[1], tmp_path / "copy"))
    (copy / "postnet.onnx").unlink()
    with pytest.raises(ExportError, match=r"postnet.onnx is missing"):
        OnnxVoice(copy)
    (copy / MANIFEST).write_text("{ not json", encoding="utf-8")
    with pytest.raises(ExportError, match=r"manifest.json cannot be read"):
        OnnxVoice(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(ExportError, match=r"has no manifest.json"):
        OnnxVoice(copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, r"is not a tacotune-onnx manifest"),
        ({"format_version": FORMAT_VERSION + 1}, rf"export format {FORMAT_VERSION + 1}"),
        ({"files": {}}, r"does not list encoder.onnx, decoder_step.onnx"),
        ({"files": {"encoder.onnx": "abc"}}, r"lacks a sha256 for every file"),
    ],
)
def test_a_foreign_or_newer_manifest_is_refused(
    voice: tuple[Path, Path], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    copy = Path(shutil.copytree(voice[1], tmp_path / "copy"))
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    (copy / MANIFEST).write_text(json.dumps({**manifest, **change}), encoding="utf-8")
    with pytest.raises(ExportError, match=message):
        OnnxVoice(copy)


def test_a_changed_file_fails_its_checksum(voice: tuple[Path, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(voice[1], tmp_path / "copy"))
    data = bytearray((copy / "decoder_step.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "decoder_step.onnx").write_bytes(bytes(data))
    with pytest.raises(
        ExportError, match=r"decoder_step.onnx does not match the manifest's checksum"
    ):
        OnnxSynthesizer(copy)


def test_export_refuses_bad_voices_and_occupied_targets(
    voice: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(OutputError, match=r"already holds an export bundle and is not empty"):
        export_voice(voice[0], voice[1])
    with pytest.raises(ExportError, match=r"does not exist; give a \.pt"):
        export_voice(tmp_path / "missing.pt", tmp_path / "out")
    with pytest.raises(
        RegistryError, match=r"no registry at .*registry: the directory does not exist"
    ):
        export_voice("ghost:production", tmp_path / "out", registry_root=tmp_path / "registry")
    partial = {k: v for k, v in stopping_payload().items() if k != "text_frontend"}
    save_checkpoint(tmp_path / "partial.pt", partial)
    with pytest.raises(ExportError, match=r"lacks text_frontend"):
        export_voice(tmp_path / "partial.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_onnx_packages_are_clear_errors(
    voice: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    extra = r"needs the {} package, which cannot be imported .*: pip install 'tacotune\[export\]'"
    with pytest.raises(MissingExtraError, match="exporting to ONNX " + extra.format("onnx")):
        export_voice(voice[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=extra.format("onnxruntime")):
        OnnxVoice(voice[1])


def test_cli_exports_a_checkpoint_and_a_registered_voice(
    voice: tuple[Path, Path], tmp_path: Path
) -> None:
    from tacotune.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(voice[0], run / "checkpoints" / "best.pt")
    out = tmp_path / "cli"
    assert main(["-q", "export", str(run), "--format", "onnx", "-o", str(out)]) == 0
    assert read_manifest(out)["source"] == "run"  # its name: no path of this machine
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- ru\n") and "## The ONNX graphs" in card
    assert str(tmp_path) not in card and "## License" in card
    assert OnnxSynthesizer(out, vocoder=fast_griffin_lim()).speak("кот.").audio.size > 0
    registry = Registry(tmp_path / "registry")
    registry.register("voice", voice[0])
    out = tmp_path / "registered"
    assert main(["-q", "export", "voice:1", "--registry", str(registry.root), "-o", str(out)]) == 0
    assert read_manifest(out)["source"] == "registry voice:1"
    assert main(["-q", "export", str(voice[0]), "-o", str(out)]) == 1  # not empty


@pytest.mark.slow  # a subprocess
def test_runtime_runs_without_torch(voice: tuple[Path, Path]) -> None:
    script = (
        "import sys\n"
        "class NoTorch:\n"  # any `import torch` now fails
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from tacotune.export.runtime import OnnxVoice\n"
        f"voice = OnnxVoice({str(voice[1])!r}, threads=1)\n"
        "samples = voice.synthesize('Кот.')\n"
        "print(len(samples), voice.sample_rate, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    count, rate, imported = result.stdout.split()
    assert int(rate) == 22050 and int(count) > 0 and int(count) % 256 == 0
    assert imported == "False"


def test_the_server_serves_an_export_directory_with_onnxruntime(
    voice: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from tacotune.serve.voices import load_voice

    checkpoint, export_dir = voice
    served = load_voice(f"fast={export_dir}", Registry(tmp_path / "empty"))
    assert isinstance(served.engine, OnnxSynthesizer) and "onnxruntime" in served.source
    chunks = split_text(served.engine.frontend, "Мама мыла раму.")
    torch_piece = Synthesizer(checkpoint).decode(chunks)[0]
    assert torch.allclose(served.engine.decode(chunks)[0].mel, torch_piece.mel, atol=1e-4)
