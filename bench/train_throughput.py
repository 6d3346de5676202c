"""Training throughput on the demo corpus: steps/s, mel frames/s, peak RSS.

    python bench/train_throughput.py                      # demo and base, r=1 and 2
    python bench/train_throughput.py --config base.yaml --r 2 --precision fp32

Batch 16, 2 threads, length-bucketed batches drawn exactly as training draws them;
the first 2 steps (warm-up) are not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import demo_prepared, peak_rss_gib, report

from tacotune.config import load_config
from tacotune.data.manifest import load_prepared
from tacotune.losses import tacotron2_loss
from tacotune.model import Tacotron2
from tacotune.text.symbols import SYMBOLS
from tacotune.train.inputs import build_training_data
from tacotune.train.setup import make_optimizer, setup_environment


def measure(config_name: str, r: int, precision: str, steps: int) -> dict[str, object]:
    cfg = load_config(
        config_name,
        [
            f"model.reduction_factor={r}",
            "train.batch_size=16",
            "train.threads=2",
            f"train.precision={precision}",
        ],
    )
    env = setup_environment(cfg.train)
    data = build_training_data(load_prepared(demo_prepared()), cfg, 0, 1)
    model = Tacotron2(cfg.model, len(SYMBOLS), cfg.audio.n_mels)
    optimizer = make_optimizer(model, cfg.train)
    stream = data.stream()
    frames, started = 0, 0.0
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        batch = next(stream)
        with torch.autocast(
            "cpu", dtype=env.autocast_dtype, enabled=env.autocast_dtype is not None
        ):
            out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, r)
        loss = tacotron2_loss(
            out, batch.mel, batch.mel_lengths, batch.text, batch.text_lengths, cfg.loss, step
        ).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        if step >= 2:
            frames += int(batch.mel_lengths.sum())
    seconds = time.perf_counter() - started
    return {
        "config": config_name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "r": r,
        "precision": env.precision,
        "steps_per_s": steps / seconds,
        "mel_frames_per_s": frames / seconds,
        "s_per_step": seconds / steps,
        "peak_rss_GiB": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["demo.yaml", "base.yaml"])
    parser.add_argument("--r", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = [measure(c, r, args.precision, args.steps) for c in args.config for r in args.r]
    report("train_throughput", rows)


if __name__ == "__main__":
    main()
