"""The autoregressive Tacotron2 decoder: prenet -> attention LSTM -> attention -> decoder LSTM.

One decoder step predicts r mel frames (the reduction factor). The projection is
sized for the largest r in use and sliced, so r can change during training
(gradual training) without new parameters. The prenet reads only the LAST frame
of the previous step, which is why its size does not depend on r either.

Teacher-forced `forward` projects all steps at once after the recurrence (the
projection feeds nothing back), `infer` projects step by step. Its dropout masks are
drawn for all steps at once too, so that one step (`advance`) is a pure function of
tensors: the training loop may replace it by a compiled one (`compiled_step`,
train/compiled.py); the eager `advance` stays the reference.

The two LSTMs keep nn.LSTMCell's parameters but are computed from them with
F.linear (one GEMM per LSTM and step; the prenet's share of the attention LSTM
for all steps at once), because CPU autocast runs nn.LSTMCell in fp32 while
F.linear runs in bf16 - 3.4x faster on CPUs with native bf16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacotune.model.attention import AttentionDims, build_attention
from tacotune.model.layers import LinearNorm, Prenet
from tacotune.model.recurrent import RecurrentLinear


class DecoderOutput(NamedTuple):
    """What one decoder produced for a batch."""

    mel: Tensor  # (B, n_mels, S * r)
    gate: Tensor | None  # (B, S) stop logits, one per step; None for a decoder without gate
    alignments: Tensor  # (B, S, N)
    hidden: Tensor  # (B, S, decoder_rnn_dim) decoder-LSTM outputs (for the CTC head)


class InferenceOutput(NamedTuple):
    """Free-running decoding of a batch; every item is bounded by its own step limit."""

    mel: Tensor  # (B, n_mels, S * r); frames past an item's `lengths` are meaningless
    gate: Tensor  # (B, S) stop logits
    alignments: Tensor  # (B, S, N)
    lengths: Tensor  # (B,) frames up to and including the stop step
    stopped_by_gate: Tensor  # (B,) the stop token fired
    stopped_at_end: Tensor  # (B,) the attention held the final symbol long enough
    hit_max_steps: Tensor  # (B,) neither: the step limit ended decoding


class StepOutput(NamedTuple):
    """One free-running decoder step."""

    frames: Tensor  # (B, r, n_mels)
    gate: Tensor  # (B,) stop logits
    attention: Tensor  # (B, N)


class Stopping:
    """When each item of a free-running batch is done, and why.

    An item stops when its stop token fires; or when its attention argmax has held
    the final symbol (EOS) for `end_hold_steps` steps (0 disables this; a gate that
    has not learned to fire would otherwise let the decoder babble on); or at
    `max_steps`. The counters are per item.
    """

    COUNTERS = ("done", "by_gate", "at_end", "steps", "held")  # every tensor `advance` changes

    def __init__(
        self, memory_mask: Tensor, max_steps: Tensor, gate_threshold: float, end_hold_steps: int
    ) -> None:
        self.last_symbol = (~memory_mask).sum(dim=1) - 1  # (B,) index of EOS
        self.max_steps = max_steps  # (B,)
        self.gate_threshold = gate_threshold
        self.end_hold_steps = end_hold_steps
        self.done = torch.zeros_like(max_steps, dtype=torch.bool)
        self.by_gate = torch.zeros_like(self.done)
        self.at_end = torch.zeros_like(self.done)
        self.steps = torch.zeros_like(max_steps)
        self.held = torch.zeros_like(max_steps)

    def update(self, gate: Tensor, attention: Tensor) -> bool:
        """Account for one decoded step (gate (B,), attention (B, N)); True when all are done."""
        self.advance(gate, attention)
        return bool(self.done.all())

    def advance(self, gate: Tensor, attention: Tensor) -> None:
        """`update` without reading the result back (traceable: the ONNX decoder step runs it)."""
        running = ~self.done
        self.steps = self.steps + running.long()
        on_last = attention.argmax(dim=1) >= self.last_symbol
        self.held = torch.where(on_last, self.held + 1, torch.zeros_like(self.held))
        gate_stop = (torch.sigmoid(gate.float()) > self.gate_threshold) & running
        end_stop = (self.held >= self.end_hold_steps) & running & ~gate_stop
        if self.end_hold_steps <= 0:
            end_stop = torch.zeros_like(end_stop)
        self.by_gate = self.by_gate | gate_stop  # not in place: ONNX export has no `|=`
        self.at_end = self.at_end | end_stop
        self.done = self.done | gate_stop | end_stop | (self.steps >= self.max_steps)


RECURRENT_STATE = ("att_h", "att_c", "dec_h", "dec_c", "context")  # the LSTMs' step state


class StepWeights(NamedTuple):
    """Per-forward arrangement of the decoder's recurrent weights (see `Decoder._step`)."""

    attention_input: Tensor  # (4 * H_att, prenet_dim): applied to all prenet outputs at once
    attention_bias: Tensor  # (4 * H_att,) both attention-LSTM biases
    attention_recurrent: RecurrentLinear  # (4 * H_att, memory_dim + H_att) on [context, att_h]
    decoder: RecurrentLinear  # (4 * H_dec, H_att + memory_dim + H_dec) on [att_h, context, dec_h]
    decoder_bias: Tensor  # (4 * H_dec,)
    attention: Tensor | None  # the attention's own derived weight (`Attention.step_weights`)


