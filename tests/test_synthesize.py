"""Synthesis: bounded decoding, adversarial input, sentence splitting, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

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
        "0002.wav",
        "synthesis.json",
    ]
