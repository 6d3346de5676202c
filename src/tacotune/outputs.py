"""Who may write where: the one place that decides what an output directory is, and whether a
command may write its kind of output into it.

A command writes only into a directory that is its own:
- one that does not exist yet (the command creates it) or an empty one;
- one of its own kind that it continues: a prepared dataset prepared again (unchanged rows
  are reused), an interrupted `auto` or `tune`, a training or vocoder run that stopped before
  its first checkpoint (one with a checkpoint is continued with --resume, never by -o).
Anything else is refused before any work, in one line that says what the directory is: the
output of another command, or files the command did not write (which it never overwrites).
An export bundle always needs a new or empty directory.

A directory's kind is recognised by what it holds (`kind_of`). A symbolic link given as the
output is followed: the rule applies to the directory it points to, and that is where the
command writes; a link that points nowhere is refused (nothing is created where it points).
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path

from tacotune.files import OutputError, check_output_directory


class Kind(StrEnum):
    """What a command writes into its output directory."""

    PREPARED = "prepared dataset"  # tacotune prepare
    TRAINING_RUN = "training run"  # tacotune train
    VOCODER_RUN = "vocoder run"  # tacotune vocoder train
    STUDY = "tuning study"  # tacotune tune
    AUTO = "auto directory"  # tacotune auto
    EXPORT = "export bundle"  # tacotune export


RUNS = (Kind.TRAINING_RUN, Kind.VOCODER_RUN)
# Everything a run writes at its top level (train/loop.py, records.py, runlog.py,
# supervision/debug.py and report.py, TensorBoard; vocoder/session.py's teacher-forced mels).
RUN_ENTRIES = frozenset(
    {
        "config.yaml",
        "events.jsonl",
        "metrics.jsonl",
        "checkpoints",
        "samples",
        "debug",
        "tensorboard",
        "teacher_mels",
        "report.md",  # supervision/report.py, when the run ends
        "curves.png",
    }
)
# Everything prepare writes (data/prepare.py, manifest.py, report.py); mels/ and audio/ hold
# one folder per audio-config hash (12 hex digits).
PREPARED_ENTRIES = frozenset(
    {"config.yaml", "manifest.jsonl", "report.json", "report.md", "mels", "audio", ".cache"}
)
_HASH_DIR = "[0-9a-f]" * 12
# What makes a directory one kind's (glob patterns; any one match). A run or a prepared
# dataset must also hold nothing but its own entries (CLOSED); the others are named by a
# file that only their command writes. TRAINING_RUN stands for both runs here (_run_kind
# tells them apart).
MARKERS: dict[Kind, tuple[str, ...]] = {
    Kind.AUTO: ("auto.json",),
    Kind.STUDY: ("study.json",),
    Kind.EXPORT: ("manifest.json",),
    Kind.PREPARED: ("manifest.jsonl", ".cache/analysis.jsonl", f"mels/{_HASH_DIR}"),
    Kind.TRAINING_RUN: ("checkpoints", "events.jsonl", "metrics.jsonl", "teacher_mels"),
}
CLOSED: dict[Kind, frozenset[str]] = {
    Kind.PREPARED: PREPARED_ENTRIES,
    Kind.TRAINING_RUN: RUN_ENTRIES,
}
WRITES = {
    Kind.PREPARED: "mels, audio, a manifest and reports",
    Kind.TRAINING_RUN: "config.yaml, checkpoints and logs",
    Kind.VOCODER_RUN: "config.yaml, checkpoints and logs",
    Kind.STUDY: "config.yaml, study.json and a run per trial",
    Kind.AUTO: "a prepared dataset, runs, a registry and a report",
    Kind.EXPORT: "ONNX graphs, the frontend and a manifest",
}
_SHOWN = 5  # foreign entries named in a refusal


def check_output(path: str | Path, kind: Kind, flag: str = "-o") -> Path:
    """Refuse, before any work is done, an output directory that a command writing `kind`
    may not write into (OutputError, one line); return the directory to write in: `path`,
    or the directory a symbolic link `path` points to."""
    path = Path(path)
    if path.is_dir():
        try:
            problem = _refusal(path, kind, flag)
        except OSError as error:  # e.g. a directory that may not be listed
            raise OutputError(
                f"{flag} {path}: cannot read it ({error.strerror or error})"
            ) from error
        if problem:
            raise OutputError(problem)
    check_output_directory(path, flag)  # a file, a link to nothing, no permission to write
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def kind_of(directory: Path) -> Kind | None:
    """What `directory` holds, recognised by its content; None: nothing a tacotune command
    wrote (or nothing at all)."""
    names = {p.name for p in directory.iterdir()}
    for kind in MARKERS:
        if not _marked(directory, kind):
            continue
        if kind in CLOSED and not names <= CLOSED[kind]:
            continue  # a marker's name among files a user put there
        return (_run_kind(directory) or Kind.TRAINING_RUN) if kind in RUNS else kind
    return None


def _refusal(directory: Path, kind: Kind, flag: str) -> str:
    """Why `kind` may not be written into the existing `directory` ("" if it may)."""
    names = sorted(p.name for p in directory.iterdir())
    if not names:
        return ""
    found = kind_of(directory)
    if found in RUNS and kind in RUNS and _run_kind(directory) is None:
        found = kind  # a run that never recorded its start: either kind may take it over
    if found is None:
        foreign = _foreign(directory, names, Kind.TRAINING_RUN if kind in RUNS else kind)
        shown = ", ".join(foreign[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        return (
            f"{flag} {directory} is not empty and holds no {kind} ({shown}{more}); "
            f"{_a(kind)} writes {WRITES[kind]} into its directory and never over files it "
            "did not write: give a new or empty directory"
        )
    if found is not kind:
        return (
            f"{flag} {directory} is {_a(found)}, not {_a(kind)}: a command never writes "
            "into another command's output; give a new or empty directory"
        )
    if kind in RUNS and (directory / "checkpoints" / "last.pt").exists():
        return (
            f"{flag} {directory} already holds {_a(kind)}; continue it with --resume "
            f"{directory}, or give a new or empty directory"
        )
    if kind is Kind.EXPORT:
        return (
            f"{flag} {directory} already holds an export bundle and is not empty; remove it "
            "or export elsewhere"
        )
    return ""


def _foreign(directory: Path, names: list[str], kind: Kind) -> list[str]:
    """What in `directory` keeps it from being `kind`'s: in one that bears `kind`'s marker,
    the entries `kind` does not write; else everything (a name alone makes nothing ours)."""
    if kind in CLOSED and _marked(directory, kind):
        return [name for name in names if name not in CLOSED[kind]]
    return names


def _marked(directory: Path, kind: Kind) -> bool:
    """Whether `directory` holds one of `kind`'s MARKERS."""
    return any(next(directory.glob(pattern), None) for pattern in MARKERS[kind])


def _run_kind(directory: Path) -> Kind | None:
    """A training or a vocoder run, told apart by what only a vocoder run holds: teacher-
    forced mels, or discriminator_parameters in its "started" event (vocoder/session.py).
    None: the run never recorded its start."""
    if (directory / "teacher_mels").exists():
        return Kind.VOCODER_RUN
    try:
        with (directory / "events.jsonl").open("rb") as f:
            first = json.loads(f.readline(1 << 16) or b"{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable, cut or not JSON: still a run's file
        return Kind.TRAINING_RUN
    if isinstance(first, dict) and "discriminator_parameters" in first:
        return Kind.VOCODER_RUN
    return Kind.TRAINING_RUN


def _a(kind: Kind) -> str:
    """The kind with its indefinite article."""
    return f"{'an' if kind.value[0] in 'aeiou' else 'a'} {kind}"
