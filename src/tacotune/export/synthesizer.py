"""`OnnxSynthesizer`: `Synthesizer`'s API and results, with onnxruntime doing the model's work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacotune.config.schema import Config
from tacotune.export.runtime import MaskSampler, OnnxVoice
from tacotune.model.tacotron2 import SynthesisOutput
from tacotune.synthesize import Synthesizer
from tacotune.text.frontend import TextFrontend
from tacotune.vocoder.griffin_lim import Vocoder


def torch_masks(seed: int) -> MaskSampler:
    """The prenet keep-masks the torch model draws from `torch.Generator().manual_seed(seed)`
    (`Prenet.forward`: one bernoulli_ per layer and step, in order), so that the same seed
    gives the same speech with either backend."""
    generator = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...], keep: float) -> np.ndarray:
        layers, *mask_shape = shape
        return np.stack(
            [
                torch.empty(mask_shape).bernoulli_(keep, generator=generator).numpy()
                for _ in range(layers)
            ]
        )

    return draw


class OnnxVocoder:
    """vocoder.onnx behind the `Vocoder` protocol."""

    def __init__(self, voice: OnnxVoice) -> None:
        self.voice = voice
        self.sample_rate = voice.sample_rate

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) -> (T * hop_length,)"""
        return self.voice.vocode(mel.float().cpu().numpy())


class OnnxSynthesizer(Synthesizer):
    """An ONNX export directory ready to speak: `speak`, `speak_all` and `decode` as in
    `Synthesizer` (whose splitting, batching and piece reports it reuses); only the model
    call (`infer`) runs in onnxruntime."""

    def __init__(
        self,
        directory: str | Path,
        vocoder: Vocoder | None = None,
        seed: int = 0,
        threads: int | None = None,
        masks: Callable[[int], MaskSampler] = torch_masks,
    ) -> None:
        """`vocoder` None: vocoder.onnx when exported, else Griffin-Lim as `Synthesizer`;
        `threads`: onnxruntime's intra-op threads (None: every core); `masks`: the prenet
        dropout masks (default: the torch model's for the same seed)."""
        self._threads, self._masks = threads, masks
        super().__init__(directory, "cpu", vocoder, seed)

    def _load(self, checkpoint: str | Path | dict[str, Any]) -> tuple[Config, TextFrontend]:
        """The export directory's config and frontend; onnxruntime holds the model."""
        if isinstance(checkpoint, dict):
            raise TypeError("OnnxSynthesizer speaks an export directory, not a payload")
        self.voice = OnnxVoice(checkpoint, self._threads, self._masks)
        return self.voice.config, self.voice.frontend

    def _default_vocoder(self) -> Vocoder:
        """vocoder.onnx when the export has one, else Griffin-Lim."""
        if self.voice.vocoder is not None:
            return OnnxVocoder(self.voice)
        return super()._default_vocoder()

    def infer(self, text: torch.Tensor, lengths: torch.Tensor) -> SynthesisOutput:
        """`Synthesizer.infer` in onnxruntime: the same outputs, as CPU tensors."""
        out = self.voice.decode(text.numpy(), lengths.numpy(), self.seed)
        tensor = torch.from_numpy
        return SynthesisOutput(
            mel_postnet=tensor(out.mel_postnet),
            alignments=tensor(out.alignments),
            gate=tensor(out.gate),
            lengths=tensor(out.lengths),
            stopped_by_gate=tensor(out.stopped_by_gate),
            stopped_at_end=tensor(out.stopped_at_end),
            hit_max_steps=tensor(out.hit_max_steps),
            reduction_factor=out.reduction_factor,
        )
