"""Training throughput on the demo corpus: steps/s, mel frames/s, peak RSS.

    python bench/train_throughput.py                      # demo and base, r=1 and 2
    python bench/train_throughput.py --config base.yaml --r 2 --precision fp32
    python bench/train_throughput.py --config demo.yaml --r 4 --attention location forward
    python bench/train_throughput.py --config demo.yaml --r 4 --compile off default --steps 40

Batch 16, 2 threads, length-bucketed batches drawn exactly as training draws them
(tacotune.train.throughput, which `tacotune auto` uses too); the first 2 steps (warm-up)
are not timed. With --compile (train.compile), each step that meets a new batch shape pays
for compiling it inside the timed steps, as a training run would.
"""

from __future__ import annotations

import argparse

from common import demo_prepared, peak_rss_gib, report

from tacotune.config import load_config
from tacotune.train.throughput import measure_step_rate


def measure(
    config_name: str, r: int, attention: str, precision: str, steps: int, compile_mode: str
) -> dict[str, object]:
    cfg = load_config(
        config_name,
        [
            f"model.reduction_factor={r}",
            f"model.attention={attention}",
            "train.batch_size=16",
            "train.threads=2",
            f"train.precision={precision}",
            f"train.compile={compile_mode}",
        ],
    )
    rate = measure_step_rate(cfg, demo_prepared(), steps=steps)
    return {
        "config": config_name,
        "params_M": rate.parameters / 1e6,
        "r": r,
        "attention": attention,
        "precision": rate.precision,
        "compile": compile_mode,
        "steps_per_s": rate.steps_per_second,
        "mel_frames_per_s": rate.mel_frames_per_second,
        "s_per_step": 1 / rate.steps_per_second,
        "peak_rss_GiB": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["demo.yaml", "base.yaml"])
    parser.add_argument("--r", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--attention", nargs="+", default=["location"])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", nargs="+", default=["off"], help="train.compile modes")
    args = parser.parse_args()
    rows = [
        measure(c, r, attention, args.precision, args.steps, mode)
        for c in args.config
        for r in args.r
        for attention in args.attention
        for mode in args.compile
    ]
    report("train_throughput", rows)


if __name__ == "__main__":
    main()
