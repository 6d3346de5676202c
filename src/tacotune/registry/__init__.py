"""An embedded model registry: registered versions of trained voices, ready to use and trust.

Layout of a registry root (``./registry``, ``$TACOTUNE_REGISTRY`` or an explicit path)::

    ROOT/.lock                 flock target: version allocation and stage changes
    ROOT/NAME/.counter         the last version number handed out (numbers never repeat)
    ROOT/NAME/vN/model.pt      a copy of the registered checkpoint
    ROOT/NAME/vN/vocoder.pt    a copy of its neural vocoder, if registered with one
    ROOT/NAME/vN/config.yaml   the resolved config stored in the checkpoint
    ROOT/NAME/vN/metrics.json  its metrics: the run's best evaluation (and its vocoder's)
    ROOT/NAME/vN/README.md     its model card (tacotune/card.py)
    ROOT/NAME/vN/meta.json     every `ModelVersion` field except the directory

A version directory is built in a temporary directory inside the root and renamed into
place, so a reader never sees half a version; stage changes replace meta.json atomically.
meta.json holds the sha256 of every other file of the version, and `get` (so show,
promote, export, `tacotune export` and `serve`) checks them all (`ModelVersion.verify`,
registry/version.py): a version with a damaged or replaced file is an error, never a
silently different voice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shlex
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from tacotune.card import CardFacts, RunFacts, model_card, payload_facts, run_facts
from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.config.load import save_config
from tacotune.errors import CheckpointError, short_repr
from tacotune.files import (
    check_output_directory,
    copy_file_atomic,
    write_json_atomic,
    write_text_atomic,
)
from tacotune.names import MODEL_NAME_PATTERN, check_model_name, model_name_problem
from tacotune.registry.version import (
    CARD_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    HASHED_FILES,
    META_FILE,
    METRICS_FILE,
    STAGES,
    VOCODER_FILE,
    ModelVersion,
    RegistryError,
    checked_sha256,
    is_number,
    read_version,
)

__all__ = ["STAGES", "ModelVersion", "Registry", "RegistryError", "versions_table"]

log = logging.getLogger(__name__)

ENV_VAR = "TACOTUNE_REGISTRY"
NAME_PATTERN = MODEL_NAME_PATTERN  # what a registered name may be (tacotune.names)
_REF_FORMS = "NAME, NAME:VERSION, NAME:latest or NAME:STAGE (stages: " + ", ".join(STAGES) + ")"


class Registry:
    """Registered model versions under one root directory."""

    def __init__(self, root: str | Path | None = None) -> None:
        """`root` None: ``$TACOTUNE_REGISTRY`` if set, else ``./registry``."""
        if root is None:
            root = os.environ.get(ENV_VAR) or "registry"
        self.root = Path(root)

    def register(
        self,
        name: str,
        checkpoint: str | Path,
        *,
        metrics: Mapping[str, float] | None = None,
        score: float | None = None,
        source: str = "",
        stage: str = "candidate",
        vocoder: str | Path | None = None,
        run: RunFacts | None = None,
    ) -> ModelVersion:
        """Register `checkpoint` as the next version of `name`, with its model card.

        `run`: what the run's files say of these weights (card.run_facts): its best
        evaluation's score, metrics and step, used where `score` and `metrics` are not
        given. `score` None and no run: the best score stored in the checkpoint, if any.
        `vocoder`: a neural vocoder (a vocoder run directory or checkpoint) stored with it
        as vocoder.pt; its mels must be the acoustic model's; a vocoder run's best metrics
        join the version's as `vocoder/...`.
        """
        name = check_model_name(name)
        _check_stage(stage)
        run = run or RunFacts()
        clean_metrics = _clean_metrics(run.metrics if metrics is None else metrics)
        score = run.score if score is None else score
        if score is not None and not is_number(score):
            raise RegistryError(f"score must be a finite number, found {score!r}")
        check_output_directory(self.root, "--root")  # a file, read-only: one line, no work
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-register-", dir=self.root))
        try:
            _place_checkpoint(Path(checkpoint), staging / CHECKPOINT_FILE)
            payload = _load_payload(staging / CHECKPOINT_FILE, Path(checkpoint))
            _write_config(payload, staging / CONFIG_FILE, Path(checkpoint))
            if vocoder is not None:
                _place_vocoder(Path(vocoder), staging / VOCODER_FILE, payload)
                clean_metrics |= _vocoder_metrics(Path(vocoder))
            write_json_atomic(staging / METRICS_FILE, clean_metrics)
            facts = {**payload_facts(payload), "data_hours": run.data_hours}
            steps = run.step if run.step is not None else facts["steps"]
            score = float(score) if score is not None else _payload_score(payload)
            with self._locked():
                number = self._allocate(name)
                card = _card(name, number, facts, score, clean_metrics, steps, vocoder)
                write_text_atomic(staging / CARD_FILE, card)
                hashes = {  # of the version's own bytes
                    field: checked_sha256(staging / file) if (staging / file).exists() else ""
                    for field, file in HASHED_FILES.items()
                }
                version = ModelVersion(
                    name=name,
                    version=number,
                    stage=stage,
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                    directory=self.root / name / f"v{number}",
                    score=score,
                    metrics=clean_metrics,
                    data_fingerprint=str(payload["dataset_fingerprint"]),
                    code_version=str(payload["code_version"]),
                    source=source,
                    steps=steps,
                    data_hours=run.data_hours,
                    **hashes,
                )
                write_json_atomic(staging / META_FILE, version.meta())
                if stage == "production":
                    self._archive_production(name, keep=None)
                os.rename(staging, version.directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else clean up
        log.info("registered %s (%s) from %s", version.ref, stage, checkpoint)
        return version

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every registered version (of `name`, if given), sorted by name and version."""
        if name is not None:
            problem = model_name_problem(name)  # also keeps glob characters out of the pattern
            if problem:
                raise RegistryError(f"bad model name {short_repr(name)}: {problem}")
            name = unicodedata.normalize("NFC", name)  # as registered (check_model_name)
        metas = self.root.glob(f"{name or '*'}/v*/{META_FILE}")
        found = [
            read_version(m.parent)
            for m in metas
            if m.parent.name[1:].isdigit() and not model_name_problem(m.parent.parent.name)
        ]
        return sorted(found, key=lambda v: (v.name, v.version))

    def check_root(self) -> None:
        """Raise RegistryError if the root does not exist or holds no registry (a mistyped
        --root or $TACOTUNE_REGISTRY, rather than an empty registry)."""
        where = "check --root (tacotune export: --registry) or $TACOTUNE_REGISTRY"
        if not self.root.exists():
            raise RegistryError(
                f"no registry at {self.root}: the directory does not exist; {where}"
            )
        if not self.root.is_dir():
            raise RegistryError(
                f"no registry at {self.root}: it is a file, not a directory; {where}"
            )
        if not (self.root / ".lock").exists() and not self.versions():
            raise RegistryError(
                f"{self.root} holds no registry: nothing was ever registered there "
                f"(no .lock, no NAME/vN/meta.json); {where}"
            )

    def get(self, ref: str, *, verify: bool = True) -> ModelVersion:
        """Resolve ``name``, ``name:3``, ``name:latest`` or ``name:<stage>`` (newest in it);
        with `verify`, check its checkpoint against the recorded sha256 (ModelVersion.verify)."""
        version = self._resolve(ref)
        if verify:
            version.verify()
        return version

    def _resolve(self, ref: str) -> ModelVersion:
        name, _, selector = ref.partition(":")
        if model_name_problem(name):
            raise RegistryError(f"bad model reference {short_repr(ref)}: expected {_REF_FORMS}")
        candidates = self.versions(name)
        if not candidates:
            self.check_root()
            names = sorted({v.name for v in self.versions()})
            known = f"registered names: {', '.join(names)}" if names else "the registry is empty"
            raise RegistryError(f"no model named {name!r} in {self.root} ({known})")
        if selector in ("", "latest"):
            return candidates[-1]
        if selector.isdigit():
            for v in candidates:
                if v.version == int(selector):
                    return v
            numbers = ", ".join(str(v.version) for v in candidates)
            raise RegistryError(f"{name} has no version {selector} (versions: {numbers})")
        if selector in STAGES:
            in_stage = [v for v in candidates if v.stage == selector]
            if not in_stage:
                stages = ", ".join(f"{v.ref} {v.stage}" for v in candidates)
                raise RegistryError(
                    f"{name} has no version in stage {selector!r} ({stages}); "
                    "promote one with `tacotune registry promote "
                    f"{name}:VERSION --stage {selector} --root {shlex.quote(str(self.root))}`"
                )
            return in_stage[-1]
        raise RegistryError(f"bad model reference {short_repr(ref)}: expected {_REF_FORMS}")

    def promote(self, ref: str, stage: str) -> ModelVersion:
        """Move a version to `stage`; a new production version archives the previous one."""
        _check_stage(stage)
        with self._locked():
            target = self.get(ref)  # verified: a damaged file is never promoted
            if stage == "production":
                self._archive_production(target.name, keep=target.version)
            updated = dataclasses.replace(target, stage=stage)
            write_json_atomic(target.directory / "meta.json", updated.meta())
        log.info("promoted %s from %s to %s", updated.ref, target.stage, stage)
        return updated

    def export(self, ref: str, out_dir: str | Path) -> Path:
        """Write the version into `out_dir`, new or empty, as `tacotune export` does:
        model.pt, vocoder.pt if registered with one, config.yaml, metrics.json, meta.json
        and README.md (its model card). Returns the directory written."""
        from tacotune.outputs import Kind, check_output

        out = check_output(out_dir, Kind.EXPORT)  # mine, new or empty: one line before work
        version = self.get(ref)  # verified: a damaged file is never exported
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            for file in (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, CARD_FILE):
                if (version.directory / file).exists():  # older versions: no card
                    copy_file_atomic(version.directory / file, staging / file)
            vocoder = version.vocoder()
            if vocoder is not None:
                copy_file_atomic(vocoder, staging / VOCODER_FILE)
            write_json_atomic(staging / META_FILE, version.meta())
            if out.exists():
                out.rmdir()  # empty (check_output): the rename takes its place
            os.rename(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("exported %s to %s", version.ref, out)
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive flock on ROOT/.lock (across processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _allocate(self, name: str) -> int:
        """The next version number of `name` (call with the lock held)."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        counter = folder / ".counter"
        last = int(counter.read_text()) if counter.is_file() else 0
        existing = [int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit()]
        number = max([last, *existing]) + 1
        write_text_atomic(counter, str(number))
        return number

    def _archive_production(self, name: str, keep: int | None) -> None:
        """Archive `name`'s production versions except `keep` (call with the lock held)."""
        for v in self.versions(name):
            if v.stage == "production" and v.version != keep:
                archived = dataclasses.replace(v, stage="archived")
                write_json_atomic(v.directory / "meta.json", archived.meta())
                log.info("archived %s (was production)", v.ref)


def versions_table(versions: Sequence[ModelVersion]) -> Table:
    """A rich table: name, version, stage, score, voice metric, steps, hours of training
    speech, created (UTC, to the minute), source."""
    table = Table(title="registered models")
    table.add_column("name", overflow="fold")
    for column in ("version", "stage", "score", "voice metric", "steps", "data (h)", "created"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    table.add_column("source", overflow="fold", min_width=8)
    styles = {
        **{"production": "bold green", "candidate": "yellow"},
        **{"archived": "dim", "rejected": "bold red"},
    }
    for v in versions:
        table.add_row(
            Text(v.name, style="bold"),
            str(v.version),
            Text(v.stage, style=styles.get(v.stage, "")),
            "—" if v.score is None else f"{v.score:.4f}",
            _shown(v.metrics.get("free/mcd_ratio")),
            "—" if v.steps is None else str(v.steps),
            "—" if v.data_hours is None else f"{v.data_hours:.2f}",
            v.created[:16].replace("T", " "),  # stored as 2025-01-31T12:00:00+00:00
            Text(v.source or "—"),  # Text: a path with [brackets] is not markup
        )
    return table


def _card(
    name: str,
    number: int,
    facts: dict[str, Any],
    score: float | None,
    metrics: Mapping[str, float],
    steps: int | None,
    vocoder: str | Path | None,
) -> str:
    """The model card of a version; its commands run where it lies (and where it is
    exported to): no path of this machine."""
    usage = 'tacotune synthesize model.pt "Привет! Как дела?" -o hello.wav'
    neural = "" if vocoder is None else " --vocoder vocoder.pt"
    mcd, gl = metrics.get("vocoder/eval/mcd"), metrics.get("vocoder/gl/mcd")
    described = (
        "Griffin-Lim"
        if vocoder is None
        else "HiFi-GAN (vocoder.pt)"
        + (f", MCD {mcd:.2f} dB against Griffin-Lim's {gl:.2f}" if mcd and gl else "")
    )
    card = CardFacts(
        title=f"{name} v{number}",
        **{**facts, "steps": steps},
        score=score,
        metrics=metrics,
        vocoder=described,
        usage=[usage + neural, _serve_line(name, number, vocoder is not None)],
    )
    return model_card(card)


def _serve_line(name: str, number: int, neural: bool) -> str:
    """How to serve the voice over the OpenAI-style HTTP API."""
    if neural:  # serve takes a vocoder from the registry only
        return f"tacotune serve {name}:{number}   # from a registry that holds it, with vocoder.pt"
    return "tacotune serve model.pt   # OpenAI-style HTTP API and a web page on 127.0.0.1"


def _vocoder_metrics(source: Path) -> dict[str, float]:
    """A vocoder run's best evaluation, as `vocoder/<metric>` (empty for a bare file)."""
    if not source.is_dir():
        return {}
    keep = ("eval/mcd", "gl/mcd", "eval/mel_l1", "gl/mel_l1", "eval/pesq", "gl/pesq")
    best = run_facts(source).metrics
    return {f"vocoder/{key}": best[key] for key in keep if key in best}


def _shown(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _place_checkpoint(source: Path, destination: Path) -> None:
    """Copy `source` to `destination`: the version owns its bytes (see copy_file_atomic)."""
    if not source.is_file():
        what = "is a directory" if source.is_dir() else "does not exist"
        raise RegistryError(
            f"checkpoint {source} {what}; give a checkpoint file such as RUN/checkpoints/best.pt"
        )
    copy_file_atomic(source, destination)


def _place_vocoder(source: Path, destination: Path, acoustic: dict[str, Any]) -> None:
    """Copy a vocoder checkpoint (or a vocoder run's) into the version, check that it is
    one and that it fits the acoustic model's mels."""
    from tacotune.vocoder.neural import HifiGanVocoder, vocoder_checkpoint

    try:
        file = vocoder_checkpoint(source)
        _place_checkpoint(file, destination)
        audio = checkpoint_config(acoustic).audio
        HifiGanVocoder.from_payload(load_checkpoint(destination), audio, source=f"vocoder {file}")
    except CheckpointError as error:
        reason = str(error).replace(str(destination), str(source))
        raise RegistryError(f"vocoder {source} cannot be registered: {reason}") from error


def _load_payload(path: Path, shown: Path) -> dict[str, Any]:
    """The checkpoint payload, checked for what a registered version needs: a voice that
    synthesis loads (`tacotune.synthesize.load_voice`), not a vocoder."""
    from tacotune.synthesize import load_voice
    from tacotune.vocoder.neural import PAYLOAD_KEYS

    try:
        payload = load_checkpoint(path)
        if all(key in payload for key in PAYLOAD_KEYS) and "model" not in payload:
            raise RegistryError(
                f"checkpoint {shown} is a neural vocoder (a run of `tacotune vocoder train`), "
                "not a voice; register the voice's acoustic run and store the vocoder with it: "
                f"tacotune registry add VOICE_RUN --name NAME --vocoder {shlex.quote(str(shown))}"
            )
        load_voice(payload, str(shown))  # its config, frontend and weights fit together
    except CheckpointError as error:
        reason = str(error).replace(str(path), str(shown))  # name the file the user gave
        raise RegistryError(f"checkpoint {shown} cannot be registered: {reason}") from error
    missing = [k for k in ("dataset_fingerprint", "code_version") if k not in payload]
    if missing:
        raise RegistryError(
            f"checkpoint {shown} lacks {', '.join(missing)}; was it saved by tacotune?"
        )
    return payload


def _write_config(payload: dict[str, Any], path: Path, shown: Path) -> None:
    try:
        config = checkpoint_config(payload, shown)
    except CheckpointError as error:
        raise RegistryError(f"checkpoint {shown} cannot be registered: {error}") from error
    save_config(config, path)


def _payload_score(payload: dict[str, Any]) -> float | None:
    best = payload.get("early_stopping", {}).get("best_score")
    return float(best) if is_number(best) else None


def _clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    for key, value in metrics.items():
        if not is_number(value):
            raise RegistryError(f"metric {key!r} must be a finite number, found {value!r}")
    return {str(key): float(value) for key, value in metrics.items()}


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
