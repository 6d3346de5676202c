"""One log line and the metrics of every request, request-scoped cleanup, a body limit.

A pure ASGI middleware wraps the whole exchange, a streamed body included, so its
`finally` runs once per request however it ends: finished, failed, cut at its deadline
or abandoned by the client. Handlers put what they learn into the request's
`RequestRecord` (voice, characters, audio seconds, compute) and register cleanups
(the queue slot's release) there.

Logged: method, path (never the query string), status, voice, characters, audio seconds,
real-time factor, time to first audio, total time. Headers (the API key) never are.
"""

from __future__ import annotations

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


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413 before it is
    read whole: by its Content-Length, or while a chunked body arrives (such a body is
    read here first, up to the limit, and handed on in one piece)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(length.decode("latin-1"), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(f"more than {self.max_bytes}", scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, length: str, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(
            413,
            f"the request body has {length} bytes; this server takes at most {self.max_bytes}",
            code="body_too_large",
        )
        await JSONResponse(error.body(), error.status)(scope, receive, send)


class StreamCut(Exception):
    """A streamed response stopped before its end (deadline); the connection is dropped
    so that the client sees an incomplete response instead of a short file."""


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
    cleanup: list[Callable[[], None]] = field(default_factory=list)

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


def record_of(request: Request) -> RequestRecord:
    """The record of the request being handled."""
    record: RequestRecord = request.scope[RECORD_KEY]
    return record


class ObserveRequests:
    """ASGI middleware: a RequestRecord per HTTP request, then cleanup, log line, metrics."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(time.perf_counter())
        scope[RECORD_KEY] = record
        status = 500  # unless the app starts a response

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except StreamCut as cut:  # swallowed: uvicorn drops the unfinished response
            record.note = str(cut)
        finally:
            for release in record.cleanup:
                release()
            self._account(scope, record, status)

    def _account(self, scope: Scope, record: RequestRecord, status: int) -> None:
        total = time.perf_counter() - record.started
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        shown_status = f"{status} cut" if record.note else str(status)
        self.metrics.requests.labels(endpoint, shown_status).inc()
        self.metrics.latency.labels(endpoint).observe(total)
        parts = [scope["method"], scope["path"], shown_status]
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
        log.info("%s", " ".join(parts))
