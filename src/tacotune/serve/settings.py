"""What an operator sets for `tacotune serve`: address, request limits, voice aliases and
the API key."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass, field

from tacotune.errors import ConfigError, short_repr

API_KEY_ENV = "TACOTUNE_API_KEY"
ANY_HOST = "*"  # as an allowed host: answer any Host header (a proxy in front checks it)
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?", re.IGNORECASE)


@dataclass(frozen=True)
class ServerSettings:
    """Server address and limits; every limit answers a request that exceeds it with a reason."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_input_chars: int = 4096  # characters of text per request (OpenAI's limit too); 413 above
    max_pieces: int = 32  # pieces after sentence splitting; 413 above
    max_queue: int = 32  # requests admitted at once (waiting or synthesizing); 503 above
    # from arrival to the last byte sent (synthesis and writing): 504, 408 or a cut after
    request_timeout_s: float = 120.0
    head_timeout_s: float = 10.0  # a connection's next request head must arrive by then
    # Host names a server without a key answers besides localhost and addresses (middleware.py)
    allowed_hosts: tuple[str, ...] = ()
    # (NAME, VOICE): a request's `voice` NAME speaks with the served voice VOICE (app.py)
    voice_aliases: tuple[tuple[str, str], ...] = ()
    # compared as UTF-8 bytes with hmac.compare_digest; repr=False keeps it out of any log
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_input_chars": self.max_input_chars >= 1,
            "max_pieces": self.max_pieces >= 1,
            "max_queue": self.max_queue >= 1,
            "request_timeout_s": math.isfinite(self.request_timeout_s)
            and self.request_timeout_s > 0,
            "head_timeout_s": math.isfinite(self.head_timeout_s) and self.head_timeout_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"server settings out of range: {values}; ports are 0-65535, limits positive "
                "and times finite"
            )
        for name in self.allowed_hosts:
            if name != ANY_HOST and not _HOST_NAME.fullmatch(name):
                raise ConfigError(
                    f"--allow-host {short_repr(name)} is not a host name: give a name such "
                    f"as tts.example.org (no port, no scheme), or {ANY_HOST!r} for any"
                )
        names = [name for name, _ in self.voice_aliases]
        for name, voice in self.voice_aliases:
            if not name or not voice or names.count(name) > 1:
                raise ConfigError(
                    f"--alias {short_repr(name)} (to {short_repr(voice)}): give each alias "
                    "once, as NAME=VOICE with both parts (e.g. --alias alloy=ruslana)"
                )
        if self.api_key is not None:
            _check_key(self.api_key)


def _check_key(key: str) -> None:
    """A key that no HTTP client could send is refused here, not by every request."""
    if not key.strip():
        raise ConfigError(
            f"{API_KEY_ENV} is set but empty; unset it to serve without a key or set a key"
        )
    if key != key.strip() or any(unicodedata.category(c) == "Cc" for c in key):
        raise ConfigError(
            f"{API_KEY_ENV} begins or ends with white space or holds a control character, "
            "which no HTTP header can carry; use printable characters (letters of any "
            "alphabet are fine: clients send them as UTF-8)"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as error:  # bytes that are not UTF-8, kept by os.environ
        raise ConfigError(
            f"{API_KEY_ENV} is not UTF-8 text (character {error.start + 1}); set it in UTF-8"
        ) from error


def api_key_from_env() -> str | None:
    """$TACOTUNE_API_KEY, or None when unset (a key is never taken from the command line,
    where other users could read it in the process list)."""
    return os.environ.get(API_KEY_ENV)
