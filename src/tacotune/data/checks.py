"""Why a row is excluded: named reasons, and the decision from measurements + thresholds.

Measurements (`Analysis`) are expensive and cached; decisions are cheap and made
again on every run, so changing a threshold never needs the audio re-read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tacotune.config.schema import DataConfig


class Reason(StrEnum):
    """Every way a row can be excluded."""

    MALFORMED_ROW = "malformed_row"
    INVALID_ID = "invalid_id"
    DUPLICATE_ID = "duplicate_id"
    MISSING_AUDIO = "missing_audio"
    UNREADABLE_AUDIO = "unreadable_audio"
    INVALID_TEXT = "invalid_text"
    EMPTY_TEXT = "empty_text"
    UNKNOWN_CHARACTERS = "unknown_characters"
    TEXT_TOO_LONG = "text_too_long"
    SILENT_AUDIO = "silent_audio"
    CLIPPING = "clipping"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    SPEECH_RATE_OUTLIER = "speech_rate_outlier"


REASON_HELP: dict[Reason, str] = {
    Reason.MALFORMED_ROW: "the metadata line does not have the columns the rest of the file has",
    Reason.INVALID_ID: "the id is not a plain file name (letters, digits, _ - . and inner spaces; "
    "no '/', no leading '.'): ids name files inside the dataset and output directories",
    Reason.DUPLICATE_ID: "the id was already used by an earlier line; ids must be unique",
    Reason.MISSING_AUDIO: "no audio file for the id (looked for .wav, .flac, .ogg)",
    Reason.UNREADABLE_AUDIO: "the audio file is corrupt or in a format soundfile cannot read",
    Reason.INVALID_TEXT: "the text has a malformed stress mark or cannot be stressed",
    Reason.EMPTY_TEXT: "nothing is left of the text after normalization",
    Reason.UNKNOWN_CHARACTERS: "the text has characters outside the symbol table",
    Reason.TEXT_TOO_LONG: "the model input is longer than data.max_text_length",
    Reason.SILENT_AUDIO: "the clip is quieter than data.silence_db",
    Reason.CLIPPING: "more samples at full scale than data.max_clipped_fraction",
    Reason.TOO_SHORT: "shorter than data.min_duration after trimming silence",
    Reason.TOO_LONG: "longer than data.max_duration after trimming (never truncated)",
    Reason.SPEECH_RATE_OUTLIER: "letters per second far from the corpus median: the "
    "transcript probably does not match the audio",
}


@dataclass(frozen=True)
class Job:
    """What a worker needs to measure one row."""

    key: str
    text: str
    audio_path: str
    mel_file: str  # relative to the prepared directory
    audio_file: str  # the cached trimmed audio, relative to the prepared directory


@dataclass(frozen=True)
class Analysis:
    """Everything measured about one row; cached between runs under `key`."""

    key: str  # hash of the source file, text and the configs that produced this
    normalized: str = ""
    text: str = ""  # stressed model input
    text_problem: str = ""  # "" or a Reason value decided by the frontend
    text_detail: str = ""
    stress_sources: dict[str, int] = field(default_factory=dict)
    letters: int = 0  # letters in the model input (for the speech rate)
    audio_error: str = ""
    source_sample_rate: int = 0
    source_channels: int = 0
    source_duration: float = 0.0  # seconds, before trimming
    duration: float = 0.0  # seconds, after trimming
    trimmed: float = 0.0  # seconds cut at both ends
    rms_db: float = 0.0
    clipped_fraction: float = 0.0
    n_frames: int = 0
    mel_file: str = ""  # relative to the prepared directory
    audio_file: str = ""  # the cached trimmed 16-bit audio of that mel, same directory


@dataclass(frozen=True)
class Decision:
    """Kept (reason is None) or excluded with a reason and a human-readable detail."""

    reason: Reason | None
    detail: str = ""


def decide(analysis: Analysis, config: DataConfig) -> Decision:
    """The first problem of a measured row, in a fixed order (text before audio)."""
    a, c = analysis, config
    if a.text_problem:
        return Decision(Reason(a.text_problem), a.text_detail)
    if len(a.text) > c.max_text_length:
        return Decision(Reason.TEXT_TOO_LONG, f"{len(a.text)} > {c.max_text_length} characters")
    if a.audio_error:
        return Decision(Reason.UNREADABLE_AUDIO, a.audio_error)
    if a.rms_db < c.silence_db:
        return Decision(Reason.SILENT_AUDIO, f"RMS {a.rms_db:.1f} dBFS < {c.silence_db:.1f}")
    if a.clipped_fraction > c.max_clipped_fraction:
        return Decision(Reason.CLIPPING, f"{a.clipped_fraction:.2%} of samples at full scale")
    if a.duration < c.min_duration:
        return Decision(Reason.TOO_SHORT, f"{a.duration:.2f} s < {c.min_duration:.2f} s")
    if a.duration > c.max_duration:
        return Decision(Reason.TOO_LONG, f"{a.duration:.2f} s > {c.max_duration:.2f} s")
    return Decision(None)


def speech_rate(analysis: Analysis) -> float:
    """Letters per second of trimmed audio."""
    return analysis.letters / analysis.duration if analysis.duration > 0 else 0.0


def speech_rate_decision(rate: float, median: float, tolerance: float) -> Decision:
    """Exclude a row whose rate is more than `tolerance` times off the median."""
    if median > 0 and not (median / tolerance <= rate <= median * tolerance):
        return Decision(
            Reason.SPEECH_RATE_OUTLIER,
            f"{rate:.1f} letters/s vs corpus median {median:.1f} (tolerance x{tolerance:g})",
        )
    return Decision(None)
