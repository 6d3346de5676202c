"""Run the app with uvicorn: one process, the event loop plus the synthesis thread.

uvicorn handles SIGTERM and Ctrl-C: it stops accepting connections, lets the requests in
flight finish (at most the per-request limit, plus a margin), then the app's lifespan
stops the synthesis thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence

import uvicorn

from tacotune.serve.app import create_app
from tacotune.serve.settings import API_KEY_ENV, ServerSettings
from tacotune.serve.voices import Voice

log = logging.getLogger("tacotune.serve")

SHUTDOWN_MARGIN_S = 5.0  # beyond the per-request limit, before uvicorn cuts connections


def server_for(voices: Sequence[Voice], settings: ServerSettings) -> uvicorn.Server:
    """A uvicorn server for the app (not started). Logging stays as configured by the
    caller (uvicorn's own config would replace it); uvicorn's access log is off because
    the app logs one richer line per request."""
    config = uvicorn.Config(
        create_app(voices, settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s + SHUTDOWN_MARGIN_S),
    )
    return uvicorn.Server(config)


def run_server(
    voices: Sequence[Voice], settings: ServerSettings, sockets: list[socket.socket] | None = None
) -> int:
    """Serve until SIGTERM or Ctrl-C; returns 0 after a clean shutdown."""
    if not _is_loopback(settings.host) and settings.api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach port %d can use it; "
            "set %s to require one",
            settings.host,
            settings.port,
            API_KEY_ENV,
        )
    names = ", ".join(voice.name for voice in voices)
    log.info("serving %s on http://%s:%d/", names, settings.host, settings.port)
    # after a graceful shutdown uvicorn re-raises the signal it handled: that is the stop
    with contextlib.suppress(KeyboardInterrupt):
        server_for(voices, settings).run(sockets=sockets)
    log.info("server stopped")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolved by the system, maybe to any address
        return False
