"""The training run's data: datasets, the resumable batch stream, validation and probes."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader

from tacotune.config.schema import Config
from tacotune.data.dataset import Batch, BucketBatchSampler, Collate, TextMelDataset
from tacotune.data.manifest import PreparedDataset
from tacotune.device import resolve_device
from tacotune.errors import ConfigError, DatasetError
from tacotune.model.tacotron2 import pad_multiple
from tacotune.text.frontend import TextFrontend
from tacotune.train.evaluate import Utterance


@dataclass
class Position:
    """Where the batch stream is: enough to continue exactly after a resume."""

    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class TrainingData:
    """Everything the loop reads."""

    train_set: TextMelDataset
    val_batches: list[Batch]
    utterances: list[Utterance]  # decoded free-running at each evaluation
    sampler: BucketBatchSampler
    collate: Collate
    workers: int
    frontend: TextFrontend
    pin_memory: bool = False  # page-locked batches (training on CUDA)
    position: Position = field(default_factory=Position)

    def stream(self) -> Iterator[Batch]:
        """Batches forever, epoch after epoch, starting at `position`: one DataLoader for
        all of them, so that its worker processes start once, not at every epoch."""
        per_epoch = len(self._epoch(self.position.epoch))
        if self.position.batch_in_epoch >= per_epoch:
            self.position = Position(self.position.epoch + 1, 0)
        # the loader's own generator: a DataLoader iterator otherwise draws its worker seed
        # from the global RNG, and a resumed run would shift every dropout mask after it
        loader_rng = torch.Generator().manual_seed(self.sampler.seed + self.position.epoch)
        loader = DataLoader(
            self.train_set,
            batch_sampler=self._batches_from(self.position.epoch, self.position.batch_in_epoch),
            collate_fn=self.collate,
            num_workers=self.workers,
            pin_memory=self.pin_memory,  # lets Batch.to copy without blocking the host
            generator=loader_rng,
        )
        for batch in loader:
            self.position.batch_in_epoch += 1
            if self.position.batch_in_epoch == per_epoch:
                self.position = Position(self.position.epoch + 1, 0)
            yield batch

    def _epoch(self, epoch: int) -> list[list[int]]:
        """This process's batches (dataset indices) of `epoch`; the same number every epoch."""
        self.sampler.set_epoch(epoch)
        batches = self.sampler.batches()
        if not batches:
            raise DatasetError(
                "this process gets no batch: the training split has fewer "
                "batches than there are processes; lower train.batch_size"
            )
        return batches

    def _batches_from(self, epoch: int, skip: int) -> Iterator[list[int]]:
        """The batch sampler of `stream`: every batch from the `skip`-th of `epoch` on."""
        while True:
            yield from self._epoch(epoch)[skip:]
            epoch, skip = epoch + 1, 0


def check_compatible(
    config: Config, prepared: PreparedDataset, sections: tuple[str, ...] = ("text", "audio")
) -> None:
    """The run must read text and audio (a vocoder: audio) exactly as the dataset was prepared."""
    for section in sections:
        ours, theirs = getattr(config, section), getattr(prepared.config, section)
        if ours != theirs:
            differing = [
                k for k in ours.__dataclass_fields__ if getattr(ours, k) != getattr(theirs, k)
            ]
            raise ConfigError(
                f"{prepared.root} was prepared with different {section} settings "
                f"({', '.join(f'{section}.{k}' for k in differing)}); prepare it again with this "
                "config, or train with the settings it was prepared with"
            )


def _other_recording(train_set: TextMelDataset, frames: int, text: str) -> int:
    """The training utterance of another text closest in length to `frames`: the voice
    metric's chance level (a recording of the wrong words, of about the right duration)."""
    candidates = [i for i, e in enumerate(train_set.entries) if e.text != text]
    if not candidates:
        raise DatasetError("every training utterance has the same text; the voice metric needs two")
    return min(candidates, key=lambda i: (abs(train_set.frames[i] - frames), i))


def build_training_data(
    prepared: PreparedDataset, config: Config, rank: int, world_size: int
) -> TrainingData:
    """Datasets, a rank-sharded bucketing sampler, validation batches and probe utterances."""
    check_compatible(config, prepared)
    train_set = TextMelDataset(prepared.split("train"), prepared.root)
    val_set = TextMelDataset(prepared.split("val"), prepared.root)
    collate = Collate(pad_multiple(config.model))
    sampler = BucketBatchSampler(
        train_set.frames, config.train.batch_size, config.train.seed, rank, world_size
    )
    order = sorted(range(len(val_set)), key=val_set.frames.__getitem__)
    size = config.train.batch_size
    val_batches = [
        collate([val_set[i] for i in order[s : s + size]]) for s in range(0, len(order), size)
    ]
    frames_per_char = statistics.median(
        e.n_frames / len(t) for e, t in zip(train_set.entries, train_set.texts, strict=True)
    )
    frontend = TextFrontend(prepared.config.text)
    utterances = [
        Utterance(f"probe_{i}", text, ids, frames_per_char * len(ids))
        for i, text in enumerate(config.train.probe_sentences)
        for ids in [frontend.encode(text)]
    ]
    for index in range(min(len(val_set), config.supervision.free_running_val_utterances)):
        entry = val_set.entries[index]
        other = _other_recording(train_set, entry.n_frames, entry.text)
        utterances.append(
            Utterance(
                f"val_{entry.id}",
                entry.raw_text,
                val_set.texts[index],
                entry.n_frames,
                recording=val_set[index].mel,
                other_recording=train_set[other].mel,
            )
        )
    cuda = resolve_device(config.train.device).type == "cuda"
    return TrainingData(
        train_set,
        val_batches,
        utterances,
        sampler,
        collate,
        loader_workers(config.train.data_workers, cuda),
        frontend,
        pin_memory=cuda,
    )


def loader_workers(setting: int | Literal["auto"], cuda: bool) -> int:
    """DataLoader worker processes for train.data_workers: "auto" is 2 on a CUDA device (the
    host prepares the next batch while the GPU works) and 0 on the CPU (workers would take
    cores from the training step)."""
    if setting == "auto":
        return 2 if cuda else 0
    return setting
