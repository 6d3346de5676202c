"""Tacotron2 (Shen et al. 2018) with optional DDC, global style tokens and a CTC head.

Tensors only: no I/O, logging or config files. Shapes: B batch, N characters,
T mel frames, S = T / r decoder steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tacotune.config.schema import ModelConfig, reduction_factors
from tacotune.model.decoder import Decoder, DecoderDims, DecoderOutput, Stopping
from tacotune.model.gst import ReferenceEncoder, StyleTokens
from tacotune.model.layers import Encoder, Postnet


class Tacotron2Output(NamedTuple):
    """Teacher-forced outputs, shared by training, validation and the losses."""

    mel: Tensor  # (B, n_mels, T) decoder output
    mel_postnet: Tensor  # (B, n_mels, T) decoder output + postnet residual
    gate: Tensor  # (B, S) stop logits, one per decoder step
    alignments: Tensor  # (B, S, N)
    reduction_factor: int  # r of this forward pass
    coarse: DecoderOutput | None  # DDC: the coarse decoder (r = ddc_reduction_factor)
    ctc_log_probs: Tensor | None  # (B, S, n_symbols + 1) log-probabilities, blank last


class SynthesisOutput(NamedTuple):
    """Free-running outputs; every item is bounded and says why it stopped."""

    mel_postnet: Tensor  # (B, n_mels, T); frames past `lengths` are meaningless
    alignments: Tensor  # (B, S, N)
    gate: Tensor  # (B, S) stop logits
    lengths: Tensor  # (B,) frames
    stopped_by_gate: Tensor  # (B,) the stop token fired
    stopped_at_end: Tensor  # (B,) the attention held the final symbol (see decoder.Stopping)
    hit_max_steps: Tensor  # (B,) the step limit ended decoding
    reduction_factor: int


class Tacotron2(nn.Module):
    """Encoder, attention decoder(s) and postnet."""

    def __init__(self, config: ModelConfig, n_symbols: int, n_mels: int) -> None:
        super().__init__()
        c = config
        self.config = c
        self.n_mels = n_mels
        self.encoder = Encoder(
            n_symbols,
            c.embedding_dim,
            c.encoder_dim,
            c.encoder_conv_layers,
            c.encoder_kernel_size,
            c.encoder_dropout,
        )
        memory_dim = c.encoder_dim + (c.gst_dim if c.gst else 0)
        if c.gst:
            self.reference_encoder = ReferenceEncoder(n_mels)
            self.style_tokens = StyleTokens(c.gst_tokens, c.gst_dim, c.gst_heads)
        dims = DecoderDims(
            n_mels=n_mels,
            memory_dim=memory_dim,
            prenet_dim=c.prenet_dim,
            prenet_dropout=c.prenet_dropout,
            attention_rnn_dim=c.attention_rnn_dim,
            attention=c.attention,
            attention_dim=c.attention_dim,
            location_filters=c.attention_location_filters,
            location_kernel_size=c.attention_location_kernel_size,
            attention_dropout=c.attention_dropout,
            decoder_rnn_dim=c.decoder_rnn_dim,
            decoder_dropout=c.decoder_dropout,
            max_reduction_factor=max(reduction_factors(c)),
        )
        self.decoder = Decoder(dims)
        if c.ddc:
            self.coarse_decoder = Decoder(
                DecoderDims(
                    **{
                        **dims.__dict__,
                        "max_reduction_factor": c.ddc_reduction_factor,
                        "with_gate": False,
                    }
                )
            )
        self.postnet = Postnet(
            n_mels, c.postnet_dim, c.postnet_kernel_size, c.postnet_layers, c.postnet_dropout
        )
        if c.ctc:
            self.ctc_head = nn.Linear(c.decoder_rnn_dim, n_symbols + 1)  # + blank

    def forward(
        self, text: Tensor, text_lengths: Tensor, mel: Tensor, mel_lengths: Tensor, r: int
    ) -> Tacotron2Output:
        """Teacher-forced pass.

        Args:
            text: (B, N) symbol ids, padded with 0.
            text_lengths: (B,), on the device or the CPU: the encoder packs its input with
                lengths on the CPU, so CPU lengths spare a GPU a device->host read.
            mel: (B, n_mels, T) targets; T divisible by r (and by the DDC factor).
            mel_lengths: (B,) real frames (for the style reference).
            r: frames per decoder step for this pass.
        """
        memory, mask = self.encode(text, text_lengths, mel, mel_lengths)
        fine = self.decoder(memory, mask, mel, r)
        coarse = (
            self.coarse_decoder(memory, mask, mel, self.config.ddc_reduction_factor)
            if self.config.ddc
            else None
        )
        ctc = (
            torch.log_softmax(self.ctc_head(fine.hidden).float(), dim=-1)
            if self.config.ctc
            else None
        )
        assert fine.gate is not None
        return Tacotron2Output(
            mel=fine.mel,
            mel_postnet=self.postnet_mel(fine.mel),
            gate=fine.gate,
            alignments=fine.alignments,
            reduction_factor=r,
            coarse=coarse,
            ctc_log_probs=ctc,
        )

    @torch.no_grad()
    def infer(
        self,
        text: Tensor,
        text_lengths: Tensor,
        style_mel: Tensor | None = None,
        generator: torch.Generator | None = None,
        check_every: int = 1,
    ) -> SynthesisOutput:
        """Free-running synthesis with the final reduction factor; call after `eval()`.

        Each item may take at most min(max_decoder_steps, max_frames_per_char * N_i / r)
        steps, so decoding always ends, whatever the text; it also ends by its stop token
        or after its attention held the final symbol for `end_hold_frames`. The host
        checks whether all items are done every `check_every` steps (same result).
        """
        r = self.final_reduction_factor
        memory, mask = self.encode(text, text_lengths, style_mel, None)
        stopping = self.stopping(text_lengths, mask)
        out = self.decoder.infer(memory, mask, r, stopping, generator, check_every)
        return SynthesisOutput(
            mel_postnet=self.postnet_mel(out.mel),
            alignments=out.alignments,
            gate=out.gate,
            lengths=out.lengths,
            stopped_by_gate=out.stopped_by_gate,
            stopped_at_end=out.stopped_at_end,
            hit_max_steps=out.hit_max_steps,
            reduction_factor=r,
        )

    def stopping(self, text_lengths: Tensor, mask: Tensor) -> Stopping:
        """The stopping rules of `infer` for a batch: (B,) lengths, (B, N) padding mask."""
        c = self.config
        r = self.final_reduction_factor
        per_char = torch.ceil(text_lengths.float() * c.max_frames_per_char / r).long()
        max_steps = per_char.clamp(1, c.max_decoder_steps)
        hold = math.ceil(c.end_hold_frames / r) if c.end_hold_frames > 0 else 0
        return Stopping(mask, max_steps, c.gate_threshold, hold)

    def start_at(self, mean_log_mel: Tensor) -> None:
        """Every decoder's frames, and the postnet's (its residual starts at 0), start at the
        (n_mels,) mean log-mel (train.mel_mean_init)."""
        self.decoder.start_at(mean_log_mel)
        if self.config.ddc:
            self.coarse_decoder.start_at(mean_log_mel)
        self.postnet.start_as_identity()

    def postnet_mel(self, mel: Tensor) -> Tensor:
        """Decoder mel + the postnet's residual: (B, n_mels, T) -> (B, n_mels, T)"""
        return mel + self.postnet(mel)

    @property
    def final_reduction_factor(self) -> int:
        """r used at inference: the last of the schedule, else the fixed one."""
        schedule = self.config.reduction_schedule
        return schedule[-1][1] if schedule else self.config.reduction_factor

    def encode(
        self,
        text: Tensor,
        text_lengths: Tensor,
        style_mel: Tensor | None,
        style_lengths: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Encoder outputs (+ style embedding) (B, N, memory_dim) and the padding mask (B, N)."""
        memory = self.encoder(text, text_lengths)
        if self.config.gst:
            reference = None
            if style_mel is not None:
                if style_lengths is None:
                    style_lengths = torch.full(
                        (style_mel.shape[0],), style_mel.shape[2], device=style_mel.device
                    )
                reference = self.reference_encoder(style_mel, style_lengths)
            style = self.style_tokens(reference, memory.shape[0])  # (B, gst_dim)
            memory = torch.cat([memory, style.unsqueeze(1).expand(-1, memory.shape[1], -1)], -1)
        positions = torch.arange(text.shape[1], device=text.device)
        lengths = text_lengths.to(text.device, non_blocking=True)
        return memory, positions[None, :] >= lengths[:, None]


def decoder_steps(frames: Tensor, r: int) -> Tensor:
    """Decoder steps that cover `frames` mel frames at r frames per step: ceil(frames / r)."""
    return torch.div(frames + r - 1, r, rounding_mode="floor")


def pad_multiple(config: ModelConfig) -> int:
    """Batches are padded to a multiple of every reduction factor in use (lcm)."""
    factors = reduction_factors(config) | ({config.ddc_reduction_factor} if config.ddc else set())
    return math.lcm(*factors)


def reduction_factor_at(config: ModelConfig, step: int) -> int:
    """The fine decoder's r at a training step (gradual training schedule)."""
    r = config.reduction_factor
    for start, factor in config.reduction_schedule:
        if step >= start:
            r = factor
    return r
