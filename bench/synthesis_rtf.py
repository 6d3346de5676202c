"""Synthesis real-time factor (compute seconds / audio seconds), Griffin-Lim included.

    python bench/synthesis_rtf.py runs/demo/train      # a trained run (uses its best.pt)

Sentences are synthesized one at a time, as `tacotune synthesize` does for one text.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import report

from tacotune.synthesize import Synthesizer

SENTENCES = [
    "Привет! Как дела?",
    "Завтра синоптики обещают мокрый снег с дождём.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "В две тысячи двадцать четвёртом году замок был закрыт на ремонт.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    synthesizer = Synthesizer(args.checkpoint)
    synthesizer.speak(SENTENCES[0])  # warm-up
    rows = []
    for text in SENTENCES:
        started = time.perf_counter()
        speech = synthesizer.speak(text)
        seconds = time.perf_counter() - started
        audio = len(speech.audio) / speech.sample_rate
        rows.append(
            {
                "text": text[:40],
                "audio_s": audio,
                "compute_s": seconds,
                "rtf": seconds / audio,
                "complete": speech.complete,
            }
        )
    total_audio = sum(float(r["audio_s"]) for r in rows)
    total_compute = sum(float(r["compute_s"]) for r in rows)
    rows.append(
        {
            "text": "ALL",
            "audio_s": total_audio,
            "compute_s": total_compute,
            "rtf": total_compute / total_audio,
            "complete": all(bool(r["complete"]) for r in rows),
        }
    )
    report("synthesis_rtf", rows)


if __name__ == "__main__":
    main()
