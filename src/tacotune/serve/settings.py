"""What an operator sets for `tacotune serve`: address, request limits and the API key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tacotune.errors import ConfigError

API_KEY_ENV = "TACOTUNE_API_KEY"


@dataclass(frozen=True)
class ServerSettings:
    """Server address and limits; every limit answers a request that exceeds it with a reason."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_input_chars: int = 4096  # characters of text per request (OpenAI's limit too); 413 above
    max_pieces: int = 32  # pieces after sentence splitting; 413 above
    max_queue: int = 32  # requests admitted at once (waiting or synthesizing); 503 above
    request_timeout_s: float = 120.0  # from arrival to the last audio byte; 504 (or cut) after
    # compared with hmac.compare_digest; repr=False keeps it out of any log of the settings
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_input_chars": self.max_input_chars >= 1,
            "max_pieces": self.max_pieces >= 1,
            "max_queue": self.max_queue >= 1,
            "request_timeout_s": self.request_timeout_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"server settings out of range: {values}; ports are 0-65535 and limits positive"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError(
                f"{API_KEY_ENV} is set but empty; unset it to serve without a key or set a key"
            )


def api_key_from_env() -> str | None:
    """$TACOTUNE_API_KEY, or None when unset (a key is never taken from the command line,
    where other users could read it in the process list)."""
    return os.environ.get(API_KEY_ENV)
