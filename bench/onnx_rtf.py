"""Decoding speed, torch vs onnxruntime, for the demo-preset model on 2 CPU threads.

    python bench/onnx_rtf.py                 # untrained demo.yaml model, 2 threads
    python bench/onnx_rtf.py --steps 100 --repeats 3

Method: an untrained model of the demo.yaml size (speed does not depend on training)
whose stop token can never fire (gate_threshold 1.0) and whose attention-hold rule is off,
so every item decodes exactly --steps decoder steps (max_decoder_steps; the text is long
enough for the per-character limit not to bind). Timed: `Synthesizer.infer` (torch) and
`OnnxSynthesizer.infer` (onnxruntime) - encoder, the autoregressive loop with prenet
dropout masks, postnet - for batches of 1 and 4 items, median of --repeats runs after a
warm-up: wall clock, and the process's CPU time over all threads (which a busy shared
machine inflates less). Griffin-Lim is left out: both backends use the same vocoder.
RTF = wall seconds / seconds of audio decoded (steps * r * hop / sample rate per item,
all items of the batch).
Parity on this model is reported too: the same seed draws the same prenet masks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from common import report

from tacotune.checkpoint import config_payload, save_checkpoint
from tacotune.config import load_config
from tacotune.export.exporter import export_voice
from tacotune.export.synthesizer import OnnxSynthesizer
from tacotune.model import SynthesisOutput, Tacotron2
from tacotune.synthesize import Synthesizer, split_text
from tacotune.text.frontend import TextFrontend
from tacotune.text.symbols import PAD_ID, SYMBOLS

TEXT = (
    "съешь же ещё этих мягких французских булок, да выпей чаю. "
    "в чащах юга жил бы цитрус? да, но фальшивый экземпляр!"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="decoder steps per item")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(
        "demo.yaml",
        [
            "model.gate_threshold=1.0",
            "model.end_hold_frames=0",
            f"model.max_decoder_steps={args.steps}",
            "text.stress=off",
        ],
    )
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    payload = {
        "config": config_payload(config),
        "n_symbols": len(SYMBOLS),
        "model": model.state_dict(),
        "text_frontend": TextFrontend(config.text).state(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "demo.pt", payload)
        started = time.perf_counter()
        directory = export_voice(Path(tmp) / "demo.pt", Path(tmp) / "onnx")
        export_s = time.perf_counter() - started
        backends = {
            "torch": Synthesizer(payload),
            "onnxruntime": OnnxSynthesizer(directory, threads=args.threads),
        }
        rows = []
        for batch in (1, 4):
            text, lengths = _batch(backends["torch"].frontend, batch)
            timed = {
                name: _time(synthesizer, text, lengths, args.repeats)
                for name, synthesizer in backends.items()
            }
            reference = timed["torch"][2]
            for name, (seconds, cpu_seconds, out) in timed.items():
                steps = int(out.lengths.max()) // out.reduction_factor
                audio = float(out.lengths.sum()) * config.audio.hop_length
                audio /= config.audio.sample_rate
                rows.append(
                    {
                        "backend": name,
                        "batch": batch,
                        "steps": steps,
                        "audio_s": audio,
                        "compute_s": seconds,
                        "cpu_s": cpu_seconds,
                        "ms_per_step": 1000 * seconds / steps,
                        "rtf": seconds / audio,
                        "max_abs_mel_diff": float(
                            (out.mel_postnet - reference.mel_postnet).abs().max()
                        ),
                        "same_stop_steps": torch.equal(out.lengths, reference.lengths),
                    }
                )
        print(f"export: {export_s:.1f} s; onnxruntime {onnxruntime.__version__}")
    report("onnx_rtf", rows)


def _batch(frontend: TextFrontend, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` copies of TEXT's model input, as `Synthesizer.decode` pads them."""
    ((_, ids),) = split_text(frontend, TEXT)
    text = torch.full((size, len(ids)), PAD_ID, dtype=torch.long)
    text[:] = torch.tensor(ids)
    return text, torch.full((size,), len(ids), dtype=torch.long)


def _time(
    synthesizer: Synthesizer, text: torch.Tensor, lengths: torch.Tensor, repeats: int
) -> tuple[float, float, SynthesisOutput]:
    """Median wall and process-CPU seconds (all threads) of `synthesizer.infer` after one
    warm-up call, and its output."""
    with torch.inference_mode():
        out = synthesizer.infer(text, lengths)
        wall, cpu = [], []
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            out = synthesizer.infer(text, lengths)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    return statistics.median(wall), statistics.median(cpu), out


if __name__ == "__main__":
    main()
