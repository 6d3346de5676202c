"""README.md of an ONNX export directory, after its model card (tacotune/card.py)."""

from __future__ import annotations

from typing import Any

PARITY_TOLERANCE = 1e-4  # max |mel_onnx - mel_torch|, fp32; tests/test_export.py checks it

_TEMPLATE = """## The ONNX graphs

Exported from {source} by tacotune {tacotune} ({exporter}), {created}.
Russian Tacotron2, {sample_rate} Hz, {n_mels} log-mels, {r} frames per decoder step;
vocoder: {vocoder}.

### Use it from Python

```python
from tacotune.export.synthesizer import OnnxSynthesizer

synthesizer = OnnxSynthesizer("{name}", threads=2)
speech = synthesizer.speak("Привет! Как дела?")  # speech.audio: float32 at speech.sample_rate
```

`OnnxSynthesizer` is a drop-in for `tacotune.synthesize.Synthesizer`: the same `speak`,
`speak_all` and `decode`, the same sentence splitting, batching and `Speech`/`Piece`
results (with why each piece stopped). With the same seed it draws the same prenet-dropout
masks as the torch model, so it gives the same mel (max abs difference < {tolerance:g},
fp32) and stops at the same step for the same reason. It needs tacotune with the
`export` extra: `pip install 'tacotune[export]'` (torch is still imported for the result
types and, without vocoder.onnx, Griffin-Lim).

Without torch, for a short text (one piece, no sentence splitting):

```python
from tacotune.export.runtime import OnnxVoice

voice = OnnxVoice("{name}", threads=2)
samples = voice.synthesize("Привет! Как дела?")  # float32 at voice.sample_rate
```

`OnnxVoice` needs onnxruntime, numpy, librosa (Griffin-Lim, when there is no vocoder.onnx)
and tacotune's text frontend (`tacotune.text` and `tacotune.config`: pure Python with
num2words, pymorphy3 and PyYAML; installing tacotune with `pip install --no-deps` plus
those packages avoids torch). Text normalization and stress marks need that frontend:
the graphs read symbol ids. This voice's stress mode is `{stress}`{stress_note}. Its
prenet dropout masks come from numpy's generator, so its output differs from the torch
model's at the same seed (same distribution).

### Files

- `encoder.onnx`: `text` (B, N) int64 symbol ids and `text_lengths` (B,) -> `memory`,
  `processed_memory` and `memory_mask` (B, N), true at padding.
- `decoder_step.onnx`: one decoder step. Inputs: `frame` (B, n_mels), the previous step's
  last frame (zeros at first); `prenet_masks` (layers, B, prenet_dim), the prenet's 0/1
  dropout keep-masks (dropout stays on at inference; absent if the prenet has none); the
  encoder outputs; `text_lengths`; and the carried state. Outputs: `frames` (B, r, n_mels),
  `gate` (B,) stop logits, `attention` (B, N), and every carried input NAME as `next_NAME`.
- `postnet.onnx`: `mel` (B, n_mels, T) -> `mel_postnet` (B, n_mels, T).{vocoder_row}
- `frontend.json`: the text frontend's state (symbol table, stress mode, dictionary).
- `config.yaml`: the resolved training config.
- `manifest.json`: every file's sha256 (checked on loading) and the runtime's parameters.

The autoregressive loop lives in `tacotune.export.runtime.OnnxVoice.decode`: start the
carried inputs at zero, call decoder_step.onnx until `next_done` is true for every item,
feed each step's last frame back, then run the postnet over the whole batch. The carried
state includes the stopping counters (`done`, `by_gate`, `at_end`, `steps`, `held`): the
stopping rules are compiled into the step graph with this voice's values: gate threshold
{gate_threshold}, end hold {end_hold_frames} frames (0: off), at most
{max_frames_per_char:g} frames per character and {max_decoder_steps} steps per item.
An item's length is `steps * {r}` frames.
"""


def export_readme(info: dict[str, Any], name: str) -> str:
    """README.md for an export directory called `name`, from the manifest's `info`."""
    model = info["model"]
    onnx_vocoder = info["vocoder"]["kind"] == "onnx"
    stress = info.get("stress", "auto")
    return _TEMPLATE.format(
        name=name,
        source=info["source"],
        tacotune=info["tacotune"],
        exporter=info["exporter"],
        created=info["created"],
        sample_rate=info["sample_rate"],
        n_mels=model["n_mels"],
        r=model["reduction_factor"],
        vocoder="vocoder.onnx" if onnx_vocoder else "Griffin-Lim (no neural vocoder exported)",
        tolerance=PARITY_TOLERANCE,
        stress=stress,
        stress_note=(
            ": words without a mark get one from silero-stress, which needs torch"
            if stress == "auto"
            else ""
        ),
        vocoder_row=(
            "\n- `vocoder.onnx`: `mel` (B, n_mels, T) log-mel -> `audio` (B, samples)."
            if onnx_vocoder
            else ""
        ),
        **{key: model[key] for key in ("gate_threshold", "end_hold_frames", "max_frames_per_char")},
        max_decoder_steps=model["max_decoder_steps"],
    )
