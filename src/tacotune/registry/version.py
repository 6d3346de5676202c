"""A registered version: its files, its meta.json and the one check of both.

Each version directory holds model.pt, config.yaml, metrics.json, README.md (its model card),
vocoder.pt when registered with a neural vocoder, and meta.json: every `ModelVersion` field
but the directory, with the sha256 of every other file. `ModelVersion.verify` checks them
all; `read_version` refuses a meta.json that is not what `register` wrote.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacotune.errors import TacotuneError, short_repr
from tacotune.files import file_sha256

log = logging.getLogger(__name__)

CHECKPOINT_FILE, VOCODER_FILE, META_FILE = "model.pt", "vocoder.pt", "meta.json"
CONFIG_FILE, METRICS_FILE, CARD_FILE = "config.yaml", "metrics.json", "README.md"
STAGES = ("candidate", "production", "archived", "rejected")  # rejected: not a usable voice
# ModelVersion field -> the file of the version whose sha256 it records
HASHED_FILES = {
    "sha256": CHECKPOINT_FILE,
    "vocoder_sha256": VOCODER_FILE,
    "config_sha256": CONFIG_FILE,
    "metrics_sha256": METRICS_FILE,
    "card_sha256": CARD_FILE,
}


class RegistryError(TacotuneError):
    """A registry operation cannot be done (bad name, ref, stage, checkpoint or export)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a named voice."""

    name: str
    version: int  # 1, 2, ... per name
    stage: str  # one of STAGES
    created: str  # ISO-8601 UTC
    directory: Path  # ROOT/NAME/v<version>
    score: float | None  # the run's best composite score (lower is better), if known
    metrics: dict[str, float]  # whatever was passed at registration
    data_fingerprint: str  # the checkpoint's "dataset_fingerprint"
    code_version: str  # the checkpoint's "code_version"
    source: str  # where it came from (a run directory), free text
    sha256: str = ""  # of model.pt at registration ("" for versions registered before hashes)
    vocoder_sha256: str = ""  # of vocoder.pt at registration; "" without a neural vocoder
    config_sha256: str = ""  # of config.yaml ("" for versions registered before it was kept)
    metrics_sha256: str = ""  # of metrics.json (likewise)
    steps: int | None = None  # the training step of the registered weights, if known
    card_sha256: str = ""  # of README.md, the model card ("" for versions registered before)
    data_hours: float | None = None  # of speech in the run's training split, if known

    @property
    def checkpoint(self) -> Path:
        """The registered checkpoint, ``directory / "model.pt"``."""
        return self.directory / CHECKPOINT_FILE

    def vocoder(self) -> Path | None:
        """The registered vocoder checkpoint (checked against its sha256), or None for a
        version that speaks with Griffin-Lim. RegistryError if the file was changed."""
        if not self.vocoder_sha256:
            return None
        path = self.directory / VOCODER_FILE
        self._verify_file(path, self.vocoder_sha256)
        return path

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    def meta(self) -> dict[str, Any]:
        """Every field except the directory, as JSON-ready data."""
        data = dataclasses.asdict(self)
        del data["directory"]
        return data

    def recorded_files(self) -> dict[str, str]:
        """File name -> the sha256 meta.json records for it: every file of the version but
        meta.json (a hash left empty by an older tacotune or a version without a vocoder
        is not listed)."""
        hashes = {file: getattr(self, field) for field, file in HASHED_FILES.items()}
        return {file: digest for file, digest in hashes.items() if digest}

    def verify(self) -> None:
        """Check that every recorded file still has the sha256 it had at registration
        (RegistryError naming the first file that does not, and both hashes). A version
        registered before hashes were recorded cannot be checked: a warning says so."""
        if not self.sha256:
            log.warning(
                "%s has no recorded sha256 (registered by an older tacotune): "
                "its checkpoint is not verified",
                self.ref,
            )
        for name, digest in self.recorded_files().items():
            self._verify_file(self.directory / name, digest)

    def _verify_file(self, path: Path, expected: str) -> None:
        """The one check of a version's file against the sha256 meta.json records."""
        found = checked_sha256(path)
        if found != expected:
            raise RegistryError(
                f"{path} of {self.ref} was changed after registration: its sha256 is {found}, "
                f"meta.json records {expected}; restore the file (e.g. from "
                f"{self.source or 'its source'}) or register the voice again"
            )


def checked_sha256(path: Path) -> str:
    """The hex sha256 of a file (RegistryError if it cannot be read)."""
    try:
        return file_sha256(path)
    except OSError as error:
        raise RegistryError(
            f"{path} cannot be read ({error.strerror or error}); restore it or remove its version"
        ) from error


def read_version(directory: Path) -> ModelVersion:
    """The version in `directory`, from its meta.json; RegistryError naming the file and
    what is wrong when it is not what `register` wrote."""
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8 JSON
        problem = f"it cannot be read ({error})"
    else:
        problem = _meta_problem(meta, directory)
    if problem:
        raise RegistryError(f"{path} is damaged: {problem}; restore it or remove {directory}")
    return ModelVersion(directory=directory, **meta)


_TEXT: tuple[Callable[[Any], bool], str] = (lambda v: isinstance(v, str), "a string")
_SHA256 = re.compile("(?:[0-9a-f]{64})?")  # or empty
# meta.json field -> (its test, what it must be); the hashes may be absent (older versions)
_META_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: _TEXT for key in ("name", "created", "data_fingerprint", "code_version", "source")},
    "version": (lambda v: type(v) is int, "an integer"),
    "stage": (lambda v: v in STAGES, "one of " + ", ".join(STAGES)),
    "score": (lambda v: v is None or is_number(v), "a finite number or null"),
    "metrics": (
        lambda v: isinstance(v, dict) and all(map(is_number, v.values())),
        "an object of finite numbers",
    ),
    **{
        key: (lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None, "a sha256")
        for key in HASHED_FILES
    },
    "steps": (lambda v: v is None or (type(v) is int and v >= 0), "a step number or null"),
    "data_hours": (lambda v: v is None or (is_number(v) and v >= 0), "hours of speech or null"),
}
_OPTIONAL = {*HASHED_FILES, "steps", "data_hours"}  # absent from older versions' meta.json


def _meta_problem(meta: Any, directory: Path) -> str:
    """What makes `meta` no version of `directory` ("" if nothing)."""
    if not isinstance(meta, dict):
        return f"it holds a JSON {type(meta).__name__}, not an object"
    unknown = sorted(set(meta) - set(_META_FIELDS))
    missing = [key for key in _META_FIELDS if key not in meta and key not in _OPTIONAL]
    if unknown or missing:
        return f"unknown fields {unknown}" if unknown else f"it lacks {', '.join(missing)}"
    for key, (test, expected) in _META_FIELDS.items():
        if key in meta and not test(meta[key]):
            return f"{key} is {short_repr(meta[key])}, expected {expected}"
    found, expected_ref = f"{meta['name']}:{meta['version']}", directory.parent.name
    expected_ref += f":{int(directory.name[1:])}"
    if found != expected_ref:
        return f"it describes {short_repr(found)}, its directory holds {expected_ref}"
    return ""


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
