"""The voices a server speaks with: resolved from the registry or a checkpoint, loaded once.

A voice spec is ``NAME`` (the registry's production version of NAME), ``NAME:N`` or
``NAME:STAGE`` (that version), a checkpoint path (a .pt file or a run directory), or an
ONNX export directory (`tacotune export`: served by onnxruntime instead of torch);
``ALIAS=SPEC`` serves any of these under another name. `load_voice` is the single place a
voice is built: a registry version registered with a neural vocoder speaks with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tacotune.errors import TacotuneError
from tacotune.export.bundle import MANIFEST
from tacotune.registry import NAME_PATTERN, ModelVersion, Registry
from tacotune.synthesize import Piece, Synthesizer
from tacotune.text.frontend import TextFrontend
from tacotune.vocoder.griffin_lim import Vocoder

log = logging.getLogger(__name__)

GRIFFIN_LIM = "griffin-lim"


class ServeError(TacotuneError):
    """The server cannot start as asked (no voices, duplicate names, a bad voice spec)."""


class SpeechEngine(Protocol):
    """What the server needs from a loaded voice.

    `tacotune.synthesize.Synthesizer` fits; so does any object with the same `frontend`,
    `vocoder` and `decode` (e.g. an ONNX runtime's synthesizer). The server calls it from
    one thread only (see runner.py), so an engine need not be thread-safe.
    """

    frontend: TextFrontend
    vocoder: Vocoder

    def decode(self, chunks: list[tuple[str, tuple[int, ...]]]) -> list[Piece]:
        """Decode (model input, ids) pairs; one Piece each."""
        ...


@dataclass(frozen=True)
class Voice:
    """A loaded voice, shared by every request."""

    name: str  # what clients send as `model` / `voice`
    engine: SpeechEngine
    source: str  # the registry reference (NAME:N) or the checkpoint path
    stage: str | None  # the registry stage, None for a checkpoint path
    vocoder: str  # GRIFFIN_LIM or the neural vocoder's name

    @property
    def sample_rate(self) -> int:
        """Hz of the audio this voice produces."""
        return self.engine.vocoder.sample_rate

    def describe(self) -> dict[str, object]:
        """JSON-ready facts for GET /v1/voices."""
        return {
            "name": self.name,
            "source": self.source,
            "stage": self.stage,
            "vocoder": self.vocoder,
            "sample_rate": self.sample_rate,
        }


def load_voice(spec: str, registry: Registry, device: str = "cpu") -> Voice:
    """Build one voice from a spec (see the module docstring); the model loads here, once."""
    alias, target = ("", spec) if Path(spec).exists() or "=" not in spec else spec.split("=", 1)
    path = Path(target)
    version: ModelVersion | None = None
    if path.exists():
        checkpoint = path
        name, source = alias or _name_of_path(path), str(path)
    else:
        ref = target if ":" in target else f"{target}:production"
        version = registry.get(ref)
        checkpoint = version.checkpoint
        name, source = alias or target, version.ref
    vocoder = _registered_vocoder(version, device)
    engine: SpeechEngine
    if (checkpoint / MANIFEST).is_file():  # an ONNX export: the same API, onnxruntime inside
        from tacotune.export.synthesizer import OnnxSynthesizer

        engine = OnnxSynthesizer(checkpoint, vocoder=vocoder)
        source += " (onnxruntime)"
    else:
        engine = Synthesizer(checkpoint, device=device, vocoder=vocoder)
    voice = Voice(
        name=name,
        engine=engine,
        source=source,
        stage=version.stage if version else None,
        vocoder=GRIFFIN_LIM if vocoder is None else type(vocoder).__name__,
    )
    log.info("voice %r: %s (%s vocoder)", voice.name, voice.source, voice.vocoder)
    return voice


def load_voices(specs: Sequence[str], registry: Registry, device: str = "cpu") -> list[Voice]:
    """Every spec (none: each name's production version in the registry), names unique."""
    if not specs:
        specs = sorted({v.name for v in registry.versions() if v.stage == "production"})
        if not specs:
            raise ServeError(
                f"no voices to serve: the registry {registry.root} has no production version; "
                "name voices (NAME, NAME:N or a checkpoint path) or promote one with "
                "`tacotune registry promote NAME:N --stage production`"
            )
    voices = [load_voice(spec, registry, device) for spec in specs]
    names = [v.name for v in voices]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServeError(
            f"two voices are named {', '.join(map(repr, duplicates))}; "
            "serve one of them under another name with ALIAS=SPEC"
        )
    return voices


def _registered_vocoder(version: ModelVersion | None, device: str) -> Vocoder | None:
    """The neural vocoder stored with a registry version (vocoder.pt, checked against its
    sha256 and the voice's audio settings); None means Griffin-Lim."""
    path = version.vocoder() if version is not None else None
    if version is None or path is None:
        return None
    from tacotune.config import load_config
    from tacotune.vocoder.neural import load_vocoder

    audio = load_config(version.directory / "config.yaml").audio
    return load_vocoder(path, expected_audio=audio, device=device)


def _name_of_path(path: Path) -> str:
    """A run directory's name, or a checkpoint file's stem (its run's name for the generic
    best/last/model stems); characters a registry name cannot hold become '-'."""
    path = path.resolve()
    if path.is_file() and path.stem in ("best", "last", "model", "good"):
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        name = run.name
    else:
        name = path.stem if path.is_file() else path.name
    cleaned = "".join(c if NAME_PATTERN.fullmatch(f"a{c}") else "-" for c in name)
    return cleaned or "voice"
