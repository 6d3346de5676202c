"""The model registry on real checkpoints of a tiny training run."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from tacotune.checkpoint import load_checkpoint, save_checkpoint
from tacotune.config import load_config
from tacotune.files import OutputError
from tacotune.names import ModelNameError
from tacotune.registry import STAGES, ModelVersion, Registry, RegistryError, versions_table
from tacotune.train import train

from conftest import tiny_train

pytestmark = pytest.mark.slow  # trains a tiny model, spawns four processes


@dataclass(frozen=True)
class Run:
    directory: Path
    checkpoint: Path
    payload: dict[str, Any]


@pytest.fixture(scope="module")
def runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """Two real checkpoints of one tiny run: the last (step 6) and the step-3 one."""
    directory = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_train("train.keep_checkpoints=2"), prepared, directory)
    found = []
    for name in ("last.pt", "step_0000003.pt"):
        path = directory / "checkpoints" / name
        found.append(Run(directory, path, load_checkpoint(path)))
    return found[0], found[1]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def _register_two(registry: Registry, runs: tuple[Run, Run]) -> tuple[ModelVersion, ModelVersion]:
    a, b = runs
    v1 = registry.register(
        "voice", a.checkpoint, metrics={"val/mel_postnet": 0.5}, source=str(a.directory)
    )
    v2 = registry.register("voice", b.checkpoint, score=1.25, source=str(b.directory))
    return v1, v2


def test_register_records_every_field(registry: Registry, runs: tuple[Run, Run]) -> None:
    v1, v2 = _register_two(registry, runs)
    a, b = runs
    assert (v1.name, v1.version, v1.stage) == ("voice", 1, "candidate")
    assert (v2.name, v2.version, v2.stage) == ("voice", 2, "candidate")
    created = datetime.fromisoformat(v1.created)
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert v1.directory == registry.root / "voice" / "v1" and v1.checkpoint.is_file()
    assert (v1.ref, v2.ref) == ("voice:1", "voice:2")
    # no score given: the run's best score stored in the checkpoint; given: that one
    assert v1.score is not None
    assert v1.score == pytest.approx(a.payload["early_stopping"]["best_score"])
    assert v2.score == 1.25
    assert (v1.metrics, v2.metrics) == ({"val/mel_postnet": 0.5}, {})
    assert v1.data_fingerprint == a.payload["dataset_fingerprint"] != ""
    assert v2.data_fingerprint == b.payload["dataset_fingerprint"]
    assert v1.code_version == a.payload["code_version"] != ""
    assert (v1.source, v2.source) == (str(a.directory), str(b.directory))
    for version, run in ((v1, a), (v2, b)):
        assert load_config(version.directory / "config.yaml") == load_config(
            run.directory / "config.yaml"
        )
        meta = json.loads((version.directory / "meta.json").read_text())
        assert set(meta) == {f.name for f in fields(ModelVersion)} - {"directory"}
        assert ModelVersion(directory=version.directory, **meta) == version
        assert json.loads((version.directory / "metrics.json").read_text()) == version.metrics
    # the version's own copy: the same bytes, never the run's inode
    assert os.stat(v1.checkpoint).st_ino != os.stat(a.checkpoint).st_ino
    assert v1.checkpoint.read_bytes() == a.checkpoint.read_bytes()
    assert load_checkpoint(v1.checkpoint)["state"]["step"] == 6
    assert load_checkpoint(v2.checkpoint)["state"]["step"] == b.payload["state"]["step"] == 3
    assert Registry(registry.root).versions() == [v1, v2]  # read back from disk


def test_registered_model_survives_its_source(
    registry: Registry, runs: tuple[Run, Run], tmp_path: Path
) -> None:
    source = tmp_path / "source.pt"
    shutil.copy2(runs[0].checkpoint, source)
    version = registry.register("voice", source)
    save_checkpoint(source, runs[1].payload)  # replaced atomically, as training does
    assert load_checkpoint(version.checkpoint)["state"]["step"] == 6
    source.unlink()
    assert load_checkpoint(version.checkpoint)["state"]["step"] == 6


def test_damage_to_the_source_in_place_leaves_the_version_intact(
    registry: Registry, runs: tuple[Run, Run], tmp_path: Path
) -> None:
    source = tmp_path / "source.pt"
    shutil.copy2(runs[0].checkpoint, source)
    version = registry.register("voice", source)
    with source.open("r+b") as f:  # a write in place (an editor, a crash, `cp` over it)
        f.truncate(100)
    assert load_checkpoint(version.checkpoint)["state"]["step"] == 6


def test_weights_only_checkpoint_has_no_known_score(
    registry: Registry, runs: tuple[Run, Run], tmp_path: Path
) -> None:
    keys = ("config", "text_frontend", "n_symbols", "model", "dataset_fingerprint", "code_version")
    slim = tmp_path / "model.pt"  # like an inference checkpoint: no early-stopping state
    save_checkpoint(slim, {key: runs[0].payload[key] for key in keys})
    version = registry.register("voice", slim)
    assert version.score is None
    assert version.data_fingerprint == runs[0].payload["dataset_fingerprint"]
    assert json.loads((version.directory / "meta.json").read_text())["score"] is None


def test_versions_lists_and_filters(
    registry: Registry, runs: tuple[Run, Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry.versions() == []  # the root does not even exist yet
    registry.register("zeta", runs[0].checkpoint)
    _register_two(registry, runs)
    assert [v.ref for v in registry.versions()] == ["voice:1", "voice:2", "zeta:1"]
    assert [v.ref for v in registry.versions("zeta")] == ["zeta:1"]
    assert registry.versions("nobody") == []
    monkeypatch.setenv("TACOTUNE_REGISTRY", str(registry.root))
    assert Registry().root == registry.root and len(Registry().versions()) == 3
    monkeypatch.delenv("TACOTUNE_REGISTRY")
    assert Registry().root == Path("registry")


def test_get_resolves_every_ref_form(registry: Registry, runs: tuple[Run, Run]) -> None:
    v1, v2 = _register_two(registry, runs)
    assert registry.get("voice") == v2
    assert registry.get("voice:latest") == v2
    assert registry.get("voice:1") == v1 and registry.get("voice:2") == v2
    assert registry.get("voice:candidate") == v2  # the newest candidate
    promoted = registry.promote("voice:1", "production")
    assert registry.get("voice:production") == promoted
    assert registry.get("voice:candidate") == v2


def test_get_errors_are_specific(registry: Registry, runs: tuple[Run, Run]) -> None:
    with pytest.raises(
        RegistryError, match=r"no registry at .*: the directory does not exist; check --root"
    ):
        registry.get("voice")
    registry.root.mkdir()
    with pytest.raises(RegistryError, match="holds no registry: nothing was ever registered"):
        registry.get("voice")
    (registry.root / ".lock").touch()  # a registry, whose versions were all removed
    with pytest.raises(RegistryError, match="registry is empty"):
        registry.get("voice")
    _register_two(registry, runs)
    with pytest.raises(RegistryError, match="registered names: voice"):
        registry.get("other:1")
    with pytest.raises(RegistryError, match=r"no version 7 \(versions: 1, 2\)"):
        registry.get("voice:7")
    with pytest.raises(RegistryError, match=r"no version in stage 'production'.*promote"):
        registry.get("voice:production")
    with pytest.raises(RegistryError, match="expected NAME, NAME:VERSION"):
        registry.get("voice:best")
    with pytest.raises(RegistryError, match="expected NAME"):
        registry.get("../voice")


def test_promote_keeps_one_production(registry: Registry, runs: tuple[Run, Run]) -> None:
    _register_two(registry, runs)
    first = registry.promote("voice:1", "production")
    assert first.stage == "production" and registry.get("voice:1") == first
    second = registry.promote("voice:candidate", "production")  # resolves to v2
    assert (second.version, second.stage) == (2, "production")
    assert [v.stage for v in registry.versions("voice")] == ["archived", "production"]
    assert json.loads((first.directory / "meta.json").read_text())["stage"] == "archived"
    third = registry.register("voice", runs[0].checkpoint, stage="production")
    assert [v.stage for v in registry.versions("voice")] == ["archived", "archived", "production"]
    assert registry.get("voice:production") == third
    back = registry.promote("voice:3", "candidate")
    assert back.stage == "candidate" and registry.get("voice:3").stage == "candidate"
    assert not list(registry.root.rglob("*.tmp"))  # atomic rewrites left no temp files


def test_unknown_stage_is_refused(registry: Registry, runs: tuple[Run, Run]) -> None:
    _register_two(registry, runs)
    message = "unknown stage 'staging'; stages are " + ", ".join(STAGES)
    with pytest.raises(RegistryError, match=message):
        registry.promote("voice:1", "staging")
    with pytest.raises(RegistryError, match="unknown stage"):
        registry.register("voice", runs[0].checkpoint, stage="live")
    assert [v.stage for v in registry.versions()] == ["candidate", "candidate"]


def test_export_writes_a_usable_directory(
    registry: Registry, runs: tuple[Run, Run], tmp_path: Path
) -> None:
    v1, _ = _register_two(registry, runs)
    target = registry.export("voice:1", tmp_path / "exports")
    assert target == tmp_path / "exports"  # into -o, as `tacotune export -o` writes
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md",
        "config.yaml",
        "meta.json",
        "metrics.json",
        "model.pt",
    ]
    assert load_checkpoint(target / "model.pt")["dataset_fingerprint"] == v1.data_fingerprint
    assert load_config(target / "config.yaml") == load_config(runs[0].directory / "config.yaml")
    assert json.loads((target / "meta.json").read_text()) == v1.meta()
    card = (target / "README.md").read_text(encoding="utf-8")
    assert card == (v1.directory / "README.md").read_text(encoding="utf-8")
    assert 'tacotune synthesize model.pt "Привет! Как дела?" -o hello.wav' in card
    assert v1.data_fingerprint in card and f"{v1.score:.4f}" in card
    assert str(tmp_path) not in card  # no path of this machine
    with pytest.raises(OutputError, match=r"already holds an export bundle|is not empty"):
        registry.export("voice:1", tmp_path / "exports")
    assert sorted(p.name for p in target.iterdir())[0] == "README.md"  # untouched


def test_unreadable_checkpoints_are_refused(
    registry: Registry, runs: tuple[Run, Run], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint \xff" * 20)
    with pytest.raises(
        RegistryError, match=re.escape(f"checkpoint {garbage} cannot be registered")
    ):
        registry.register("voice", garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)  # a torch file, not a tacotune checkpoint
    with pytest.raises(RegistryError, match="cannot be registered") as error:
        registry.register("voice", foreign)
    assert f"checkpoint {foreign} has format None" in str(error.value)  # the path given
    assert ".tmp" not in str(error.value)  # not the staging copy
    missing = tmp_path / "missing.pt"
    with pytest.raises(RegistryError, match=re.escape(f"checkpoint {missing} does not exist")):
        registry.register("voice", missing)
    with pytest.raises(RegistryError, match=r"is a directory.*checkpoints/best\.pt"):
        registry.register("voice", runs[0].directory)
    assert registry.versions() == []
    assert not any(p.name.startswith(".tmp") for p in registry.root.iterdir())
    # a failed registration does not use up a version number
    assert registry.register("voice", runs[0].checkpoint).version == 1


@pytest.mark.parametrize(
    "name", ["", "-voice", "my voice", "a/b", "v:1", ".hidden", "..", "a\x00b", "_x", "a*"]
)
def test_bad_names_are_refused(registry: Registry, runs: tuple[Run, Run], name: str) -> None:
    with pytest.raises(ModelNameError, match=r"is not allowed: use a letter or digit \(any script"):
        registry.register(name, runs[0].checkpoint)
    with pytest.raises(ModelNameError, match=r"it has 61 characters, the most is 60"):
        registry.register("a" * 61, runs[0].checkpoint)
    assert registry.versions() == []


def test_good_names_are_accepted(registry: Registry, runs: tuple[Run, Run]) -> None:
    for name in ("Ruslan_2.0-final", "7", "голос", "anna-2", "a" * 60):
        assert registry.register(name, runs[0].checkpoint).ref == f"{name}:1"
        assert registry.get(f"{name}:latest").directory == registry.root / name / "v1"


def _register_worker(root: str, checkpoint: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)  # all four start registering together
    results.put(Registry(root).register("voice", checkpoint, source=f"pid {os.getpid()}").version)


def test_concurrent_registration_never_repeats_a_version(
    registry: Registry, runs: tuple[Run, Run]
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    args = (str(registry.root), str(runs[0].checkpoint), barrier, results)
    workers = [context.Process(target=_register_worker, args=args) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=120)
    finally:
        for worker in workers:
            if worker.is_alive():  # only after a timeout; the assertion below then fails
                worker.kill()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in range(4)) == [1, 2, 3, 4]
    versions = registry.versions()
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert len({v.source for v in versions}) == 4  # four different processes
    fingerprint = runs[0].payload["dataset_fingerprint"]
    for version in versions:
        assert load_checkpoint(version.checkpoint)["dataset_fingerprint"] == fingerprint
        assert version.data_fingerprint == fingerprint
        assert (version.directory / "config.yaml").is_file()
    assert (registry.root / "voice" / ".counter").read_text() == "4"
    assert not any(p.name.startswith(".tmp") for p in registry.root.iterdir())


def test_versions_table_renders(registry: Registry, runs: tuple[Run, Run]) -> None:
    _register_two(registry, runs)
    registry.register("other", runs[0].checkpoint, source="[bold]runs/x[/bold]")
    registry.promote("voice:2", "production")
    console = Console(record=True, width=200)
    console.print(versions_table(registry.versions()))
    text = console.export_text()
    assert "voice" in text and "other" in text
    assert "production" in text and "candidate" in text
    assert "1.2500" in text  # v2's score
    assert registry.get("other").created[:16].replace("T", " ") in text  # UTC, to the minute
    assert "[bold]runs/x[/bold]" in text  # a source is shown verbatim, not as markup
    for column in ("name", "version", "stage", "score", "created", "source"):
        assert column in text


def test_the_registry_command(
    runs: tuple[Run, Run], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tacotune.cli import main

    root = ["--root", str(tmp_path / "registry")]
    assert main(["registry", "add", str(runs[0].directory), "--name", "voice", *root]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["name"], added["version"], added["stage"]) == ("voice", 1, "candidate")
    assert main(["registry", "promote", "voice:1", "--stage", "production", *root]) == 0
    capsys.readouterr()
    assert main(["registry", "show", "voice:production", *root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["stage"]) == (1, "production")
    assert main(["registry", "list", *root]) == 0
    assert "production" in capsys.readouterr().out
    out = tmp_path / "exports"
    assert main(["registry", "export", "voice:1", "-o", str(out), *root]) == 0
    assert (out / "model.pt").exists()
    # user errors: one line and exit code 1, never a traceback
    assert main(["registry", "promote", "voice:1", *root]) == 1
    assert main(["registry", "show", "voice:7", *root]) == 1
    assert main(["registry", "show", *root]) == 1


def test_registry_add_remembers_the_run_and_writes_its_model_card(
    runs: tuple[Run, Run], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`registry add RUN` stores what the run's files say of its best weights (score, voice
    metric, steps) and a model card that names data, steps, metrics and license without a
    path of this machine."""
    from tacotune.card import run_facts
    from tacotune.cli import main

    run = runs[0].directory
    best = run_facts(run)
    assert best.step is not None and best.score is not None and "free/mcd_ratio" in best.metrics
    root = ["--root", str(tmp_path / "registry")]
    assert main(["registry", "add", str(run), "--name", "анна", *root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["score"] == pytest.approx(best.score) and shown["steps"] == best.step
    assert shown["metrics"]["free/mcd_ratio"] == pytest.approx(best.metrics["free/mcd_ratio"])
    assert main(["registry", "list", *root]) == 0
    listed = capsys.readouterr().out
    assert "voice metric" in listed and f"{best.metrics['free/mcd_ratio']:.3f}" in listed
    card = (Path(shown["directory"]) / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- ru\nlicense: other\n")  # front matter
    assert f"steps: {best.step} (these weights)" in card
    assert shown["data_fingerprint"] in card and "| free/mcd_ratio |" in card
    assert "## License" in card and "## Intended use and limits" in card
    assert str(tmp_path) not in card and str(run) not in card
