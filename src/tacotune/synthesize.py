"""Synthesis from a checkpoint: text -> frontend (from the checkpoint) -> Tacotron2 -> vocoder.

Long text is split into sentences (and over-long sentences at commas, then spaces);
each piece is decoded with a bounded number of steps, so synthesis always ends.
Every piece reports why it stopped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacotune import progress
from tacotune.checkpoint import best_in_run, checkpoint_config, load_checkpoint
from tacotune.config.schema import Config
from tacotune.data.dataset import pad_ids
from tacotune.device import resolve_device
from tacotune.errors import CheckpointError, ConfigError, TextError, short_repr
from tacotune.files import write_json_atomic
from tacotune.model.tacotron2 import SynthesisOutput, Tacotron2
from tacotune.supervision.metrics import AlignmentMetrics, alignment_metrics
from tacotune.text.frontend import TextFrontend, model_input_to_ids
from tacotune.text.symbols import LETTERS, SYMBOLS
from tacotune.vocoder.griffin_lim import GriffinLim, Vocoder

log = logging.getLogger(__name__)

MAX_CHUNK_CHARS = 200  # model-input characters per decoded piece
PAUSE_SECONDS = 0.25  # silence between sentences
BATCH_SIZE = 16  # pieces decoded together by speak_all
# end of a sentence: terminal punctuation (possibly repeated), then space
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")
_SEPARATORS = (_SENTENCE_END, _CLAUSE_END, re.compile(r"\s+"))
Chunk = tuple[str, tuple[int, ...]]  # one piece of text: (model input, symbol ids)


@dataclass(frozen=True)
class Piece:
    """One decoded piece of the text."""

    text: str  # the model input (normalized, stressed)
    mel: torch.Tensor  # (n_mels, T)
    alignment: torch.Tensor  # (S, N)
    metrics: AlignmentMetrics  # of `alignment`
    stopped_by_gate: bool
    stopped_at_end: bool  # the attention held the final symbol (the gate did not fire)
    hit_max_steps: bool

    @property
    def reached_end(self) -> bool:
        """The attention got to the end of the piece's text."""
        return self.metrics.reached_end


@dataclass(frozen=True)
class Speech:
    """The audio for one input text and how each piece of it went."""

    text: str
    audio: np.ndarray  # float32 samples
    sample_rate: int
    pieces: list[Piece]

    @property
    def complete(self) -> bool:
        """Every piece read to the end of its text and stopped there (not at the step limit)."""
        return all(p.reached_end and not p.hit_max_steps for p in self.pieces)


