"""Tacotron2 losses: fp32, masked to the real lengths, every term named.

    total = mel + mel_postnet + gate + w_ga(step) * guided_attn
            [+ ddc_mel + ddc_weight * ddc_attn] [+ ctc_weight * ctc]

Padded frames, steps and characters never contribute: a test perturbs them and
checks that the loss does not move.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from tacotune.config.schema import LossConfig
from tacotune.data.dataset import Batch
from tacotune.model.tacotron2 import Tacotron2Output, decoder_steps


@dataclass(frozen=True)
class LossTerms:
    """The total and every term that went into it (None: the term is switched off)."""

    total: Tensor
    mel: Tensor
    mel_postnet: Tensor
    gate: Tensor
    guided_attn: Tensor | None = None  # unweighted; its weight is `guided_attn_weight`
    guided_attn_weight: float = 0.0
    ddc_mel: Tensor | None = None
    ddc_attn: Tensor | None = None
    ctc: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """Every present term, by name (still on the device)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if isinstance(value, Tensor)}

    def scalars(self) -> dict[str, float]:
        """Every present term as a float (and the guided-attention weight), for logging."""
        out = {name: float(value.detach()) for name, value in self.tensors().items()}
        if self.guided_attn is not None:
            out["guided_attn_weight"] = self.guided_attn_weight
        return out


def guided_attention_weight(config: LossConfig, step: int) -> float:
    """Weight that halves every `guided_attn_half_life` steps, never below the floor."""
    decayed = config.guided_attn_weight * 0.5 ** (step / max(config.guided_attn_half_life, 1))
    return max(config.guided_attn_floor, decayed)


def tacotron2_loss(out: Tacotron2Output, batch: Batch, config: LossConfig, step: int) -> LossTerms:
    """All terms for one batch.

    Args:
        out: the model's teacher-forced output for `batch`.
        batch: the targets, by name: mel (B, n_mels, T) and mel_lengths (B,) real frames,
            text (B, N) ids and text_lengths (B,) real characters (EOS included).
        config: weights and switches.
        step: optimizer step, for the guided-attention schedule.
    """
    mel, mel_lengths, text, text_lengths = (
        batch.mel,
        batch.mel_lengths,
        batch.text,
        batch.text_lengths,
    )
    r = out.reduction_factor
    frame_mask = _length_mask(mel_lengths, mel.shape[2])  # (B, T)
    steps = decoder_steps(mel_lengths, r)  # (B,)
    step_mask = _length_mask(steps, out.gate.shape[1])  # (B, S)
    target = mel.float()
    mel_term = _mel_distance(out.mel.float(), target, frame_mask, config.mel_loss)
    post_term = _mel_distance(out.mel_postnet.float(), target, frame_mask, config.mel_loss)
    gate_term = _gate_loss(out.gate.float(), steps, step_mask, config.gate_pos_weight)
    total = mel_term + post_term + gate_term
    terms: dict[str, Tensor | float | None] = {}
    alignments = out.alignments.float()
    if config.guided_attn:
        weight = guided_attention_weight(config, step)
        ga = guided_attention(alignments, steps, text_lengths, config.guided_attn_sigma)
        total = total + weight * ga
        terms.update(guided_attn=ga, guided_attn_weight=weight)
    if out.coarse is not None:
        ddc_mel = _mel_distance(out.coarse.mel.float(), target, frame_mask, config.mel_loss)
        ddc_attn = alignment_consistency(
            alignments, out.coarse.alignments.float(), step_mask, text_lengths
        )
        total = total + ddc_mel + config.ddc_weight * ddc_attn
        terms.update(ddc_mel=ddc_mel, ddc_attn=ddc_attn)
    if out.ctc_log_probs is not None:
        ctc = ctc_alignment_loss(out.ctc_log_probs, steps, text, text_lengths)
        total = total + config.ctc_weight * ctc
        terms["ctc"] = ctc
    return LossTerms(total=total, mel=mel_term, mel_postnet=post_term, gate=gate_term, **terms)  # type: ignore[arg-type]


