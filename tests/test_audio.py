"""Audio: loading, resampling, mels compatible with HiFi-GAN, Griffin-Lim."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from tacotune.audio import (
    SILENCE_LOG_MEL,
    MelSpectrogram,
    clipped_fraction,
    griffin_lim,
    load_audio,
    rms_dbfs,
    save_wav,
    trim_silence,
)
from tacotune.config import AudioConfig
from tacotune.errors import AudioError

from conftest import speechlike

CFG = AudioConfig()


def test_mel_matches_a_direct_hifigan_style_computation() -> None:
    samples = speechlike(1.0)
    mel = MelSpectrogram(CFG)(torch.from_numpy(samples)).numpy()
    pad = (CFG.n_fft - CFG.hop_length) // 2
    padded = np.pad(samples, (pad, pad), mode="reflect")
    spec = librosa.stft(
        padded, n_fft=CFG.n_fft, hop_length=CFG.hop_length, win_length=CFG.win_length, center=False
    )
    basis = librosa.filters.mel(
        sr=CFG.sample_rate, n_fft=CFG.n_fft, n_mels=CFG.n_mels, fmin=CFG.fmin, fmax=CFG.fmax
    )
    expected = np.log(np.clip(basis @ np.sqrt(np.abs(spec) ** 2 + 1e-9), 1e-5, None))
    assert mel.shape == (80, len(samples) // CFG.hop_length) == expected.shape
    np.testing.assert_allclose(mel, expected, atol=1e-3)


def test_silence_is_the_log_clamp_floor() -> None:
    mel = MelSpectrogram(CFG)(torch.zeros(CFG.sample_rate))
    assert torch.allclose(mel, torch.full_like(mel, SILENCE_LOG_MEL), atol=1e-3)


def test_batched_mels_equal_single_mels() -> None:
    a, b = speechlike(0.5, seed=1), speechlike(0.5, seed=2)
    mel = MelSpectrogram(CFG)
    batch = mel(torch.from_numpy(np.stack([a, b])))
    assert torch.allclose(batch[1], mel(torch.from_numpy(b)), atol=1e-5)


def test_load_resamples_and_downmixes(tmp_path: Path) -> None:
    stereo = np.stack([speechlike(1.0, sr=16000), np.zeros(16000, np.float32)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 16000)
    audio = load_audio(tmp_path / "s.flac", 22050)
    assert (audio.source_sample_rate, audio.source_channels, audio.sample_rate) == (16000, 2, 22050)
    assert audio.samples.ndim == 1 and abs(audio.duration - 1.0) < 1e-3


def test_corrupt_audio_raises_audio_error(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot read audio"):
        load_audio(tmp_path / "bad.wav", 22050)


def test_trim_removes_leading_and_trailing_silence() -> None:
    sr = CFG.sample_rate
    samples = np.concatenate([np.zeros(sr), speechlike(1.0), np.zeros(sr // 2)])
    trimmed, start, end = trim_silence(samples, 40.0, CFG.n_fft, CFG.hop_length)
    assert abs(len(trimmed) / sr - 1.0) < 0.1
    assert abs(start / sr - 1.0) < 0.1 and abs(end / sr - 0.5) < 0.1


def test_levels() -> None:
    assert rms_dbfs(np.zeros(100, np.float32)) == -np.inf
    assert abs(rms_dbfs(np.full(100, 0.1, np.float32)) + 20.0) < 1e-4
    assert clipped_fraction(np.array([0.0, 1.0, -1.0, 0.5], np.float32)) == 0.5


def test_griffin_lim_round_trip_is_close_in_mel_space() -> None:
    cfg = dataclasses.replace(CFG, griffin_lim_power=1.0, griffin_lim_iters=60)
    t = np.arange(CFG.sample_rate) / CFG.sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    mel = MelSpectrogram(cfg)(torch.from_numpy(tone))
    audio = griffin_lim(mel, cfg)
    assert audio.shape == (mel.shape[1] * cfg.hop_length,)
    rebuilt = MelSpectrogram(cfg)(audio)
    loud = mel > -4
    assert (rebuilt - mel)[loud].abs().mean() < 0.5


def test_save_wav_scales_down_instead_of_clipping(tmp_path: Path) -> None:
    save_wav(tmp_path / "x.wav", np.array([0.0, 2.0, -1.0], np.float32), 22050)
    written, _ = sf.read(tmp_path / "x.wav")
    assert abs(np.max(np.abs(written)) - 0.95) < 1e-3


@pytest.mark.parametrize("frames", [0, 1, 3])
def test_griffin_lim_handles_clips_shorter_than_a_window(frames: int) -> None:
    audio = griffin_lim(torch.full((80, frames), -5.0), CFG)
    assert audio.shape == (frames * CFG.hop_length,)
