"""A trained HiFi-GAN generator behind the `Vocoder` protocol, and its checkpoint contract.

A vocoder checkpoint (written with `tacotune.checkpoint.save_checkpoint`) holds at least

    vocoder_config  the `vocoder` config section, plain data (generator preset, ...)
    generator       the generator's state dict, weight norm still in place
    audio           the `audio` config section the training mels were made with

(`vocoder_payload` builds these three; training adds optimizer states and the like to
last.pt and good.pt only: best.pt, step copies and model.pt hold none). Loading folds the
weight norm into plain weights, switches to eval mode (on CPU also to the faster
channels-last 2-D layout) and checks that the mels it will be given are the mels it was
trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacotune.checkpoint import load_checkpoint
from tacotune.config.load import coerce, config_to_dict
from tacotune.config.rules import validate
from tacotune.config.schema import AudioConfig, Config, VocoderConfig
from tacotune.device import resolve_device
from tacotune.errors import AudioError, CheckpointError, ConfigError
from tacotune.vocoder.hifigan import Generator, build_generator

PAYLOAD_KEYS = ("vocoder_config", "generator", "audio")
# AudioConfig fields that define the mel features; a vocoder only fits mels that agree on all
MEL_FIELDS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")


def vocoder_payload(generator: Generator, config: Config) -> dict[str, Any]:
    """The checkpoint entries `HifiGanVocoder.from_payload` reads."""
    plain = config_to_dict(config)
    return {
        "vocoder_config": plain["vocoder"],
        "generator": generator.state_dict(),
        "audio": plain["audio"],
    }


def vocoder_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as is; a vocoder run directory's checkpoints/model.pt (the best
    weights without optimizer state), else its best.pt, else its last.pt."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("model.pt", "best.pt", "last.pt"):
        candidate = path / "checkpoints" / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path} holds no vocoder checkpoint (checkpoints/model.pt, best.pt or last.pt); give "
        "a run directory of `tacotune vocoder train` or a vocoder checkpoint file"
    )


def read_payload(
    payload: dict[str, Any], expected_audio: AudioConfig | None, source: str
) -> tuple[VocoderConfig, AudioConfig]:
    """The vocoder and audio configs of a checkpoint payload, checked: the keys are there,
    the configs are valid and (with `expected_audio`, the acoustic model's audio config)
    the mel settings match. Every problem -> CheckpointError naming `source`."""
    if not isinstance(payload, dict) or any(k not in payload for k in PAYLOAD_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{source} is not a HiFi-GAN vocoder checkpoint: it needs {list(PAYLOAD_KEYS)}, "
            f"found {found}; pass a checkpoint written by `tacotune vocoder train`"
        )
    try:
        vocoder = coerce(payload["vocoder_config"], VocoderConfig, "vocoder")
        audio = coerce(payload["audio"], AudioConfig, "audio")
        validate(Config(audio=audio, vocoder=vocoder))
    except ConfigError as error:
        raise CheckpointError(f"{source} has an invalid vocoder config: {error}") from error
    if expected_audio is not None:
        _check_mel_settings(audio, expected_audio, source)
    return vocoder, audio


def folded_generator(
    generator_state: dict[str, torch.Tensor], vocoder: VocoderConfig, audio: AudioConfig
) -> Generator:
    """The config's generator with `generator_state` loaded, weight norm folded, in eval
    mode without gradients (1-D layout: what ONNX export wants). CheckpointError when the
    state does not fit."""
    generator = build_generator(
        vocoder.generator, audio.n_mels, audio.hop_length, vocoder.generator_channels
    )
    try:
        generator.load_state_dict(generator_state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"the generator weights do not fit HiFi-GAN {vocoder.generator} with "
            f"{audio.n_mels} mel bands ({str(error).splitlines()[0]})"
        ) from error
    generator = generator.remove_weight_norm().eval()
    generator.requires_grad_(False)
    return generator


def load_generator(path: str | Path, expected_audio: AudioConfig | None = None) -> Generator:
    """The folded generator of a vocoder checkpoint or run directory (for ONNX export)."""
    file = vocoder_checkpoint(path)
    source, payload = f"vocoder {file}", load_checkpoint(file)
    vocoder, audio = read_payload(payload, expected_audio, source)
    try:
        return folded_generator(payload["generator"], vocoder, audio)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from error


def load_vocoder(
    path: str | Path, expected_audio: AudioConfig | None = None, device: str = "cpu"
) -> HifiGanVocoder:
    """A trained vocoder from a checkpoint file or a vocoder run directory, checked against
    the acoustic model's `expected_audio`; `device`: cpu, cuda or auto. One CheckpointError
    for a missing, corrupt or mismatched checkpoint."""
    return HifiGanVocoder.load(vocoder_checkpoint(path), expected_audio, resolve_device(device))


class HifiGanVocoder:
    """(n_mels, T) log-mel -> (T * hop_length,) float32 samples with a trained generator."""

    def __init__(
        self,
        generator_state: dict[str, torch.Tensor],
        vocoder: VocoderConfig,
        audio: AudioConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        """Build the config's generator, load the (weight-normalized) state, fold the norm.

        Raises CheckpointError when the state does not fit the preset.
        """
        self.device = torch.device(device)
        self.generator = folded_generator(generator_state, vocoder, audio).to(self.device)
        if self.device.type == "cpu":  # same output, 1.5-2x less CPU time
            self.generator.to_channels_last_2d()
        self.vocoder_config = vocoder
        self.audio = audio
        self.sample_rate = audio.sample_rate
        self.hop_length = audio.hop_length
        self.n_mels = audio.n_mels

    @classmethod
    def from_payload(
        cls,
        payload: dict[str, Any],
        expected_audio: AudioConfig | None = None,
        device: str | torch.device = "cpu",
        source: str = "the checkpoint",
    ) -> HifiGanVocoder:
        """A vocoder from a checkpoint payload; `expected_audio` is the acoustic model's audio
        config, whose mel settings must match the vocoder's. Every problem -> CheckpointError.
        """
        vocoder, audio = read_payload(payload, expected_audio, source)
        try:
            return cls(payload["generator"], vocoder, audio, device)
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from error

    @classmethod
    def load(
        cls,
        path: str | Path,
        expected_audio: AudioConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> HifiGanVocoder:
        """A vocoder from a checkpoint file (see `from_payload`)."""
        return cls.from_payload(load_checkpoint(path), expected_audio, device, f"vocoder {path}")

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) -> (T * hop_length,) float32 samples in (-1, 1)."""
        if mel.dim() != 2 or mel.shape[0] != self.n_mels:
            raise AudioError(
                f"the vocoder expects a ({self.n_mels}, T) mel, found {tuple(mel.shape)}; "
                "the acoustic model and the vocoder must use the same audio settings"
            )
        if mel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            audio = self.generator(mel.float().to(self.device).unsqueeze(0))  # (1, 1, T * hop)
        return audio[0, 0].cpu().numpy().astype(np.float32, copy=False)


def _check_mel_settings(vocoder: AudioConfig, expected: AudioConfig, source: str) -> None:
    differences = [
        f"{name} {getattr(vocoder, name)} (expected {getattr(expected, name)})"
        for name in MEL_FIELDS
        if getattr(vocoder, name) != getattr(expected, name)
    ]
    if differences:
        raise CheckpointError(
            f"{source} was trained on other mels than this acoustic model makes: "
            f"{', '.join(differences)}; use a vocoder trained on data prepared with the "
            "acoustic model's audio settings"
        )
