"""Connections: uvicorn's h11 protocol with the bounds it lacks, and its errors in OpenAI's shape.

- A request head must arrive within `head_timeout_s` of the connection opening or of the
  previous answer: a client that trickles its headers (slowloris) or sends nothing holds a
  socket that long at most (uvicorn's keep-alive timer stops at the first byte).
- A connection closed while bytes wait for its client (a client that stopped reading) is
  dropped: at once when its response was cut short, else after `linger_s`. asyncio's
  close() waits for the client to read them, which such a client never does: the socket,
  and a graceful shutdown waiting for it, would stay.
- Bytes that are not HTTP/1.1 (malformed, a head over 16 KiB, a bad Content-Length) get
  uvicorn's 400 and a closed connection, with an OpenAI-shaped JSON body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tacotune.serve.api import ApiError


def guarded_protocol(head_timeout_s: float, linger_s: float) -> type[H11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these bounds."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"head_timeout_s": head_timeout_s, "linger_s": linger_s},
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a bounded close."""

    head_timeout_s = 10.0
    linger_s = 120.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        bounded = _BoundedClose(cast(asyncio.Transport, transport), self)
        super().connection_made(cast(asyncio.Transport, bounded))
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        error = ApiError(
            400,
            f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}): check its request "
            "line, headers (16 KiB at most in all) and Content-Length",
            code="invalid_http",
        )
        body = json.dumps(error.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def response_cut(self) -> bool:
        """Whether the response in progress was left unfinished (by the app's deadline)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_missing)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_missing(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class _BoundedClose:
    """A connection's transport whose close() does not wait forever for a client that
    does not read (everything else is the transport's own)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        transport = self._transport
        transport.close()
        if transport.get_write_buffer_size() == 0:  # closed, or closing without waiting
            return
        if self._protocol.response_cut():
            transport.abort()
        else:
            self._protocol.loop.call_later(self._protocol.linger_s, transport.abort)
