"""Synthesis: bounded decoding, adversarial input, sentence splitting, the CLI."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from tacotune import __version__
from tacotune.checkpoint import config_payload, save_checkpoint
from tacotune.config import load_config
from tacotune.errors import TextError, UnknownSymbolError
from tacotune.model import Tacotron2
from tacotune.synthesize import MAX_CHUNK_CHARS, Synthesizer, split_text
from tacotune.text.frontend import TextFrontend
from tacotune.text.symbols import SYMBOLS

from conftest import TINY


def untrained_payload(*overrides: str) -> dict[str, Any]:
    """A checkpoint-shaped payload of an untrained tiny model whose gate never fires."""
    torch.manual_seed(0)
    config = load_config(
        None,
        [
            *TINY,
            "text.stress=manual",
            "model.gate_threshold=1.0",
            "model.end_hold_frames=0",
            "model.max_decoder_steps=60",
            *overrides,
        ],
    )
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    return {
        "config": config_payload(config),
        "n_symbols": len(SYMBOLS),
        "model": model.state_dict(),
        "text_frontend": TextFrontend(config.text).state(),
    }


def save_untrained_voice(path: Path, *overrides: str) -> Path:
    """`untrained_payload` saved at `path` as a complete inference checkpoint."""
    payload = {
        **untrained_payload(*overrides),
        "state": {"step": 0},
        "dataset_fingerprint": "f" * 16,
        "code_version": __version__,
    }
    save_checkpoint(path, payload)
    return path


def test_speech_is_bounded_and_reports_the_step_limit() -> None:
    speech = Synthesizer(untrained_payload()).speak("Мама мыла раму.")
    assert len(speech.pieces) == 1
    piece = speech.pieces[0]
    assert piece.hit_max_steps and not piece.stopped_by_gate and not speech.complete
    frames = piece.mel.shape[1]
    assert len(speech.audio) == frames * 256 and frames <= 60 * 2


@pytest.mark.parametrize("text", ["?!?!?!", "…", "  ", "— — —"])
def test_text_without_letters_is_a_clear_error(text: str) -> None:
    with pytest.raises(TextError, match=r"nothing to say|empty after normalization"):
        Synthesizer(untrained_payload()).speak(text)


def test_emoji_is_a_clear_error() -> None:
    with pytest.raises(UnknownSymbolError, match=r"U\+1F600"):
        Synthesizer(untrained_payload()).speak("привет 😀")


def test_five_thousand_characters_are_split_and_bounded() -> None:
    frontend = TextFrontend(load_config(None, ["text.stress=manual"]).text)
    text = "длинное предложение без точки " * 170  # ~5,100 characters, no sentence end
    chunks = split_text(frontend, text)
    assert len(chunks) >= 5000 // MAX_CHUNK_CHARS
    assert all(len(piece) <= MAX_CHUNK_CHARS for piece, _ in chunks)
    assert "".join(p.replace(" ", "") for p, _ in chunks) == text.replace(" ", "")
    speech = Synthesizer(untrained_payload("model.max_decoder_steps=5")).speak(text)
    assert len(speech.pieces) == len(chunks) and all(p.hit_max_steps for p in speech.pieces)


def test_long_text_is_split_at_sentences_and_short_text_is_not() -> None:
    frontend = TextFrontend(load_config(None, ["text.stress=manual"]).text)
    assert [c for c, _ in split_text(frontend, "Привет! Как дела?")] == ["привет! как дела?"]
    sentence = "это предложение длиной примерно в пятьдесят символов"
    text = ". ".join([sentence] * 6) + "."
    pieces = [c for c, _ in split_text(frontend, text)]
    assert len(pieces) == 2 and all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text


def test_cli_synthesize_writes_wavs_and_plots(tmp_path: Path) -> None:
    from tacotune.cli import main

    save_checkpoint(tmp_path / "model.pt", untrained_payload())
    assert (
        main(
            [
                "-q",
                "synthesize",
                str(tmp_path / "model.pt"),
                "Привет, мир.",
                "-o",
                str(tmp_path / "hello.wav"),
                "--plot",
            ]
        )
        == 0
    )
    audio, rate = sf.read(tmp_path / "hello.wav")
    assert rate == 22050 and len(audio) > 0 and np.abs(audio).max() <= 1.0
    assert (tmp_path / "hello_alignment.png").exists()
    (tmp_path / "lines.txt").write_text("раз два.\n\nтри четыре.\n", encoding="utf-8")
    assert (
        main(
            [
                "-q",
                "synthesize",
                str(tmp_path / "model.pt"),
                "--file",
                str(tmp_path / "lines.txt"),
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "0001.wav",
        "0003.wav",  # named by its line: the blank line 2 keeps its number
        "synthesis.json",
    ]


def _tacotune(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`python -m tacotune ARGV` as a user's shell runs it: bytes in, bytes out."""
    return subprocess.run(
        [sys.executable, "-m", "tacotune", *argv], input=stdin, capture_output=True, timeout=300
    )


def test_cli_synthesize_pipes_like_piper(tmp_path: Path) -> None:
    """`echo "Привет." | tacotune synthesize RUN --file - -o - > a.wav` plays; --raw streams PCM."""
    model = tmp_path / "model.pt"
    save_checkpoint(model, untrained_payload("model.max_decoder_steps=20"))
    text = "Привет.\n\nКак дела?\n".encode()
    wav = _tacotune("synthesize", str(model), "--file", "-", "-o", "-", stdin=text)
    assert wav.returncode == 0, wav.stderr.decode()
    audio, rate = sf.read(io.BytesIO(wav.stdout), dtype="int16")
    assert rate == 22050 and len(audio) > 0
    raw = _tacotune("synthesize", str(model), "--file", "-", "-o", "-", "--raw", stdin=text)
    assert raw.returncode == 0, raw.stderr.decode()
    pcm = np.frombuffer(raw.stdout, dtype="<i2")
    assert len(pcm) == len(audio) and np.abs(pcm).max() > 0  # both texts and the pause
    assert b"PCM at 22050 Hz" in raw.stderr


@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".flac"])
def test_cli_synthesize_writes_the_format_its_suffix_names(tmp_path: Path, suffix: str) -> None:
    from tacotune.cli import main

    save_checkpoint(tmp_path / "model.pt", untrained_payload("model.max_decoder_steps=20"))
    out = tmp_path / f"hello{suffix}"
    assert main(["-q", "synthesize", str(tmp_path / "model.pt"), "Привет.", "-o", str(out)]) == 0
    info = sf.info(out)
    assert info.format == {".mp3": "MP3", ".ogg": "OGG", ".flac": "FLAC"}[suffix]
    assert info.samplerate == 22050 and info.frames > 0


def test_cli_synthesize_names_the_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    save_checkpoint(tmp_path / "model.pt", untrained_payload())
    (tmp_path / "lines.txt").write_text("раз два.\n\n🙂\n", encoding="utf-8")
    argv = ["-q", "synthesize", str(tmp_path / "model.pt"), "--file", str(tmp_path / "lines.txt")]
    assert main([*argv, "--out-dir", str(tmp_path / "out")]) == 1
    assert f"--file {tmp_path / 'lines.txt'}, line 3: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main([*argv, "-o", str(tmp_path / "x.wav")]) == 1
    assert "-o takes only -" in capsys.readouterr().err
    assert main(["-q", "synthesize", str(tmp_path / "model.pt"), "да.", "--raw"]) == 1
    assert "--raw writes 16-bit PCM to standard output" in capsys.readouterr().err
