"""`tacotune synthesize`: text in, speech out, the way Piper users expect.

Text comes from the TEXT argument or from `--file FILE` (one text per line; `--file -` reads
standard input). Speech goes to `-o FILE` (.wav, .flac, .mp3 or .ogg by its suffix), to
`--out-dir DIR` (one file per input line, named by its line number: line 4 is 0004.wav), or
with `-o -` to standard output: one wav of every text, or with `--raw` 16-bit little-endian
mono PCM, written text by text as each is spoken (`... -o - --raw | aplay -r 22050 -f S16_LE`).
Every text is checked before the model speaks; a bad one is named by its line number.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tacotune.audio import AUDIO_FORMATS, encode_audio, fit_full_scale, quantize_pcm16
from tacotune.errors import ConfigError, TextError
from tacotune.files import check_output_directory, check_output_file
from tacotune.synthesize import (
    PAUSE_SECONDS,
    Chunk,
    Synthesizer,
    check_seed,
    split_text,
    synthesize_to_files,
)

log = logging.getLogger("tacotune")

STDIO = "-"  # --file - reads standard input; -o - writes standard output


def cmd_synthesize(args: argparse.Namespace) -> int:
    """Speak TEXT or the lines of --file into files or standard output."""
    if (args.text is None) == (args.file is None):
        raise ConfigError("give either TEXT or --file FILE (--file - reads standard input)")
    check_seed(args.seed)
    to_stdout = args.output == STDIO
    if args.raw and not to_stdout:
        raise ConfigError("--raw writes 16-bit PCM to standard output: use it with -o -")
    if args.file is not None and args.output not in (None, STDIO):
        raise ConfigError(
            "--file writes one file per line into --out-dir; -o takes only - (standard "
            "output: every line, one after another)"
        )
    # every cheap check before the model loads and minutes of synthesis start
    lines = [(0, args.text)] if args.text is not None else _numbered_lines(args.file)
    if not to_stdout:
        jobs = _output_files(args, lines)
    synthesizer = Synthesizer(args.checkpoint, device=args.device, seed=args.seed)
    if args.vocoder:
        from tacotune.vocoder.neural import load_vocoder

        synthesizer.vocoder = load_vocoder(args.vocoder, synthesizer.config.audio, args.device)
    chunks = _split(synthesizer, lines, args.file)
    if to_stdout:
        _speak_to(sys.stdout.buffer, synthesizer, [text for _, text in lines], chunks, args.raw)
        return 0
    summary = None if args.text is not None else Path(args.out_dir) / "synthesis.json"
    synthesize_to_files(synthesizer, jobs, plot=args.plot, summary_path=summary, chunks=chunks)
    return 0


def _numbered_lines(name: str) -> list[tuple[int, str]]:
    """(line number, text) of every line that holds text; blank lines keep their numbers."""
    text = _read_stdin() if name == STDIO else _read_text_file(Path(name), "--file")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        source = "standard input" if name == STDIO else name
        raise TextError(f"--file {source} holds no text: write one text per line")
    return lines


def _output_files(args: argparse.Namespace, lines: list[tuple[int, str]]) -> list[tuple[str, Path]]:
    """The (text, file) jobs; refuses outputs that could not be written."""
    suffixes = tuple(AUDIO_FORMATS)
    if args.text is not None:
        output = Path(args.output or "out.wav")
        check_output_file(output, "-o", suffixes)
        return [(args.text, output)]
    out_dir = Path(args.out_dir)
    check_output_directory(out_dir, "--out-dir")
    width = max(4, len(str(lines[-1][0])))
    return [(text, out_dir / f"{number:0{width}d}.{args.format}") for number, text in lines]


def _split(
    synthesizer: Synthesizer, lines: list[tuple[int, str]], file: str | None
) -> list[list[Chunk]]:
    """Every text's model-input pieces; a text the frontend refuses is named by its line."""
    chunks = []
    for number, text in lines:
        try:
            chunks.append(split_text(synthesizer.frontend, text))
        except TextError as error:
            if file is None:
                raise
            source = "standard input" if file == STDIO else file
            raise TextError(f"--file {source}, line {number}: {error}") from error
    return chunks


def _speak_to(
    out: BinaryIO, synthesizer: Synthesizer, texts: list[str], chunks: list[list[Chunk]], raw: bool
) -> None:
    """Speak to a stream: raw PCM text by text as it is spoken, or one wav of them all."""
    rate = synthesizer.vocoder.sample_rate
    pause = np.zeros(int(PAUSE_SECONDS * rate), dtype=np.float32)
    parts: list[np.ndarray] = []
    if raw:  # each text as soon as it is spoken, so a player starts at once
        log.info("writing 16-bit little-endian mono PCM at %d Hz to standard output", rate)
        for i, (text, text_chunks) in enumerate(zip(texts, chunks, strict=True)):
            (speech,) = synthesizer.speak_split([text], [text_chunks])
            audio = speech.audio if i == 0 else np.concatenate([pause, speech.audio])
            out.write(quantize_pcm16(fit_full_scale(audio)).astype("<i2").tobytes())
            out.flush()
        return
    for speech in synthesizer.speak_split(texts, chunks):  # decoded together, in batches
        parts += [pause, speech.audio] if parts else [speech.audio]
    out.write(encode_audio(np.concatenate(parts), rate, ".wav"))  # a wav needs its size first
    out.flush()


def _read_stdin() -> str:
    """Standard input as UTF-8 text."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextError(
            f"standard input is not UTF-8 (byte {error.start}); send UTF-8 text"
        ) from error


def _read_text_file(path: Path, flag: str) -> str:
    """A UTF-8 text file named on the command line; unreadable or not UTF-8: a TextError."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise TextError(f"{flag} {path}: cannot read it ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise TextError(
            f"{flag} {path} is not UTF-8 (byte {error.start}); re-save it as UTF-8"
        ) from error
