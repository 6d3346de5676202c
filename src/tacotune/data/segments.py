"""Vocoder training data: random audio segments with the mel frames that describe them.

`tacotune prepare` caches, per utterance, the trimmed 16-bit audio (n_frames * hop
samples) next to its mel, with mel == MelSpectrogram(audio) exactly. An item here is a
`segment_size`-sample window of that audio starting on a frame boundary, and the
segment_size / hop mel frames of the same window (HiFi-GAN's training unit; the paper's
reference code uses 8192 samples). Clips shorter than a segment are padded: audio with
digital silence, mel with the log-mel of silence.

The mels may instead come from another directory of `<id>.npy` files with the same frame
counts, e.g. teacher-forced (ground-truth aligned) mels of the acoustic model, for the
fine-tuning the paper describes in section 4.4.

Segments are reproducible: the window of item i in epoch e depends only on (seed, e, i),
never on worker processes or the order items are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tacotune.audio import SILENCE_LOG_MEL, pcm16_to_float, read_pcm16
from tacotune.config.schema import AudioConfig
from tacotune.data.manifest import ManifestEntry
from tacotune.errors import AudioError, DatasetError

MAX_LISTED = 5  # problems named in one error message


class VocoderItem(NamedTuple):
    """One training example (default_collate stacks these into batched tensors)."""

    audio: Tensor  # (segment_size,) float32 in [-1, 1)
    mel: Tensor  # (n_mels, segment_size // hop_length) float32 log-mel


class SegmentDataset(Dataset[VocoderItem]):
    """(audio, mel) windows of prepared utterances; every length is checked up front."""

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        root: Path,
        audio: AudioConfig,
        segment_size: int | None,
        seed: int = 0,
        mel_dir: Path | None = None,
    ) -> None:
        """
        Args:
            entries: prepared utterances (one split of `load_prepared(root)`).
            root: the prepared directory.
            audio: the audio config the directory was prepared with.
            segment_size: samples per item, a multiple of hop_length; None: whole clips
                (validation; batch them one at a time).
            seed: with the epoch and the index, decides every window.
            mel_dir: take mels from `<mel_dir>/<id>.npy` instead of the prepared cache.
        """
        if not entries:
            raise DatasetError(f"no utterances in this split of {root}")
        hop = audio.hop_length
        if segment_size is not None and (segment_size <= 0 or segment_size % hop):
            raise DatasetError(
                f"segment_size {segment_size} must be a positive multiple of hop_length {hop}"
            )
        self.entries = list(entries)
        self.root = root
        self.hop = hop
        self.n_mels = audio.n_mels
        self.segment_size = segment_size
        self.seed = seed
        self.mel_dir = mel_dir
        self.epoch = 0
        self._check_files()

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows of `epoch` (the training loop calls this every epoch)."""
        self.epoch = epoch

    def mel_path(self, entry: ManifestEntry) -> Path:
        """Where the mel of `entry` is read from."""
        if self.mel_dir is not None:
            return self.mel_dir / f"{entry.id}.npy"
        return self.root / entry.mel_path

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> VocoderItem:
        """Audio (segment_size,) and mel (n_mels, segment_size // hop); whole clips if None."""
        entry = self.entries[index]
        frames = entry.n_frames
        wanted = frames if self.segment_size is None else self.segment_size // self.hop
        start = 0
        if frames > wanted:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            start = int(rng.integers(0, frames - wanted + 1))
        used = min(wanted, frames)
        path = self.root / entry.trimmed_audio_path
        try:
            pcm, _ = read_pcm16(path, start * self.hop, (start + used) * self.hop)
        except AudioError as error:
            raise DatasetError(f"{error}; run `tacotune prepare` again") from error
        if len(pcm) != used * self.hop:
            raise DatasetError(
                f"{path} ended after {start * self.hop + len(pcm)} samples, the manifest "
                f"promises {frames * self.hop}; run `tacotune prepare` again"
            )
        mel = np.load(self.mel_path(entry), mmap_mode="r")[:, start : start + used]
        audio = np.zeros(wanted * self.hop, dtype=np.float32)
        audio[: len(pcm)] = pcm16_to_float(pcm)
        padded = np.full((self.n_mels, wanted), SILENCE_LOG_MEL, dtype=np.float32)
        padded[:, :used] = mel
        return VocoderItem(torch.from_numpy(audio), torch.from_numpy(padded))

    def _check_files(self) -> None:
        """Every audio file has n_frames * hop samples, every mel (n_mels, n_frames)."""
        problems: list[str] = []
        fixes: set[str] = set()
        for entry in self.entries:
            for problem, fix in self._problems(entry):
                problems.append(problem)
                fixes.add(fix)
        if problems:
            listed = "\n  - ".join(problems[:MAX_LISTED])
            more = len(problems) - MAX_LISTED
            listed += f"\n  - ... and {more} more" if more > 0 else ""
            raise DatasetError(
                f"{len(problems)} vocoder inputs do not match the prepared audio:\n  - "
                f"{listed}\n{'; '.join(sorted(fixes))}"
            )

    def _problems(self, entry: ManifestEntry) -> list[tuple[str, str]]:
        """(problem, fix) for every file of `entry` that breaks the length contract."""
        prepare_again = f"run `tacotune prepare` again for {self.root}"
        mel_fix = prepare_again
        if self.mel_dir is not None:
            mel_fix = f"regenerate the mels in {self.mel_dir} from this prepared directory"
        expected = (self.n_mels, entry.n_frames)
        mel_path = self.mel_path(entry)
        problems = []
        if not mel_path.is_file():
            problems.append((f"{mel_path} is missing", mel_fix))
        else:
            shape = np.load(mel_path, mmap_mode="r").shape
            if shape != expected:
                problems.append((f"{mel_path} has shape {shape}, expected {expected}", mel_fix))
        audio_path = self.root / entry.trimmed_audio_path
        try:
            samples = sf.info(str(audio_path)).frames
        except (sf.LibsndfileError, OSError) as error:
            return [*problems, (f"{audio_path} cannot be read ({error})", prepare_again)]
        if samples != entry.n_frames * self.hop:
            problem = (
                f"{audio_path} has {samples} samples, expected {entry.n_frames} frames x "
                f"{self.hop} = {entry.n_frames * self.hop}"
            )
            problems.append((problem, prepare_again))
        return problems
