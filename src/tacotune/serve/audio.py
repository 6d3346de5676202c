"""Audio for HTTP: float samples -> OpenAI's formats, whole or as they come; tempo.

Every format is written by a maintained encoder from a wheel: libsndfile (the soundfile
wheel) for wav, flac, mp3 (LAME) and opus (Ogg Opus), ffmpeg (the PyAV wheel, part of
the serve extra) for aac (ADTS). An `Encoder` takes a response's pieces one at a time
and returns the bytes that are final so far, so a stream plays while it arrives:

- mp3 is constant bitrate (64 kbit/s) without a LAME/Xing tag: a variable-bitrate file
  needs that tag, which libsndfile writes at the start once the file is closed, and a
  stream has sent its start by then; readers then guess the length from the bitrate.
- opus pages are cut every 100 ms (libsndfile's default is about a second).
- wav as a stream starts with a header whose sizes read 0xFFFFFFFF (length unknown, as
  OpenAI's streamed wav; libsndfile, ffmpeg and browsers read such a file to its end);
  a whole wav has exact sizes. flac is only ever whole (libsndfile writes its length and
  checksum into the header at the end). pcm is raw 16-bit little-endian mono.

Samples are written as 16-bit PCM where the format has samples. The runner scales each
piece with `fit_full_scale` on its own (a streamed piece cannot wait for the loudest later
one), so a streamed and a whole response hold the same samples.
"""

from __future__ import annotations

import io
import logging
import struct
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from tacotune.audio import AUDIO_FORMATS

log = logging.getLogger(__name__)

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's response_format values
DEFAULT_FORMAT = "mp3"  # OpenAI's default
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
WHOLE_ONLY = ("flac",)  # sent once every piece is done: its header needs the length
SPEED_RANGE = (0.25, 4.0)  # OpenAI's; tempo changes by stretching the spectrogram
OPENAI_RATE = 24000  # OpenAI's pcm is 24 kHz 16-bit mono little-endian
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # what libsndfile's Opus encoder takes
# libsndfile's (format, subtype) of each format it writes; mp3 and opus get settings below
_SOUNDFILE = {
    "wav": AUDIO_FORMATS[".wav"],
    "flac": AUDIO_FORMATS[".flac"],
    "mp3": AUDIO_FORMATS[".mp3"],
    "opus": ("OGG", "OPUS"),
}
_MP3_LEVEL = 0.6  # libsndfile's compression level: 64 kbit/s at 22.05-24 kHz, clear speech
_AAC_BITRATE = 64000
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h; soundfile has no wrapper for it
_OPUS_PAGE_MS = 100.0
_UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a stream whose length is not known yet


def output_rate(fmt: str, native_rate: int, openai: bool) -> int:
    """Hz of the audio sent: OpenAI's pcm is 24 kHz (so OpenAI clients play it right), Opus
    takes only OPUS_RATES (24 kHz, like OpenAI's), every other answer keeps the voice's rate."""
    if fmt == "opus" and native_rate not in OPUS_RATES:
        return OPENAI_RATE
    return OPENAI_RATE if openai and fmt == "pcm" else native_rate


def to_pcm16(samples: np.ndarray) -> bytes:
    """(N,) float32 in [-1, 1] -> 16-bit little-endian bytes (resampling overshoot clipped)."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class Encoder(Protocol):
    """One response's audio: `feed` each piece, then `finish`; both return the new bytes."""

    def feed(self, samples: np.ndarray) -> bytes:
        """Encode (N,) float samples; the bytes that are final so far."""
        ...

    def finish(self) -> bytes:
        """The rest (an encoder's buffered tail, a container's end)."""
        ...


def encoder(fmt: str, sample_rate: int, whole: bool) -> Encoder:
    """An encoder of `fmt` (one of FORMATS) at `sample_rate`; `whole`: every byte comes
    from `finish` (a wav then has exact sizes), else as much as possible from `feed`
    (flac is always whole: WHOLE_ONLY)."""
    whole = whole or fmt in WHOLE_ONLY
    if fmt == "pcm" or (fmt == "wav" and not whole):
        return _Raw(streaming_wav_header(sample_rate) if fmt == "wav" else b"")
    if fmt == "aac":
        return _Aac(sample_rate, whole)
    return _Soundfile(fmt, sample_rate, whole)


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole file (or raw pcm) of `samples` in `fmt`."""
    coder = encoder(fmt, sample_rate, whole=True)
    return coder.feed(samples) + coder.finish()


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


class _Raw:
    """pcm, or a streamed wav: a fixed header, then 16-bit samples."""

    def __init__(self, header: bytes) -> None:
        self.header = header

    def feed(self, samples: np.ndarray) -> bytes:
        head, self.header = self.header, b""
        return head + to_pcm16(samples)

    def finish(self) -> bytes:
        return self.header


class _Sink(io.RawIOBase):
    """A seekable in-memory file that an encoder writes to; `take` returns what is new.

    A container that goes back to rewrite bytes already taken (a header completed at the
    end) is only right when taken whole; the streamed formats never do (checked by tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.position = 0
        self.taken = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.data)}
        self.position = base[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.position + size
        data = bytes(self.data[self.position : end])
        self.position += len(data)
        return data

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self.position < self.taken:
            log.warning("an encoder rewrote %d bytes already sent", len(data))
        self.data[self.position : self.position + len(data)] = data
        self.position += len(data)
        return len(data)

    def take(self) -> bytes:
        new = bytes(self.data[self.taken :])
        self.taken = len(self.data)
        return new


class _Soundfile:
    """wav, flac, mp3 or opus through libsndfile."""

    def __init__(self, fmt: str, sample_rate: int, whole: bool) -> None:
        self.sink, self.whole = _Sink(), whole
        file_format, subtype = _SOUNDFILE[fmt]
        mp3: dict[str, Any] = {"compression_level": _MP3_LEVEL, "bitrate_mode": "CONSTANT"}
        self.file = sf.SoundFile(
            self.sink,
            "w",
            sample_rate,
            1,
            subtype,
            format=file_format,
            **(mp3 if fmt == "mp3" else {}),
        )
        if fmt == "opus":
            latency = sf._ffi.new("double*", _OPUS_PAGE_MS)
            sf._snd.sf_command(
                self.file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, sf._ffi.sizeof("double")
            )

    def feed(self, samples: np.ndarray) -> bytes:
        self.file.write(np.clip(samples, -1.0, 1.0))
        return b"" if self.whole else self.sink.take()

    def finish(self) -> bytes:
        self.file.close()
        return self.sink.take()


class _Aac:
    """aac in ADTS frames (what OpenAI sends), through ffmpeg's encoder in PyAV."""

    def __init__(self, sample_rate: int, whole: bool) -> None:
        import av  # the serve extra's; app.py answers aac with a 400 where it is missing

        self.sink, self.whole, self.rate, self.fed = _Sink(), whole, sample_rate, 0
        self.container = av.open(self.sink, mode="w", format="adts")
        self.stream = self.container.add_stream("aac", rate=sample_rate, layout="mono")
        self.stream.bit_rate = _AAC_BITRATE

    def feed(self, samples: np.ndarray) -> bytes:
        import av

        planes = np.clip(samples, -1.0, 1.0).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self.fed
        frame.time_base = Fraction(1, self.rate)
        self.fed += len(samples)
        self.container.mux(self.stream.encode(frame))
        return b"" if self.whole else self.sink.take()

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.sink.take()


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
