"""The export directory's manifest: what is in it, with checksums, checked before use.

    DIR/manifest.json  {"format", "format_version", "tacotune", "source", "created",
                        "files": {name: {"sha256", "bytes"}}, "model": {...}, "vocoder": {...}}

Torch-free, like the runtime that reads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tacotune.errors import TacotuneError

FORMAT = "tacotune-onnx"
FORMAT_VERSION = 1  # bump when the graphs' inputs/outputs or the layout change incompatibly
MANIFEST = "manifest.json"
ENCODER, DECODER_STEP, POSTNET, VOCODER = (
    "encoder.onnx",
    "decoder_step.onnx",
    "postnet.onnx",
    "vocoder.onnx",
)
FRONTEND, CONFIG, README = "frontend.json", "config.yaml", "README.md"
CARRIED_PREFIX = "next_"  # decoder_step.onnx: output `next_NAME` is the next step's input NAME
REQUIRED = (ENCODER, DECODER_STEP, POSTNET, FRONTEND, CONFIG)  # vocoder.onnx only with one
_HOW_TO_FIX = "export the voice again with `tacotune export VOICE --format onnx -o DIR`"


class ExportError(TacotuneError):
    """A voice cannot be exported, or an export directory cannot be used."""


def sha256(path: Path) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, files: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Write DIR/manifest.json listing `files` (in DIR) with checksums, plus `info`."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info,
        "files": {
            name: {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
            for name in files
        },
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, after checking every listed file's checksum."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportError(f"ONNX export directory {directory} does not exist; {_HOW_TO_FIX}")
    if not path.is_file():
        raise ExportError(
            f"{directory} has no {MANIFEST}, so it is not a complete tacotune ONNX export; "
            f"{_HOW_TO_FIX}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{path} cannot be read ({error}); {_HOW_TO_FIX}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not a {FORMAT} manifest; {_HOW_TO_FIX}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{directory} has export format {manifest.get('format_version')}, this tacotune "
            f"reads format {FORMAT_VERSION}; {_HOW_TO_FIX} with this tacotune"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()
    ):
        raise ExportError(f"{path} lacks a sha256 for every file; {_HOW_TO_FIX}")
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise ExportError(f"{path} does not list {', '.join(missing)}; {_HOW_TO_FIX}")
    for name, entry in files.items():
        _check_file(directory / name, entry["sha256"])
    return manifest


def _check_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ExportError(f"{path} is missing from the export; {_HOW_TO_FIX}")
    found = sha256(path)
    if found != expected:
        raise ExportError(
            f"{path} does not match the manifest's checksum (expected sha256 {expected[:16]}..., "
            f"found {found[:16]}...): the file was changed or damaged after export; {_HOW_TO_FIX}"
        )
