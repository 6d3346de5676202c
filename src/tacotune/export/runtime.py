"""Run an exported voice with onnxruntime and numpy: no torch needed.

The loop mirrors `Decoder.infer`: encode once, call decoder_step.onnx until its stopping
counters say every item is done (the stopping rules run inside the graph: they are
`decoder.Stopping`'s own code), then the postnet over the whole batch, as torch does.
The prenet's dropout stays on at inference; its keep-masks are drawn here, by a
`MaskSampler` made from the seed at the start of every batch.

Needs onnxruntime, numpy, tacotune's text frontend and config (both torch-free) and,
for a voice without vocoder.onnx, librosa (Griffin-Lim).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tacotune.config.load import coerce, load_config
from tacotune.config.schema import AudioConfig, Config, TextConfig
from tacotune.errors import ConfigError, short_repr
from tacotune.export.bundle import (
    BOOL,
    CARRIED_PREFIX,
    CONFIG,
    DECODER_STEP,
    ENCODER,
    FLOAT,
    FRONTEND,
    INT64,
    MANIFEST,
    POSTNET,
    VOCODER,
    ExportError,
    check_graph,
    read_manifest,
)
from tacotune.extras import require
from tacotune.text.frontend import TextFrontend

# (shape (layers, B, prenet_dim), keep probability) -> 0/1 float32 keep-masks of that shape
MaskSampler = Callable[[tuple[int, ...], float], np.ndarray]
_DTYPES = {FLOAT: np.float32, BOOL: np.bool_, INT64: np.int64}  # of the state the step carries


def numpy_masks(seed: int) -> MaskSampler:
    """Bernoulli keep-masks from numpy's default generator seeded with `seed`."""
    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...], keep: float) -> np.ndarray:
        return (rng.random(shape, dtype=np.float32) < keep).astype(np.float32)

    return draw


class Decoded(NamedTuple):
    """A decoded batch: the fields of `tacotune.model.SynthesisOutput`, as numpy arrays."""

    mel_postnet: np.ndarray  # (B, n_mels, T); frames past `lengths` are meaningless
    alignments: np.ndarray  # (B, S, N)
    gate: np.ndarray  # (B, S) stop logits
    lengths: np.ndarray  # (B,) frames
    stopped_by_gate: np.ndarray  # (B,)
    stopped_at_end: np.ndarray  # (B,)
    hit_max_steps: np.ndarray  # (B,)
    reduction_factor: int


class OnnxVoice:
    """An export directory, checked against its manifest (bundle.read_manifest) and loaded
    into onnxruntime, each graph checked against what this loop feeds and reads
    (bundle.check_graph)."""

    def __init__(
        self,
        directory: str | Path,
        threads: int | None = None,
        masks: Callable[[int], MaskSampler] = numpy_masks,
    ) -> None:
        """`threads`: onnxruntime's intra-op threads (None: its default, every core);
        `masks`: makes the prenet-mask sampler of a batch from its seed."""
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.config: Config = load_config(self.directory / CONFIG)
        _check_agrees(self.directory, self.manifest, self.config.audio)
        self.frontend = _frontend(self.directory / FRONTEND)
        self.masks = masks
        model = self.manifest["model"]
        self.reduction_factor = int(model["reduction_factor"])
        self.prenet_keep = 1 - float(model["prenet_dropout"])
        self.sample_rate = self.config.audio.sample_rate
        files = self.manifest["files"]
        self.encoder = _session(self.directory / ENCODER, threads, model)
        self.step = _session(self.directory / DECODER_STEP, threads, model)
        self.postnet = _session(self.directory / POSTNET, threads, model)
        self.vocoder = (
            _session(self.directory / VOCODER, threads, model) if VOCODER in files else None
        )
        self._step_inputs = {i.name: i for i in self.step.get_inputs()}
        self._step_outputs = [o.name for o in self.step.get_outputs()]
        self._carried = [
            name for name in self._step_inputs if CARRIED_PREFIX + name in self._step_outputs
        ]

    def decode(self, text: np.ndarray, lengths: np.ndarray, seed: int = 0) -> Decoded:
        """(B, N) int64 ids padded with PAD_ID, (B,) lengths -> what `Tacotron2.infer` returns."""
        memory, processed, mask = self.encoder.run(None, {"text": text, "text_lengths": lengths})
        batch, n = text.shape
        feed: dict[str, np.ndarray] = {
            "frame": np.zeros((batch, self.config.audio.n_mels), np.float32),
            "memory": memory,
            "processed_memory": processed,
            "memory_mask": mask,
            "text_lengths": lengths,
            **{name: self._zeros(name, batch, n) for name in self._carried},
        }
        masks = self._step_inputs.get("prenet_masks")  # absent when the prenet has no dropout
        draw = self.masks(seed) if masks is not None else None
        frames, gates, alignments = [], [], []
        for _ in range(self.config.model.max_decoder_steps):  # the graph stops every item by then
            if draw is not None and masks is not None:
                feed["prenet_masks"] = draw(
                    (masks.shape[0], batch, masks.shape[2]), self.prenet_keep
                )
            out = dict(
                zip(self._step_outputs, self.step.run(self._step_outputs, feed), strict=True)
            )
            frames.append(out["frames"])  # (B, r, n_mels)
            gates.append(out["gate"])
            alignments.append(out["attention"])
            feed["frame"] = out["frames"][:, -1]
            feed.update({name: out[CARRIED_PREFIX + name] for name in self._carried})
            if feed["done"].all():
                break
        mel = np.ascontiguousarray(np.concatenate(frames, axis=1).transpose(0, 2, 1))
        (mel_postnet,) = self.postnet.run(None, {"mel": mel})
        by_gate, at_end = feed["by_gate"], feed["at_end"]
        return Decoded(
            mel_postnet=mel_postnet,
            alignments=np.stack(alignments, axis=1),
            gate=np.stack(gates, axis=1),
            lengths=feed["steps"] * self.reduction_factor,
            stopped_by_gate=by_gate,
            stopped_at_end=at_end,
            hit_max_steps=~(by_gate | at_end),
            reduction_factor=self.reduction_factor,
        )

    def vocode(self, mel: np.ndarray, seed: int = 0) -> np.ndarray:
        """(n_mels, T) log-mel -> (T * hop_length,) float32 samples: vocoder.onnx when the
        export has one, else Griffin-Lim (librosa; `seed` picks its initial phase)."""
        if self.vocoder is not None:
            (audio,) = self.vocoder.run(None, {"mel": mel[None].astype(np.float32)})
            return np.asarray(audio[0], dtype=np.float32)
        return griffin_lim(mel, self.config.audio, self.manifest["vocoder"], seed)

    def synthesize(self, text: str, seed: int = 0) -> np.ndarray:
        """Samples for one short text (one piece, at most a sentence or two; for long text,
        sentence splitting and batches use tacotune.export.OnnxSynthesizer)."""
        ids = np.array([self.frontend.encode(text)], dtype=np.int64)
        out = self.decode(ids, np.array([ids.shape[1]], dtype=np.int64), seed)
        return self.vocode(out.mel_postnet[0, :, : int(out.lengths[0])], seed)

    def _zeros(self, name: str, batch: int, n: int) -> np.ndarray:
        """The initial (zero) value of a carried step input, shaped by its declared dims."""
        spec = self._step_inputs[name]
        sizes = {"batch": batch, "text_length": n}
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        return np.zeros(shape, dtype=_DTYPES[spec.type])


