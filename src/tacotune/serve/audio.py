"""Audio for HTTP: float samples -> wav / flac / pcm bytes, a streaming wav header, tempo.

Samples are written as 16-bit PCM. The runner scales each piece with `fit_full_scale` on
its own (a streamed piece cannot wait for the loudest later one), so a streamed and a whole
response hold the same samples.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

FORMATS = ("wav", "flac", "pcm")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}
STREAMING_FORMATS = ("wav", "pcm")  # flac is sent whole (its header needs the length)
SPEED_RANGE = (0.5, 2.0)  # tempo changes by mel stretching stay intelligible in this range
OPENAI_PCM_RATE = 24000  # OpenAI's pcm is 24 kHz 16-bit mono little-endian
_UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a stream whose length is not known yet


def to_pcm16(samples: np.ndarray) -> bytes:
    """(N,) float32 in [-1, 1] -> 16-bit little-endian bytes (resampling overshoot clipped)."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole file (wav, flac) or raw 16-bit pcm of `samples`."""
    if fmt == "pcm":
        return to_pcm16(samples)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format=fmt.upper())
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono wav whose length is unknown.

    RIFF and data sizes are 0xFFFFFFFF, as in streamed wav from OpenAI's speech API;
    libsndfile (soundfile) reads such a file to its real end (tests/test_serve.py).
    """
    block_align = 2  # one channel, 2 bytes per sample
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", _UNKNOWN_SIZE),
            b"WAVEfmt ",
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * block_align, 2, 16),
            b"data",
            struct.pack("<I", _UNKNOWN_SIZE),
        ]
    )


def change_speed(mel: torch.Tensor, speed: float) -> torch.Tensor:
    """(n_mels, T) -> (n_mels, round(T / speed)): tempo changes, pitch does not."""
    if speed == 1.0:
        return mel
    frames = max(1, round(mel.shape[-1] / speed))
    return F.interpolate(mel[None], size=frames, mode="linear", align_corners=False)[0]


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(N,) at rate_in -> at rate_out (soxr, high quality)."""
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples, rate_in, rate_out).astype(np.float32)
