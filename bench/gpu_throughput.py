"""GPU training throughput: mel frames/s, ms/step and peak memory of the paper-size model
on the demo corpus, eager vs compiled decoder step, by precision, r and batch size; and a
loss-curve comparison eager vs compiled (same seed, same batches).

Rows run in order of importance, each in its own process with its own time budget; a row
that no longer fits the total budget is skipped, one that fails or overruns is recorded
with the reason. Rows whose compile mode is `best` use the fastest mode measured so far.
Results: OUT/gpu_throughput.json and OUT/gpu_throughput.md (OUT: --out, default
runs/bench), printed as a table too.

On the CPU, to check every code path in a few minutes (a tiny model; GPU-only settings
are refused and recorded as such):

    PYTHONPATH=$PWD/src python bench/gpu_throughput.py --cpu-dry-run

On a lent GPU machine (../shared/research/gpu-notes.md: the image has torch, not the audio
and text packages, and it cannot reach the network). Here, once, from the repository root:

    echo /.whl/ >> .git/info/exclude; echo /.gpu/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl soundfile==0.14.0 cffi pycparser soxr==1.1.0 \
        librosa==0.11.0 audioread decorator pooch platformdirs num2words==0.5.14 \
        silero-stress==1.5
    PYTHONPATH=$PWD/src python bench/gpu_throughput.py --prepare-to .gpu/prepared

then one device call, carry [".whl", ".gpu"], timeout_s 600 (the rows fit --budget 480 s):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
    && python3 bench/gpu_throughput.py --prepared .gpu/prepared --budget 480 --out $OUT

A second call can take the rows that did not fit (--only NAME ...), or the 200-step
curve: --only curve --curve-steps 200 --budget 480.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = [  # the tests' tiny model (tests/conftest.py)
    "model.embedding_dim=16",
    "model.encoder_dim=16",
    "model.attention_rnn_dim=24",
    "model.attention_dim=8",
    "model.attention_location_filters=4",
    "model.attention_location_kernel_size=5",
    "model.prenet_dim=12",
    "model.decoder_rnn_dim=24",
    "model.postnet_dim=8",
    "model.postnet_layers=3",
]
MODES = ("reduce-overhead", "default")  # compile modes `best` chooses from


@dataclass(frozen=True)
class Row:
    """One measurement: a config, how many steps, how long it may take."""

    name: str
    r: int
    batch: int
    precision: str  # fp32 | tf32 | bf16 | fp16
    compile: str  # off | default | reduce-overhead | best
    budget: float  # seconds, process start and compilation included
    sync_every: int = 16
    kind: str = "rate"  # rate | curve | loop
    steps: int = 10
    warmup: int = 3  # untimed steps (compilation, new shapes)


ROWS = [
    Row("r2-b64-fp32-eager", 2, 64, "fp32", "off", 60),  # the 34,680 frames/s
    Row("r2-b64-tf32-eager", 2, 64, "tf32", "off", 60),
    Row("r2-b64-tf32-reduce-overhead", 2, 64, "tf32", "reduce-overhead", 180, warmup=12),
    Row("r2-b64-tf32-default", 2, 64, "tf32", "default", 150, warmup=12),
    Row("curve", 2, 32, "tf32", "best", 240, kind="curve", steps=50),
    Row("r2-b64-bf16-eager", 2, 64, "bf16", "off", 60),
    Row("r2-b64-bf16-best", 2, 64, "bf16", "best", 150, warmup=12),
    Row("r2-b128-tf32-best", 2, 128, "tf32", "best", 150, warmup=12),
    Row("r2-b32-tf32-best", 2, 32, "tf32", "best", 150, warmup=12),
    Row("r1-b64-tf32-eager", 1, 64, "tf32", "off", 80),
    Row("r1-b64-tf32-best", 1, 64, "tf32", "best", 180, warmup=12),
    Row("r2-b64-tf32-best-sync1", 2, 64, "tf32", "best", 150, sync_every=1, warmup=12),
    Row("r2-b64-fp16-best", 2, 64, "fp16", "best", 150, warmup=12),
    Row("r1-b32-tf32-best", 1, 32, "tf32", "best", 180, warmup=12),
    Row("r1-b128-tf32-best", 1, 128, "tf32", "best", 180, warmup=12),
    Row("loop-r2-b64-best", 2, 64, "auto", "best", 120, kind="loop"),  # real loop, evaluations
]


def dry_run_rows() -> list[Row]:
    """Every row at tiny sizes for the CPU: batch /16, 2 steps, a curve of 4 steps; fp32
    stands in for tf32. fp16 and reduce-overhead stay: their refusal is a code path too."""
    return [
        replace(
            row,
            batch=max(row.batch // 16, 2),
            precision="fp32" if row.precision == "tf32" else row.precision,
            steps=4 if row.kind == "curve" else 2,
            warmup=1,
            budget=240 if row.compile != "off" else 90,
        )
        for row in ROWS
    ]


def overrides(row: Row, dry_run: bool, compile_mode: str) -> list[str]:
    """The config of a row (base.yaml, or demo.yaml + the tiny model for a dry run)."""
    settings = [
        f"model.reduction_factor={row.r}",
        f"train.batch_size={row.batch}",
        f"train.precision={row.precision}",
        f"train.compile={compile_mode}",
        f"train.sync_every={row.sync_every}",
        f"train.device={'cpu' if dry_run else 'cuda'}",
    ]
    return [*TINY, "train.threads=1", *settings] if dry_run else settings


# --- one row, in a child process ---------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one row; returns what the parent records."""
    from tacotune.config import load_config
    from tacotune.train.throughput import measure_step_rate

    row = Row(**spec["row"])
    config = load_config(spec["preset"], spec["overrides"])
    if row.kind == "loop":
        return real_loop(spec, config)
    if row.kind == "curve":
        return {"losses": list(measure_step_rate(config, spec["prepared"], row.steps, 0).losses)}
    rate = measure_step_rate(config, spec["prepared"], row.steps, row.warmup)
    return {
        "precision": rate.precision,
        "mel_frames_per_s": rate.mel_frames_per_second,
        "ms_per_step": 1000 / rate.steps_per_second,
        "peak_memory_gib": rate.peak_memory_gib,
        "skipped_steps": rate.skipped_steps,
        "parameters_M": rate.parameters / 1e6,
    }