class Synthesizer:
    """A checkpoint ready to speak (Python API of `tacotune synthesize`)."""

    def __init__(
        self,
        checkpoint: str | Path | dict[str, Any],
        device: str = "cpu",
        vocoder: Vocoder | None = None,
        seed: int = 0,
    ) -> None:
        """`checkpoint`: a .pt file, a run directory (uses checkpoints/best.pt) or a payload;
        `device`: cpu, cuda or auto (cuda when available); `seed`: 0 <= seed < 2**63."""
        check_seed(seed)
        self.seed = seed
        self.device = resolve_device(device)
        self.config, self.frontend = self._load(checkpoint)
        self.vocoder: Vocoder = vocoder or self._default_vocoder()

    def _load(self, checkpoint: str | Path | dict[str, Any]) -> tuple[Config, TextFrontend]:
        """The voice's config and text frontend; its model goes to `self.device` (a subclass
        that runs the model elsewhere loads it here instead)."""
        if isinstance(checkpoint, dict):
            payload, source = checkpoint, "payload"
        else:
            path = best_in_run(checkpoint)
            payload, source = load_checkpoint(path), str(path)
        voice = load_voice(payload, source)
        self.model = voice.model.to(self.device).eval()
        return voice.config, voice.frontend

    def _default_vocoder(self) -> Vocoder:
        """The vocoder when none is given: Griffin-Lim."""
        return GriffinLim(self.config.audio, self.seed)

    def speak(self, text: str) -> Speech:
        """Synthesize one text of any length."""
        return self.speak_all([text])[0]

    def speak_all(self, texts: list[str], batch_size: int = BATCH_SIZE) -> list[Speech]:
        """Synthesize many texts; their pieces are decoded together, `batch_size` at a time.

        Every text is checked (and split) before any decoding starts.
        """
        return self.speak_split(texts, self.split_all(texts), batch_size)

    def split_all(self, texts: list[str]) -> list[list[Chunk]]:
        """The model-input pieces of every text (see `split_text`): checks every text."""
        return [split_text(self.frontend, text) for text in texts]

    def speak_split(
        self, texts: list[str], chunks: list[list[Chunk]], batch_size: int = BATCH_SIZE
    ) -> list[Speech]:
        """`speak_all` of texts already split by `split_all`."""
        flat = [chunk for text_chunks in chunks for chunk in text_chunks]
        # decode similar lengths together: a batch runs as long as its longest item
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1]))
        decoded: dict[int, Piece] = {}
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            decoded.update(zip(indices, self.decode([flat[i] for i in indices]), strict=True))
        speeches, position = [], 0
        for text, text_chunks in zip(texts, chunks, strict=True):
            pieces = [decoded[position + i] for i in range(len(text_chunks))]
            position += len(text_chunks)
            speeches.append(Speech(text, self._join(pieces), self.vocoder.sample_rate, pieces))
        return speeches

    def _join(self, pieces: list[Piece]) -> np.ndarray:
        """Vocode every piece and join them with short pauses."""
        pause = np.zeros(int(PAUSE_SECONDS * self.vocoder.sample_rate), dtype=np.float32)
        parts: list[np.ndarray] = []
        for piece in pieces:
            parts += [self.vocoder(piece.mel), pause]
        return np.concatenate(parts[:-1])

    @torch.inference_mode()
    def decode(self, chunks: list[Chunk]) -> list[Piece]:
        """Decode (model input, ids) pairs in one batch."""
        text, lengths = pad_ids([ids for _, ids in chunks])
        out = self.infer(text, lengths)
        pieces = []
        for i, (model_input, _) in enumerate(chunks):
            frames, steps = int(out.lengths[i]), int(out.lengths[i]) // out.reduction_factor
            alignment = out.alignments[i, :steps, : int(lengths[i])].float().cpu()
            pieces.append(
                Piece(
                    model_input,
                    out.mel_postnet[i, :, :frames].float().cpu(),
                    alignment,
                    alignment_metrics(alignment),
                    bool(out.stopped_by_gate[i]),
                    bool(out.stopped_at_end[i]),
                    bool(out.hit_max_steps[i]),
                )
            )
            if pieces[-1].hit_max_steps:
                log.warning(
                    "decoding of %r hit its step limit (%d frames): the attention "
                    "probably failed on this text",
                    model_input[:60],
                    frames,
                )
        return pieces

    def infer(self, text: torch.Tensor, lengths: torch.Tensor) -> SynthesisOutput:
        """The model call of `decode`: (B, N) padded ids, (B,) lengths; every batch starts
        from `seed`. OnnxSynthesizer (tacotune.export) replaces it."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self.model.infer(text.to(self.device), lengths.to(self.device), generator=generator)


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; numpy and the CLI agree on this range
NEEDED = ("config", "text_frontend", "n_symbols", "model")  # what synthesis reads


@dataclass(frozen=True)
class Voice:
    """What synthesis builds from a checkpoint, every part checked against the others."""

    config: Config  # validated, bounds included (checkpoint_config)
    frontend: TextFrontend
    model: Tacotron2  # weights loaded, on the CPU


def check_seed(seed: int) -> None:
    """A seed every generator synthesis uses accepts: an integer in [0, MAX_SEED]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"the seed must be an integer in [0, 2**63 - 1], found {short_repr(seed)}"
        )


def load_voice(payload: dict[str, Any], source: str) -> Voice:
    """Config, text frontend and model of a checkpoint payload (`source` names it in errors).

    A payload that lacks a part, whose config is out of range, or whose weights do not fit
    its own config (another n_mels, width or symbol count) is one CheckpointError.
    """
    missing = [key for key in NEEDED if key not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} lacks {', '.join(missing)}: synthesis needs the config, text "
            "frontend, symbol count and weights that `tacotune train` saves; give a run's "
            "checkpoints/model.pt or best.pt"
        )
    config = checkpoint_config(payload, source)
    try:
        frontend = TextFrontend.from_state(payload["text_frontend"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {source} holds a malformed text_frontend ({short_repr(error)}); "
            "the file was edited or damaged"
        ) from error
    n_symbols = payload["n_symbols"]
    if type(n_symbols) is not int or n_symbols != len(SYMBOLS):
        raise CheckpointError(
            f"checkpoint {source} says n_symbols={short_repr(n_symbols)}, but its text frontend "
            f"has {len(SYMBOLS)} symbols; the file was edited or damaged"
        )
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)  # bounded by validate()
    problems = weight_problems(model.state_dict(), payload["model"])
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"checkpoint {source}: its weights do not fit its own config "
            f"({'; '.join(problems[:3])}{more}); the file was edited or damaged"
        )
    model.load_state_dict(payload["model"])
    return Voice(config, frontend, model)


def weight_problems(expected: Mapping[str, torch.Tensor], found: Any) -> list[str]:
    """How the tensors `found` differ from a model's state dict `expected` (empty: they fit)."""
    if not isinstance(found, Mapping):
        return [f"the weights are a {type(found).__name__}, not a mapping of tensors"]
    problems = [f"{name} is missing" for name in expected if name not in found]
    problems += [
        f"{short_repr(name)} is not in the model" for name in found if name not in expected
    ]
    for name, tensor in expected.items():
        value = found.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name} is a {type(value).__name__}, not a tensor")
        elif value.shape != tensor.shape:
            problems.append(
                f"{name} has shape {tuple(value.shape)}, the config needs {tuple(tensor.shape)}"
            )
    return problems


