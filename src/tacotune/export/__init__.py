"""Export a voice for onnxruntime and run it (`tacotune export VOICE --format onnx -o DIR`).

    graphs.py       the ONNX graphs: wrappers around the model's own code (torch)
    exporter.py     `export_voice`: checkpoint, run or registry reference -> DIR (torch)
    bundle.py       DIR/manifest.json: contents and checksums, `ExportError`
    readme.py       DIR/README.md
    runtime.py      `OnnxVoice`: the decoding loop in numpy + onnxruntime (no torch)
    synthesizer.py  `OnnxSynthesizer`: `Synthesizer`'s API on top of `OnnxVoice`

Names load on first use, so that `tacotune.export.runtime` works without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tacotune.export.bundle import ExportError

_LAZY = {
    "export_voice": "tacotune.export.exporter",
    "OnnxVoice": "tacotune.export.runtime",
    "OnnxSynthesizer": "tacotune.export.synthesizer",
}

if TYPE_CHECKING:
    from tacotune.export.exporter import export_voice
    from tacotune.export.runtime import OnnxVoice
    from tacotune.export.synthesizer import OnnxSynthesizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tacotune.export' has no attribute {name!r}")


__all__ = ["ExportError", "OnnxSynthesizer", "OnnxVoice", "export_voice"]
