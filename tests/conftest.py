"""Shared fixtures: small synthetic datasets built on the fly."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tacotune.config import Config, load_config

SR = 22050
# a Tacotron2 small enough for unit tests (~40k parameters)
TINY = [
    "model.embedding_dim=16",
    "model.encoder_dim=16",
    "model.attention_rnn_dim=24",
    "model.attention_dim=8",
    "model.attention_location_filters=4",
    "model.attention_location_kernel_size=5",
    "model.prenet_dim=12",
    "model.decoder_rnn_dim=24",
    "model.postnet_dim=8",
    "model.postnet_layers=3",
    "model.gst_dim=8",
    "model.gst_heads=2",
    "model.gst_tokens=3",
]
SECONDS_PER_LETTER = 0.07  # synthetic speech rate: about 14 letters per second


def speechlike(seconds: float, sr: int = SR, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated noise with a steady level, so silence trimming leaves it alone."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (level * envelope * rng.standard_normal(n)).astype(np.float32)


def for_text(text: str) -> np.ndarray:
    """Audio whose duration matches the text at a normal speech rate."""
    letters = sum(ch.isalpha() for ch in text)
    return speechlike(max(letters, 1) * SECONDS_PER_LETTER, seed=len(text))


AudioSpec = np.ndarray | bytes | None  # samples, raw file bytes (corrupt file), or no file


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """`tacotune.cli.main` is a process entry point: it installs a SIGTERM handler and, on the
    way out of an interrupt, ignores further Ctrl-C. In-process tests must not inherit that."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture
def make_ljspeech(tmp_path: Path) -> Callable[[list[tuple[str, str, AudioSpec]]], Path]:
    """Build an LJSpeech-layout dataset from (id, text, audio) rows; returns its directory."""

    def build(rows: list[tuple[str, str, AudioSpec]], name: str = "lj") -> Path:
        root = tmp_path / name
        (root / "wavs").mkdir(parents=True)
        lines = []
        for utt_id, text, audio in rows:
            lines.append(f"{utt_id}|{text}")
            path = root / "wavs" / f"{utt_id}.wav"
            if isinstance(audio, bytes):
                path.write_bytes(audio)
            elif audio is not None:
                subtype = "PCM_16" if np.isfinite(audio).all() else "FLOAT"  # keep NaNs
                sf.write(path, audio, SR, subtype=subtype)
        (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return root

    return build


GOOD_TEXTS = [
    "мама мыла раму с утра.",
    "в лесу родилась ёлочка.",
    "кошка спит на тёплом окне.",
    "завтра будет солнечная погода.",
    "мы едем к морю на поезде.",
    "папа читает свежую газету.",
    "в саду растут яблоки и груши.",
    "дети играют во дворе до вечера.",
    "на столе стоит горячий чай.",
    "осенью листья становятся жёлтыми.",
]


def good_rows(n: int = 10) -> list[tuple[str, str, AudioSpec]]:
    """n valid rows with consistent speech rate."""
    return [
        (f"good_{i:02d}", GOOD_TEXTS[i % len(GOOD_TEXTS)], for_text(GOOD_TEXTS[i % 10]))
        for i in range(n)
    ]


# training runs in seconds: the tiny model on a 12-utterance synthetic dataset
TINY_TRAIN = [
    *TINY,
    "text.stress=off",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.eval_every=3",
    "train.max_steps=6",
    "train.keep_checkpoints=1",
    "train.precision=fp32",
    "tracking.tensorboard=false",
    "supervision.free_running_val_utterances=1",
    "model.max_decoder_steps=40",
    "train.probe_sentences=['мама мыла раму.']",
]


def tiny_train(*overrides: str) -> Config:
    """The tiny training config with overrides."""
    return load_config(None, [*TINY_TRAIN, *overrides])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared 12-utterance dataset, shared by every training test (read-only)."""
    from tacotune.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("data") / "lj"
    (root / "wavs").mkdir(parents=True)
    rows = good_rows(12)
    for utt_id, _, audio in rows:
        sf.write(root / "wavs" / f"{utt_id}.wav", audio, SR)
    (root / "metadata.csv").write_text("\n".join(f"{i}|{t}" for i, t, _ in rows), encoding="utf-8")
    out = root.parent / "prepared"
    prepare_dataset(root, out, tiny_train("data.workers=1"))
    return out
