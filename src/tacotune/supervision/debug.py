"""Debug reports for a person diagnosing a bad run: what every layer and the attention did.

Written to RUN/debug/step_N.json (+ a short .md view) every `supervision.debug_every`
steps and at every guard event (a bad step, a rollback, divergence), right after
the backward pass, so the gradients that caused the trouble are still there.
Nothing is computed when no report is due.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch

from tacotune.model.tacotron2 import Tacotron2Output, decoder_steps
from tacotune.supervision.metrics import batch_alignment_metrics, summarize_alignment

TOP_LAYERS = 10  # layers listed in the markdown view


def debug_report(
    model: torch.nn.Module,
    out: Tacotron2Output,
    mel_lengths: torch.Tensor,
    text_lengths: torch.Tensor,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The report as plain data. `context`: step, reason, loss terms, lr, throughput..."""
    r = out.reduction_factor
    steps = decoder_steps(mel_lengths, r).cpu()
    attention = summarize_alignment(
        batch_alignment_metrics(out.alignments.detach().float().cpu(), steps, text_lengths.cpu()),
        "teacher_forced",
    )
    gate = torch.sigmoid(out.gate.detach().float()).cpu()
    last = (steps - 1).clamp(min=0)
    at_stop = gate[torch.arange(len(last)), last]
    valid = torch.arange(gate.shape[1])[None, :] < (steps - 1)[:, None]
    return {
        **context,
        "time": time.time(),
        "layers": _layers(model),
        "attention": attention,
        "gate": {
            "mean_stop_probability_at_the_last_step": float(at_stop.mean()),
            "mean_stop_probability_before_it": float(gate[valid].mean())
            if valid.any()
            else math.nan,
        },
        "memory": _memory(),
    }


def write_debug_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """debug/step_N.json and debug/step_N.md; returns the JSON path."""
    directory = run_dir / "debug"
    directory.mkdir(parents=True, exist_ok=True)
    rollbacks = report.get("rollbacks", 0)  # after a rollback, step numbers come round again
    stem = f"step_{report['step']:07d}" + (f"_after_rollback_{rollbacks}" if rollbacks else "")
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(report, indent=1, default=_json_default), encoding="utf-8")
    (directory / f"{stem}.md").write_text(render_markdown(report), encoding="utf-8")
    return path


def render_markdown(report: dict[str, Any]) -> str:
    """Short view: the reason, the loss terms, non-finite layers, largest gradients."""
    layers = report["layers"]
    broken = [n for n, v in layers.items() if not v["finite"]]
    ranked = sorted(layers.items(), key=lambda kv: -_sortable(kv[1]["grad_norm"]))
    lines = [f"# Debug report, step {report['step']}: {report.get('reason', '')}", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in report.get("losses", {}).items()]
    lines += [
        f"- learning rate: {_fmt(report.get('learning_rate'))}",
        f"- gradient norm (unscaled): {_fmt(report.get('grad_norm'))}",
        f"- non-finite layers: {', '.join(broken) or 'none'}",
        "",
        "| layer | weight norm | grad norm | grad/weight |",
        "|---|---|---|---|",
    ]
    for name, v in ranked[:TOP_LAYERS]:
        lines.append(
            f"| {name} | {_fmt(v['weight_norm'])} | {_fmt(v['grad_norm'])} | {_fmt(v['ratio'])} |"
        )
    lines += [
        "",
        "Attention (teacher-forced, this batch): "
        + ", ".join(f"{k.split('/')[-1]} {_fmt(v)}" for k, v in report["attention"].items()),
    ]
    lines.append(f"Memory: {report['memory']}")
    return "\n".join(lines) + "\n"


def _layers(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    layers = {}
    for name, parameter in model.named_parameters():
        weight = float(parameter.detach().float().norm())
        grad = None if parameter.grad is None else float(parameter.grad.detach().float().norm())
        finite = math.isfinite(weight) and (grad is None or math.isfinite(grad))
        ratio = grad / weight if grad is not None and weight > 0 else None
        layers[name] = {"weight_norm": weight, "grad_norm": grad, "ratio": ratio, "finite": finite}
    return layers


def _memory() -> dict[str, float]:
    memory = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        memory["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return memory


def _sortable(value: float | None) -> float:
    if value is None:
        return -1.0
    return math.inf if not math.isfinite(value) else value


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to a debug report")
