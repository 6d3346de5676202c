"""The exceptions a tacotune user can see.

Every message says what was expected, what was found and how to fix it. The CLI
turns a ``TacotuneError`` into one line on stderr and a non-zero exit code; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


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
