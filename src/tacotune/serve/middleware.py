"""Requests refused before the app reads them: a body over the limit, a Host not ours.

(The life of a request, from its deadline to its log line, is lifetime.py's.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tacotune.errors import short_repr
from tacotune.serve.api import ApiError
from tacotune.serve.settings import ANY_HOST, API_KEY_ENV


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


class HostCheck:
    """ASGI middleware of a server without an API key: it answers only requests whose Host
    names it (DNS rebinding: a web page whose name the attacker points at 127.0.0.1 could
    otherwise drive a keyless loopback server from the user's browser).

    Accepted: localhost, any IP address (a page cannot make a browser send an address
    for its own name), the name the server was bound to, and the `--allow-host` names;
    a request without Host (HTTP/1.0, never a browser's) too. Anything else is a 400."""

    def __init__(self, app: ASGIApp, names: Iterable[str]) -> None:
        self.app = app
        self.names = {_normal(name) for name in [*names, "localhost"]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = Headers(scope=scope).get("host") if scope["type"] == "http" else None
        if host is None or self.allows(host):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            400,
            f"this server does not answer to the host {short_repr(host)}: without an API key "
            "it answers only localhost, IP addresses and the names given with --allow-host "
            f"(a guard against DNS rebinding); add --allow-host NAME or set {API_KEY_ENV}",
            code="host_not_allowed",
        )
        await JSONResponse(error.body(), error.status)(scope, receive, send)

    def allows(self, host: str) -> bool:
        """Whether a Host header (name or address, maybe with a port) is one of ours."""
        if ANY_HOST in self.names:
            return True
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:  # e.g. an unclosed [ of an IPv6 address
            return False
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return _normal(name) in self.names
        return True


def _normal(name: str) -> str:
    """A host name as compared: lower case, no final dot (the root of DNS)."""
    return name.lower().removesuffix(".")
