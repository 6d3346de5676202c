"""Who may write where (tacotune/outputs.py), through the real CLI: every command writes only
into a directory of its own (new, empty, or one of its kind it continues), refuses anything
else in one line before any work, and leaves nothing behind when it refuses.

Tests run as root, for whom `chmod` takes no write permission away; a directory that takes
no new file whoever asks is /proc (the kernel's, on every Linux), so it stands for a
read-only -o.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tacotune.cli import main
from tacotune.outputs import Kind, kind_of
from tacotune.registry import Registry
from test_synthesize import save_untrained_voice
from test_vocoder_train import TINY_VOCODER

from conftest import TINY_TRAIN, good_rows

Builder = Callable[..., Path]
SETS = [arg for override in TINY_TRAIN for arg in ("--set", override)]
VOCODER_SETS = [arg for override in TINY_VOCODER for arg in ("--set", override)]
FAST = ["--set", "text.stress=off", "--set", "data.workers=1"]
READ_ONLY = Path("/proc/tacotune-outputs-test/out")  # nobody, root included, creates files here
ERROR = re.compile(r"^\S+ ERROR tacotune: (.*)$", re.MULTILINE)  # the CLI's one error line
USER_FILES = {"report.md": b"# my notes\n", "hello.wav": b"RIFF my recording"}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit code and the one error line (empty if none) of `tacotune -q ARGV`."""
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    found = ERROR.findall(err)
    assert len(found) <= 1, err
    return code, found[0] if found else ""


def _snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path under `directory` with its bytes (None: a directory)."""
    return {
        str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny voice, a complete inference checkpoint."""
    return save_untrained_voice(tmp_path_factory.mktemp("voice") / "voice.pt")


@pytest.fixture
def data(make_ljspeech: Builder) -> Path:
    """A small dataset `prepare` and `auto` accept."""
    return make_ljspeech(good_rows(3))


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """A folder of the user's own files."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, content in USER_FILES.items():
        (folder / name).write_bytes(content)
    return folder


def _commands(data: Path, prepared: Path, voice: Path) -> dict[Kind, list[str]]:
    """For each kind of output, the command that writes it, without its -o."""
    return {
        Kind.PREPARED: ["prepare", str(data), *FAST],
        Kind.TRAINING_RUN: ["train", str(prepared), *SETS, "--set", "train.max_steps=1"],
        Kind.VOCODER_RUN: ["vocoder", "train", str(prepared), *VOCODER_SETS],
        Kind.STUDY: ["tune", str(prepared), "--trials", "1", *SETS],
        Kind.AUTO: ["auto", str(data.parent / "not-a-dataset"), "--budget", "1"],
        Kind.EXPORT: ["export", str(voice), "--format", "onnx"],
    }


@pytest.mark.parametrize("kind", list(Kind), ids=[k.name.lower() for k in Kind])
def test_no_command_writes_into_a_folder_of_the_users(
    kind: Kind,
    data: Path,
    prepared: Path,
    voice: Path,
    users: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _snapshot(users)
    code, error = _cli(capsys, *_commands(data, prepared, voice)[kind], "-o", str(users))
    assert code == 1
    assert error.startswith(
        f"-o {users} is not empty and holds no {kind} (hello.wav, report.md); "
    ), error
    assert "never over files it did not write" in error
    assert _snapshot(users) == before


@pytest.mark.parametrize("kind", list(Kind), ids=[k.name.lower() for k in Kind])
def test_an_output_nobody_can_write_in_is_one_line_before_any_work(
    kind: Kind, data: Path, prepared: Path, voice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, error = _cli(capsys, *_commands(data, prepared, voice)[kind], "-o", str(READ_ONLY))
    assert code == 1
    assert error.startswith(f"-o {READ_ONLY}: cannot write in /proc ("), error


def test_registry_add_and_export_refuse_what_they_cannot_write(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, error = _cli(
        capsys, "registry", "add", str(voice), "--name", "v", "--root", str(READ_ONLY)
    )
    assert code == 1 and error.startswith(f"--root {READ_ONLY}: cannot write in /proc ("), error
    root = tmp_path / "registry"
    Registry(root).register("voice", voice)
    afile = tmp_path / "exported.txt"
    afile.write_text("notes", encoding="utf-8")
    for target, expected in [
        (afile, f"-o {afile} is a file, not a directory"),
        (READ_ONLY, f"-o {READ_ONLY}: cannot write in /proc ("),
    ]:
        code, error = _cli(
            capsys, "registry", "export", "voice:1", "--root", str(root), "-o", str(target)
        )
        assert code == 1 and error.startswith(expected), error
    assert afile.read_text(encoding="utf-8") == "notes"


def test_a_refused_command_leaves_no_output_directory(
    tmp_path: Path, voice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refusals found only once the work starts (the data is no dataset, the voice no
    checkpoint) leave no empty directory behind either."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "new"
    for argv in [
        ["prepare", str(empty), *FAST],
        ["train", str(empty), *SETS],
        ["vocoder", "train", str(empty), *VOCODER_SETS],
        ["export", str(tmp_path / "missing.pt")],
    ]:
        code, error = _cli(capsys, *argv, "-o", str(out))
        assert code == 1 and error, argv
        assert not out.exists(), argv


def test_auto_continues_in_its_own_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto.json is written first, so an interrupted or failed auto is recognised as auto's."""
    empty = tmp_path / "voice"
    empty.mkdir()
    out = tmp_path / "auto"
    for _ in range(2):
        code, error = _cli(capsys, "auto", str(empty), "-o", str(out), "--budget", "1")
        assert code == 1 and error.startswith("no known dataset layout"), error
        assert kind_of(out) is Kind.AUTO


