"""The prepared-dataset contract: `manifest.jsonl`, its fingerprint, and loading it back.

A prepared directory holds:
    manifest.jsonl    one kept utterance per line (ManifestEntry)
    config.yaml       the resolved config `prepare` ran with (text and audio sections matter)
    report.md/.json   totals, exclusions per reason, information
    mels/<hash>/      log-mel cache, keyed by a hash of the audio config
    audio/<hash>/     the trimmed, resampled 16-bit audio each mel was computed from
                      (ID.flac; T * hop_length samples for a T-frame mel, and
                      MelSpectrogram(read back audio) == the cached mel exactly)
    .cache/           measurements reused by the next `prepare` run
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.config.load import load_config
from tacotune.config.schema import AudioConfig, Config
from tacotune.data.formats import RUSLAN_METADATA
from tacotune.errors import DatasetError
from tacotune.files import write_text_atomic

MANIFEST = "manifest.jsonl"
CONFIG_FILE = "config.yaml"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# AudioConfig fields that do not change the mels (only how they are turned back into audio)
_LISTENING_ONLY = {"griffin_lim_iters", "griffin_lim_power"}


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance ready for training."""

    id: str
    split: str  # "train" or "val"
    audio_path: str  # the source file
    mel_path: str  # relative to the prepared directory
    trimmed_audio_path: str  # 16-bit audio of exactly that mel (n_frames * hop), same directory
    raw_text: str  # as the user wrote it
    normalized: str  # after normalization, before stress
    text: str  # the model input (normalized + stress marks)
    n_frames: int  # mel frames
    duration: float  # seconds after trimming
    sample_rate: int  # of the source file, Hz


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared directory loaded back: its entries and the config it was made with."""

    root: Path
    config: Config
    entries: list[ManifestEntry]
    fingerprint: str

    def split(self, name: str) -> list[ManifestEntry]:
        """The entries of one split."""
        return [e for e in self.entries if e.split == name]


def mel_settings(audio: AudioConfig) -> dict[str, object]:
    """The AudioConfig fields that change the mels (not how they are listened to)."""
    return {k: v for k, v in dataclasses.asdict(audio).items() if k not in _LISTENING_ONLY}


def audio_config_hash(audio: AudioConfig) -> str:
    """12 hex digits identifying every setting that changes the mels."""
    relevant = mel_settings(audio)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def write_manifest(path: Path, entries: list[ManifestEntry]) -> str:
    """Write JSONL atomically; return the dataset fingerprint (hash of the content)."""
    text = "".join(json.dumps(dataclasses.asdict(e), ensure_ascii=False) + "\n" for e in entries)
    write_text_atomic(path, text)
    return fingerprint(text)


def fingerprint(manifest_text: str) -> str:
    """16 hex digits identifying a manifest's content."""
    return hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()[:16]


RAW_METADATA = ("metadata.csv", "train.csv", RUSLAN_METADATA)  # the layouts read_dataset knows


def _prepare_hint(root: Path) -> str:
    """A command that makes `root` usable and is safe to run as printed: it never prepares
    into a directory that holds the user's files (a raw dataset above all)."""
    if (root / REPORT_MD).exists():
        return f"The last `tacotune prepare` into it failed; see {root / REPORT_MD}."
    new = shlex.quote(str(root.with_name(f"{root.name}-prepared")))
    if any((root / name).is_file() for name in RAW_METADATA):
        return (
            f"It looks like a raw dataset: prepare it into a new directory with "
            f"`tacotune prepare {shlex.quote(str(root))} -o {new}` and use {new}."
        )
    if root.is_dir() and any(root.iterdir()):
        return "Prepare your dataset into a new directory: `tacotune prepare DATA_DIR -o NEW_DIR`."
    return f"Run `tacotune prepare DATA_DIR -o {shlex.quote(str(root))}` first."


def load_prepared(root: str | Path) -> PreparedDataset:
    """Load a directory written by `tacotune prepare`, checking that it is complete."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset: {MANIFEST} is missing. {_prepare_hint(root)}"
        )
    text = manifest.read_text(encoding="utf-8")
    entries = [
        ManifestEntry(**_checked(json.loads(line), manifest, n))
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    config = load_config(root / CONFIG_FILE)
    return PreparedDataset(root, config, entries, fingerprint(text))


def _checked(row: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    expected = {f.name for f in dataclasses.fields(ManifestEntry)}
    if set(row) != expected:
        raise DatasetError(
            f"{path}:{line} does not match this tacotune version's manifest format "
            f"(missing {sorted(expected - set(row))}, unexpected {sorted(set(row) - expected)}); "
            "run `tacotune prepare` again"
        )
    return row
