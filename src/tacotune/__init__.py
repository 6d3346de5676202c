"""tacotune: Russian Tacotron2 training that tunes and supervises itself.

from tacotune import Synthesizer, load_config, prepare_dataset
from tacotune.train import resume, train
speech = Synthesizer("runs/demo/train").speak("Добрый вечер!")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tacotune.config import Config, load_config

__version__ = "0.1.0"

# heavy parts load on first use, so `tacotune text` stays quick
_LAZY = {
    "Synthesizer": "tacotune.synthesize",
    "TextFrontend": "tacotune.text.frontend",
    "prepare_dataset": "tacotune.data.prepare",
}

if TYPE_CHECKING:
    from tacotune.data.prepare import prepare_dataset
    from tacotune.synthesize import Synthesizer
    from tacotune.text.frontend import TextFrontend


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tacotune' has no attribute {name!r}")


__all__ = [
    "Config",
    "Synthesizer",
    "TextFrontend",
    "__version__",
    "load_config",
    "prepare_dataset",
]
