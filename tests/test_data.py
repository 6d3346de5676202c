"""Training batches: collate padding and the bucketing, sharding, resumable sampler."""

from __future__ import annotations

import torch

from tacotune.audio import SILENCE_LOG_MEL
from tacotune.data.dataset import BucketBatchSampler, Collate, Item

LENGTHS = [50, 10, 400, 120, 33, 250, 80, 15, 300, 60, 90, 200, 45, 70, 310, 140, 20]


def test_collate_pads_to_the_multiple_without_truncating() -> None:
    items = [
        Item("long", torch.tensor([5, 6, 7, 1]), torch.randn(80, 13)),
        Item("short", torch.tensor([5, 1]), torch.randn(80, 7)),
    ]
    batch = Collate(6)(items)
    assert batch.ids == ["long", "short"]  # a debug report names the batch's utterances
    assert batch.mel.shape == (2, 80, 18)
    assert batch.text.tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]]
    assert batch.text_lengths.tolist() == [4, 2] and batch.mel_lengths.tolist() == [13, 7]
    assert torch.equal(batch.mel[0, :, :13], items[0].mel)
    assert (batch.mel[1, :, 7:] == SILENCE_LOG_MEL).all()


def test_every_index_once_per_epoch_in_length_sorted_buckets() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=4, seed=1, bucket_batches=2)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for b in batches:
        assert [LENGTHS[i] for i in b] == sorted(LENGTHS[i] for i in b)


def test_epochs_shuffle_differently_and_reproducibly() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=4, seed=1)
    first = sampler.batches()
    sampler.set_epoch(1)
    second = sampler.batches()
    assert first != second
    again = BucketBatchSampler(LENGTHS, batch_size=4, seed=1)
    again.set_epoch(1)
    assert again.batches() == second


def test_ranks_get_disjoint_shards_of_equal_size() -> None:
    shards = [
        BucketBatchSampler(LENGTHS, 2, seed=3, rank=r, world_size=3).batches() for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen))
