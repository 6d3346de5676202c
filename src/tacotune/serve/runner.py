"""The synthesis thread: every model call of every voice runs on ONE worker thread.

Why one thread and not a pool:

- Safety. A voice's engine is one shared object. `Synthesizer.decode` keeps its decoding
  state in locals, but the engine as a whole is not written for concurrent calls: the
  frontend's stresser (silero-stress runs a torch model), a neural vocoder or an ONNX
  session may keep per-call state, and `SpeechEngine` promises nothing more. With one
  thread no two calls ever overlap, whatever the engine.
- Speed. torch already spreads one call over the cores (intra-op threads); two calls at
  once on the same cores contend, so each gets slower and throughput does not rise.
- Fairness. A request hands the thread one piece (sentence) at a time and the thread runs
  work first come, first served, so the pieces of concurrent requests interleave: a short
  request waits for one piece of each request ahead of it, not for their whole texts.
- Isolation. Each piece is decoded alone (a batch of one, the voice's seed), so a text
  sounds the same whether or not others are speaking, and a request's samples live only
  in its own coroutine: audio cannot mix between callers.

Admission is the bounded queue: at most `max_queue` requests hold a slot (waiting or
synthesizing); one more is refused at once with `Busy` (HTTP 503) instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np

from tacotune.audio import fit_full_scale
from tacotune.serve.audio import change_speed, resample
from tacotune.serve.voices import ServeError, Voice
from tacotune.synthesize import PAUSE_SECONDS, Piece, split_text

P = ParamSpec("P")
R = TypeVar("R")
Chunk = tuple[str, tuple[int, ...]]  # (model input, ids), as split_text returns


class Busy(ServeError):
    """Every queue slot is taken; the client should retry later."""


@dataclass(frozen=True)
class RenderedPiece:
    """One piece of a request, ready to send."""

    index: int
    piece: Piece
    samples: np.ndarray  # float32 at the requested rate; the pause after it included
    sample_rate: int
    compute_s: float  # seconds the synthesis thread spent on it

    @property
    def seconds(self) -> float:
        """Audio seconds, pause included."""
        return len(self.samples) / self.sample_rate


class SynthesisRunner:
    """The synthesis thread and its admission count (used from the event loop only)."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.admitted = 0  # requests holding a slot; the event loop is the only writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tacotune-synth")

    def admit(self) -> Callable[[], None]:
        """Take a slot or raise Busy; returns its release (safe to call more than once)."""
        if self.admitted >= self.max_queue:
            raise Busy(
                f"the server is busy: {self.admitted} requests are queued or being "
                f"synthesized (the limit is {self.max_queue}); retry in a few seconds"
            )
        self.admitted += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admitted -= 1

        return release

    async def split(self, voice: Voice, text: str) -> list[Chunk]:
        """The text's pieces (raises UnknownSymbolError/TextError for unusable text)."""
        return await self._run(split_text, voice.engine.frontend, text)

    async def render(
        self,
        voice: Voice,
        chunks: list[Chunk],
        speed: float,
        sample_rate: int,
        deadline: float,
    ) -> AsyncGenerator[RenderedPiece, None]:
        """Decode and vocode the pieces in order, one thread task each.

        `deadline` is in event-loop time; passing it raises TimeoutError. A consumer that
        stops early (a client that hung up) leaves the pieces after it unsynthesized.
        """
        for index, chunk in enumerate(chunks):
            pause = index < len(chunks) - 1
            async with asyncio.timeout_at(deadline):
                piece, samples, compute_s = await self._run(
                    _render_piece, voice, chunk, speed, sample_rate, pause
                )
            yield RenderedPiece(index, piece, samples, sample_rate, compute_s)

    def close(self) -> None:
        """Finish the running task, drop the waiting ones, stop the thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))


def _render_piece(
    voice: Voice, chunk: Chunk, speed: float, sample_rate: int, pause: bool
) -> tuple[Piece, np.ndarray, float]:
    """On the synthesis thread: decode one piece, vocode it, scale, resample, pad."""
    started = time.perf_counter()
    piece = voice.engine.decode([chunk])[0]
    samples = fit_full_scale(voice.engine.vocoder(change_speed(piece.mel, speed)))
    samples = resample(samples.astype(np.float32), voice.sample_rate, sample_rate)
    if pause:
        silence = np.zeros(round(PAUSE_SECONDS * sample_rate), dtype=np.float32)
        samples = np.concatenate([samples, silence])
    return piece, samples, time.perf_counter() - started
