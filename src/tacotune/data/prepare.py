"""`tacotune prepare DATA_DIR -o PREPARED_DIR`: validate, cache mels, split, report.

1. read the metadata in whatever layout it has (formats.py);
2. measure every row: text through the frontend, audio loaded, trimmed, cut to whole
   mel frames and quantized to 16 bits; that audio and its mel are cached together
   (the vocoder trains on exactly these pairs: mel == MelSpectrogram(cached audio));
   rows whose source, text and configs are unchanged reuse the last run's measurements;
3. decide per row (checks.py): kept, or excluded with a named reason;
4. split deterministically (or keep the user's split);
5. write the report always, and the manifest only if the dataset is usable.
Nothing is silently altered: resampling, downmixing and trimming are reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tacotune import __version__, progress
from tacotune.audio import (
    MelSpectrogram,
    load_audio,
    pcm16_to_float,
    quantize_pcm16,
    rms_dbfs,
    trim_silence,
    write_pcm16,
)
from tacotune.config.load import save_config
from tacotune.config.schema import AudioConfig, Config, TextConfig
from tacotune.data.checks import (
    Analysis,
    Decision,
    Job,
    Reason,
    decide,
    speech_rate,
    speech_rate_decision,
)
from tacotune.data.formats import SourceRow, read_dataset
from tacotune.data.manifest import (
    CONFIG_FILE,
    MANIFEST,
    ManifestEntry,
    audio_config_hash,
    write_manifest,
)
from tacotune.data.report import build_report, write_report
from tacotune.errors import AudioError, DatasetError, TextError, short_repr
from tacotune.files import write_text_atomic
from tacotune.outputs import Kind, check_output
from tacotune.text.frontend import TextFrontend
from tacotune.text.symbols import LETTERS

log = logging.getLogger(__name__)

CACHE_FILE = ".cache/analysis.jsonl"
POOL_MIN_ROWS = 32  # below this, worker start-up costs more than it saves
AUDIO_SUFFIX = "flac"  # cached audio: lossless 16-bit PCM, about half the size of wav


@dataclass(frozen=True)
class PrepareResult:
    """The outcome of `prepare_dataset`."""

    root: Path
    report: dict[str, Any]
    manifest: Path | None  # None when the dataset was judged unusable


def prepare_dataset(
    data_dir: str | Path, out_dir: str | Path, config: Config, strict: bool = False
) -> PrepareResult:
    """Prepare `data_dir` into `out_dir`; raises DatasetError (after writing the report)
    when `strict` and any row is excluded, or when too many rows are excluded."""
    started = time.monotonic()
    root = Path(out_dir)
    check_output(root, Kind.PREPARED)  # new, empty or prepared before (outputs.py)
    layout = read_dataset(data_dir)
    frontend = TextFrontend(config.text)  # validates the stress dictionary before any work
    root.mkdir(parents=True, exist_ok=True)  # only now: a refused dataset leaves none behind
    audio_hash = audio_config_hash(config.audio)
    text_hash = _hash(frontend.state(), __version__)

    decisions: dict[int, Decision] = {}
    jobs: dict[int, Job] = {}
    seen: set[str] = set()
    for index, row in enumerate(layout.rows):
        early = _early_decision(row, seen)
        if early is not None:
            decisions[index] = early
        else:
            jobs[index] = _job(row, audio_hash, text_hash)

    cache = _load_cache(root)
    pending = [job for job in jobs.values() if not _reusable(cache.get(job.key), root)]
    analyses = {key: cache[key] for key in {j.key for j in jobs.values()} if key in cache}
    for analysis in _analyze(pending, root, config):
        analyses[analysis.key] = analysis
    _save_cache(root, [analyses[j.key] for j in jobs.values()])

    for index, job in jobs.items():
        decisions[index] = decide(analyses[job.key], config.data)
    _exclude_speech_rate_outliers(jobs, analyses, decisions, config)

    entries = _entries(layout.rows, jobs, analyses, decisions, config)
    stats = {
        "computed": len(pending),
        "reused": len(jobs) - len(pending),
        "audio_config_hash": audio_hash,
        "elapsed": time.monotonic() - started,
    }
    report = build_report(layout, Path(data_dir), decisions, jobs, analyses, entries, stats)
    save_config(config, root / CONFIG_FILE)
    failure = _failure(report, strict, config)
    manifest = root / MANIFEST
    if failure:
        manifest.unlink(missing_ok=True)
        report["status"] = f"failed: {failure}"
        write_report(root, report)
        raise DatasetError(f"{failure}; see {root / 'report.md'}")
    report["dataset_fingerprint"] = write_manifest(manifest, entries)
    write_report(root, report)
    return PrepareResult(root, report, manifest)


def _early_decision(row: SourceRow, seen: set[str]) -> Decision | None:
    """Problems found without measuring anything."""
    if row.problem:
        return Decision(Reason.MALFORMED_ROW, row.problem)
    if row.id_problem:
        return Decision(Reason.INVALID_ID, row.id_problem)
    if row.id in seen:
        return Decision(Reason.DUPLICATE_ID, f"id {row.id!r} used again")
    seen.add(row.id)
    if row.audio_path is None:
        return Decision(Reason.MISSING_AUDIO, f"no audio for {row.id!r}")
    return None


def _job(row: SourceRow, audio_hash: str, text_hash: str) -> Job:
    assert row.audio_path is not None
    stat = row.audio_path.stat()
    key = _hash(
        row.id, str(row.audio_path), stat.st_size, stat.st_mtime_ns, row.text, text_hash, audio_hash
    )
    return Job(
        key,
        row.text,
        str(row.audio_path),
        inside_output("mels", audio_hash, f"{row.id}.npy"),
        inside_output("audio", audio_hash, f"{row.id}.{AUDIO_SUFFIX}"),
    )


def inside_output(*parts: str) -> str:
    """The path of a per-row file prepare writes (build every such path with this), relative to
    the prepared directory. Raises DatasetError for one that would leave it (`..`, absolute):
    ids are checked when read (formats.check_id); this guards whatever a path is built from.
    The check is lexical, so a cache directory that the user made a symlink keeps working."""
    relative = os.path.normpath(os.path.join(*parts))
    if os.path.isabs(relative) or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise DatasetError(
            f"refusing to write {short_repr(relative)}: it is outside the prepared directory"
        )
    return relative


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _reusable(analysis: Analysis | None, root: Path) -> bool:
    """A cached measurement whose files are still there (a row without a mel has none; one
    measured before audio was cached has no audio_file and is measured again)."""
    if analysis is None:
        return False
    if not analysis.mel_file:
        return True
    return bool(analysis.audio_file) and all(
        (root / name).exists() for name in (analysis.mel_file, analysis.audio_file)
    )


def _analyze(jobs: list[Job], root: Path, config: Config) -> Iterator[Analysis]:
    """Measure rows, in worker processes when there are enough of them."""
    if not jobs:
        return
    workers = min(config.data.workers, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < POOL_MIN_ROWS:
        analyzer = Analyzer(config.text, config.audio, root)
        yield from progress.track(map(analyzer.analyze, jobs), len(jobs), "measuring")
        return
    context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(config.text, config.audio, root),
    ) as pool:
        results = pool.map(_analyze_in_worker, jobs, chunksize=8)
        yield from progress.track(results, len(jobs), f"measuring ({workers} processes)")


class Analyzer:
    """Measures one row: frontend stages, audio levels, trimming, and the cached mel."""

    def __init__(self, text: TextConfig, audio: AudioConfig, root: Path) -> None:
        """One frontend (silero loads on first use) and one mel extractor per process."""
        self.frontend = TextFrontend(text)
        self.audio = audio
        self.mel = MelSpectrogram(audio)
        self.root = root

    def analyze(self, job: Job) -> Analysis:
        """Measure; expected failures (bad text, unreadable audio) are recorded, not raised."""
        result = Analysis(key=job.key, **self._text_fields(job.text))
        try:
            audio = load_audio(job.audio_path, self.audio.sample_rate)
        except AudioError as error:
            return dataclasses.replace(result, audio_error=str(error))
        samples, trimmed = audio.samples, 0.0
        if self.audio.trim_silence and rms_dbfs(samples) > -np.inf:
            samples, start, end = trim_silence(
                samples, self.audio.trim_top_db, self.audio.n_fft, self.audio.hop_length
            )
            trimmed = (start + end) / audio.sample_rate
        mel = None
        if len(samples) >= self.audio.n_fft:
            samples, mel = self._cache_audio_and_mel(samples, job)
        return dataclasses.replace(
            result,
            source_sample_rate=audio.source_sample_rate,
            source_channels=audio.source_channels,
            source_duration=audio.duration,
            duration=len(samples) / audio.sample_rate,
            trimmed=trimmed,
            rms_db=rms_dbfs(audio.samples),
            clipped_fraction=audio.source_clipped_fraction,
            n_frames=0 if mel is None else mel.shape[1],
            mel_file="" if mel is None else job.mel_file,
            audio_file="" if mel is None else job.audio_file,
        )

    def _cache_audio_and_mel(self, samples: np.ndarray, job: Job) -> tuple[np.ndarray, Tensor]:
        """Cut to whole frames, quantize, write the 16-bit audio and the mel OF THAT AUDIO.

        (N,) float -> (T * hop,) float as stored and its (n_mels, T) mel, T = N // hop.
        """
        pcm = quantize_pcm16(
            samples[: len(samples) // self.audio.hop_length * self.audio.hop_length]
        )
        stored = pcm16_to_float(pcm)  # bit-identical to what read_pcm16 gives back
        mel = self.mel(torch.from_numpy(stored))
        for name in (job.audio_file, job.mel_file):
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        write_pcm16(self.root / job.audio_file, pcm, self.audio.sample_rate)
        np.save(self.root / job.mel_file, mel.numpy().astype(np.float32))
        return stored, mel

    def _text_fields(self, text: str) -> dict[str, Any]:
        try:
            processed = self.frontend.process(text)
        except TextError as error:
            return {"text_problem": Reason.INVALID_TEXT.value, "text_detail": str(error)}
        fields: dict[str, Any] = {
            "normalized": processed.normalized,
            "text": processed.stressed,
            "stress_sources": dict(processed.stress_sources),
            "letters": sum(c in LETTERS for c in processed.stressed),
        }
        if processed.unknown:
            fields["text_problem"] = Reason.UNKNOWN_CHARACTERS.value
            fields["text_detail"] = "; ".join(u.describe() for u in processed.unknown)
        elif not fields["letters"]:
            fields["text_problem"] = Reason.EMPTY_TEXT.value
            fields["text_detail"] = f"{text!r} has no letters after normalization"
        return fields


_worker: Analyzer | None = None


def _init_worker(text: TextConfig, audio: AudioConfig, root: Path) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = Analyzer(text, audio, root)


def _analyze_in_worker(job: Job) -> Analysis:
    assert _worker is not None, "worker used before _init_worker"
    result = _worker.analyze(job)
    torch.set_num_threads(1)  # silero-stress's import resets it
    return result


def _exclude_speech_rate_outliers(
    jobs: dict[int, Job],
    analyses: dict[str, Analysis],
    decisions: dict[int, Decision],
    config: Config,
) -> None:
    kept = [i for i in jobs if decisions[i].reason is None]
    if len(kept) < 3:
        return
    rates = {i: speech_rate(analyses[jobs[i].key]) for i in kept}
    median = float(np.median(list(rates.values())))
    for index, rate in rates.items():
        decision = speech_rate_decision(rate, median, config.data.speech_rate_tolerance)
        if decision.reason is not None:
            decisions[index] = decision


def _entries(
    rows: list[SourceRow],
    jobs: dict[int, Job],
    analyses: dict[str, Analysis],
    decisions: dict[int, Decision],
    config: Config,
) -> list[ManifestEntry]:
    kept = [i for i in jobs if decisions[i].reason is None]
    splits = _split([rows[i] for i in kept], config)
    entries = []
    for index in kept:
        row, a = rows[index], analyses[jobs[index].key]
        entries.append(
            ManifestEntry(
                id=row.id,
                split=splits[row.id],
                audio_path=str(row.audio_path),
                mel_path=a.mel_file,
                trimmed_audio_path=a.audio_file,
                raw_text=row.raw_text,
                normalized=a.normalized,
                text=a.text,
                n_frames=a.n_frames,
                duration=round(a.duration, 4),
                sample_rate=a.source_sample_rate,
            )
        )
    return entries


def _split(rows: list[SourceRow], config: Config) -> dict[str, str]:
    """The user's split if the format has one, else the lowest id hashes go to validation."""
    if rows and all(r.split is not None for r in rows):
        return {r.id: str(r.split) for r in rows}
    d = config.data
    n_val = min(d.max_val_utterances, max(d.min_val_utterances, round(d.val_fraction * len(rows))))
    if len(rows) <= n_val:
        return {r.id: "train" for r in rows}  # _failure() reports the dataset as too small
    ranked = sorted(rows, key=lambda r: hashlib.sha1(r.id.encode()).hexdigest())
    val = {r.id for r in ranked[:n_val]}
    return {r.id: "val" if r.id in val else "train" for r in rows}


