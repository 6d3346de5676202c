"""Audio: loading, silence trimming, log-mel spectrograms and Griffin-Lim.

The mel spectrogram matches the usual HiFi-GAN setup (jik876/hifi-gan
`meldataset.mel_spectrogram`): reflect padding of (n_fft - hop) / 2 on both
sides, no centering, Slaney mel filters, magnitude sqrt(re^2 + im^2 + 1e-9) and
log(clamp(mel, 1e-5)). A clip of N samples therefore has N // hop_length frames.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from tacotune.config.schema import AudioConfig
from tacotune.errors import AudioError

LOG_CLAMP = 1e-5  # amplitude floor before the log
SILENCE_LOG_MEL = math.log(LOG_CLAMP)  # -11.51: the log-mel value of digital silence
MAGNITUDE_EPS = 1e-9  # added under the square root of the STFT power (HiFi-GAN)
FULL_SCALE = 0.999  # |sample| at or above this counts as clipped
GRIFFIN_LIM_MOMENTUM = 0.99  # "fast Griffin-Lim" (Perraudin et al. 2013), as in librosa
PEAK_OUT = 0.95  # generated audio louder than full scale is scaled to this peak


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] and where they came from."""

    samples: np.ndarray  # (N,) float32
    sample_rate: int  # Hz, after resampling
    source_sample_rate: int  # Hz, as stored in the file
    source_channels: int  # channels in the file (averaged to mono)
    source_clipped_fraction: float  # share of stored samples at full scale, any channel

    @property
    def duration(self) -> float:
        """Seconds."""
        return len(self.samples) / self.sample_rate


def load_audio(path: str | Path, sample_rate: int) -> Audio:
    """Read any soundfile-supported file, downmix to mono and resample (soxr, high quality)."""
    try:
        data, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, OSError) as error:
        raise AudioError(f"cannot read audio {path}: {error}") from error
    if data.shape[0] == 0:
        raise AudioError(f"audio {path} has no samples")
    if not np.isfinite(data).all():
        bad = int(np.sum(~np.isfinite(data)))
        raise AudioError(
            f"audio {path} has {bad} NaN/infinite samples (a float file written "
            "from a broken computation); re-export it"
        )
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if source_rate != sample_rate:
        samples = soxr.resample(samples, source_rate, sample_rate, quality="HQ")
    return Audio(
        np.ascontiguousarray(samples, dtype=np.float32),
        sample_rate,
        source_rate,
        data.shape[1],
        clipped_fraction(data),
    )


def trim_silence(
    samples: np.ndarray, top_db: float, frame_length: int, hop_length: int
) -> tuple[np.ndarray, int, int]:
    """Cut leading/trailing frames quieter than the peak minus `top_db` dB.

    Returns the trimmed samples and how many samples were cut at the start and end.
    """
    import librosa

    trimmed, (start, end) = librosa.effects.trim(
        samples, top_db=top_db, frame_length=frame_length, hop_length=hop_length
    )
    return trimmed, int(start), int(len(samples) - end)


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def clipped_fraction(samples: np.ndarray) -> float:
    """Share of samples at (or beyond) full scale."""
    return float(np.mean(np.abs(samples) >= FULL_SCALE)) if len(samples) else 0.0


