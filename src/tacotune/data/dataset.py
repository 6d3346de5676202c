"""Training batches from a prepared dataset: dataset, collate and a bucketing sampler.

Texts and mels are never truncated. A batch is padded to the longest item and then
up to a multiple of every reduction factor in use (see `model.pad_multiple`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from tacotune.audio import SILENCE_LOG_MEL
from tacotune.data.manifest import ManifestEntry
from tacotune.errors import DatasetError, UnknownSymbolError
from tacotune.text.frontend import model_input_to_ids
from tacotune.text.symbols import PAD_ID


@dataclass(frozen=True)
class Batch:
    """A padded batch; lengths are the real ones."""

    ids: list[str]  # the utterance ids, in batch order
    text: Tensor  # (B, N) long, padded with PAD_ID
    text_lengths: Tensor  # (B,) characters including EOS
    mel: Tensor  # (B, n_mels, T) float, padded with silence; T % pad_multiple == 0
    mel_lengths: Tensor  # (B,) frames

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (a DataLoader with pin_memory calls this), so
        that `to` a CUDA device copies without blocking the host."""
        return dataclasses.replace(
            self,
            text=self.text.pin_memory(),
            text_lengths=self.text_lengths.pin_memory(),
            mel=self.mel.pin_memory(),
            mel_lengths=self.mel_lengths.pin_memory(),
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device` (non-blocking where possible)."""
        return dataclasses.replace(
            self,
            text=self.text.to(device, non_blocking=True),
            text_lengths=self.text_lengths.to(device, non_blocking=True),
            mel=self.mel.to(device, non_blocking=True),
            mel_lengths=self.mel_lengths.to(device, non_blocking=True),
        )


def encode_manifest_text(text: str, utterance_id: str) -> list[int]:
    """Ids of a manifest's model-input text, + EOS; the manifest must fit the symbol table."""
    try:
        return list(model_input_to_ids(text))
    except UnknownSymbolError as error:
        raise DatasetError(
            f"utterance {utterance_id!r}: {error}; run `tacotune prepare` again "
            "with this tacotune version"
        ) from error


class Item(NamedTuple):
    """One utterance as the dataset yields it."""

    id: str
    text: Tensor  # (N,) symbol ids, EOS included
    mel: Tensor  # (n_mels, T) log-mel


def pad_ids(sequences: Sequence[Sequence[int] | Tensor]) -> tuple[Tensor, Tensor]:
    """Symbol-id sequences -> (B, N) long padded with PAD_ID, and their (B,) lengths."""
    lengths = torch.tensor([len(ids) for ids in sequences])
    text = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(sequences):
        text[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return text, lengths


class TextMelDataset(Dataset[Item]):
    """(ids, mel) pairs from manifest entries; text is encoded up front so errors come early."""

    def __init__(self, entries: Sequence[ManifestEntry], root: Path) -> None:
        if not entries:
            raise DatasetError(f"no utterances in this split of {root}")
        self.entries = list(entries)
        self.root = root
        self.texts = [encode_manifest_text(e.text, e.id) for e in self.entries]
        self.frames = [e.n_frames for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Item:
        """The utterance's id, (N,) symbol ids and (n_mels, T) log-mel."""
        entry = self.entries[index]
        mel = np.load(self.root / entry.mel_path)
        if mel.shape[1] != entry.n_frames:
            raise DatasetError(
                f"{entry.mel_path} has {mel.shape[1]} frames, the manifest says "
                f"{entry.n_frames}; run `tacotune prepare` again"
            )
        return Item(entry.id, torch.tensor(self.texts[index]), torch.from_numpy(mel))


def mean_log_mel(dataset: TextMelDataset) -> Tensor:
    """The (n_mels,) mean log-mel over every frame of `dataset` (float64 sums)."""
    total: Tensor | None = None
    for index in range(len(dataset)):
        frames = dataset[index].mel.double().sum(dim=1)  # (n_mels, T) -> (n_mels,)
        total = frames if total is None else total + frames
    assert total is not None  # a TextMelDataset is never empty
    return (total / sum(dataset.frames)).float()


class Collate:
    """Pads a list of Items into a Batch (a class so DataLoader workers can pickle it)."""

    def __init__(self, pad_multiple: int) -> None:
        self.pad_multiple = pad_multiple

    def __call__(self, items: list[Item]) -> Batch:
        text, text_lengths = pad_ids([item.text for item in items])
        mel_lengths = torch.tensor([item.mel.shape[1] for item in items])
        n_mels = items[0].mel.shape[0]
        frames = math.ceil(int(mel_lengths.max()) / self.pad_multiple) * self.pad_multiple
        mel = torch.full((len(items), n_mels, frames), SILENCE_LOG_MEL)
        for i, item in enumerate(items):
            mel[i, :, : item.mel.shape[1]] = item.mel
        return Batch([item.id for item in items], text, text_lengths, mel, mel_lengths)


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar length, sharded across ranks, reproducible per epoch.

    Indices are shuffled, cut into buckets of `batch_size * bucket_batches`, sorted by
    length inside a bucket, cut into batches, and the batches shuffled again. Every
    rank gets the same number of batches (extra ones are dropped) so DDP stays in step.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        bucket_batches: int = 16,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler setup: batch {batch_size}, rank {rank}/{world_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.bucket = batch_size * bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch` (the training loop calls this)."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.bucket):
            bucket = sorted(order[start : start + self.bucket], key=self.lengths.__getitem__)
            batches += [
                bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)
            ]
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