def split_text(frontend: TextFrontend, text: str) -> list[Chunk]:
    """Model-input pieces of at most MAX_CHUNK_CHARS.

    A text that fits is one piece (short sentences are out of the training distribution
    when cut apart); a longer one is split at sentence ends, then clause punctuation,
    then spaces, merging neighbours greedily up to the limit. Raises TextError when
    nothing speakable is left and UnknownSymbolError for characters outside the table.
    """
    stressed = frontend.process(text)
    stressed.require_ids()  # unknown characters: a clear error before any decoding
    chunks = [
        (piece, model_input_to_ids(piece))
        for piece in _limit(stressed.stressed.strip(), _SEPARATORS)
        if any(c in LETTERS for c in piece)
    ]
    if not chunks:
        raise TextError(f"nothing to say in {text[:60]!r}: no letters after normalization")
    return chunks


def _limit(text: str, separators: tuple[re.Pattern[str], ...]) -> list[str]:
    """Split `text` at the first separator that divides it, merge greedily, recurse."""
    if len(text) <= MAX_CHUNK_CHARS:
        return [text] if text else []
    for index, separator in enumerate(separators):
        parts = separator.split(text)
        if len(parts) > 1:
            merged, current = [], ""
            for part in parts:
                candidate = f"{current} {part}".strip()
                if current and len(candidate) > MAX_CHUNK_CHARS:
                    merged.append(current)
                    current = part
                else:
                    current = candidate
            merged.append(current)
            return [p for m in merged for p in _limit(m, separators[index + 1 :])]
    return [text[i : i + MAX_CHUNK_CHARS] for i in range(0, len(text), MAX_CHUNK_CHARS)]


PROGRESS_SECONDS = 10.0  # a long --file logs its progress about this often (without a terminal)
FILE_BATCH_TEXTS = BATCH_SIZE  # texts spoken (and their files written) per batch of a --file


def synthesize_to_files(
    synthesizer: Synthesizer,
    jobs: list[tuple[str, Path]],
    *,
    plot: bool = False,
    summary_path: Path | None = None,
    texts_per_batch: int | None = None,
    chunks: list[list[Chunk]] | None = None,
) -> list[dict[str, Any]]:
    """Speak each (text, wav path) job and write its wav (and alignment PNGs with `plot`).

    Every text is checked before any decoding. The jobs are then spoken `texts_per_batch`
    (default FILE_BATCH_TEXTS) at a time, and each batch's files are written before the
    next batch starts, with `summary_path` (JSON, one record per written wav) rewritten
    after each batch: an interrupted or failed long file keeps everything done so far.
    Progress shows as a bar on a terminal, else as a log line about every PROGRESS_SECONDS.
    `chunks`: the texts already split (and so checked) by `split_all` or `split_text`.
    """
    if chunks is None:
        chunks = synthesizer.split_all([text for text, _ in jobs])  # every text checked first
    per_batch = texts_per_batch or FILE_BATCH_TEXTS
    summary: list[dict[str, Any]] = []
    with progress.meter("synthesized texts", len(jobs), every=PROGRESS_SECONDS) as meter:
        for start in range(0, len(jobs), per_batch):
            batch = jobs[start : start + per_batch]
            speeches = synthesizer.speak_split(
                [text for text, _ in batch], chunks[start : start + per_batch]
            )
            for (_, path), speech in zip(batch, speeches, strict=True):
                summary.append(_write_speech(speech, path, plot))
            if summary_path is not None:
                write_json_atomic(summary_path, summary)
            meter.advance(len(batch))
        if len(jobs) > 1:
            meter.log_line()
    return summary


def _write_speech(speech: Speech, path: Path, plot: bool) -> dict[str, Any]:
    """Write one speech file (and its alignment PNGs); its record in the summary."""
    from tacotune.audio import save_audio
    from tacotune.plotting import alignment_figure, save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    save_audio(path, speech.audio, speech.sample_rate)
    if plot:
        for i, piece in enumerate(speech.pieces, start=1):
            suffix = "" if len(speech.pieces) == 1 else f"_{i}"
            save_figure(
                alignment_figure(piece.alignment, piece.text[:80]),
                path.with_name(f"{path.stem}_alignment{suffix}.png"),
            )
    seconds = len(speech.audio) / speech.sample_rate
    log.log(
        logging.INFO if speech.complete else logging.WARNING,
        "%s: %.2f s%s",
        path,
        seconds,
        "" if speech.complete else " (incomplete: see the warnings above)",
    )
    return {
        "text": speech.text,
        "wav": str(path),
        "seconds": seconds,
        "complete": speech.complete,
        "pieces": [
            {
                "input": p.text,
                "stopped_by_gate": p.stopped_by_gate,
                "stopped_at_end": p.stopped_at_end,
                "hit_max_steps": p.hit_max_steps,
                "reached_end": p.reached_end,
            }
            for p in speech.pieces
        ],
    }
