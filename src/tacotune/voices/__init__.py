"""Base voices shipped inside the package: Russian Tacotron2 weights to fine-tune from.

A new voice fine-tuned from a base learns in minutes what random weights learn in hours
(alignment, how letters sound): `tacotune train PREPARED -o RUN --warm-start base`, and
`tacotune auto` does it by default. Each base is an inference checkpoint (fp16 tensors,
loaded with `weights_only=True`) listed in `voices.json` with its sha256 and model card;
`scripts/base_voice.py` trains and ships them (README, "Base voices").

`base` names the shipped voice whose model and mel settings match the run's config; a
voice's own name (`ru-base-small`) picks it explicitly; anything else is a checkpoint path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch

from tacotune.config.load import config_from_dict
from tacotune.config.schema import Config
from tacotune.errors import CheckpointError, ConfigError
from tacotune.files import file_sha256

log = logging.getLogger(__name__)

ANY_BASE = "base"  # the shipped base voice that matches the config
MANIFEST = "voices.json"
# AudioConfig fields that do not change what a mel frame means
_MEL_FREE = frozenset({"trim_silence", "trim_top_db", "griffin_lim_iters", "griffin_lim_power"})


@dataclass(frozen=True)
class BaseVoice:
    """One shipped base voice (an entry of voices.json)."""

    name: str  # e.g. "ru-base-small"
    file: str  # the checkpoint, beside this module
    sha256: str  # of that file, recorded when it was shipped
    card: str  # its model card (data, voices, hours, steps, metrics, license)
    model: dict[str, object]  # the ModelConfig it was trained with
    audio: dict[str, object]  # the AudioConfig of its mels
    summary: str  # one line for logs and reports
    license: str  # SPDX id of its weights' license (that of its training data's text)

    @property
    def path(self) -> Path:
        """The checkpoint file inside the installed package."""
        return Path(str(resources.files(__name__).joinpath(self.file)))

    @property
    def card_path(self) -> Path:
        """The model card inside the installed package."""
        return Path(str(resources.files(__name__).joinpath(self.card)))

    def matches(self, config: Config) -> str:
        """What differs between this voice's weights and `config`, in words; the empty
        string when they fit (same tensor shapes, same mels)."""
        own = config_from_dict({"model": self.model, "audio": self.audio})
        differences = _differences(
            dataclasses.asdict(own.audio), dataclasses.asdict(config.audio), _MEL_FREE
        )
        if not differences:  # (the mel bins are part of the tensor shapes below)
            differences = _shape_differences(own, config)
        return ", ".join(differences)

    def verified_path(self) -> Path:
        """`path`, after checking the file against its recorded sha256."""
        path = self.path
        if not path.is_file():
            raise CheckpointError(
                f"the base voice {self.name!r} is listed in {MANIFEST} but its file {path} is "
                "missing; reinstall tacotune, or train without --warm-start base"
            )
        found = file_sha256(path)
        if found != self.sha256:
            raise CheckpointError(
                f"the base voice {self.name!r} ({path}) has sha256 {found[:16]}…, its card "
                f"records {self.sha256[:16]}…: the file was changed or damaged; reinstall tacotune"
            )
        return path


def _differences(
    shipped: dict[str, object], wanted: dict[str, object], free: frozenset[str]
) -> list[str]:
    keys = sorted((set(shipped) | set(wanted)) - free)
    return [
        f"audio.{key} {shipped.get(key)!r} (base) vs {wanted.get(key)!r} (config)"
        for key in keys
        if shipped.get(key) != wanted.get(key)
    ]


def _shape_differences(base: Config, config: Config) -> list[str]:
    """The tensors a warm start could not copy (missing on one side or of another shape),
    from models built on the meta device (no memory, no initialization work)."""
    shipped, wanted = _tensor_shapes(base), _tensor_shapes(config)
    found = [
        f"{name} {shipped.get(name)} (base) vs {wanted.get(name)} (config)"
        for name in sorted(set(shipped) | set(wanted))
        if shipped.get(name) != wanted.get(name)
    ]
    return found[:3] + ([f"and {len(found) - 3} more tensors"] if len(found) > 3 else [])


def _tensor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    from tacotune.model.tacotron2 import Tacotron2
    from tacotune.text.symbols import SYMBOLS

    with torch.device("meta"):
        model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@cache
def base_voices() -> tuple[BaseVoice, ...]:
    """Every base voice this installation ships (voices.json), in its order."""
    manifest = resources.files(__name__).joinpath(MANIFEST)
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    return tuple(BaseVoice(name=name, **entry) for name, entry in entries.items())


def matching_base(config: Config) -> BaseVoice | None:
    """The first shipped base voice whose weights fit `config`, or None."""
    return next((voice for voice in base_voices() if not voice.matches(config)), None)


def misfits(config: Config) -> str:
    """Why no shipped base voice fits `config`, voice by voice."""
    return "; ".join(f"{voice.name}: {voice.matches(config)}" for voice in base_voices())


class WarmStart(NamedTuple):
    """What a warm start reads."""

    path: Path  # the checkpoint (a base voice's verified file, or the user's path)
    voice: BaseVoice | None  # the base voice, if it is one


def resolve_warm_start(value: str | Path, config: Config) -> WarmStart:
    """The checkpoint a warm start reads: a base voice (`base` or its name, checked against
    its sha256 and against `config`) or a path."""
    name = str(value)
    voices = {voice.name: voice for voice in base_voices()}
    if name == ANY_BASE:
        voice = matching_base(config)
        if voice is None:
            raise ConfigError(
                f"--warm-start base: no shipped base voice fits this config ({misfits(config)}); "
                "train from scratch, or use a config with a base voice's sizes (demo.yaml for "
                "ru-base-small)"
            )
    elif name in voices:
        voice = voices[name]
        differences = voice.matches(config)
        if differences:
            raise ConfigError(
                f"--warm-start {name}: its weights do not fit this config ({differences}); "
                "use its sizes, or another base"
            )
    else:
        path = Path(value)
        if not path.exists():
            raise ConfigError(
                f"--warm-start {name!r}: no such checkpoint file or run directory, and no base "
                f"voice of that name (shipped: {', '.join([ANY_BASE, *voices])})"
            )
        return WarmStart(path, None)
    log.info("warm start from the base voice %s: %s", voice.name, voice.summary)
    return WarmStart(voice.verified_path(), voice)


__all__ = [
    "ANY_BASE",
    "BaseVoice",
    "WarmStart",
    "base_voices",
    "matching_base",
    "misfits",
    "resolve_warm_start",
]
