"""Run the app with uvicorn: one process, the event loop plus the synthesis thread.

The listening sockets are bound here first (`bind`), so that a port in use or a host that
is not this machine's is one line and exit status 1, before any voice is loaded. Then each
voice speaks a short sentence (runner.warm_up, on the synthesis thread, logged with its
time) before the server answers anything, so that the first request costs what later ones
do. uvicorn handles SIGTERM and Ctrl-C: it stops accepting connections, lets the requests
in flight finish (each within its per-request limit: lifetime.py), then the app's lifespan
cancels what is left of them on the synthesis thread and waits until it has ended.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

import uvicorn

from tacotune.serve.app import create_app
from tacotune.serve.connections import guarded_protocol
from tacotune.serve.runner import on_synthesis_thread, warm_up
from tacotune.serve.settings import API_KEY_ENV, ServerSettings
from tacotune.serve.voices import ServeError, Voice

log = logging.getLogger("tacotune.serve")

SHUTDOWN_MARGIN_S = 5.0  # beyond the per-request limit, before uvicorn cuts connections
BACKLOG = 2048  # connections the kernel queues before they are accepted (uvicorn's default)


def bind(settings: ServerSettings) -> list[socket.socket]:
    """Listening sockets on every address `settings.host` resolves to, at `settings.port`
    (0: a free one); a ServeError says why they cannot be had."""
    where = f"{settings.host}:{settings.port}"
    try:
        found = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as error:
        raise ServeError(
            f"cannot serve on --host {settings.host!r}: it is not an address or a name this "
            f"machine resolves ({getattr(error, 'strerror', None) or error}); use 127.0.0.1, "
            "0.0.0.0 or one of its addresses"
        ) from error
    sockets: list[socket.socket] = []
    missing: list[OSError] = []  # address families this machine lacks (no IPv6, say)
    for family, kind, proto, _, address in dict.fromkeys(found):  # once each
        try:
            sockets.append(_listen(family, kind, proto, address))
        except OSError as error:
            if error.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                for sock in sockets:
                    sock.close()
                raise ServeError(f"cannot listen on {where}: {_why(error, settings)}") from error
            missing.append(error)
    if not sockets:
        raise ServeError(f"cannot listen on {where}: {_why(missing[0], settings)}")
    return sockets


def _listen(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # the IPv4 addresses get sockets of their own
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _why(error: OSError, settings: ServerSettings) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {settings.port} is in use (another server, maybe another tacotune serve); "
            "stop it or choose another --port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{settings.host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    if error.errno == errno.EACCES:
        return f"port {settings.port} needs privileges this user lacks; use a port above 1023"
    return error.strerror or str(error)


def server_for(voices: Sequence[Voice], settings: ServerSettings) -> uvicorn.Server:
    """A uvicorn server for the app (not started). Logging stays as configured by the
    caller (uvicorn's own config would replace it); uvicorn's access log is off because
    the app logs one richer line per request."""
    config = uvicorn.Config(
        create_app(voices, settings),
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.head_timeout_s, linger_s=settings.request_timeout_s),
        ws="none",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s + SHUTDOWN_MARGIN_S),
    )
    return uvicorn.Server(config)


def run_server(
    voices: Sequence[Voice], settings: ServerSettings, sockets: list[socket.socket] | None = None
) -> int:
    """Serve until SIGTERM or Ctrl-C (on `sockets`, default: `bind(settings)`); returns 0
    after a clean shutdown."""
    if not _is_loopback(settings.host) and settings.api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach port %d can use it; "
            "set %s to require one",
            settings.host,
            settings.port,
            API_KEY_ENV,
        )
    if settings.api_key is not None and not settings.api_key.isascii():
        log.warning(
            "%s is not ASCII: clients must send it as UTF-8 (curl and the web page do; the "
            "OpenAI SDK and browsers' fetch of other pages send ASCII keys only)",
            API_KEY_ENV,
        )
    sockets = sockets if sockets is not None else bind(settings)
    for voice in voices:  # before the server answers: the first request is as fast as the rest
        seconds = on_synthesis_thread(warm_up, voice)  # where its requests will run
        log.info("voice %r warmed up in %.1f s", voice.name, seconds)
    port = sockets[0].getsockname()[1]
    names = ", ".join(voice.name for voice in voices)
    log.info("serving %s on http://%s:%d/", names, _url_host(settings.host), port)
    # after a graceful shutdown uvicorn re-raises the signal it handled: that is the stop
    with contextlib.suppress(KeyboardInterrupt):
        server_for(voices, settings).run(sockets=sockets)
    log.info("server stopped")
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolved by the system, maybe to any address
        return False
