"""Build the corpus the Russian base voice is trained on (``tacotune/voices/``, README).

Origin
------
Text: the Russian quotations and aphorisms of Debian's ``fortunes-ru`` package (upstream
fortune-mod-ru by Pavel Maryanov, GPL-2), read from ``/usr/share/games/fortunes/ru``. Only
the categories in ``CATEGORIES`` are used (no jokes about sex or politics); the attribution
lines (``-- Author``) are dropped, long entries are cut at sentence ends, and a sentence is
kept only if tacotune's own text frontend reads every character of it, it has 3 to
``MAX_WORDS`` words, and it is not a sentence of the demo corpus.

Audio: espeak-ng's Russian voice with the voice variants in ``VOICES`` (each a different
pitch, speed and timbre). The demo corpus is espeak-ng's *default* Russian voice
(``ru``, 165 wpm, pitch 50); that voice is never used here, so fine-tuning the base on the
demo corpus adapts it to a voice it never heard. ``HELDOUT_VOICE`` is kept out of the
base as well: ``--heldout`` writes a second small corpus in it (other sentences) for the
time-to-voice benchmark (bench/time_to_voice.py).

Every sentence is spoken once, by the voice ``index % len(VOICES)`` after a seeded shuffle,
so the same espeak-ng and fortunes-ru versions always give the same corpus.

Run
---
::

    apt-get install espeak-ng fortunes-ru
    python scripts/make_base_corpus.py -o corpora/base_ru            # the base corpus
    python scripts/make_base_corpus.py -o corpora/heldout --heldout  # an unseen voice

The output directory must not exist (the script never overwrites a corpus).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from tacotune.text.frontend import find_unknown
from tacotune.text.normalize import normalize_text

REPO_ROOT = Path(__file__).resolve().parent.parent
FORTUNES = Path("/usr/share/games/fortunes/ru")
DEMO_METADATA = REPO_ROOT / "data" / "demo" / "metadata.csv"
CATEGORIES = (  # fortunes-ru files read, in this order
    "knowledge", "life", "time", "work", "truth", "wealth", "success", "education",
    "friendship", "future", "war", "citates", "genious", "happy", "sympathy", "freewill",
    "foolish", "human_being", "innocence", "if", "ill", "art", "book", "conscience",
    "do_you_know", "ego_and_alt", "fidelity", "man_and_woman", "relations", "treason",
    "murphy", "programming", "computer", "haiku", "just4fun", "other", "adv", "adv_v",
)  # fmt: skip
# (espeak-ng voice, words per minute, pitch 0..99): variants of the Russian voice, none
# of them the demo corpus's plain "ru" at 165 wpm and pitch 50
VOICES = (
    ("ru+m3", 150, 40), ("ru+m4", 175, 55), ("ru+m5", 160, 35), ("ru+m6", 170, 45),
    ("ru+f2", 155, 60), ("ru+f3", 165, 65), ("ru+f5", 150, 55), ("ru+klatt", 160, 50),
)  # fmt: skip
HELDOUT_VOICE = ("ru+f4", 160, 70)  # never in the base: the unseen voice of the benchmark
HELDOUT_SENTENCES = 100  # like a user's first small corpus
MAX_WORDS = 14  # longer sentences make slow batches (about 6 s of speech at most)
SEED = 1234
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[А-ЯЁ«—-])")


@dataclass(frozen=True)
class Row:
    """One utterance: id, the text as written, the text the voice speaks."""

    utt_id: str
    raw: str
    normalized: str


def read_fortunes(directory: Path) -> list[str]:
    """Every entry of the chosen categories, attribution lines dropped, lines joined."""
    entries: list[str] = []
    for name in CATEGORIES:
        path = directory / name
        if not path.is_file():
            sys.exit(f"error: {path} not found; install it with: apt-get install fortunes-ru")
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%"):
            lines = [line.strip() for line in entry.splitlines()]
            lines = [line for line in lines if line and not line.startswith(("--", "%"))]
            if lines:
                entries.append(" ".join(lines))
    return entries


def sentences(entries: list[str], exclude: set[str]) -> list[tuple[str, str]]:
    """(raw, normalized) sentences the frontend reads whole, unique, not in `exclude`."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for entry in entries:
        for raw in SENTENCE_END.split(entry):
            raw = raw.strip().replace("|", " ")
            if re.search(r"[A-Za-z]", raw) or not 3 <= len(raw.split()) <= MAX_WORDS:
                continue
            normalized = normalize_text(raw)
            if find_unknown(normalized) or normalized in seen or normalized in exclude:
                continue
            seen.add(normalized)
            kept.append((raw, normalized))
    return kept


def demo_sentences() -> set[str]:
    """The demo corpus's sentences, normalized like ours (never in the base)."""
    lines = DEMO_METADATA.read_text(encoding="utf-8").splitlines()
    return {normalize_text(line.split("|")[2]) for line in lines if line}


def speak(espeak: str, voice: tuple[str, int, int], text: str, out: Path, tmp: Path) -> float:
    """Speak `text` into `out` (16-bit FLAC at espeak-ng's 22050 Hz); its seconds."""
    name, wpm, pitch = voice
    wav = tmp / "utt.wav"
    subprocess.run(
        [espeak, "-v", name, "-s", str(wpm), "-p", str(pitch), "-w", str(wav), "--", text],
        check=True,
    )
    audio, rate = sf.read(wav, dtype="int16")
    sf.write(out, audio, rate, subtype="PCM_16", format="FLAC")
    return len(audio) / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="a new directory")
    parser.add_argument("--fortunes", type=Path, default=FORTUNES, help="fortunes-ru's files")
    parser.add_argument(
        "--heldout", action="store_true", help=f"the unseen voice {HELDOUT_VOICE[0]} instead"
    )
    args = parser.parse_args()
    if args.output.exists():
        sys.exit(f"error: {args.output} exists; give a new directory (nothing is overwritten)")
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("error: espeak-ng not found; install it with: apt-get install espeak-ng")
    pool = sentences(read_fortunes(args.fortunes), demo_sentences())
    random.Random(SEED).shuffle(pool)
    # the held-out corpus takes the first sentences, the base all the others: no overlap
    texts = pool[:HELDOUT_SENTENCES] if args.heldout else pool[HELDOUT_SENTENCES:]
    voices = (HELDOUT_VOICE,) if args.heldout else VOICES
    prefix = "heldout" if args.heldout else "base"
    wavs = args.output / "wavs"
    wavs.mkdir(parents=True)
    rows: list[Row] = []
    seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for index, (raw, normalized) in enumerate(texts):
            row = Row(f"{prefix}_{index + 1:05d}", raw, normalized)
            voice = voices[index % len(voices)]
            seconds += speak(espeak, voice, normalized, wavs / f"{row.utt_id}.flac", Path(tmp))
            rows.append(row)
    lines = [f"{r.utt_id}|{r.raw}|{r.normalized}" for r in rows]
    (args.output / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = ", ".join(f"{v[0]} ({v[1]} wpm, pitch {v[2]})" for v in voices)
    print(f"{len(rows)} utterances, {seconds / 3600:.2f} h, voices: {names}")


if __name__ == "__main__":
    main()
