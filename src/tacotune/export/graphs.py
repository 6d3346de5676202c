"""The ONNX graphs of a voice: thin nn.Module wrappers that call the model's own code.

    encoder.onnx       text ids -> memory, processed memory, padding mask (once per batch)
    decoder_step.onnx  one free-running step: prenet (dropout masks given) -> attention
                       -> decoder LSTM -> r frames and stop logit, and `Stopping`'s update
    postnet.onnx       decoder mel -> decoder mel + postnet residual
    vocoder.onnx       log-mel -> waveform, only for a voice with a neural vocoder

The autoregressive loop stays outside (tacotune.export.runtime). Every tensor the step
carries from one call to the next is an input named NAME and an output named `next_NAME`,
so the runtime needs no list of them. Exported with PyTorch's TorchScript-based exporter
(`dynamo=False`): the torch.export-based one cannot trace the encoder's packed BiLSTM
(`pack_padded_sequence` with per-item lengths fails on FakeTensor sizes in torch 2.13).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from tacotune.export.bundle import CARRIED_PREFIX, DECODER_STEP, ENCODER, POSTNET, VOCODER
from tacotune.model.decoder import Stopping
from tacotune.model.tacotron2 import Tacotron2

OPSET = 17
BATCH, TEXT, FRAMES = "batch", "text_length", "frames"  # symbolic dimensions
Dims = dict[str, list[str | None]]  # tensor name -> its dimensions' names (None: fixed size)


class EncoderGraph(nn.Module):
    """(B, N) ids, (B,) lengths -> memory (B, N, M), processed memory (B, N, A), mask (B, N)."""

    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: Tensor, text_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory, mask = self.model.encode(text, text_lengths, None, None)
        return memory, self.model.decoder.attention.process_memory(memory), mask


class DecoderStepGraph(nn.Module):
    """`Decoder.infer_step` plus `Stopping.advance` on explicit state tensors.

    Inputs: the previous frame (B, n_mels), the prenet keep-masks (layers, B, prenet_dim),
    the encoder outputs, the text lengths (for the per-item step limit), then the decoder
    state (`state_names`) and the stopping counters (`Stopping.COUNTERS`). Outputs: frames
    (B, r, n_mels), gate (B,), attention (B, N), then the same state and counters, updated.
    """

    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.model = model
        self.state_names = model.decoder.state_names

    def forward(
        self,
        frame: Tensor,
        prenet_masks: Tensor,
        memory: Tensor,
        processed_memory: Tensor,
        memory_mask: Tensor,
        text_lengths: Tensor,
        *carried: Tensor,
    ) -> tuple[Tensor, ...]:
        decoder = self.model.decoder
        n_state = len(self.state_names)
        state = dict(zip(self.state_names, carried[:n_state], strict=True))
        stopping = self.model.stopping(text_lengths, memory_mask)
        for name, value in zip(Stopping.COUNTERS, carried[n_state:], strict=True):
            setattr(stopping, name, value)
        step = decoder.infer_step(
            frame,
            state,
            memory,
            processed_memory,
            memory_mask,
            decoder.step_weights(),
            self.model.final_reduction_factor,
            prenet_masks=prenet_masks.unbind(0),
        )
        stopping.advance(step.gate, step.attention)
        return (
            step.frames,
            step.gate,
            step.attention,
            *(state[name] for name in self.state_names),
            *(getattr(stopping, name) for name in Stopping.COUNTERS),
        )


class PostnetGraph(nn.Module):
    """(B, n_mels, T) decoder mel -> (B, n_mels, T) mel after the postnet."""

    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> Tensor:
        return self.model.postnet_mel(mel)


class VocoderGraph(nn.Module):
    """(B, n_mels, T) log-mel -> (B, samples): any vocoder module whose output holds the
    samples of each item in order, e.g. HiFi-GAN's (B, 1, T * hop)."""

    def __init__(self, vocoder: nn.Module) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: Tensor) -> Tensor:
        audio: Tensor = self.vocoder(mel)
        return audio.reshape(mel.shape[0], -1)


