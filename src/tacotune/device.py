"""Which torch device a command runs on: `auto`, `cpu` or `cuda`."""

from __future__ import annotations

import torch

from tacotune.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str, index: int = 0) -> torch.device:
    """`auto` is CUDA device `index` when one is available, else the CPU; `cuda` without a
    CUDA device is a ConfigError (a silent CPU fallback would hide a broken setup)."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {list(DEVICES)}, found {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "the device is 'cuda' but no CUDA device is available (torch "
            f"{torch.__version__}); use device auto or cpu"
        )
    return torch.device("cuda", index)
