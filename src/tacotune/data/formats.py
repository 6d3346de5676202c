"""Read a dataset's metadata in the layouts people already have, without conversion.

Supported (detected in this order):
- RUSLAN: `metadata_RUSLAN_22200.csv` with `ID|text`, audio in `RUSLAN/ID.wav`;
- LJSpeech: `metadata.csv` with `id|text` or `id|raw|normalized`, audio in `wavs/ID.wav`
  (the normalized column, when present, is what the frontend reads);
- the predecessor's lists: `train.csv` and `val.csv` with `path|text` (paths absolute or
  relative to the dataset directory); the user's split is kept.

Audio may also be `.flac` (or any extension in AUDIO_EXTENSIONS) next to where `.wav` is expected.
Malformed rows are returned as rows with a `problem`, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tacotune.errors import DatasetError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
RUSLAN_METADATA = "metadata_RUSLAN_22200.csv"

Split = Literal["train", "val"]


@dataclass(frozen=True)
class SourceRow:
    """One metadata line as found in the dataset."""

    id: str
    line: int  # 1-based line number in `source`
    source: str  # metadata file name
    audio_path: Path | None  # None when no audio file exists under any extension
    raw_text: str  # the text as the user wrote it
    text: str  # what the frontend reads (the normalized column when there is one)
    split: Split | None  # the user's split, if the format carries one
    problem: str = ""  # a malformed line: why it cannot be used


@dataclass(frozen=True)
class DatasetLayout:
    """Which format was detected and its rows."""

    format: Literal["ruslan", "ljspeech", "filelist"]
    rows: list[SourceRow]


def read_dataset(data_dir: str | Path) -> DatasetLayout:
    """Detect the layout of `data_dir` and parse its metadata."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    if (root / RUSLAN_METADATA).is_file():
        rows = _read_id_text(root / RUSLAN_METADATA, root / "RUSLAN", allow_three=False)
        return DatasetLayout("ruslan", rows)
    if (root / "metadata.csv").is_file():
        return DatasetLayout(
            "ljspeech", _read_id_text(root / "metadata.csv", root / "wavs", allow_three=True)
        )
    if (root / "train.csv").is_file():
        rows = _read_filelist(root / "train.csv", root, "train")
        if (root / "val.csv").is_file():
            rows += _read_filelist(root / "val.csv", root, "val")
        return DatasetLayout("filelist", rows)
    raise DatasetError(
        f"no known dataset layout in {root}: expected one of {RUSLAN_METADATA} (RUSLAN), "
        "metadata.csv with wavs/ (LJSpeech) or train.csv [+ val.csv] with path|text lines"
    )


def find_audio(stem_path: Path) -> Path | None:
    """`stem_path` with the first audio extension that exists, else None."""
    if stem_path.suffix.lower() in AUDIO_EXTENSIONS and stem_path.is_file():
        return stem_path
    for extension in AUDIO_EXTENSIONS:
        candidate = stem_path.with_name(stem_path.name + extension)
        if candidate.is_file():
            return candidate
    return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path} is not UTF-8 (byte {error.start}); re-save it as UTF-8"
        ) from error


def _read_id_text(path: Path, audio_dir: Path, allow_three: bool) -> list[SourceRow]:
    rows = []
    columns = "id|text or id|raw|normalized" if allow_three else "id|text"
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        utt_id = fields[0].strip()
        problem = ""
        if len(fields) == 2 or (allow_three and len(fields) == 3):
            raw, text = fields[1].strip(), fields[-1].strip()
        else:
            raw = text = "|".join(fields[1:]).strip()
            problem = f"expected {columns}, found {len(fields)} fields"
        if not utt_id:
            problem = problem or "empty id"
        audio = find_audio(audio_dir / utt_id) if utt_id else None
        rows.append(SourceRow(utt_id, number, path.name, audio, raw, text, None, problem))
    return rows


def _read_filelist(path: Path, root: Path, split: Split) -> list[SourceRow]:
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        audio_field, sep, text = line.partition("|")
        problem = "" if sep and "|" not in text else "expected path|text"
        audio_field = audio_field.strip()
        audio_path = Path(audio_field) if Path(audio_field).is_absolute() else root / audio_field
        utt_id = audio_path.stem or f"{path.stem}_line{number}"
        audio = find_audio(audio_path) if audio_field else None
        rows.append(
            SourceRow(utt_id, number, path.name, audio, text.strip(), text.strip(), split, problem)
        )
    return rows