def real_loop(spec: dict[str, Any], config: Any) -> dict[str, Any]:
    """`tacotune train` for about a minute: steps/s with evaluations and checkpoints."""
    import tempfile

    from tacotune.config.load import override_config
    from tacotune.train import train

    minutes = 0.3 if spec["dry_run"] else 1.0
    config = override_config(
        config,
        [f"train.max_minutes={minutes}", "train.eval_every=32", "tracking.tensorboard=false"],
    )
    with tempfile.TemporaryDirectory() as directory:
        result = train(config, spec["prepared"], Path(directory) / "run")
        lines = (Path(directory) / "run" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    train_s, eval_s = last.get("time/train_seconds", 0.0), last.get("time/eval_seconds", 0.0)
    return {  # the times of the last metrics line (every evaluation but the last)
        "steps": result.step,
        "evaluations": len(lines),
        "steps_per_s_training": last.get("step", 0) / train_s if train_s else None,
        "eval_share": eval_s / (train_s + eval_s) if train_s + eval_s else None,
    }


# --- the parent --------------------------------------------------------------------------------


def run_row(row: Row, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The row in a fresh process (own CUDA context, compile caches, TF32 switches); killed
    with its compile workers when it overruns."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"status": f"timeout after {timeout:.0f} s", "seconds": timeout}
    seconds = time.monotonic() - started
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"status": "failed: " + error_message(stderr), "seconds": seconds}
    return {"status": "ok", "seconds": seconds, **json.loads(lines[-1])}


def error_message(stderr: str) -> str:
    """The exception that ended a child (its last unindented lines), shortened."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if not line[0].isspace() and "Error" in line]
    return " ".join(lines[starts[-1] :] if starts else lines[-3:])[:400]


def best_mode(results: list[dict[str, Any]]) -> str:
    """The fastest compile mode measured so far at r=2 batch 64 tf32 (default if none ran)."""
    rates = {
        r["compile"]: r["mel_frames_per_s"]
        for r in results
        if r["status"] == "ok" and r["compile"] in MODES and r.get("mel_frames_per_s")
    }
    return max(rates, key=rates.__getitem__) if rates else "default"


def compare_curves(eager: list[float], compiled: list[float]) -> dict[str, Any]:
    """Max relative difference of the per-step losses, and of their last-10 means."""
    pairs = list(zip(eager, compiled, strict=False))
    relative = [abs(a - b) / max(abs(a), 1e-12) for a, b in pairs]
    tail = min(10, len(pairs))
    mean_a = sum(a for a, _ in pairs[-tail:]) / max(tail, 1)
    mean_b = sum(b for _, b in pairs[-tail:]) / max(tail, 1)
    return {
        "steps": len(pairs),
        "max_relative_difference": max(relative, default=float("nan")),
        "first_step_relative_difference": relative[0] if relative else float("nan"),
        "last_mean_relative_difference": abs(mean_a - mean_b) / max(abs(mean_a), 1e-12),
    }


def run_all(rows: list[Row], args: argparse.Namespace) -> list[dict[str, Any]]:
    deadline = time.monotonic() + args.budget
    preset = "demo.yaml" if args.cpu_dry_run else "base.yaml"
    results: list[dict[str, Any]] = []
    for row in rows:
        if row.kind == "curve" and args.curve_steps:  # a long curve takes the whole budget
            row = replace(row, steps=args.curve_steps, budget=max(row.budget, args.budget - 5))
        mode = best_mode(results) if row.compile == "best" else row.compile
        record: dict[str, Any] = {**asdict(row), "compile": mode}
        left = deadline - time.monotonic()
        if row.budget > left:
            results.append(
                {**record, "status": f"skipped: {left:.0f} s left, needs {row.budget:.0f}"}
            )
            continue
        spec = {
            "row": asdict(row),
            "preset": preset,
            "prepared": str(args.prepared),
            "dry_run": args.cpu_dry_run,
        }
        if row.kind == "curve":
            curves, spent = {}, 0.0
            for name, compile_mode, share in (("eager", "off", 0.4), ("compiled", mode, 1.0)):
                spec["overrides"] = overrides(row, args.cpu_dry_run, compile_mode)
                curves[name] = run_row(row, spec, share * row.budget - spent)
                spent += curves[name]["seconds"]
            record.update(status=" / ".join(c["status"] for c in curves.values()))
            if all(c["status"] == "ok" for c in curves.values()):
                record.update(
                    compare_curves(curves["eager"]["losses"], curves["compiled"]["losses"])
                )
                record["losses"] = {name: c["losses"] for name, c in curves.items()}
        else:
            spec["overrides"] = overrides(row, args.cpu_dry_run, mode)
            record.update(run_row(row, spec, min(row.budget, left)))
        results.append(record)
        print(f"{row.name}: {record['status']} {record.get('mel_frames_per_s', '')}", flush=True)
    return results


COLUMNS = (
    "name",
    "r",
    "batch",
    "precision",
    "compile",
    "sync_every",
    "mel_frames_per_s",
    "ms_per_step",
    "peak_memory_gib",
    "speedup",
    "status",
)


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    reference = next(
        (r.get("mel_frames_per_s") for r in results if r["name"] == "r2-b64-fp32-eager"), None
    )
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        rate = r.get("mel_frames_per_s")
        speedup = rate / reference if rate and reference else None
        cells = {**r, "speedup": speedup}
        lines.append("| " + " | ".join(_cell(cells.get(c)) for c in COLUMNS) + " |")
    for r in results:
        if r["kind"] == "curve" and "max_relative_difference" in r:
            lines.append(
                f"\nLoss curve over {r['steps']} steps, eager vs {r['compile']} (same seed): max "
                f"relative difference {r['max_relative_difference']:.2e}, first step "
                f"{r['first_step_relative_difference']:.2e}, last-10 means "
                f"{r['last_mean_relative_difference']:.2e}."
            )
        if r["kind"] == "loop" and r["status"] == "ok":
            keys = ("steps", "evaluations", "steps_per_s_training", "eval_share")
            loop = {k: r.get(k) for k in keys}
            lines.append(f"\nReal loop ({r['compile']}): {json.dumps(loop)}")
    lines.append(f"\n{json.dumps(machine)}")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return "" if value is None else str(value)


def machine_facts() -> dict[str, Any]:
    import platform

    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cpu": platform.machine()}
    if torch.cuda.is_available():
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            capability=list(torch.cuda.get_device_capability(0)),
        )
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--prepared", type=Path, help="the prepared demo corpus")
    parser.add_argument("--prepare-to", type=Path, help="prepare the demo corpus there, stop")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all rows")
    parser.add_argument("--only", nargs="+", help="row names to run (default: all)")
    parser.add_argument("--curve-steps", type=int, default=0, help="steps of the curve row")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.prepare_to or args.prepared is None:
        from tacotune.config import load_config
        from tacotune.data.prepare import prepare_dataset

        target = args.prepare_to or ROOT / "runs" / "bench" / "prepared"
        prepare_dataset(ROOT / "data" / "demo", target, load_config("demo.yaml"))
        if args.prepare_to:
            return
        args.prepared = target
    rows = dry_run_rows() if args.cpu_dry_run else ROWS
    if args.only:
        rows = [row for row in rows if row.name in args.only]
    results = run_all(rows, args)
    machine = machine_facts()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_throughput.json").write_text(
        json.dumps({"machine": machine, "dry_run": args.cpu_dry_run, "rows": results}, indent=1)
    )
    table = markdown(results, machine)
    (args.out / "gpu_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
