"""Read a dataset's metadata in the layouts people already have, without conversion.

Supported (detected in this order):
- RUSLAN: `metadata_RUSLAN_22200.csv` with `ID|text`, audio in `RUSLAN/ID.wav`;
- LJSpeech: `metadata.csv` with `id|text` or `id|raw|normalized`, audio in `wavs/ID.wav`
  (the normalized column, when present, is what the frontend reads);
- the predecessor's lists: `train.csv` and `val.csv` with `path|text` (paths absolute or
  relative to the dataset directory); the user's split is kept.

Audio may also be `.flac` (or any extension in AUDIO_EXTENSIONS) next to where `.wav` is expected.
A file's column count is decided once, for the whole file (see `_columns`); a row that does not
fit it is malformed. Malformed rows and rows whose id is no plain name (see ID_PATTERN) are
returned with a `problem` / `id_problem`, never dropped; no audio is looked up for a bad id.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tacotune.errors import DatasetError, short_repr

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
RUSLAN_METADATA = "metadata_RUSLAN_22200.csv"
# An id names files (its audio, its cached mel), so it is a plain file name: letters and digits
# of any script, `_`, `-`, `.` and spaces inside; it starts with a letter, digit or `_` (never
# a dot) and holds no path separator, so `../x` or `/abs/x` can never leave a directory.
ID_PATTERN = re.compile(r"\w(?:[\w. -]*[\w.-])?")
MAX_ID_LENGTH = 100  # characters; keeps `<id>.npy` under every file system's name limit

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
    id_problem: str = ""  # the id is no plain name (ID_PATTERN): why


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


def check_id(utt_id: str) -> str:
    """Why `utt_id` cannot name a file inside a directory, or "" when it can."""
    if len(utt_id) <= MAX_ID_LENGTH and ID_PATTERN.fullmatch(utt_id):
        return ""
    return (
        f"id {short_repr(utt_id)} is not a plain name: an id may hold letters, digits, '_', '-', "
        f"'.' and inner spaces, starts with a letter, digit or '_' and has at most "
        f"{MAX_ID_LENGTH} characters (no '/', no leading '.')"
    )


def _row(
    utt_id: str,
    number: int,
    path: Path,
    audio: Path | None,
    texts: tuple[str, str],  # raw, and what the frontend reads
    split: Split | None,
    problem: str,
) -> SourceRow:
    """A SourceRow; its audio is looked up only when the id is a plain name."""
    id_problem = check_id(utt_id) if utt_id else ""
    found = find_audio(audio) if audio is not None and not id_problem else None
    raw, text = texts
    return SourceRow(utt_id, number, path.name, found, raw, text, split, problem, id_problem)


def _columns(rows: list[list[str]], allow_three: bool) -> int:
    """The file's column count, decided once: 2, or 3 when more rows have 3 than 2 (on a tie,
    whichever of 2 and 3 comes first). A row with another count is malformed, never re-read
    with other columns."""
    if not allow_three:
        return 2
    counts = Counter(len(fields) for fields in rows if len(fields) in (2, 3))
    return counts.most_common(1)[0][0] if counts else 2


def _read_id_text(path: Path, audio_dir: Path, allow_three: bool) -> list[SourceRow]:
    numbered = [(n, line.split("|")) for n, line in enumerate(_lines(path), 1) if line.strip()]
    width = _columns([fields for _, fields in numbered], allow_three)
    layout = "id|text" if width == 2 else "id|raw|normalized"
    rows = []
    for number, fields in numbered:
        utt_id = fields[0].strip()
        problem = ""
        if len(fields) == width:
            raw, text = fields[1].strip(), fields[-1].strip()
        else:
            raw = text = "|".join(fields[1:]).strip()
            problem = f"expected {width} columns ({layout}) like the rest of {path.name}, found "
            problem += f"{len(fields)}" + (
                ": a '|' inside the text is read as a column separator; remove it"
                if len(fields) > width
                else ""
            )
        if not utt_id:
            problem = problem or "empty id"
        audio = audio_dir / utt_id if utt_id else None
        rows.append(_row(utt_id, number, path, audio, (raw, text), None, problem))
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
        audio = audio_path if audio_field else None
        texts = (text.strip(), text.strip())
        rows.append(_row(utt_id, number, path, audio, texts, split, problem))
    return rows