@torch.no_grad()
def export_graphs(model: Tacotron2, directory: Path, vocoder: nn.Module | None = None) -> list[str]:
    """Write the graphs of `model` (switched to eval mode) into `directory`; returns their
    file names."""
    model.eval()
    text = torch.tensor([[3, 4, 5, 6, 7, 2], [8, 9, 2, 0, 0, 0]])  # two lengths: a real mask
    lengths = torch.tensor([6, 3])
    encoder = EncoderGraph(model)
    _export(
        encoder,
        (text, lengths),
        directory / ENCODER,
        {"text": [BATCH, TEXT], "text_lengths": [BATCH]},
        {"memory": [BATCH, TEXT], "processed_memory": [BATCH, TEXT], "memory_mask": [BATCH, TEXT]},
    )
    memory, processed, mask = encoder(text, lengths)
    _export_step(model, directory / DECODER_STEP, memory, processed, mask, lengths)
    mel = torch.zeros(2, model.n_mels, 10)
    _export(
        PostnetGraph(model),
        (mel,),
        directory / POSTNET,
        {"mel": [BATCH, None, FRAMES]},
        {"mel_postnet": [BATCH, None, FRAMES]},
    )
    files = [ENCODER, DECODER_STEP, POSTNET]
    if vocoder is not None:
        _export(
            VocoderGraph(vocoder.eval()),
            (mel,),
            directory / VOCODER,
            {"mel": [BATCH, None, FRAMES]},
            {"audio": [BATCH, "samples"]},
        )
        files.append(VOCODER)
    return files


def _export_step(
    model: Tacotron2, path: Path, memory: Tensor, processed: Tensor, mask: Tensor, lengths: Tensor
) -> None:
    decoder = model.decoder
    state = decoder.initial_state(memory, decoder.step_weights())
    stopping = model.stopping(lengths, mask)
    counters = {name: getattr(stopping, name) for name in Stopping.COUNTERS}
    carried = {**state, **counters}
    batch = memory.shape[0]
    masks = torch.ones(len(decoder.prenet.layers), batch, decoder.dims.prenet_dim)
    text_shaped = set(decoder.attention.STATE)  # (B, N) each; everything else is (B, ...)
    inputs: Dims = {
        "frame": [BATCH],
        "prenet_masks": [None, BATCH],
        "memory": [BATCH, TEXT],
        "processed_memory": [BATCH, TEXT],
        "memory_mask": [BATCH, TEXT],
        "text_lengths": [BATCH],
        **{name: [BATCH, TEXT] if name in text_shaped else [BATCH] for name in carried},
    }
    outputs: Dims = {
        "frames": [BATCH],
        "gate": [BATCH],
        "attention": [BATCH, TEXT],
        **{CARRIED_PREFIX + name: inputs[name] for name in carried},
    }
    frame = memory.new_zeros(batch, model.n_mels)
    _export(
        DecoderStepGraph(model),
        (frame, masks, memory, processed, mask, lengths, *carried.values()),
        path,
        inputs,
        outputs,
    )


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: Dims,
    outputs: Dims,
) -> None:
    """torch.onnx.export with named dynamic axes."""
    axes = {
        name: {i: dim for i, dim in enumerate(dims) if dim is not None}
        for name, dims in {**inputs, **outputs}.items()
    }
    with warnings.catch_warnings():
        # the legacy exporter is chosen on purpose (module docstring); batched packed LSTMs
        # are verified by tests/test_export.py (parity on batches of different lengths)
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", "Exporting a model to ONNX with a batch_size", UserWarning
        )
        # torch's own internals: a deprecated logging helper, and pad_packed_sequence's
        # check that `total_length` (= N) covers every length, which holds for any input
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning
        )
        # a note that a slice (forward attention's one-character shift) stays unfolded;
        # the graph computes the same (parity: tests/test_export.py)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
