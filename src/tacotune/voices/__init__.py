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
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from tacotune.config.schema import Config
from tacotune.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

ANY_BASE = "base"  # the shipped base voice that matches the config
MANIFEST = "voices.json"
# ModelConfig fields that do not change a tensor's shape (inference limits, dropout rates)
_SHAPELESS = frozenset(
    {
        "encoder_dropout",
        "attention_dropout",
        "prenet_dropout",
        "decoder_dropout",
        "postnet_dropout",
        "reduction_schedule",
        "max_decoder_steps",
        "max_frames_per_char",
        "gate_threshold",
        "end_hold_frames",
    }
)
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
        differences = _differences(self.model, dataclasses.asdict(config.model), _SHAPELESS)
        differences += _differences(self.audio, dataclasses.asdict(config.audio), _MEL_FREE)
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
        f"{key} {shipped.get(key)!r} (base) vs {_plain(wanted.get(key))!r} (config)"
        for key in keys
        if _plain(shipped.get(key)) != _plain(wanted.get(key))
    ]


def _plain(value: object) -> object:
    """Tuples as lists, so a JSON value compares equal to a dataclass field."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def base_voices() -> tuple[BaseVoice, ...]:
    """Every base voice this installation ships (voices.json), in its order."""
    manifest = resources.files(__name__).joinpath(MANIFEST)
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    return tuple(BaseVoice(name=name, **entry) for name, entry in entries.items())


def matching_base(config: Config) -> BaseVoice | None:
    """The first shipped base voice whose weights fit `config`, or None."""
    return next((voice for voice in base_voices() if not voice.matches(config)), None)


def resolve_warm_start(value: str | Path, config: Config) -> tuple[Path, BaseVoice | None]:
    """The checkpoint a warm start reads: a base voice (`base` or its name, checked against
    its sha256 and against `config`) or a path; and the base voice, if it is one."""
    name = str(value)
    voices = {voice.name: voice for voice in base_voices()}
    if name == ANY_BASE:
        voice = matching_base(config)
        if voice is None:
            raise ConfigError(
                "--warm-start base: no shipped base voice fits this config ("
                + "; ".join(f"{v.name}: {v.matches(config)}" for v in voices.values())
                + "); train from scratch, or use a config with a base voice's sizes "
                "(demo.yaml for ru-base-small)"
            )
    elif name in voices:
        voice = voices[name]
        if voice.matches(config):
            raise ConfigError(
                f"--warm-start {name}: its weights do not fit this config "
                f"({voice.matches(config)}); use its sizes, or another base"
            )
    else:
        path = Path(value)
        if not path.exists():
            raise ConfigError(
                f"--warm-start {name!r}: no such checkpoint file or run directory, and no base "
                f"voice of that name (shipped: {', '.join([ANY_BASE, *voices])})"
            )
        return path, None
    log.info("warm start from the base voice %s: %s", voice.name, voice.summary)
    return voice.verified_path(), voice


__all__ = [
    "ANY_BASE",
    "BaseVoice",
    "base_voices",
    "file_sha256",
    "matching_base",
    "resolve_warm_start",
]
