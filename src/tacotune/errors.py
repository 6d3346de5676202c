"""The exceptions a tacotune user can see.

Every message says what was expected, what was found and how to fix it. The CLI
turns a ``TacotuneError`` into one line on stderr and a non-zero exit code; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib
from typing import Any

# repr() of a value shown in a message: bounded work and length, whatever the value holds
_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
SHORT_REPR_LIMIT = 80  # characters


def short_repr(value: Any, limit: int = SHORT_REPR_LIMIT) -> str:
    """`repr(value)` cut to at most `limit` characters without building the whole repr
    (user input in an error message must not make the message, or its formatting, unbounded)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TacotuneError(Exception):
    """Base class of every user-facing error."""


class ConfigError(TacotuneError):
    """A configuration file, override or combination of values is invalid."""


class TextError(TacotuneError):
    """Text cannot be turned into model input."""


class UnknownSymbolError(TextError):
    """The text holds characters outside the symbol table."""


class StressError(TextError):
    """Stress marks are malformed, or automatic stress is unavailable."""


class AudioError(TacotuneError):
    """An audio file cannot be read or processed."""


class DatasetError(TacotuneError):
    """A dataset cannot be prepared or loaded."""


class CheckpointError(TacotuneError):
    """A checkpoint is missing, corrupt or does not fit the requested use."""
