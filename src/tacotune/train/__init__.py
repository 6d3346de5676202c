"""Training: the loop, its session, evaluation and what a run writes.

    setup.py     device, precision, processes, optimizer and schedule
    inputs.py    the batch stream, validation batches and probe utterances
    session.py   what one training process holds; build, save, restore, roll back
    loop.py      `train` / `resume`: the numbered training loop
    evaluate.py  validation losses and free-running decoding
    records.py   state counters, checkpoint files and listenable samples

`train` and `resume` load on first use, so importing a submodule (or
`tacotune.checkpoint`, which synthesis needs) does not load the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tacotune.train.loop import TrainResult, resume, train


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "resume", "train"):
        return getattr(importlib.import_module("tacotune.train.loop"), name)
    raise AttributeError(f"module 'tacotune.train' has no attribute {name!r}")


__all__ = ["TrainResult", "resume", "train"]