def fit_full_scale(samples: np.ndarray) -> np.ndarray:
    """Generated audio louder than full scale, scaled down to PEAK_OUT (never clipped)."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    return samples * (PEAK_OUT / peak) if peak > 1.0 else samples


PCM16_SCALE = 32768.0  # int16 <-> float: sample / 32768 lies in [-1, 1)


def quantize_pcm16(samples: np.ndarray) -> np.ndarray:
    """(N,) float -> (N,) int16: round to the nearest step, clip to the int16 range.

    `pcm16_to_float(quantize_pcm16(x))` is exactly what a reader of the stored file sees,
    so a mel computed from it equals the mel of the stored audio (the vocoder's contract).
    """
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * PCM16_SCALE)
    return np.clip(scaled, -PCM16_SCALE, PCM16_SCALE - 1).astype(np.int16)


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    """(N,) int16 -> (N,) float32 in [-1, 1): exact (every int16 / 2^15 is a float32)."""
    return samples.astype(np.float32) / np.float32(PCM16_SCALE)


def write_pcm16(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write int16 samples losslessly (format from the suffix: .flac or .wav)."""
    if samples.dtype != np.int16:
        raise TypeError(f"write_pcm16 needs int16 samples, found {samples.dtype}")
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")


def read_pcm16(path: str | Path, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Samples [start, stop) of a 16-bit file as int16, and its sample rate."""
    try:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype="int16")
    except (sf.LibsndfileError, OSError) as error:
        raise AudioError(f"cannot read audio {path}: {error}") from error
    if data.ndim != 1:
        raise AudioError(f"audio {path} has {data.shape[1]} channels; expected mono")
    return data, int(rate)


def save_wav(path: str | Path, samples: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write 16-bit PCM after `fit_full_scale`."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().float().cpu().numpy()
    sf.write(str(path), fit_full_scale(samples), sample_rate, subtype="PCM_16")


# what speech files may be written as: suffix -> (libsndfile format, subtype); the soundfile
# wheel bundles libsndfile with its MP3 (LAME) and Ogg Vorbis encoders
AUDIO_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".ogg": ("OGG", "VORBIS"),
}


def encode_audio(samples: np.ndarray, sample_rate: int, suffix: str) -> bytes:
    """(N,) float audio -> the bytes of a whole file of `suffix`'s format (AUDIO_FORMATS),
    after `fit_full_scale`; for writing where a file cannot be sought (stdout, a socket)."""
    file_format, subtype = AUDIO_FORMATS[suffix]
    buffer = io.BytesIO()
    sf.write(buffer, fit_full_scale(samples), sample_rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def save_audio(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write a speech file in the format its suffix names (AUDIO_FORMATS)."""
    file_format, subtype = AUDIO_FORMATS[path.suffix.lower()]
    sf.write(str(path), fit_full_scale(samples), sample_rate, format=file_format, subtype=subtype)


class MelSpectrogram:
    """Waveform -> log-mel spectrogram, batched, on any device."""

    def __init__(self, config: AudioConfig) -> None:
        """Precompute the mel filter bank and window for `config`."""
        self.config = config
        self.mel_basis = mel_filters(config)  # (n_mels, n_fft // 2 + 1)
        self.window = torch.hann_window(config.win_length)

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        """(N,) or (B, N) samples -> (n_mels, T) or (B, n_mels, T) with T = N // hop_length."""
        c = self.config
        batched = samples.dim() == 2
        x = samples if batched else samples.unsqueeze(0)
        pad = (c.n_fft - c.hop_length) // 2
        x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window.to(x.device),
            center=False,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, T)
        magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + MAGNITUDE_EPS)
        mel = torch.matmul(self.mel_basis.to(x.device), magnitude)
        log_mel = torch.log(torch.clamp(mel, min=LOG_CLAMP))
        return log_mel if batched else log_mel.squeeze(0)


def n_frames(n_samples: int, config: AudioConfig) -> int:
    """Mel frames of a clip with `n_samples` samples."""
    return n_samples // config.hop_length


@functools.lru_cache(maxsize=8)
def _mel_filters_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(basis).float()


def mel_filters(config: AudioConfig) -> torch.Tensor:
    """Slaney-normalized mel filter bank, (n_mels, n_fft // 2 + 1)."""
    c = config
    return _mel_filters_cached(c.sample_rate, c.n_fft, c.n_mels, c.fmin, c.fmax)


def griffin_lim(log_mel: torch.Tensor, config: AudioConfig, seed: int = 0) -> torch.Tensor:
    """(n_mels, T) log-mel -> (T * hop_length,) waveform, for listening only.

    The magnitude is recovered with the pseudo-inverse of the mel filters, raised
    to `griffin_lim_power`, then phase is estimated by fast Griffin-Lim.
    """
    c = config
    frames = log_mel.shape[-1]
    shortest = c.n_fft // c.hop_length + 1  # the STFT's reflect padding needs this many frames
    if frames < shortest:
        silence = log_mel.new_full((log_mel.shape[0], shortest - frames), SILENCE_LOG_MEL)
        return griffin_lim(torch.cat([log_mel, silence], dim=-1), c, seed)[: frames * c.hop_length]
    basis = mel_filters(c).to(log_mel.device)
    mel = torch.exp(log_mel.float())
    magnitude = torch.clamp(torch.linalg.pinv(basis) @ mel, min=LOG_CLAMP) ** c.griffin_lim_power
    # a centered STFT of T * hop samples has T + 1 frames: repeat the last one
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
    window = torch.hann_window(c.win_length, device=log_mel.device)
    length = log_mel.shape[-1] * c.hop_length
    generator = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(log_mel.device) * 2 * math.pi
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    stft = functools.partial(
        torch.stft,
        n_fft=c.n_fft,
        hop_length=c.hop_length,
        win_length=c.win_length,
        window=window,
        return_complex=True,
    )
    for _ in range(c.griffin_lim_iters):
        waveform = torch.istft(
            magnitude * angles,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=window,
            length=length,
        )
        rebuilt = stft(waveform)
        angles = rebuilt - (GRIFFIN_LIM_MOMENTUM / (1 + GRIFFIN_LIM_MOMENTUM)) * previous
        previous = rebuilt
        angles = angles / (angles.abs() + 1e-16)
    return torch.istft(
        magnitude * angles,
        c.n_fft,
        hop_length=c.hop_length,
        win_length=c.win_length,
        window=window,
        length=length,
    )