def lstm_pointwise(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """nn.LSTMCell after its matmuls: gates (B, 4H) in PyTorch's i, f, g, o order -> (h, c).

    Computed in fp32 whatever the autocast dtype of the gates; the cell state stays fp32.
    """
    i, f, g, o = gates.float().chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def _autocast_ready(weight: Tensor) -> Tensor:
    """Cast a derived (non-leaf) weight to the autocast dtype once per forward; autocast
    itself would cast it again at every decoder step, since it only caches leaf tensors."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return weight.to(torch.get_autocast_dtype(device))
    return weight


@dataclass(frozen=True)
class DecoderDims:
    """Sizes of one decoder."""

    n_mels: int
    memory_dim: int
    prenet_dim: int
    prenet_dropout: float
    attention_rnn_dim: int
    attention: str  # the mechanism's name in model.attention.ATTENTIONS
    attention_dim: int
    location_filters: int
    location_kernel_size: int
    attention_dropout: float
    decoder_rnn_dim: int
    decoder_dropout: float
    max_reduction_factor: int
    with_gate: bool = True


class Decoder(nn.Module):
    """Tacotron2 decoder with any attention mechanism of model/attention/."""

    def __init__(self, dims: DecoderDims) -> None:
        super().__init__()
        d = dims
        self.dims = d
        self.prenet = Prenet(d.n_mels, d.prenet_dim, d.prenet_dropout)
        self.attention_rnn = nn.LSTMCell(d.prenet_dim + d.memory_dim, d.attention_rnn_dim)
        self.attention = build_attention(
            d.attention,
            AttentionDims(
                d.attention_rnn_dim,
                d.memory_dim,
                d.attention_dim,
                d.location_filters,
                d.location_kernel_size,
            ),
        )
        # the names of the step state: the LSTMs' and then the attention's own
        self.state_names = RECURRENT_STATE + self.attention.STATE
        self.decoder_rnn = nn.LSTMCell(d.attention_rnn_dim + d.memory_dim, d.decoder_rnn_dim)
        self.projection = LinearNorm(
            d.decoder_rnn_dim + d.memory_dim, d.n_mels * d.max_reduction_factor
        )
        self.gate_layer = (
            LinearNorm(d.decoder_rnn_dim + d.memory_dim, 1, gain="sigmoid") if d.with_gate else None
        )
        # the training forward's step function when set (a compiled `advance`); eager if None
        self.compiled_step: Callable[..., tuple[tuple[Tensor, ...], Tensor]] | None = None
        # compute the recurrent weight gradients once per pass (recurrent.py); a compiled
        # step cannot hold the Python state this needs, so compiling switches it off
        self.deferred_grads = True
        # the training forward pads the attention memory to a multiple of this many
        # characters (masked, so nothing changes but the shape a compiled step sees)
        self.memory_bucket = 1

    def forward(self, memory: Tensor, memory_mask: Tensor, mel: Tensor, r: int) -> DecoderOutput:
        """Teacher-forced decoding.

        Args:
            memory: (B, N, memory_dim) encoder outputs.
            memory_mask: (B, N) True at padded characters.
            mel: (B, n_mels, T) targets, T divisible by r.
            r: frames per step.
        """
        batch, n_mels, frames = mel.shape
        if frames % r:
            raise ValueError(
                f"mel length {frames} is not a multiple of r={r}; the collate must "
                "pad batches to a multiple of every reduction factor"
            )
        # the input of step s is the last frame of step s-1; step 0 reads a zero "go" frame
        previous = mel[:, :, r - 1 :: r].transpose(1, 2)  # (B, S, n_mels)
        inputs = torch.cat([previous.new_zeros(batch, 1, n_mels), previous[:, :-1]], dim=1)
        weights = self.step_weights()
        # the prenet's share of the attention-LSTM gates, for all steps in one GEMM
        prenet_gates = F.linear(
            self.prenet(inputs), weights.attention_input, weights.attention_bias
        )  # (B, S, 4 * attention_rnn_dim)
        characters = memory.shape[1]
        memory, memory_mask = self._bucketed(memory, memory_mask)
        state = self.initial_state(memory, weights)
        processed = self.attention.process_memory(memory)
        step_function = self.compiled_step if self.training and self.compiled_step else None
        hiddens, contexts, alignments = [], [], []
        # unbind once: indexing [:, step] would make every step's backward allocate and
        # zero-fill a gradient the size of all steps (measured: a third of the decoder time);
        # step-major, so that a step's slice has the same strides whatever the step count
        # (a compiled step would otherwise be recompiled for every utterance length)
        by_step = prenet_gates.transpose(0, 1).contiguous()  # (S, B, 4 * attention_rnn_dim)
        for step_gates, keep in zip(
            torch.unbind(by_step), self._keep_masks(batch, frames // r), strict=True
        ):
            hidden, context, attention = self._step(
                step_gates, state, memory, processed, memory_mask, weights, keep, step_function
            )
            hiddens.append(hidden)
            contexts.append(context)
            alignments.append(attention)
        hidden = torch.stack(hiddens, dim=1)  # (B, S, decoder_rnn_dim)
        features = torch.cat([hidden, torch.stack(contexts, dim=1)], dim=-1)
        return DecoderOutput(
            mel=self._frames(self.projection(features), r),
            gate=None if self.gate_layer is None else self.gate_layer(features).squeeze(-1),
            alignments=torch.stack(alignments, dim=1)[:, :, :characters],
            hidden=hidden,
        )

    def _bucketed(self, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, M), (B, N) -> (B, N', M), (B, N') with N' the next multiple of
        `memory_bucket`: zero memory at masked characters, which get exactly zero attention
        (and the location convolution zero-pads anyway)."""
        extra = -memory.shape[1] % self.memory_bucket
        if not extra:
            return memory, mask
        return F.pad(memory, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=True)

    @torch.no_grad()
    def infer(
        self,
        memory: Tensor,
        memory_mask: Tensor,
        r: int,
        stopping: Stopping,
        generator: torch.Generator | None = None,
        check_every: int = 1,
    ) -> InferenceOutput:
        """Free-running decoding until `stopping` says every item is done.

        Whether all are done is read on the host every `check_every` steps (each read
        waits for the device); the steps decoded after the last item stopped are dropped.
        """
        frame = memory.new_zeros(memory.shape[0], self.dims.n_mels)
        weights = self.step_weights()
        state = self.initial_state(memory, weights)
        processed = self.attention.process_memory(memory)
        mels, gates, alignments = [], [], []
        for index in range(int(stopping.max_steps.max())):
            step = self.infer_step(
                frame, state, memory, processed, memory_mask, weights, r, generator
            )
            mels.append(step.frames)
            gates.append(step.gate)
            alignments.append(step.attention)
            frame = step.frames[:, -1]
            stopping.advance(step.gate, step.attention)
            if (index + 1) % check_every == 0 and bool(stopping.done.all()):
                break
        used = int(stopping.steps.max()) if check_every > 1 else len(mels)
        return InferenceOutput(
            mel=torch.cat(mels[:used], dim=1).transpose(1, 2),  # (B, n_mels, S * r)
            gate=torch.stack(gates[:used], dim=1),
            alignments=torch.stack(alignments[:used], dim=1),
            lengths=stopping.steps * r,
            stopped_by_gate=stopping.by_gate,
            stopped_at_end=stopping.at_end,
            hit_max_steps=~(stopping.by_gate | stopping.at_end),
        )

    def infer_step(
        self,
        frame: Tensor,
        state: dict[str, Tensor],
        memory: Tensor,
        processed: Tensor,
        mask: Tensor,
        weights: StepWeights,
        r: int,
        generator: torch.Generator | None = None,
        prenet_masks: Sequence[Tensor] | None = None,
    ) -> StepOutput:
        """One free-running step from the previous frame (B, n_mels); advances `state`.

        `prenet_masks` replaces the prenet's random dropout masks (see `Prenet.forward`).
        """
        if self.gate_layer is None:
            raise ValueError("a decoder without a gate layer cannot decode free-running")
        prenet_gates = F.linear(
            self.prenet(frame, generator, prenet_masks),
            weights.attention_input,
            weights.attention_bias,
        )
        keep = next(iter(self._keep_masks(frame.shape[0], 1)))
        hidden, context, attention = self._step(
            prenet_gates, state, memory, processed, mask, weights, keep
        )
        features = torch.cat([hidden, context], dim=-1)
        n_mels = self.dims.n_mels
        frames = self.projection(features)[:, : n_mels * r].reshape(-1, r, n_mels)
        return StepOutput(frames, self.gate_layer(features).squeeze(-1), attention)

    def initial_state(self, memory: Tensor, weights: StepWeights) -> dict[str, Tensor]:
        """Zero state (named by `state_names`); the hidden states pass through the
        deferred-gradient anchors."""
        batch, n, memory_dim = memory.shape
        zeros = memory.new_zeros
        return {
            "att_h": weights.attention_recurrent.anchor(zeros(batch, self.dims.attention_rnn_dim)),
            "att_c": zeros(batch, self.dims.attention_rnn_dim),
            "dec_h": weights.decoder.anchor(zeros(batch, self.dims.decoder_rnn_dim)),
            "dec_c": zeros(batch, self.dims.decoder_rnn_dim),
            "context": zeros(batch, memory_dim),
            **{name: zeros(batch, n) for name in self.attention.STATE},  # (B, N) each
        }

    def step_weights(self) -> StepWeights:
        """The recurrent weights arranged so that each step does one GEMM per LSTM."""
        a, d, p = self.attention_rnn, self.decoder_rnn, self.dims.prenet_dim
        deferred = self.deferred_grads
        return StepWeights(
            attention_input=_autocast_ready(a.weight_ih[:, :p]),
            attention_bias=a.bias_ih + a.bias_hh,
            attention_recurrent=RecurrentLinear(
                _autocast_ready(torch.cat([a.weight_ih[:, p:], a.weight_hh], dim=1)), deferred
            ),
            decoder=RecurrentLinear(
                _autocast_ready(torch.cat([d.weight_ih, d.weight_hh], dim=1)), deferred
            ),
            decoder_bias=d.bias_ih + d.bias_hh,
            attention=self.attention.step_weights(),
        )

    def _keep_masks(self, batch: int, steps: int) -> Iterator[tuple[Tensor, Tensor] | None]:
        """Per step: the dropout keep-masks (B, H) of the attention and decoder LSTM states,
        drawn for all steps at once (one RNG call instead of two per step); None (no
        dropout) outside training."""
        if not self.training or self.dims.attention_dropout == self.dims.decoder_dropout == 0:
            return iter([None] * steps)
        d = self.dims
        device = self.attention_rnn.weight_hh.device
        attention = torch.rand(steps, batch, d.attention_rnn_dim, device=device)
        decoder = torch.rand(steps, batch, d.decoder_rnn_dim, device=device)
        return zip(
            torch.unbind(attention >= d.attention_dropout),
            torch.unbind(decoder >= d.decoder_dropout),
            strict=True,
        )

    def _step(
        self,
        prenet_gates: Tensor,
        state: dict[str, Tensor],
        memory: Tensor,
        processed: Tensor,
        mask: Tensor,
        w: StepWeights,
        keep: tuple[Tensor, Tensor] | None,
        step_function: Callable[..., tuple[tuple[Tensor, ...], Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Advance `state` by one step (with `step_function`, default `advance`); returns the
        decoder output, context and attention weights."""
        names = self.state_names
        new, attention = (step_function or self.advance)(
            prenet_gates, tuple(state[name] for name in names), memory, processed, mask, w, keep
        )
        state.update(zip(names, new, strict=True))
        return state["dec_h"], state["context"], attention

    def advance(
        self,
        prenet_gates: Tensor,
        state: tuple[Tensor, ...],
        memory: Tensor,
        processed: Tensor,
        mask: Tensor,
        w: StepWeights,
        keep: tuple[Tensor, Tensor] | None,
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """One decoder step as a pure function: the state (in `state_names` order) after
        it, and the step's (B, N) attention weights.

        `prenet_gates` (B, 4 * attention_rnn_dim) is the prenet's share of the
        attention-LSTM gates, bias included; `keep` the (B, H) dropout keep-masks of the
        two LSTM states (None: no dropout).
        """
        att_h, att_c, dec_h, dec_c, context = state[: len(RECURRENT_STATE)]
        attention_state = state[len(RECURRENT_STATE) :]
        d = self.dims
        recurrent = w.attention_recurrent(torch.cat([context, att_h], dim=-1))
        att_h, att_c = lstm_pointwise(prenet_gates + recurrent, att_c)
        if keep is not None:
            att_h = att_h * keep[0] / (1 - d.attention_dropout)
        attended = self.attention(att_h, memory, processed, mask, attention_state, w.attention)
        context = attended.context
        decoder_in = torch.cat([att_h, context, dec_h], dim=-1)
        dec_h, dec_c = lstm_pointwise(w.decoder(decoder_in) + w.decoder_bias, dec_c)
        if keep is not None:
            dec_h = dec_h * keep[1] / (1 - d.decoder_dropout)
        return (att_h, att_c, dec_h, dec_c, context, *attended.state), attended.weights

    @torch.no_grad()
    def start_at(self, mean_log_mel: Tensor) -> None:
        """Set the projection's bias so that every frame starts at `mean_log_mel` (n_mels,)
        instead of 0: a model from random weights then need not learn that offset first."""
        r_max = self.projection.out_features // self.dims.n_mels
        self.projection.bias.copy_(mean_log_mel.to(self.projection.bias).repeat(r_max))

    def _frames(self, projected: Tensor, r: int) -> Tensor:
        """(B, S, n_mels * r_max) -> (B, n_mels, S * r)"""
        batch, steps, _ = projected.shape
        n_mels = self.dims.n_mels
        return projected[..., : n_mels * r].reshape(batch, steps * r, n_mels).transpose(1, 2)
