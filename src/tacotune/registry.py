"""An embedded model registry: registered versions of trained voices, ready to use and trust.

Layout of a registry root (``./registry``, ``$TACOTUNE_REGISTRY`` or an explicit path)::

    ROOT/.lock                 flock target: version allocation and stage changes
    ROOT/NAME/.counter         the last version number handed out (numbers never repeat)
    ROOT/NAME/vN/model.pt      a copy of the registered checkpoint
    ROOT/NAME/vN/vocoder.pt    a copy of its neural vocoder, if registered with one (its
                               sha256 is in meta.json and checked before every use)
    ROOT/NAME/vN/config.yaml   the resolved config stored in the checkpoint
    ROOT/NAME/vN/metrics.json  the metrics given at registration
    ROOT/NAME/vN/meta.json     every `ModelVersion` field except the directory

A version directory is built in a temporary directory inside the root and renamed into
place, so a reader never sees half a version; stage changes replace meta.json atomically.
meta.json holds the sha256 of model.pt, and `get` checks it: a version whose checkpoint
was damaged or replaced is an error, never a silently different voice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from tacotune.checkpoint import checkpoint_config, load_checkpoint
from tacotune.config.load import save_config
from tacotune.errors import CheckpointError, TacotuneError
from tacotune.files import copy_file_atomic, file_sha256, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

VOCODER_FILE = "vocoder.pt"
STAGES = ("candidate", "production", "archived", "rejected")  # rejected: not a usable voice
ENV_VAR = "TACOTUNE_REGISTRY"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REF_FORMS = "NAME, NAME:VERSION, NAME:latest or NAME:STAGE (stages: " + ", ".join(STAGES) + ")"


class RegistryError(TacotuneError):
    """A registry operation cannot be done (bad name, ref, stage, checkpoint or export)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a named voice."""

    name: str
    version: int  # 1, 2, ... per name
    stage: str  # one of STAGES
    created: str  # ISO-8601 UTC
    directory: Path  # ROOT/NAME/v<version>
    score: float | None  # the run's best composite score (lower is better), if known
    metrics: dict[str, float]  # whatever was passed at registration
    data_fingerprint: str  # the checkpoint's "dataset_fingerprint"
    code_version: str  # the checkpoint's "code_version"
    source: str  # where it came from (a run directory), free text
    sha256: str = ""  # of model.pt at registration ("" for versions registered before hashes)
    vocoder_sha256: str = ""  # of vocoder.pt at registration; "" without a neural vocoder

    @property
    def checkpoint(self) -> Path:
        """The registered checkpoint, ``directory / "model.pt"``."""
        return self.directory / "model.pt"

    def vocoder(self) -> Path | None:
        """The registered vocoder checkpoint (checked against its sha256), or None for a
        version that speaks with Griffin-Lim. RegistryError if the file was changed."""
        if not self.vocoder_sha256:
            return None
        path = self.directory / VOCODER_FILE
        try:
            found = file_sha256(path)
        except OSError as error:
            raise RegistryError(
                f"{path} of {self.ref} cannot be read ({error.strerror or error}); restore it "
                "or register the voice again"
            ) from error
        if found != self.vocoder_sha256:
            raise RegistryError(
                f"{path} of {self.ref} was changed after registration: its sha256 is {found}, "
                f"meta.json records {self.vocoder_sha256}; restore the file or register the "
                "voice again"
            )
        return path

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    def meta(self) -> dict[str, Any]:
        """Every field except the directory, as JSON-ready data."""
        data = dataclasses.asdict(self)
        del data["directory"]
        return data

    def verify(self) -> None:
        """Check that model.pt still has the sha256 recorded at registration (RegistryError
        naming the file and both hashes if not). A version registered before hashes were
        recorded cannot be checked: a warning says so."""
        if not self.sha256:
            log.warning(
                "%s has no recorded sha256 (registered by an older tacotune): "
                "its checkpoint is not verified",
                self.ref,
            )
            return
        found = _checked_sha256(self.checkpoint)
        if found != self.sha256:
            raise RegistryError(
                f"{self.checkpoint} of {self.ref} was changed after registration: its sha256 "
                f"is {found}, meta.json records {self.sha256}; restore the file (e.g. from "
                f"the run in {self.source or 'its source'}) or register the voice again"
            )


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
    ) -> ModelVersion:
        """Register `checkpoint` as the next version of `name`.

        `score` None takes the run's best score stored in the checkpoint (if finite).
        `vocoder`: a neural vocoder (a vocoder run directory or checkpoint) stored with it
        as vocoder.pt; its mels must be the acoustic model's.
        """
        _check_name(name)
        _check_stage(stage)
        clean_metrics = _clean_metrics(metrics or {})
        if score is not None and not _is_number(score):
            raise RegistryError(f"score must be a finite number, found {score!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-register-", dir=self.root))
        try:
            _place_checkpoint(Path(checkpoint), staging / "model.pt")
            digest = _checked_sha256(staging / "model.pt")  # of the version's own bytes
            payload = _load_payload(staging / "model.pt", Path(checkpoint))
            _write_config(payload, staging / "config.yaml", Path(checkpoint))
            vocoder_sha256 = ""
            if vocoder is not None:
                vocoder_sha256 = _place_vocoder(Path(vocoder), staging / VOCODER_FILE, payload)
            write_json_atomic(staging / "metrics.json", clean_metrics)
            with self._locked():
                number = self._allocate(name)
                version = ModelVersion(
                    name=name,
                    version=number,
                    stage=stage,
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                    directory=self.root / name / f"v{number}",
                    score=float(score) if score is not None else _payload_score(payload),
                    metrics=clean_metrics,
                    data_fingerprint=str(payload["dataset_fingerprint"]),
                    code_version=str(payload["code_version"]),
                    source=source,
                    sha256=digest,
                    vocoder_sha256=vocoder_sha256,
                )
                write_json_atomic(staging / "meta.json", version.meta())
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
            _check_name(name)  # also keeps glob characters out of the pattern
        metas = self.root.glob(f"{name or '*'}/v*/meta.json")
        found = [
            _read_version(m.parent)
            for m in metas
            if m.parent.name[1:].isdigit() and _valid_name(m.parent.parent.name)
        ]
        return sorted(found, key=lambda v: (v.name, v.version))

    def check_root(self) -> None:
        """Raise RegistryError if the root does not exist or holds no registry (a mistyped
        --root or $TACOTUNE_REGISTRY, rather than an empty registry)."""
        where = "check --root (tacotune export: --registry) or $TACOTUNE_REGISTRY"
        if not self.root.exists():
            raise RegistryError(f"registry {self.root} does not exist; {where}")
        if not self.root.is_dir():
            raise RegistryError(f"registry {self.root} is a file, not a directory; {where}")
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
        if not _valid_name(name):
            raise RegistryError(f"bad model reference {ref!r}: expected {_REF_FORMS}")
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
        raise RegistryError(f"bad model reference {ref!r}: expected {_REF_FORMS}")

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
        """Write ``out_dir/<name>-v<version>/`` (model.pt, vocoder.pt if registered with one,
        config.yaml, meta.json, README.md)."""
        version = self.get(ref)
        out = Path(out_dir)
        target = out / f"{version.name}-v{version.version}"
        if target.exists():
            raise RegistryError(f"{target} already exists; remove it or export elsewhere")
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out))
        try:
            copy_file_atomic(version.checkpoint, staging / "model.pt")
            vocoder = version.vocoder()  # checked: a damaged vocoder is never exported
            if vocoder is not None:
                copy_file_atomic(vocoder, staging / VOCODER_FILE)
            shutil.copy2(version.directory / "config.yaml", staging / "config.yaml")
            write_json_atomic(staging / "meta.json", version.meta())
            readme = export_readme(version, target.resolve())
            (staging / "README.md").write_text(readme, encoding="utf-8")
            if target.exists():  # appeared meanwhile; a rename would replace an empty one
                raise RegistryError(f"export directory {target} appeared while exporting")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("exported %s to %s", version.ref, target)
        return target

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
    """A rich table: name, version, stage, score, created (UTC, to the minute), source."""
    table = Table(title="registered models")
    table.add_column("name", overflow="fold")
    for column in ("version", "stage", "score", "created"):
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
            v.created[:16].replace("T", " "),  # stored as 2025-01-31T12:00:00+00:00
            Text(v.source or "—"),  # Text: a path with [brackets] is not markup
        )
    return table


def export_readme(version: ModelVersion, directory: Path) -> str:
    """README.md of an exported version (`directory` is where it will live)."""
    command = f'tacotune synthesize {shlex.quote(str(directory / "model.pt"))} "текст" -o out.wav'
    if version.vocoder_sha256:
        command += f" --vocoder {shlex.quote(str(directory / VOCODER_FILE))}"
    score = "unknown" if version.score is None else f"{version.score:.4f} (lower is better)"
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(version.metrics.items()))
    lines = [
        f"# {version.name} v{version.version}",
        "",
        f"A Russian Tacotron2 text-to-speech voice trained with tacotune ({version.code_version}),",
        f"exported from the registry as `{version.ref}` (stage: {version.stage}).",
        "",
        f"- score: {score}",
        f"- data fingerprint: `{version.data_fingerprint}`",
        f"- registered: {version.created}",
        f"- source: {version.source or 'not recorded'}",
        "",
        "## Synthesize",
        "",
        f"```bash\n{command}\n```",
        "",
        "`model.pt` holds the weights, the text frontend and the resolved config",
        "(`config.yaml` is the same config, for reading); `meta.json` holds this information.",
    ]
    if version.vocoder_sha256:
        lines += [
            "`vocoder.pt` is the voice's neural (HiFi-GAN) vocoder, trained on its mels;",
            "without `--vocoder` synthesis uses Griffin-Lim.",
        ]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|", metrics]
    return "\n".join(lines) + "\n"


def _checked_sha256(path: Path) -> str:
    """The hex sha256 of a file (RegistryError if it cannot be read)."""
    try:
        return file_sha256(path)
    except OSError as error:
        raise RegistryError(
            f"{path} cannot be read ({error.strerror or error}); restore it or remove its version"
        ) from error


def _place_checkpoint(source: Path, destination: Path) -> None:
    """Copy `source` to `destination`: the version owns its bytes (see copy_file_atomic)."""
    if not source.is_file():
        what = "is a directory" if source.is_dir() else "does not exist"
        raise RegistryError(
            f"checkpoint {source} {what}; give a checkpoint file such as RUN/checkpoints/best.pt"
        )
    copy_file_atomic(source, destination)


def _place_vocoder(source: Path, destination: Path, acoustic: dict[str, Any]) -> str:
    """Copy a vocoder checkpoint (or a vocoder run's) into the version, check that it is
    one and that it fits the acoustic model's mels; returns the copy's sha256."""
    from tacotune.vocoder import HifiGanVocoder, vocoder_checkpoint

    try:
        file = vocoder_checkpoint(source)
        _place_checkpoint(file, destination)
        audio = checkpoint_config(acoustic).audio
        HifiGanVocoder.from_payload(load_checkpoint(destination), audio, source=f"vocoder {file}")
    except CheckpointError as error:
        reason = str(error).replace(str(destination), str(source))
        raise RegistryError(f"vocoder {source} cannot be registered: {reason}") from error
    return file_sha256(destination)


def _load_payload(path: Path, shown: Path) -> dict[str, Any]:
    """The checkpoint payload, checked for what a registered version needs."""
    try:
        payload = load_checkpoint(path)
    except CheckpointError as error:
        reason = str(error).replace(str(path), str(shown))  # name the file the user gave
        raise RegistryError(f"checkpoint {shown} cannot be registered: {reason}") from error
    missing = [k for k in ("config", "dataset_fingerprint", "code_version") if k not in payload]
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
    return float(best) if _is_number(best) else None


def _read_version(directory: Path) -> ModelVersion:
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return ModelVersion(directory=directory, **meta)
    except (OSError, ValueError, TypeError) as error:
        raise RegistryError(
            f"{meta_path} is unreadable or incomplete ({error}); restore it or remove {directory}"
        ) from error


def _clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    for key, value in metrics.items():
        if not _is_number(value):
            raise RegistryError(f"metric {key!r} must be a finite number, found {value!r}")
    return {str(key): float(value) for key, value in metrics.items()}


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise RegistryError(
            f"model name {name!r} is not allowed: use a letter or digit followed by letters, "
            "digits, '_', '.' or '-' (A-Z a-z 0-9 _ . -)"
        )


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
