"""Shared by the benchmarks: the prepared demo corpus and a result printer."""

from __future__ import annotations

import json
import platform
import resource
from pathlib import Path
from typing import Any

import torch

from tacotune.config import load_config
from tacotune.data.prepare import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench"


def demo_prepared() -> Path:
    """The bundled corpus prepared once under runs/bench (incremental afterwards)."""
    prepared = OUT / "prepared"
    prepare_dataset(ROOT / "data" / "demo", prepared, load_config("demo.yaml"))
    return prepared


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def report(name: str, rows: list[dict[str, Any]]) -> None:
    """Print a markdown table and write runs/bench/NAME.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values())
            + " |"
        )
    print(f"\n{machine()}; written to {OUT / (name + '.json')}")
