"""Synthesis from a checkpoint: text -> frontend (from the checkpoint) -> Tacotron2 -> vocoder.

Long text is split into sentences (and over-long sentences at commas, then spaces);
each piece is decoded with a bounded number of steps, so synthesis always ends.
Every piece reports why it stopped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.data.dataset import pad_ids
from tacotune.device import resolve_device
from tacotune.errors import TextError
from tacotune.model.tacotron2 import SynthesisOutput, Tacotron2
from tacotune.supervision.metrics import AlignmentMetrics, alignment_metrics
from tacotune.text.frontend import TextFrontend, model_input_to_ids
from tacotune.text.symbols import LETTERS
from tacotune.vocoder import GriffinLim, Vocoder

log = logging.getLogger(__name__)

MAX_CHUNK_CHARS = 200  # model-input characters per decoded piece
PAUSE_SECONDS = 0.25  # silence between sentences
BATCH_SIZE = 16  # pieces decoded together by speak_all
# end of a sentence: terminal punctuation (possibly repeated), then space
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")
_SEPARATORS = (_SENTENCE_END, _CLAUSE_END, re.compile(r"\s+"))


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
        `device`: cpu, cuda or auto (cuda when available)."""
        payload = (
            checkpoint if isinstance(checkpoint, dict) else load_checkpoint(best_in_run(checkpoint))
        )
        self.config = checkpoint_config(payload)
        self.frontend = TextFrontend.from_state(payload["text_frontend"])
        self.device = resolve_device(device)
        self.model = Tacotron2(self.config.model, payload["n_symbols"], self.config.audio.n_mels)
        self.model.load_state_dict(payload["model"])
        self.model.to(self.device).eval()
        self.vocoder: Vocoder = vocoder or GriffinLim(self.config.audio, seed)
        self.seed = seed

    def speak(self, text: str) -> Speech:
        """Synthesize one text of any length."""
        return self.speak_all([text])[0]

    def speak_all(self, texts: list[str], batch_size: int = BATCH_SIZE) -> list[Speech]:
        """Synthesize many texts; their pieces are decoded together, `batch_size` at a time.

        Every text is checked (and split) before any decoding starts.
        """
        chunks = [split_text(self.frontend, text) for text in texts]
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
    def decode(self, chunks: list[tuple[str, tuple[int, ...]]]) -> list[Piece]:
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


def split_text(frontend: TextFrontend, text: str) -> list[tuple[str, tuple[int, ...]]]:
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


def best_in_run(path: str | Path) -> Path:
    """A checkpoint file as is; a run directory's checkpoints/best.pt, else its last.pt."""
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.exists() else path / "checkpoints" / "last.pt"
    return path
