"""Synthesize the bundled tacotune demo corpus (``data/demo/``) with espeak-ng.

Origin
------
``data/demo/metadata.csv`` holds Russian sentences written for this project, in
LJSpeech form (``ID|raw text|normalized text``). The audio in ``data/demo/wavs/``
is not a recording of a person: this script speaks the *normalized* column of
every row with the espeak-ng formant synthesizer, so the demo command in the
README can train on a real (if robotic) single-speaker corpus without touching
the network.

The settings below are fixed so that the same espeak-ng version always produces
the same audio. The corpus in the repository was made with espeak-ng 1.51
(Debian package).

Regenerate
----------
::

    apt-get install espeak-ng
    python scripts/make_demo_corpus.py

Existing ``.flac`` files with the same IDs are overwritten; files whose IDs are no
longer in the metadata are reported, not deleted.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_METADATA = REPO_ROOT / "data" / "demo" / "metadata.csv"
DEFAULT_WAV_DIR = REPO_ROOT / "data" / "demo" / "wavs"

# Synthesis settings. Change them only together with data/demo/README.md.
VOICE = "ru"  # espeak-ng Russian voice (default male variant)
SPEED_WPM = 165  # words per minute; a little slower than espeak-ng's default of 175
PITCH = 50  # 0..99; 50 is espeak-ng's default
AMPLITUDE = 100  # 0..200; 100 is espeak-ng's default
WORD_GAP = 0  # extra pause between words, in units of 10 ms at normal speed
SAMPLE_RATE = 22050  # what espeak-ng writes; checked, never resampled
SUBTYPE = "PCM_16"  # FLAC sample format


@dataclass(frozen=True)
class Utterance:
    """One metadata row."""

    utt_id: str
    raw: str
    normalized: str


def find_espeak(name: str) -> str:
    """Return the path of the espeak-ng binary or exit with an install hint."""
    path = shutil.which(name)
    if path is None:
        sys.exit(
            f"error: espeak-ng not found (looked for {name!r} on PATH). "
            "Install it with: apt-get install espeak-ng"
        )
    return path


def espeak_version(espeak: str) -> str:
    """Return ``espeak-ng --version`` without the data path, e.g. ``eSpeak NG ...: 1.51``."""
    out = subprocess.run([espeak, "--version"], check=True, capture_output=True, text=True).stdout
    first_line = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first_line.split("  Data at:")[0].strip()


def read_metadata(path: Path) -> list[Utterance]:
    """Read an LJSpeech-style ``ID|raw|normalized`` file (UTF-8, no header)."""
    rows: list[Utterance] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        for line_no, fields in enumerate(reader, start=1):
            if len(fields) != 3:
                raise ValueError(f"{path}:{line_no}: expected 3 fields, got {len(fields)}")
            utt_id, raw, normalized = (field.strip() for field in fields)
            if not utt_id or not raw or not normalized:
                raise ValueError(f"{path}:{line_no}: empty field")
            rows.append(Utterance(utt_id, raw, normalized))
    return rows


def synthesize(espeak: str, text: str, wav_path: Path) -> npt.NDArray[np.float32]:
    """Speak ``text`` with espeak-ng into ``wav_path`` and return float32 mono samples."""
    argv = [
        espeak,
        "-v", VOICE,
        "-s", str(SPEED_WPM),
        "-p", str(PITCH),
        "-a", str(AMPLITUDE),
        "-g", str(WORD_GAP),
        "-b", "1",  # input text is UTF-8, whatever the locale
        "-w", str(wav_path),
        "--",
        text,
    ]  # fmt: skip
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    audio, sample_rate = sf.read(wav_path, dtype="float32", always_2d=False)
    if sample_rate != SAMPLE_RATE:
        raise RuntimeError(f"espeak-ng wrote {sample_rate} Hz, expected {SAMPLE_RATE} Hz")
    if audio.ndim != 1:
        raise RuntimeError(f"espeak-ng wrote {audio.shape[1]} channels, expected mono")
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r}")
    return np.asarray(audio, dtype=np.float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--metadata", type=Path, default=DEFAULT_METADATA, help="LJSpeech-style metadata.csv"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_WAV_DIR, help="where <ID>.flac files go"
    )
    parser.add_argument("--espeak-ng", default="espeak-ng", help="espeak-ng binary name or path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    espeak = find_espeak(args.espeak_ng)
    utterances = read_metadata(args.metadata)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    total_samples = 0
    total_bytes = 0
    with tempfile.TemporaryDirectory(prefix="tacotune-demo-") as tmp:
        tmp_wav = Path(tmp) / "utt.wav"
        for utt in utterances:
            audio = synthesize(espeak, utt.normalized, tmp_wav)
            out_path = args.out_dir / f"{utt.utt_id}.flac"
            sf.write(out_path, audio, SAMPLE_RATE, subtype=SUBTYPE, format="FLAC")
            total_samples += audio.size
            total_bytes += out_path.stat().st_size

    expected = {f"{utt.utt_id}.flac" for utt in utterances}
    stale = sorted(p.name for p in args.out_dir.glob("*.flac") if p.name not in expected)
    if stale:
        print(f"warning: {len(stale)} .flac files not in metadata (delete them): {stale[:5]}")

    seconds = total_samples / SAMPLE_RATE
    print(
        f"{len(utterances)} files, {seconds:.1f} s of audio, "
        f"{total_bytes / 1e6:.2f} MB in {args.out_dir} ({espeak_version(espeak)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
