"""Optional parts of tacotune (pip extras): one place that says which to install.

A command that needs a package from an extra calls `require` before importing code that
imports it, so that a missing package is one line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tacotune.errors import TacotuneError


class MissingExtraError(TacotuneError):
    """A package of an optional extra is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming `pip install 'tacotune[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose} needs the {module} package, which cannot be imported ({error}): "
            f"pip install 'tacotune[{extra}]'"
        ) from error
