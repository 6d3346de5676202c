"""Training time until free-running attention is aligned, on the demo corpus.

    python bench/time_to_alignment.py [--set section.key=value ...]

Trains the demo preset with an evaluation every 25 steps and reports the first
evaluation at which every free-running utterance (probes + validation) is aligned
(supervision.metrics: diagonality >= 0.7, end reached, length within 0.8-1.25),
with the training seconds spent so far (evaluations excluded).
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import OUT, demo_prepared, report

from tacotune.config import load_config
from tacotune.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--max-steps", type=int, default=600)
    args = parser.parse_args()
    run = OUT / "alignment_run"
    shutil.rmtree(run, ignore_errors=True)
    config = load_config(
        "demo.yaml",
        [
            "train.eval_every=25",
            f"train.max_steps={args.max_steps}",
            "tracking.tensorboard=false",
            *args.set,
        ],
    )
    train(config, demo_prepared(), run)
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        rows.append(
            {
                "step": m["step"],
                "train_s": m["time/train_seconds"],
                "aligned_rate": m["free/aligned_rate"],
                "quality": m["free/quality"],
                "diagonality": m["free/diagonality"],
                "val_mel": m["val/mel_postnet"],
            }
        )
    first = next((r for r in rows if r["aligned_rate"] >= 1.0), None)
    report("time_to_alignment", rows)
    if first is None:
        print(f"\nnot aligned within {args.max_steps} steps")
    else:
        print(
            f"\naligned at step {first['step']} after {first['train_s']:.0f} s of training "
            f"({first['train_s'] / 60:.1f} CPU-minutes)"
        )


if __name__ == "__main__":
    main()