# --- symbolic links and a full disk in export ---------------------------------------------


def test_export_follows_a_link_to_a_directory_and_refuses_one_to_nothing(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _cli(capsys, "export", str(voice), "-o", str(link)) == (0, "")
    assert link.is_symlink() and link.resolve() == real
    assert kind_of(real) is Kind.EXPORT and (real / "encoder.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no staging left
    code, error = _cli(capsys, "export", str(voice), "-o", str(link))
    assert code == 1 and error.startswith(f"-o {link} already holds an export bundle"), error
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "bundle")
    code, error = _cli(capsys, "export", str(voice), "-o", str(dangling))
    assert code == 1, error
    assert error == (
        f"-o {dangling}: {dangling} is a symbolic link to {tmp_path / 'nowhere' / 'bundle'}, "
        "which does not exist; create that directory, or give another -o"
    )
    assert not (tmp_path / "nowhere").exists()


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def export(model: Any, args: Any, f: Any, *more: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", export)
    out = tmp_path / "bundle"
    code, error = _cli(capsys, "export", str(voice), "-o", str(out))
    assert code == 1
    assert re.fullmatch(
        rf"no space left on the device holding {re.escape(str(tmp_path))} "
        r"\(needed ~\d+ MB, free \d+ MB\); free some space .*",
        error,
    ), error
    assert list(tmp_path.iterdir()) == []


# --- directories of other commands --------------------------------------------------------


@pytest.fixture(scope="module")
def outputs(
    prepared: Path, voice: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[Kind, Path]:
    """One real directory of each kind but the study, written by its command."""
    root = tmp_path_factory.mktemp("outputs")
    (root / "not-a-dataset").mkdir()
    made = {kind: root / kind.name.lower() for kind in Kind if kind is not Kind.STUDY}
    shutil.copytree(prepared, made[Kind.PREPARED])
    commands = _commands(root / "data", prepared, voice)
    for kind in (Kind.TRAINING_RUN, Kind.VOCODER_RUN, Kind.EXPORT):
        assert main(["-q", *commands[kind], "-o", str(made[kind])]) == 0, kind
    assert main(["-q", *commands[Kind.AUTO], "-o", str(made[Kind.AUTO])]) == 1  # no data
    return made


@pytest.mark.slow
def test_each_kind_of_directory_is_recognised_by_what_it_holds(
    outputs: dict[Kind, Path],
) -> None:
    assert {kind: kind_of(path) for kind, path in outputs.items()} == {k: k for k in outputs}


@pytest.mark.slow
@pytest.mark.parametrize(
    "found", [k for k in Kind if k is not Kind.STUDY], ids=lambda k: k.name.lower()
)
@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name.lower())
def test_no_command_writes_into_another_commands_output(
    kind: Kind,
    found: Kind,
    outputs: dict[Kind, Path],
    prepared: Path,
    voice: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if kind is found and kind in (Kind.PREPARED, Kind.AUTO):
        pytest.skip("continues its own directory (tested on its own)")
    target = outputs[found]
    before = _snapshot(target)
    command = _commands(target.parent / "data", prepared, voice)[kind]
    code, error = _cli(capsys, *command, "-o", str(target))
    assert code == 1
    if kind is not found:
        a = {k: f"{'an' if k.value[0] in 'aeiou' else 'a'} {k}" for k in Kind}
        assert error.startswith(f"-o {target} is {a[found]}, not {a[kind]}: "), error
    elif kind is Kind.EXPORT:
        assert error.startswith(f"-o {target} already holds an export bundle"), error
    else:  # a run with a checkpoint: --resume continues it
        assert error == (
            f"-o {target} already holds a {kind}; continue it with --resume {target}, or give "
            "a new or empty directory"
        )
    assert _snapshot(target) == before


@pytest.mark.slow
def test_a_run_that_stopped_before_its_first_checkpoint_is_trained_again(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # e.g. the disk filled at the first checkpoint
    (run / "config.yaml").write_text("train: {}\n", encoding="utf-8")
    code, error = _cli(
        capsys, "train", str(prepared), "-o", str(run), *SETS, "--set", "train.max_steps=1"
    )
    assert (code, error) == (0, "")
    assert kind_of(run) is Kind.TRAINING_RUN and (run / "checkpoints" / "last.pt").is_file()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "config.yaml").write_text("train: {}\n", encoding="utf-8")  # maybe the user's
    code, error = _cli(capsys, "train", str(prepared), "-o", str(alone), *SETS)
    assert code == 1 and "holds no training run (config.yaml)" in error, error


def test_two_writers_replacing_one_file_each_leave_a_whole_file(tmp_path: Path) -> None:
    """Two processes rewriting the same file (two `prepare`s sharing a cache) once shared one
    temporary name: the second truncated the first's, and the first's rename failed."""
    from tacotune.files import atomic_writer

    target = tmp_path / "analysis.jsonl"
    with atomic_writer(target) as first:
        first.write(b"first\n")
        with atomic_writer(target) as second:
            second.write(b"second\n")
        assert target.read_bytes() == b"second\n"
    assert target.read_bytes() == b"first\n"  # the last rename wins, with its whole file
    assert [p.name for p in tmp_path.iterdir()] == ["analysis.jsonl"]  # no temporary left
