"""Teacher-forced (ground-truth aligned) mels of an acoustic model, to fine-tune a vocoder
on what that model really outputs (Kong et al. 2020, section 4.4).

For every training and validation utterance of a prepared dataset, the Tacotron2 of a
checkpoint runs its teacher-forced pass with the utterance's own recorded mel as the
decoder input, at the reduction factor it synthesizes with, in eval mode (its prenet
dropout stays on, as at synthesis, from a fixed seed). The postnet output is kept, cropped
back to the utterance's frame count: the model pads every batch to a multiple of r, and the
vocoder needs exactly n_frames frames for the n_frames * hop samples of the recording.

The mels are cached as ROOT/<first 16 hex digits of the checkpoint file's sha256>/<id>.npy;
`complete.json`, written last, says which checkpoint and dataset they belong to, so an
interrupted generation starts over and a finished one is reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacotune import progress
from tacotune.checkpoint import best_in_run, checkpoint_config, load_checkpoint
from tacotune.config.schema import AudioConfig
from tacotune.data.dataset import Collate, TextMelDataset
from tacotune.data.manifest import ManifestEntry, PreparedDataset, mel_settings
from tacotune.errors import CheckpointError
from tacotune.files import atomic_writer, file_sha256, write_json_atomic
from tacotune.model.tacotron2 import Tacotron2, pad_multiple

log = logging.getLogger(__name__)

COMPLETE = "complete.json"  # written after the last mel: the directory is usable
BATCH_SIZE = 8  # utterances per teacher-forced pass
SEED = 0  # prenet dropout of the teacher-forced passes


@dataclass(frozen=True)
class TeacherMels:
    """Where the teacher-forced mels of one acoustic checkpoint are, and whose they are."""

    directory: Path  # <id>.npy for every utterance, (n_mels, n_frames) float32
    checkpoint: Path  # the acoustic checkpoint file they were made with
    sha256: str  # of that file

    def facts(self) -> dict[str, str]:
        """Plain data for checkpoints and events."""
        return {
            "directory": str(self.directory),
            "checkpoint": str(self.checkpoint),
            "sha256": self.sha256,
        }


def teacher_forced_mels(
    acoustic: str | Path,
    prepared: PreparedDataset,
    root: Path,
    device: torch.device,
) -> TeacherMels:
    """The teacher-forced mels of `acoustic` (a checkpoint or a run directory: its best.pt)
    for every utterance of `prepared`, generated once under `root` and reused after."""
    checkpoint = best_in_run(acoustic)
    if not checkpoint.is_file():
        raise CheckpointError(
            f"acoustic checkpoint {checkpoint} does not exist; give --from-acoustic a "
            "checkpoint file or a run directory of `tacotune train`"
        )
    sha256 = file_sha256(checkpoint)
    directory = root / sha256[:16]
    marker = {
        "sha256": sha256,
        "dataset": prepared.fingerprint,
        "utterances": len(prepared.entries),
    }
    if _complete(directory, marker):
        log.info("teacher-forced mels of %s: reusing %s", checkpoint, directory)
        return TeacherMels(directory, checkpoint, sha256)
    payload = load_checkpoint(checkpoint)
    model = _acoustic_model(payload, prepared.config.audio, checkpoint)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / COMPLETE).unlink(missing_ok=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(SEED)
        write_teacher_forced(model.to(device), prepared.entries, prepared.root, directory, device)
    write_json_atomic(directory / COMPLETE, {**marker, "checkpoint": str(checkpoint)})
    log.info("teacher-forced mels of %s written to %s", checkpoint, directory)
    return TeacherMels(directory, checkpoint, sha256)


def _complete(directory: Path, marker: dict[str, Any]) -> bool:
    try:
        found = json.loads((directory / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and all(found.get(k) == v for k, v in marker.items())


def _acoustic_model(payload: dict[str, Any], audio: AudioConfig, source: Path) -> Tacotron2:
    """The checkpoint's Tacotron2 in eval mode; its mels must be the dataset's mels."""
    missing = [k for k in ("config", "n_symbols", "model") if k not in payload]
    if missing:
        raise CheckpointError(
            f"{source} is not an acoustic (Tacotron2) checkpoint: it lacks {missing}; give "
            "--from-acoustic a checkpoint or run directory of `tacotune train`"
        )
    config = checkpoint_config(payload)
    ours, theirs = mel_settings(config.audio), mel_settings(audio)
    if ours != theirs:  # Griffin-Lim's settings may differ: they do not change the mels
        differing = [
            f"audio.{k} {ours[k]} (dataset: {theirs[k]})" for k in ours if ours[k] != theirs[k]
        ]
        raise CheckpointError(
            f"{source} was trained on other mels than this prepared dataset holds: "
            f"{', '.join(differing)}; fine-tune on the dataset the acoustic model was trained on"
        )
    model = Tacotron2(config.model, payload["n_symbols"], audio.n_mels)
    model.load_state_dict(payload["model"])
    return model.eval()


@torch.no_grad()
def write_teacher_forced(
    model: Tacotron2,
    entries: Sequence[ManifestEntry],
    root: Path,
    directory: Path,
    device: torch.device,
) -> None:
    """<directory>/<id>.npy: the postnet mel of the teacher-forced pass, (n_mels, n_frames)."""
    dataset = TextMelDataset(entries, root)
    collate = Collate(pad_multiple(model.config))
    r = model.final_reduction_factor
    order = sorted(range(len(dataset)), key=dataset.frames.__getitem__)  # similar lengths
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    for indices in progress.track(batches, len(batches), "teacher-forced mels"):
        batch = collate([dataset[i] for i in indices]).to(device)
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, r)
        for i, utterance_id in enumerate(batch.ids):
            frames = int(batch.mel_lengths[i])
            mel = out.mel_postnet[i, :, :frames].float().cpu().numpy()  # (n_mels, n_frames)
            with atomic_writer(directory / f"{utterance_id}.npy", size_hint=mel.nbytes) as f:
                np.save(f, mel)
