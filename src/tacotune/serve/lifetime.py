"""The life of one HTTP request, decided here and only here: deadline, hang-ups, last words,
cleanup, one log line and the metrics.

`RequestLife` (an ASGI middleware, outside every other of the app's) runs the rest of the
app as a task of its own and watches three things:

- The deadline: `request_timeout_s` from the request's arrival (its head read) to its last
  byte handed to the connection. Reading the body, waiting for a queue slot, synthesis and
  writing the answer all count, so a client that stops reading cannot hold a slot past it.
  When it passes, the handler is cancelled (and with it its synthesis: runner.py) and the
  queue slot freed; then, in at most LAST_WRITE_S, an answer not yet begun becomes 504 (408
  while the body was still arriving), an NDJSON stream ends with its "error" line, and a
  wav/pcm stream is dropped, so that its client sees an incomplete response, not a short file.
- The client: once the body is read, a client that hangs up cancels the handler at once,
  before its answer began or during it, and its synthesis with it.
- The end, however it came: the cleanups (the queue slot), one log line, the metrics.
  Logged: method, path (never the query string; control characters escaped, so a path
  cannot forge a line), status, voice, characters, audio seconds, real-time factor, time to
  first audio, total time, and for an error answer (4xx/5xx) its code and message, read
  from the JSON error body every error answer has (api.py), shortened and escaped like the
  path. Headers (the API key) never are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tacotune.serve.api import ApiError
from tacotune.serve.metrics import ServerMetrics
from tacotune.serve.runner import RenderedPiece

log = logging.getLogger("tacotune.serve")

RECORD_KEY = "tacotune.record"
LAST_WRITE_S = 1.0  # after the deadline, the most that writing a last answer may take
ERROR_BODY_BYTES = 4096  # of an error answer's body, read for its reason (error bodies are small)
REASON_CHARS = 200  # of an error's message, in its log line


@dataclass
class RequestRecord:
    """What one request did, filled in by its handler."""

    started: float  # time.perf_counter() at arrival
    voice: str | None = None
    chars: int = 0
    audio_s: float = 0.0
    compute_s: float = 0.0
    first_audio_s: float | None = None
    note: str = ""  # why it ended early, if it did
    ending: str = ""  # "cut" (deadline), "gone" (client hung up), "dropped" (no answer)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    # a streamed body's last bytes when its deadline cuts it, made from the note
    trailer: Callable[[str], bytes] | None = None

    def add(self, piece: RenderedPiece) -> None:
        """Count a piece that is about to be sent."""
        self.audio_s += piece.seconds
        self.compute_s += piece.compute_s
        if self.first_audio_s is None:
            self.first_audio_s = time.perf_counter() - self.started

    @property
    def rtf(self) -> float | None:
        """Compute seconds per audio second, once there is audio."""
        return self.compute_s / self.audio_s if self.audio_s > 0 else None

    def release(self) -> None:
        """Run the cleanups, each once."""
        while self.cleanup:
            self.cleanup.pop()()


def record_of(request: Request) -> RequestRecord:
    """The record of the request being handled."""
    record: RequestRecord = request.scope[RECORD_KEY]
    return record


class _Exchange:
    """One request's receive and send, and what has passed through them."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.body_read = asyncio.Event()  # the handler has read the whole body
        headers = dict(scope["headers"])
        self.has_body = (
            b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"
        )
        self.status: int | None = None  # once the response has begun
        self.complete = False  # the response's last byte was handed over
        self.error_body = b""  # the first bytes of an error answer's body (status >= 400)
        self.failure: str | None = None  # the exception that ended the app, if one did

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_read.set()
        return message

    async def send(self, message: Message) -> None:
        await self._send(message)
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            if self.status is not None and self.status >= 400:
                room = ERROR_BODY_BYTES - len(self.error_body)
                self.error_body += bytes(message.get("body", b""))[: max(room, 0)]
            if not message.get("more_body", False):
                self.complete = True

    async def hang_up(self) -> None:
        """Return once the client has gone (or the response is complete: the server then
        reports a disconnect too). Waits for the body first: reading is the handler's."""
        await self.body_read.wait()
        while (await self._receive())["type"] != "http.disconnect":
            pass