def _failure(report: dict[str, Any], strict: bool, config: Config) -> str:
    totals = report["totals"]
    if totals["rows"] == 0:
        return "the metadata has no rows"
    if strict and totals["excluded"]:
        return f"--strict: {totals['excluded']} of {totals['rows']} rows were excluded"
    if totals["excluded_fraction"] > config.data.max_excluded_fraction:
        return (
            f"{totals['excluded']} of {totals['rows']} rows "
            f"({totals['excluded_fraction']:.0%}) were excluded, more than "
            f"data.max_excluded_fraction={config.data.max_excluded_fraction:.0%}"
        )
    if totals["train"] == 0 or totals["val"] == 0:
        return (
            f"too few usable utterances to split ({totals['kept']} kept, "
            f"{totals['train']} train / {totals['val']} val)"
        )
    return ""


def _load_cache(root: Path) -> dict[str, Analysis]:
    path = root / CACHE_FILE
    if not path.exists():
        return {}
    cache = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            analysis = Analysis(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as error:
            log.warning(
                "ignoring the measurement cache %s (%s); every row is measured again", path, error
            )
            return {}
        cache[analysis.key] = analysis
    return cache


def _save_cache(root: Path, analyses: list[Analysis]) -> None:
    lines = (json.dumps(dataclasses.asdict(a), ensure_ascii=False) + "\n" for a in analyses)
    write_text_atomic(root / CACHE_FILE, "".join(lines))