def guided_attention(
    alignments: Tensor, steps: Tensor, text_lengths: Tensor, sigma: float
) -> Tensor:
    """Mean over valid decoder steps of the attention mass far from the diagonal.

    W[s, n] = 1 - exp(-(n / N_b - s / S_b)^2 / (2 sigma^2)) on each sample's own
    (S_b, N_b) grid; the per-step penalty sum_n A[s, n] W[s, n] lies in [0, 1].
    """
    _, n_steps, n_chars = alignments.shape
    s = torch.arange(n_steps, device=alignments.device, dtype=torch.float32)[None, :, None]
    n = torch.arange(n_chars, device=alignments.device, dtype=torch.float32)[None, None, :]
    grid = n / text_lengths.float()[:, None, None] - s / steps.float()[:, None, None]
    penalty = 1.0 - torch.exp(-grid.square() / (2 * sigma**2))  # (B, S, N)
    mask = _length_mask(steps, n_steps)[:, :, None] & _length_mask(text_lengths, n_chars)[:, None]
    per_step = (alignments * penalty * mask).sum(dim=2)  # (B, S)
    return per_step.sum() / steps.sum().clamp(min=1)


def alignment_consistency(
    fine: Tensor, coarse: Tensor, step_mask: Tensor, text_lengths: Tensor
) -> Tensor:
    """DDC: L1 between the fine attention and the coarse one stretched to the fine steps.

    fine (B, S, N), coarse (B, S_c, N) -> mean over valid fine steps of sum_n |diff|.
    """
    stretched = F.interpolate(coarse.transpose(1, 2), size=fine.shape[1], mode="nearest")
    char_mask = _length_mask(text_lengths, fine.shape[2])[:, None, :]
    diff = (fine - stretched.transpose(1, 2)).abs() * char_mask * step_mask[:, :, None]
    return diff.sum() / step_mask.sum().clamp(min=1)


def ctc_alignment_loss(
    log_probs: Tensor, steps: Tensor, text: Tensor, text_lengths: Tensor
) -> Tensor:
    """CTC between decoder states and the text (without the end-of-sequence symbol).

    log_probs: (B, S, n_symbols + 1), blank = last class. An utterance with fewer
    decoder steps than characters cannot be aligned; training checks the dataset for
    them before it starts, so here it is an error rather than a silently zeroed loss.
    """
    targets = text_lengths - 1  # drop EOS
    if bool((steps < targets).any()):
        raise ValueError(
            "CTC needs at least as many decoder steps as characters; lower the "
            "reduction factor or switch model.ctc off"
        )
    blank = log_probs.shape[-1] - 1
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        text,
        steps,
        targets,
        blank=blank,
        reduction="mean",
        zero_infinity=False,
    )


def _mel_distance(pred: Tensor, target: Tensor, frame_mask: Tensor, kind: str) -> Tensor:
    diff = pred - target
    per_value = diff.abs() if kind == "l1" else diff.square()
    mask = frame_mask[:, None, :]
    return (per_value * mask).sum() / (mask.sum() * pred.shape[1]).clamp(min=1)


def _gate_loss(logits: Tensor, steps: Tensor, step_mask: Tensor, pos_weight: float) -> Tensor:
    """BCE over valid steps; the target is 1 at each sample's last step only."""
    index = torch.arange(logits.shape[1], device=logits.device)[None, :]
    target = (index == (steps - 1)[:, None]).float()
    loss = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=torch.tensor(pos_weight, device=logits.device), reduction="none"
    )
    return (loss * step_mask).sum() / step_mask.sum().clamp(min=1)


def _length_mask(lengths: Tensor, size: int) -> Tensor:
    """(B,) lengths -> (B, size) True where valid."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]
