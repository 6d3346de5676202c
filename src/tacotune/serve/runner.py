"""The synthesis thread: every model call of every voice runs on ONE worker thread.

Why one thread and not a pool:

- Safety. A voice's engine is one shared object. `Synthesizer.decode` keeps its decoding
  state in locals, but the engine as a whole is not written for concurrent calls: the
  frontend's stresser (silero-stress runs a torch model), a neural vocoder or an ONNX
  session may keep per-call state, and `SpeechEngine` promises nothing more. With one
  thread no two calls ever overlap, whatever the engine.
- Speed. torch already spreads one call over the cores (intra-op threads); two calls at
  once on the same cores contend, so each gets slower and throughput does not rise.
- One thread for ALL of a serving process's torch work, loading and warm-up included
  (`on_synthesis_thread`). Once a thread has run parallel torch operations (OpenMP), torch
  on any other thread of the process runs 2-3x slower from then on: measured on 2 cores
  (torch 2.13 CPU, demo voice, Griffin-Lim at 60 iterations), decoding one sentence took
  0.05 s and vocoding it 0.18 s on the thread that had loaded the voice, 0.14-0.18 s and
  0.29-0.33 s on a second thread after one parallel op on the first;
  `OMP_WAIT_POLICY=passive` made both threads slow.
  So the process's one synthesis thread loads the voices, warms them up and serves every
  request; the event loop never runs torch.
- Fairness. A request hands the thread one piece (sentence) at a time and the thread runs
  work first come, first served, so the pieces of concurrent requests interleave: a short
  request waits for one piece of each request ahead of it, not for their whole texts.
- Batching. When the thread takes a piece, it takes with it every other piece waiting for
  the same voice (up to `max_batch`, oldest first) and decodes them in one batch: a decoder
  step of eight pieces costs little more than one, so throughput grows with concurrency.
  Then it vocodes them one by one, and each request gets its piece as soon as its own
  audio is ready. A piece decoded alone is what it always was (a batch of one from the
  voice's seed); in a batch its prenet dropout draws differ, so its prosody may differ
  slightly (the same voice and text, never another's audio). A request's samples live
  only in its own coroutine: audio cannot mix between callers.

Admission is the bounded queue: at most `max_queue` requests hold a slot (waiting or
synthesizing); one more is refused at once with `Busy` (HTTP 503) instead of waiting.

Cancellation: a request whose coroutine is cancelled (its deadline passed, its client hung
up, the server stops: see lifetime.py) cancels its thread task too. A task that has not
started is dropped; a running one stops at its next check, so the thread is free for the
next request within a decoder step or a Griffin-Lim iteration, not after the rest of a piece
nobody will hear. A batch's decoding stops when every piece in it is cancelled; a piece
cancelled while the others go on is decoded with them (a batch cannot shrink mid-way) and
then dropped before its vocoding, the others' pieces untouched. The checks sit at torch
calls, where raising is safe (no lock is held): before every call of the engine's torch
modules (several per decoder step: cheap), and before every torch operation of the vocoder
(Griffin-Lim's iterations are operations, not modules) and of a decoder without torch
modules (an ONNX voice draws its prenet masks with torch at each step).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from tacotune.audio import fit_full_scale
from tacotune.serve.audio import OPENAI_RATE, change_speed, resample
from tacotune.serve.voices import ServeError, SpeechEngine, Voice
from tacotune.synthesize import PAUSE_SECONDS, Piece, split_text

P = ParamSpec("P")
R = TypeVar("R")
Chunk = tuple[str, tuple[int, ...]]  # (model input, ids), as split_text returns
MAX_BATCH = 8  # pieces of one voice decoded together
WARM_UP_TEXT = "Проверка связи, раз, два."  # a short sentence every Russian voice can say


class Busy(ServeError):
    """Every queue slot is taken; the client should retry later."""


class Cancelled(Exception):
    """Raised on the synthesis thread inside a task whose request has ended."""


_task = threading.local()  # .cancelled: whether the work the thread is running is unwanted


def stop_if_cancelled() -> None:
    """On the synthesis thread: raise Cancelled when the running task's request has ended
    (a batch's: every request in it); anywhere else, and outside a task, it does nothing."""
    cancelled: Callable[[], bool] | None = getattr(_task, "cancelled", None)
    if cancelled is not None and cancelled():
        raise Cancelled


class _CheckEveryTorchCall(TorchFunctionMode):
    """Within it (one thread's), every torch operation first checks for cancellation."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        stop_if_cancelled()
        return func(*args, **(kwargs or {}))


def _hook_modules(engine: SpeechEngine) -> bool:
    """Check for cancellation before every call of each torch module the engine holds (its
    model, a neural vocoder), once per module however many servers share it. Returns
    whether the engine's own modules (its model) check, i.e. whether decoding is covered."""
    own = _modules_of(engine)
    for root in [*own, *_modules_of(engine.vocoder)]:
        for module in root.modules():
            if module not in _hooked:
                module.register_forward_pre_hook(lambda _module, _args: stop_if_cancelled())
                _hooked.add(module)
    return bool(own)


_hooked: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _modules_of(holder: object) -> list[torch.nn.Module]:
    found = [holder] if isinstance(holder, torch.nn.Module) else []
    attributes = getattr(holder, "__dict__", {}).values()
    return found + [value for value in attributes if isinstance(value, torch.nn.Module)]


@dataclass(eq=False)
class _Job:
    """One piece of one request, waiting for the synthesis thread (or being rendered)."""

    voice: Voice
    chunk: Chunk
    speed: float
    sample_rate: int
    pause: bool  # a pause follows it (it is not the request's last piece)
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[tuple[Piece, np.ndarray, float]]
    cancel: threading.Event = field(default_factory=threading.Event)

    def settle(self, result: tuple[Piece, np.ndarray, float] | BaseException) -> None:
        """From the synthesis thread: hand the result (or error) to the waiting request."""
        self.loop.call_soon_threadsafe(_settle, self.done, result)


def _settle(
    done: asyncio.Future[tuple[Piece, np.ndarray, float]],
    result: tuple[Piece, np.ndarray, float] | BaseException,
) -> None:
    if done.done():  # the request was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


@dataclass(frozen=True)
class RenderedPiece:
    """One piece of a request, ready to send."""

    index: int
    piece: Piece
    samples: np.ndarray  # float32 at the requested rate; the pause after it included
    sample_rate: int
    compute_s: float  # seconds the synthesis thread spent on it (its share of a batch's decoding)

    @property
    def seconds(self) -> float:
        """Audio seconds, pause included."""
        return len(self.samples) / self.sample_rate


# The process's synthesis thread (see the module docstring); it starts at its first task.
_SYNTHESIS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tacotune-synth")


def on_synthesis_thread(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run `function` on the process's synthesis thread and return its result (or raise
    its error) here: how a server loads and warms up its voices."""
    return _SYNTHESIS_THREAD.submit(function, *args, **kwargs).result()


class SynthesisRunner:
    """A server's use of the process's synthesis thread (shared by every server of the
    process), and its admission count (used from the event loop only)."""

    def __init__(
        self, max_queue: int, engines: Iterable[SpeechEngine] = (), max_batch: int = MAX_BATCH
    ) -> None:
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.admitted = 0  # requests holding a slot; the event loop is the only writer
        self._tasks: set[threading.Event] = set()  # the cancel events of unfinished tasks
        self._waiting: list[_Job] = []  # pieces not yet taken by the thread, oldest first
        self._lock = threading.Lock()  # guards _waiting (the loop adds, the thread takes)
        # the engines whose torch modules check for cancellation while they decode
        self._hooked = {id(engine) for engine in engines if _hook_modules(engine)}

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
        self, voice: Voice, chunks: list[Chunk], speed: float, sample_rate: int
    ) -> AsyncGenerator[RenderedPiece, None]:
        """Decode and vocode the pieces in order, one at a time, as they are asked for (each
        maybe in a batch with other requests' pieces): a consumer that stops (or is
        cancelled) leaves the rest unsynthesized."""
        loop = asyncio.get_running_loop()
        for index, chunk in enumerate(chunks):
            pause = index < len(chunks) - 1
            job = _Job(voice, chunk, speed, sample_rate, pause, loop, loop.create_future())
            piece, samples, compute_s = await self._render(job)
            yield RenderedPiece(index, piece, samples, sample_rate, compute_s)

    async def _render(self, job: _Job) -> tuple[Piece, np.ndarray, float]:
        """Queue one piece for the thread and wait for it; cancelling the caller drops it
        (or stops it: see the module docstring)."""
        with self._lock:
            self._waiting.append(job)
        self._tasks.add(job.cancel)
        try:
            _SYNTHESIS_THREAD.submit(
                self._take_batch
            )  # one turn per piece: first come, first served
            return await job.done
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        finally:
            self._tasks.discard(job.cancel)

    def _take_batch(self) -> None:
        """On the synthesis thread: render the oldest waiting piece and every other waiting
        piece of its voice (up to max_batch); nothing when earlier batches took them all."""
        with self._lock:
            self._waiting = [job for job in self._waiting if not job.cancel.is_set()]
            if not self._waiting:
                return
            voice = self._waiting[0].voice
            batch = [job for job in self._waiting if job.voice is voice][: self.max_batch]
            self._waiting = [job for job in self._waiting if job not in batch]
        _render_batch(batch, id(voice.engine) in self._hooked)

    def close(self) -> None:
        """Cancel every task of this server (the running one stops at its next check; those
        not started end at their first) and wait until the thread has ended them all."""
        for cancel in self._tasks:
            cancel.set()
        with self._lock:
            left = list(self._waiting)
        _SYNTHESIS_THREAD.submit(lambda: None).result()  # first come, first served: after them
        for job in left:  # dropped by the thread: their requests must not wait forever
            job.done.cancel()  # as a cancelled thread task's (run_in_executor's) would be

    async def _run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`function` on the synthesis thread; cancelling the caller cancels it there too."""
        cancel = threading.Event()
        self._tasks.add(cancel)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                _SYNTHESIS_THREAD, _in_task, cancel, lambda: function(*args, **kwargs)
            )
        except asyncio.CancelledError:
            cancel.set()  # the caller is gone; a task already running stops at its next check
            raise
        finally:
            self._tasks.discard(cancel)