class RequestLife:
    """ASGI middleware: a request's deadline, hang-up, cleanup, log line and metrics."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, timeout_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(time.perf_counter())
        scope[RECORD_KEY] = record
        exchange = _Exchange(scope, receive, send)
        try:
            await self._live(scope, exchange, record)
        except Exception as error:
            exchange.status = exchange.status or 500  # the server-error middleware answers
            exchange.failure = f"{type(error).__name__} (a bug: its traceback is logged)"
            raise
        finally:
            record.release()
            self._account(scope, record, exchange)

    async def _live(self, scope: Scope, exchange: _Exchange, record: RequestRecord) -> None:
        """Run the app until it ends, its client hangs up or its deadline passes."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        handler = asyncio.ensure_future(self.app(scope, exchange.receive, exchange.send))
        hang_up = asyncio.ensure_future(exchange.hang_up())
        try:
            outcome = await _outcome(handler, hang_up, exchange, deadline)
        finally:
            hang_up.cancel()
            handler.cancel()  # nothing when it is done
        if hang_up.done() and not hang_up.cancelled():
            hang_up.exception()  # a receive that failed: the connection is gone either way
        if outcome == "deadline":
            await _stop(handler)
            record.release()  # the slot is free at the deadline, whatever comes next
            await self._answer_late(scope, exchange, record)
        elif outcome == "hung up" or (exchange.status is not None and not exchange.complete):
            await _stop(handler)
            record.ending, record.note = "gone", _unheard(record, "the client went away")
        else:
            handler.result()  # a handler's own error goes on to the server-error middleware

    async def _answer_late(self, scope: Scope, exchange: _Exchange, record: RequestRecord) -> None:
        """After the deadline: 504/408, an NDJSON stream's error line, or nothing (dropped)."""
        limit = f"{self.timeout_s:g} s (the server's per-request limit)"
        if exchange.status is None:
            if exchange.body_read.is_set() or not exchange.has_body:
                message = f"the request did not finish within {limit}; send shorter text or "
                error = ApiError(
                    504, message + "retry when the server is less busy", code="timeout"
                )
            else:
                message = f"the request body did not arrive within {limit}"
                error = ApiError(408, message, code="request_timeout")
            answer: Any = JSONResponse(error.body(), error.status, headers={"Connection": "close"})
        else:
            record.ending = "cut"
            record.note = _unheard(record, f"the per-request limit of {self.timeout_s:g} s passed")
            if record.trailer is None:
                return
            answer = _body_end(record.trailer(record.note))
        try:
            async with asyncio.timeout(LAST_WRITE_S):
                await answer(scope, exchange.receive, exchange.send)
        except TimeoutError:  # the client does not read: the connection is dropped
            record.ending = record.ending or "dropped"

    def _account(self, scope: Scope, record: RequestRecord, exchange: _Exchange) -> None:
        total = time.perf_counter() - record.started
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        status = " ".join(filter(None, [str(exchange.status or "-"), record.ending]))
        self.metrics.requests.labels(endpoint, status).inc()
        self.metrics.latency.labels(endpoint).observe(total)
        parts = [scope["method"], printable(scope["path"]), status]
        if record.voice is not None:
            parts += [f"voice={record.voice}", f"chars={record.chars}"]
            if record.rtf is not None:
                parts += [f"audio={record.audio_s:.2f}s", f"rtf={record.rtf:.3f}"]
                self.metrics.rtf.labels(record.voice).observe(record.rtf)
                self.metrics.audio_seconds.labels(record.voice).inc(record.audio_s)
            if record.first_audio_s is not None:
                parts.append(f"first_audio={record.first_audio_s:.3f}s")
                self.metrics.first_audio.labels(record.voice).observe(record.first_audio_s)
        parts.append(f"total={total:.3f}s")
        if record.note:
            parts.append(f"({record.note})")
        if exchange.status is not None and exchange.status >= 400:
            parts.append(f"error={exchange.failure or _reason(exchange.error_body)}")
        log.info("%s", " ".join(parts))


def printable(text: str) -> str:
    """`text` with every non-printable character (newlines, ESC, U+2028...) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _reason(body: bytes) -> str:
    """An error answer's `code: message` from its JSON body (api.py's shape), shortened and
    escaped; what there is when the body is not that shape (a 500 written by the server)."""
    try:
        error = json.loads(body)["error"]
        code, message = error.get("code") or error.get("type"), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = None, body.decode("utf-8", "replace") or "no body"
    if len(message) > REASON_CHARS:
        message = message[: REASON_CHARS - 3] + "..."
    return printable(f"{code}: {message}" if code else message)


def _unheard(record: RequestRecord, why: str) -> str:
    return f"{why} after {record.audio_s:.2f} s of audio; the rest was not synthesized"


def _body_end(data: bytes) -> Callable[[Scope, Receive, Send], Any]:
    async def end(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": False})

    return end


async def _outcome(
    handler: asyncio.Future[None],
    hang_up: asyncio.Future[None],
    exchange: _Exchange,
    deadline: float,
) -> str:
    """Whichever comes first: "done", "hung up" or "deadline"."""
    loop = asyncio.get_running_loop()
    while not handler.done():
        watched = {handler} if hang_up.done() else {handler, hang_up}
        left = deadline - loop.time()
        await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if handler.done():
            break
        if hang_up.done() and not exchange.complete:
            return "hung up"
        if loop.time() >= deadline:
            return "deadline"
    return "done"


async def _stop(handler: asyncio.Future[None]) -> None:
    """Cancel the handler and wait (briefly) for it to unwind."""
    handler.cancel()
    await asyncio.wait({handler}, timeout=LAST_WRITE_S)
    if handler.done() and not handler.cancelled() and handler.exception() is not None:
        log.warning("a cancelled request ended with %r", handler.exception())
