"""Self-describing checkpoints, written atomically and loaded with `weights_only=True`.

A checkpoint holds everything needed to resume exactly or to synthesize without
any other file: the resolved config, the text frontend (symbol table, stress
mode, dictionary), model/optimizer/scheduler/scaler states, step and data
position, RNG states, the best score, the dataset fingerprint and the code version.
Only tensors, numbers, strings, lists and dicts are stored, so loading never
executes pickled code.
"""

from __future__ import annotations

import functools
import logging
import pickle
import random
import re
import subprocess
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from tacotune import __version__
from tacotune.config.load import config_from_dict, config_to_dict
from tacotune.config.rules import validate
from tacotune.config.schema import Config
from tacotune.errors import CheckpointError, ConfigError, short_repr
from tacotune.files import atomic_writer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout below changes incompatibly


def best_in_run(path: str | Path) -> Path:
    """A checkpoint file as is; a run directory's checkpoints/best.pt, else its last.pt."""
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.exists() else path / "checkpoints" / "last.pt"
    return path


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (tacotune.files.atomic_writer): temp file, fsync,
    rename; on any failure the temp file is removed, a full disk raises DiskFullError."""
    with atomic_writer(path, size_hint=_tensor_bytes(payload)) as f:
        torch.save({"format_version": FORMAT_VERSION, **payload}, f)


def _tensor_bytes(value: Any) -> int:
    """Bytes of all tensors in a nested payload (about the size of its file)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (tensors to CPU).

    Anything else (an empty, truncated or damaged file, random bytes, a pickle of other
    objects) is a CheckpointError that says so: loading never falls back to unsafe unpickling.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"checkpoint {path} is empty (0 bytes), so it holds no model; use another "
                "checkpoint of the run (best.pt or step_N.pt to synthesize or warm-start "
                "from; good.pt, where there is one, to resume) or copy it again"
            )
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({error.strerror or error})"
        ) from error
    except _DAMAGED as error:
        raise CheckpointError(
            f"{path} is not a tacotune checkpoint or is damaged ({_damage(error)}); give a .pt "
            "file written by tacotune (a run's checkpoints/*.pt), or copy it again"
        ) from None  # torch's message advises unsafe loading: it is not passed on
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a tacotune checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {short_repr(payload.get('format_version'))}, this "
            f"tacotune ({__version__}) reads format {FORMAT_VERSION}"
        )
    return payload


# what torch.load raises for files that are no (intact) checkpoint, found by fuzzing it
# with random and mutated bytes: bad archives, unsafe or broken pickles, truncation
_DAMAGED = (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError, IndexError)
_UNSUPPORTED = re.compile(r"Unsupported (?:global|operand)[^\n]{0,100}")


def _damage(error: BaseException) -> str:
    """What is wrong with a file torch.load refused, in a few words (never torch's advice
    to load it with weights_only=False: that would run whatever code the file holds)."""
    if isinstance(error, EOFError):
        return "it ends early: truncated"
    if isinstance(error, pickle.UnpicklingError):
        found = _UNSUPPORTED.search(str(error))
        detail = f": {found.group(0).rstrip('. ')}" if found else ""
        return f"it holds objects other than tensors and plain data{detail}"
    first = str(error).split(". ")[0].strip() or type(error).__name__
    return f"{type(error).__name__}: {first[:120]}"


INFERENCE_KEYS = (
    "config",
    "text_frontend",
    "n_symbols",
    "model",
    "state",
    "dataset_fingerprint",
    "code_version",
)  # what synthesis and the registry need


def write_inference_checkpoint(
    source: Path, destination: Path, keys: tuple[str, ...] = INFERENCE_KEYS
) -> None:
    """A copy of `source` with only `keys` (by default what synthesis needs: no optimizer,
    scheduler, RNG or data position): about a third of the size, enough to synthesize,
    register and warm-start from."""
    payload = load_checkpoint(source)
    save_checkpoint(destination, {key: payload[key] for key in keys})


def checkpoint_config(payload: dict[str, Any], path: str | Path | None = None) -> Config:
    """The resolved config stored in a checkpoint (from `path`, named in errors), checked like
    any config (`config.rules.validate` and its upper bounds: a crafted checkpoint cannot make
    synthesis or training unbounded)."""
    where = f"checkpoint {path}" if path is not None else "the checkpoint"
    if "config" not in payload:
        raise CheckpointError(f"{where} holds no config; was it saved by tacotune?")
    try:
        return validate(config_from_dict(payload["config"]))
    except ConfigError as error:
        raise CheckpointError(f"the config stored in {where} is refused: {error}") from error


def config_payload(config: Config) -> dict[str, Any]:
    """The config as plain data for a checkpoint."""
    return config_to_dict(config)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as plain data/tensors."""
    _, keys, position, has_gauss, gauss = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state()
    )
    state: dict[str, Any] = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": position,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.cache
def code_version() -> str:
    """tacotune's version, plus the git commit when running from a checkout (asked once per
    process, not at every checkpoint)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit.stdout.strip()}"


def warm_start_state(
    model: torch.nn.Module, source: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Merge `source` weights into the model's state, skipping missing or differently shaped
    tensors, each copied in the model's dtype (base voices are stored in fp16); returns the
    merged state and a description of every skipped tensor."""
    target = model.state_dict()
    skipped = []
    for name, tensor in target.items():
        if name not in source:
            skipped.append(f"{name}: not in the checkpoint (kept its fresh initialization)")
        elif source[name].shape != tensor.shape:
            skipped.append(
                f"{name}: shape {tuple(source[name].shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} here"
            )
        else:
            target[name] = source[name].to(tensor.dtype)
    return target, skipped


def prune_step_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest `step_*.pt` files."""
    steps = sorted(directory.glob("step_*.pt"))
    for old in steps[: max(len(steps) - keep, 0)]:
        old.unlink()