def _in_task(cancel: threading.Event, work: Callable[[], Any]) -> Any:
    """On the synthesis thread: run `work` as the task whose cancellation `cancel` signals."""
    _task.cancelled = cancel.is_set
    try:
        stop_if_cancelled()  # cancelled while it waited for the thread
        return work()
    finally:
        _task.cancelled = None


def _render_batch(batch: list[_Job], hooked: bool) -> None:
    """On the synthesis thread: decode the pieces (one voice) together, then vocode each and
    hand it over at once. `hooked`: the engine's modules check for cancellation (else every
    torch call does)."""
    started = time.perf_counter()
    _task.cancelled = lambda: all(job.cancel.is_set() for job in batch)
    try:
        with contextlib.nullcontext() if hooked else _CheckEveryTorchCall():
            pieces = batch[0].voice.engine.decode([job.chunk for job in batch])
    # handed over, not swallowed: raised in each request's coroutine as if it had run there
    # (a failure is a 500 with its traceback logged; Cancelled reaches only requests gone)
    except Exception as error:  # noqa: BLE001
        for job in batch:
            job.settle(error)
        return
    finally:
        _task.cancelled = None
    share = (time.perf_counter() - started) / len(batch)
    for job, piece in zip(batch, pieces, strict=True):
        started = time.perf_counter()
        try:  # a cancelled request's piece stops (or is skipped) here, the others go on
            vocode = functools.partial(
                _vocode, job.voice, piece, job.speed, job.sample_rate, job.pause
            )
            samples = _in_task(job.cancel, vocode)
        except Exception as error:  # noqa: BLE001  (to this request only, as above)
            job.settle(error)
            continue
        job.settle((piece, samples, share + time.perf_counter() - started))


def _vocode(voice: Voice, piece: Piece, speed: float, sample_rate: int, pause: bool) -> np.ndarray:
    """Vocode a decoded piece, scale, resample, pad (a pause after it with `pause`)."""
    with _CheckEveryTorchCall():
        samples = fit_full_scale(voice.engine.vocoder(change_speed(piece.mel, speed)))
    samples = resample(samples.astype(np.float32), voice.sample_rate, sample_rate)
    if pause:
        silence = np.zeros(round(PAUSE_SECONDS * sample_rate), dtype=np.float32)
        samples = np.concatenate([samples, silence])
    return samples


def warm_up(voice: Voice) -> float:
    """Speak a short sentence with `voice` the way a request is spoken (frontend, decoder,
    vocoder, resampling to OpenAI's pcm rate), so that the first request does not pay for
    what a process does once (lazy loading, kernel selection, caches); returns seconds."""
    started = time.perf_counter()
    for piece in voice.engine.decode(split_text(voice.engine.frontend, WARM_UP_TEXT)):
        _vocode(voice, piece, 1.0, OPENAI_RATE, pause=True)
    return time.perf_counter() - started
