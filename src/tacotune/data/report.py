"""The dataset report: totals, every exclusion reason with examples, information."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tacotune import __version__
from tacotune.data.checks import REASON_HELP, Analysis, Decision, Job, Reason
from tacotune.data.formats import DatasetLayout
from tacotune.data.manifest import REPORT_JSON, REPORT_MD, ManifestEntry

EXAMPLES_PER_REASON = 5


def build_report(
    layout: DatasetLayout,
    data_dir: Path,
    decisions: dict[int, Decision],
    jobs: dict[int, Job],
    analyses: dict[str, Analysis],
    entries: list[ManifestEntry],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Everything a person needs to trust (or fix) the dataset, as a JSON-able dict."""
    rows = layout.rows
    excluded = {i: d for i, d in decisions.items() if d.reason is not None}
    measured = [analyses[jobs[i].key] for i in jobs if decisions[i].reason is None]
    train = [e for e in entries if e.split == "train"]
    val = [e for e in entries if e.split == "val"]
    durations = [e.duration for e in entries]
    return {
        "tacotune_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "format": layout.format,
        "status": "ok",
        "totals": {
            "rows": len(rows),
            "kept": len(entries),
            "excluded": len(excluded),
            "excluded_fraction": round(len(excluded) / len(rows), 4) if rows else 0.0,
            "hours_kept": round(sum(durations) / 3600, 4),
            "train": len(train),
            "val": len(val),
            "train_hours": round(sum(e.duration for e in train) / 3600, 4),
            "val_hours": round(sum(e.duration for e in val) / 3600, 4),
        },
        "excluded": _exclusions(rows, excluded),
        "information": _information(measured),
        "durations_seconds": _summary(durations),
        "measurement": {
            "computed": stats["computed"],
            "reused_from_last_run": stats["reused"],
            "mel_cache": f"mels/{stats['audio_config_hash']}",
            "audio_cache": f"audio/{stats['audio_config_hash']}",
            "elapsed_seconds": round(stats["elapsed"], 2),
            "rows_per_second": round(len(rows) / stats["elapsed"], 1) if stats["elapsed"] else 0,
        },
    }


def _exclusions(rows: list[Any], excluded: dict[int, Decision]) -> dict[str, Any]:
    by_reason: dict[str, Any] = {}
    for index in sorted(excluded):
        decision = excluded[index]
        assert decision.reason is not None
        row = rows[index]
        entry = by_reason.setdefault(
            decision.reason.value,
            {"count": 0, "meaning": REASON_HELP[decision.reason], "examples": []},
        )
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES_PER_REASON:
            entry["examples"].append(
                {"id": row.id, "where": f"{row.source}:{row.line}", "detail": decision.detail}
            )
    order = [r.value for r in Reason]
    return {k: by_reason[k] for k in sorted(by_reason, key=order.index)}


def _information(measured: list[Analysis]) -> dict[str, Any]:
    resampled = Counter(str(a.source_sample_rate) for a in measured if a.source_sample_rate)
    stress: Counter[str] = Counter()
    for a in measured:
        stress.update(a.stress_sources)
    return {
        "source_sample_rates": dict(resampled),
        "downmixed_to_mono": sum(a.source_channels > 1 for a in measured),
        "silence_trimmed_seconds": round(sum(a.trimmed for a in measured), 2),
        "stress_marks_by_source": dict(stress),
        "letters_per_second_median": round(
            statistics.median(a.letters / a.duration for a in measured if a.duration)
            if measured
            else 0.0,
            2,
        ),
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json for machines, report.md for people."""
    (root / REPORT_JSON).write_text(
        json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (root / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: dict[str, Any]) -> str:
    """A short human-readable view of the report."""
    t = report["totals"]
    lines = [
        f"# Dataset report — {report['status']}",
        "",
        f"Source: `{report['data_dir']}` ({report['format']} layout), "
        f"tacotune {report['tacotune_version']}, {report['created']}.",
        "",
        "| rows | kept | excluded | hours kept | train | val |",
        "|---|---|---|---|---|---|",
        f"| {t['rows']} | {t['kept']} | {t['excluded']} ({t['excluded_fraction']:.1%}) | "
        f"{t['hours_kept']:.3f} | {t['train']} ({t['train_hours']:.3f} h) | "
        f"{t['val']} ({t['val_hours']:.3f} h) |",
        "",
        "## Excluded rows",
        "",
    ]
    if not report["excluded"]:
        lines.append("None.")
    for reason, entry in report["excluded"].items():
        lines += [f"### `{reason}`: {entry['count']}", "", entry["meaning"] + ".", ""]
        lines += [f"- `{e['id']}` ({e['where']}): {e['detail']}" for e in entry["examples"]]
        if entry["count"] > len(entry["examples"]):
            lines.append(f"- … and {entry['count'] - len(entry['examples'])} more")
        lines.append("")
    info, d, m = report["information"], report["durations_seconds"], report["measurement"]
    lines += ["## Information (nothing below was excluded)", ""]
    lines.append(
        f"- source sample rates: {info['source_sample_rates']} (all resampled to the "
        "configured rate where different)"
    )
    lines.append(f"- downmixed to mono: {info['downmixed_to_mono']}")
    lines.append(f"- silence trimmed: {info['silence_trimmed_seconds']} s in total")
    lines.append(f"- stress marks by source: {info['stress_marks_by_source']}")
    lines.append(f"- letters per second (median): {info['letters_per_second_median']}")
    if d:
        lines.append(f"- durations: min {d['min']} s, median {d['median']} s, max {d['max']} s")
    lines.append(
        f"- measured {m['computed']} rows, reused {m['reused_from_last_run']} from the "
        f"last run, in {m['elapsed_seconds']} s; mels in `{m['mel_cache']}`, their "
        f"audio in `{m['audio_cache']}`"
    )
    if "dataset_fingerprint" in report:
        lines.append(f"- dataset fingerprint: `{report['dataset_fingerprint']}`")
    return "\n".join(lines) + "\n"