def griffin_lim(
    log_mel: np.ndarray, audio: AudioConfig, params: dict[str, Any], seed: int = 0
) -> np.ndarray:
    """(n_mels, T) log-mel -> (T * hop_length,) samples: tacotune.audio.griffin_lim's method
    (pseudo-inverse of the mel filters, magnitude power, fast Griffin-Lim) with librosa.
    `params`: the manifest's "vocoder" entry (momentum, log_clamp)."""
    import librosa

    c = audio
    frames = log_mel.shape[-1]
    shortest = c.n_fft // c.hop_length + 1  # the STFT's reflect padding needs this many frames
    if frames < shortest:
        silence = np.full((log_mel.shape[0], shortest - frames), math.log(params["log_clamp"]))
        padded = np.concatenate([log_mel, silence.astype(log_mel.dtype)], axis=-1)
        return griffin_lim(padded, c, params, seed)[: frames * c.hop_length]
    basis = librosa.filters.mel(
        sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax
    )
    mel = np.exp(log_mel.astype(np.float32))
    magnitude = np.maximum(np.linalg.pinv(basis) @ mel, params["log_clamp"]) ** c.griffin_lim_power
    # a centered STFT of T * hop samples has T + 1 frames: repeat the last one
    magnitude = np.concatenate([magnitude, magnitude[:, -1:]], axis=-1)
    samples = librosa.griffinlim(
        magnitude,
        n_iter=c.griffin_lim_iters,
        hop_length=c.hop_length,
        win_length=c.win_length,
        n_fft=c.n_fft,
        window="hann",
        center=True,
        pad_mode="reflect",
        length=frames * c.hop_length,
        momentum=params["momentum"],
        random_state=seed,
    )
    return np.asarray(samples, dtype=np.float32)


def _check_agrees(directory: Path, manifest: dict[str, Any], audio: AudioConfig) -> None:
    """The manifest's mel bands and sample rate are config.yaml's (the graphs are checked
    against the manifest's)."""
    found = (manifest["model"]["n_mels"], manifest["sample_rate"])
    if found != (audio.n_mels, audio.sample_rate):
        raise ExportError(
            f"{directory / MANIFEST} says {found[0]} mel bands at {found[1]} Hz, "
            f"{directory / CONFIG} {audio.n_mels} at {audio.sample_rate} Hz: the files are "
            "not of one export; export the voice again with `tacotune export`"
        )


def _frontend(path: Path) -> TextFrontend:
    """The text frontend of frontend.json (TextFrontend.state()); ExportError if damaged."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("symbols"), list):
            raise TypeError(f"found {short_repr(state)}")
        dictionary = state.get("dictionary")
        if not isinstance(dictionary, dict) or not all(
            isinstance(v, str) for v in dictionary.values()
        ):
            raise TypeError(f"dictionary is {short_repr(dictionary)}")
        coerce({key: state.get(key) for key in ("stress", "latin")}, TextConfig, "frontend")
        return TextFrontend.from_state(state)
    except (OSError, ValueError, RecursionError, TypeError, ConfigError) as error:
        raise ExportError(
            f"{path} is not a text frontend's state ({error}); export the voice again with "
            "`tacotune export`"
        ) from error


def _session(path: Path, threads: int | None, model: dict[str, Any]) -> Any:
    """An onnxruntime CPU session (sequential, `threads` intra-op threads) of a graph whose
    inputs and outputs are the ones this runtime uses (bundle.check_graph)."""
    ort = require("onnxruntime", "export", "running an ONNX export")
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: not every unused-initializer note
    load_errors = (
        ort_errors.InvalidProtobuf,
        ort_errors.InvalidGraph,
        ort_errors.InvalidArgument,
        ort_errors.Fail,
        ort_errors.NotImplemented,
    )
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except load_errors as error:
        reason = str(error).partition("\n")[0]
        raise ExportError(
            f"onnxruntime cannot load {path} ({reason}); export the voice again with "
            "`tacotune export`"
        ) from error
    check_graph(path, session.get_inputs(), session.get_outputs(), model)
    return session
