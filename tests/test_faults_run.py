"""Fault injection while running: training, checkpoints, the registry, alerts, tuning
arguments and synthesis output fail loud, specific and safe.

Each test drives one class of fault through the real CLI (`tacotune.cli.main` in process,
or `python -m tacotune` in a subprocess where signals and exit codes matter) or the public
API, and checks the one-line error, the exit code and that nothing is left half-done.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

import tacotune
from tacotune import synthesize
from tacotune.alerts import build_dispatcher
from tacotune.checkpoint import load_checkpoint, save_checkpoint
from tacotune.cli import main
from tacotune.config.schema import AlertsConfig
from tacotune.runlog import read_jsonl
from test_synthesize import save_untrained_voice

from conftest import TINY_TRAIN

SETS = [arg for override in TINY_TRAIN for arg in ("--set", override)]
ERROR = re.compile(r"^\S+ ERROR tacotune: (.*)$", re.MULTILINE)  # the CLI's one error line


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `tacotune -q ARGV`."""
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(err: str) -> str:
    """The single error line the CLI wrote (and nothing like a traceback)."""
    assert "Traceback" not in err, err
    found = ERROR.findall(err)
    assert len(found) == 1, err
    return str(found[0])


def _events(run: Path) -> list[dict[str, Any]]:
    return read_jsonl(run / "events.jsonl")


def _temp_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny voice saved as a complete inference checkpoint."""
    voice = tmp_path_factory.mktemp("voice") / "voice.pt"
    return save_untrained_voice(voice, "model.max_decoder_steps=8")


@pytest.fixture(scope="module")
def finished_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained to its train.max_steps (1) through the CLI."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert (
        main(["-q", "train", str(prepared), "-o", str(run), *SETS, "--set", "train.max_steps=1"])
        == 0
    )
    return run


# --- training: resume, the run directory, signals, a full disk ---------------------------


@pytest.mark.slow
def test_resume_of_a_finished_run_needs_more_steps_and_no_output(
    finished_run: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "train", str(prepared), "--resume", str(finished_run))
    assert code == 1
    assert "already trained 1 steps" in _error(err) and "--set train.max_steps=N (N > 1)" in err
    code, _, err = _cli(
        capsys, "train", str(prepared), "--resume", str(finished_run), "-o", str(tmp_path / "x")
    )
    assert code == 1 and "-o, --config" in _error(err)
    assert not (tmp_path / "x").exists()
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    more = ["--set", "train.max_steps=2"]
    assert _cli(capsys, "train", str(prepared), "--resume", str(run), *more)[0] == 0
    assert load_checkpoint(run)["state"]["step"] == 2
    # whether step 2 is a new best ("best" event) depends on the weights, not on resuming
    events = [e["event"] for e in _events(run) if e["event"] != "best"]
    assert events[-3:] == ["resumed", "evaluation", "finished"]


def test_training_into_a_directory_that_holds_no_run_is_refused(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(prepared, dataset)  # a prepared dataset: it has a config.yaml too
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    code, _, err = _cli(capsys, "train", str(prepared), "-o", str(dataset), *SETS)
    assert code == 1
    assert _error(err).startswith(f"-o {dataset} is a prepared dataset, not a training run: ")
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before
    mixed = tmp_path / "mixed"  # a run's files and one of the user's
    (mixed / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "notes.txt"):
        (mixed / name).write_text("mine", encoding="utf-8")
    code, _, err = _cli(capsys, "train", str(prepared), "-o", str(mixed), *SETS)
    listed = re.search(
        rf"-o {re.escape(str(mixed))} is not empty and holds no training run \((.*?)\)", _error(err)
    )
    assert code == 1 and listed is not None, err
    assert listed.group(1) == "notes.txt"  # a run's own files are not the problem
    afile = tmp_path / "notes.txt"
    afile.write_text("notes", encoding="utf-8")
    code, _, err = _cli(capsys, "train", str(prepared), "-o", str(afile), *SETS)
    assert code == 1 and f"-o {afile} is a file, not a directory" in _error(err)


@pytest.mark.slow
def test_two_sigterms_stop_training_once_and_the_run_resumes(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    sets = [*SETS, "--set", "train.max_steps=100000", "--set", "train.eval_every=2"]
    src = str(Path(tacotune.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tacotune", "-q", "train", str(prepared), "-o", str(run)]
    process = subprocess.Popen(
        [*command, *sets], env=env, stderr=subprocess.PIPE, text=True, encoding="utf-8"
    )
    try:
        deadline = time.monotonic() + 180
        while not any(e["event"] == "evaluation" for e in _events(run)):
            assert process.poll() is None and time.monotonic() < deadline, "no evaluation"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        lines = []
        for line in process.stderr:  # the first signal is being handled: send the second
            lines.append(line)
            if "stopping after this step" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert "SIGTERM again: already stopping" in err and "Traceback" not in err
    events = _events(run)
    assert events[-1]["event"] == "interrupted"
    assert [e["event"] for e in events].count("interrupted") == 1
    assert _temp_files(run) == []
    step = events[-1]["step"]
    assert load_checkpoint(run)["state"]["step"] == step  # last.pt holds the stopped step
    more = ["--set", f"train.max_steps={step + 1}"]
    assert _cli(capsys, "train", str(prepared), "--resume", str(run), *more)[0] == 0
    assert [e["event"] for e in _events(run)][-1] == "finished"


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_records_no_best(
    prepared: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save, calls = torch.save, []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(obj["state"]["step"])
        if len(calls) == 2:  # the first evaluation's checkpoint (the first is step 0's)
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", str(prepared), "-o", str(run), *SETS)
    assert code == 1 and calls == [0, 3]
    message = _error(err)
    assert re.search(
        rf"no space left on the device holding {re.escape(str(run / 'checkpoints'))} "
        r"\(needed ~\d+ MB, free \d+ MB\)",
        message,
    ), message
    assert _temp_files(run) == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    assert load_checkpoint(run)["state"]["step"] == 0  # the intact previous last.pt
    assert [e["event"] for e in _events(run)] == ["started"]  # no best for an unwritten file


# --- checkpoints that are not what they claim ---------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _foreign_pickle(path: Path) -> None:
    torch.save({"format_version": 1, "args": argparse.Namespace(a=1)}, path)


def _text(path: Path) -> None:
    path.write_text("hello, I am no checkpoint\n", encoding="utf-8")


def _truncated(path: Path, voice: Path) -> None:
    path.write_bytes(voice.read_bytes()[:2000])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p, v: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p, v: _garbage(p), "is not a tacotune checkpoint or is damaged"),
        (lambda p, v: _text(p), "is not a tacotune checkpoint or is damaged"),
        (lambda p, v: _truncated(p, v), "is not a tacotune checkpoint or is damaged"),
        (
            lambda p, v: _foreign_pickle(p),
            r"damaged \(it holds objects other than tensors and plain data: Unsupported global",
        ),
    ],
    ids=["empty", "random", "text", "truncated", "foreign-pickle"],
)
def test_files_that_are_no_checkpoint_never_get_unsafe_advice(
    make: Callable[[Path, Path], None],
    expected: str,
    voice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "model.pt"
    make(bad, voice)
    code, _, err = _cli(capsys, "synthesize", str(bad), "привет", "-o", str(tmp_path / "a.wav"))
    assert code == 1
    message = _error(err)
    assert re.search(expected, message) and str(bad) in message
    assert "weights_only" not in message and "cannot be read ()" not in message


def _crafted(voice: Path, path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    payload = load_checkpoint(voice)
    edit(payload)
    save_checkpoint(path, payload)
    return path


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload["config"][section].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set("audio", "griffin_lim_iters", 10**7), r"griffin_lim_iters must be in \[1, 1000\]"),
        (_set("model", "max_decoder_steps", 10**9), r"max_decoder_steps must be in \[1, 10000\]"),
        (_set("model", "decoder_rnn_dim", 10**6), r"decoder_rnn_dim must be in \[1, 4096\]"),
        (_set("model", "max_frames_per_char", 1e6), r"max_frames_per_char must be in \[0.1, 100\]"),
    ],
    ids=["griffin-lim-iters", "decoder-steps", "width", "frames-per-char"],
)
def test_a_crafted_checkpoint_config_is_refused_before_any_work(
    edit: Callable[[dict[str, Any]], None],
    expected: str,
    voice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    crafted = _crafted(voice, tmp_path / "crafted.pt", edit)
    out = tmp_path / "a.wav"
    started = time.monotonic()
    code, _, err = _cli(capsys, "synthesize", str(crafted), "привет", "-o", str(out))
    assert code == 1 and time.monotonic() - started < 10
    message = _error(err)
    assert f"the config stored in checkpoint {crafted} is refused" in message
    assert re.search(expected, err), err
    assert not out.exists()


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(key)


def _drop_tensor(payload: dict[str, Any]) -> None:
    payload["model"].pop(next(iter(payload["model"])))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set("audio", "n_mels", 40), r"weights do not fit its own config \(.*shape"),
        (_set("model", "decoder_rnn_dim", 32), r"weights do not fit its own config \(.*shape"),
        (lambda p: p.__setitem__("n_symbols", 10**9), r"says n_symbols=1000000000, but its"),
        (_without("text_frontend"), r"lacks text_frontend: synthesis needs"),
        (_without("model"), r"lacks model: synthesis needs"),
        (_drop_tensor, r"weights do not fit its own config \(\S+ is missing\)"),
    ],
    ids=["n-mels", "width", "n-symbols", "no-frontend", "no-weights", "missing-tensor"],
)
def test_a_checkpoint_whose_parts_do_not_fit_is_one_clear_error(
    edit: Callable[[dict[str, Any]], None],
    expected: str,
    voice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    crafted = _crafted(voice, tmp_path / "crafted.pt", edit)
    code, _, err = _cli(capsys, "synthesize", str(crafted), "привет", "-o", str(tmp_path / "a.wav"))
    assert code == 1
    message = _error(err)
    assert message.startswith(f"checkpoint {crafted}") and re.search(expected, message), message


# --- the registry ---------------------------------------------------------------------------


def test_a_registered_checkpoint_that_changed_is_refused_with_both_hashes(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "registry")
    assert _cli(capsys, "registry", "add", str(voice), "--name", "voice", "--root", root)[0] == 0
    version = tmp_path / "registry" / "voice" / "v1"
    recorded = json.loads((version / "meta.json").read_text(encoding="utf-8"))["sha256"]
    assert recorded == hashlib.sha256(voice.read_bytes()).hexdigest()
    assert _cli(capsys, "registry", "show", "voice:1", "--root", root)[0] == 0
    data = bytearray((version / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte in the middle of the file
    (version / "model.pt").write_bytes(bytes(data))
    found = hashlib.sha256(bytes(data)).hexdigest()
    for argv in (
        ["registry", "show", "voice:1", "--root", root],
        ["registry", "export", "voice:1", "--root", root, "-o", str(tmp_path / "out")],
        ["export", "voice:1", "--registry", root, "-o", str(tmp_path / "onnx")],
        ["registry", "promote", "voice:1", "--stage", "production", "--root", root],
    ):
        code, _, err = _cli(capsys, *argv)
        assert code == 1, argv
        message = _error(err)
        assert f"{version / 'model.pt'} of voice:1 was changed after registration" in message
        assert f"sha256 is {found}, meta.json records {recorded}" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "onnx").exists()
    meta = json.loads((version / "meta.json").read_text(encoding="utf-8"))
    assert meta["stage"] == "candidate"  # the damaged version was not promoted


def test_the_promote_hint_is_a_command_the_cli_accepts(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "my registry")
    assert _cli(capsys, "registry", "add", str(voice), "--name", "voice", "--root", root)[0] == 0
    code, _, err = _cli(capsys, "registry", "show", "voice:production", "--root", root)
    assert code == 1
    hint = re.search(r"`(tacotune registry promote [^`]+)`", _error(err))
    assert hint is not None, err
    argv = shlex.split(hint.group(1).replace("VERSION", "1"))[1:]
    assert _cli(capsys, *argv)[0] == 0
    code, out, _ = _cli(capsys, "registry", "show", "voice:production", "--root", root)
    assert code == 0 and json.loads(out)["version"] == 1


def test_listing_a_mistyped_registry_root_says_so(
    voice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "regsitry"
    code, out, err = _cli(capsys, "registry", "list", "--root", str(missing))
    assert code == 1 and out == ""
    assert f"no registry at {missing}: the directory does not exist; check --root" in _error(err)
    code, out, err = _cli(capsys, "registry", "list", "--root", str(tmp_path))
    assert code == 1 and out == ""
    assert f"{tmp_path} holds no registry: nothing was ever registered there" in _error(err)
    root = tmp_path / "registry"
    assert (
        _cli(capsys, "registry", "add", str(voice), "--name", "voice", "--root", str(root))[0] == 0
    )
    code, out, _ = _cli(capsys, "registry", "list", "--root", str(root))
    assert code == 0 and "voice" in out


# --- alerts ---------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An address that accepts connections (the kernel's backlog) and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook on 127.0.0.1 that records every JSON body it is sent."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_a_telegram_server_that_never_answers_delays_neither_the_log_nor_the_webhook(
    silent_server: str,
    webhook: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.alerts")
    environ = {
        "TACOTUNE_TELEGRAM_TOKEN": "123:secret",
        "TACOTUNE_TELEGRAM_CHAT_ID": "42",
        "TACOTUNE_TELEGRAM_API": silent_server,
        "TACOTUNE_WEBHOOK_URL": webhook[0],
    }
    config = AlertsConfig(timeout_seconds=30.0, retries=3, send_samples=False)
    dispatcher = build_dispatcher(config, tmp_path / "run", environ)
    names = ("started", "best", "finished")
    for name in names:
        started = time.monotonic()
        dispatcher.on_event({"step": 10, "event": name, "score": 0.5, "reason": "max_steps"})
        assert time.monotonic() - started < 0.5
    logged = [r.getMessage() for r in caplog.records if r.name == "tacotune.alerts"]
    for text in ("started", "new best score at step 10", "finished at step 10"):
        assert any(text in line for line in logged), logged  # at once, not after delivery
    deadline = time.monotonic() + 10
    while len(webhook[1]) < len(names) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [body["event"] for body in webhook[1]] == list(names)
    started = time.monotonic()
    delivery = dispatcher.close(timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert (delivery.failed, delivery.dropped) == (0, 3)  # Telegram's three, nothing else
    assert not delivery.complete


# --- tuning arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--trials", "0"], r"--trials must be at least 1, found 0"),
        (["--timeout", "-5"], r"--timeout must be a positive number of seconds, found -5"),
        (["--workers", "0"], r"--workers must be at least 1, found 0"),
        (
            ["--storage", "redis://user:pw@host/0"],
            r"--storage: unknown URL scheme 'redis'; give a path \(a journal file\), "
            r"sqlite:///FILE, postgresql://",
        ),
    ],
    ids=["trials", "timeout", "workers", "storage"],
)
def test_impossible_tune_arguments_are_refused_before_anything_is_written(
    argv: list[str],
    expected: str,
    prepared: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = tmp_path / "study"
    bounded = [*SETS, "--set", "tuning.trials=1", "--set", "tuning.trial_max_steps=1"]
    code, _, err = _cli(capsys, "tune", str(prepared), "-o", str(study), *bounded, *argv)
    assert code == 1
    message = _error(err)
    assert re.search(expected, message), message
    assert "pw" not in message  # a storage URL may hold a password: only its scheme is shown
    assert not study.exists()


# --- synthesis output -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("{tmp}", "-o {tmp} is a directory; give a file name such as {tmp}/out.wav"),
        ("{tmp}/notes.txt/a.wav", "-o {tmp}/notes.txt/a.wav: {tmp}/notes.txt is a file, so"),
        (
            "{tmp}/out",
            "-o {tmp}/out has no extension; give a file name ending in .wav, .flac, .mp3 or .ogg",
        ),
        ("{tmp}/out.xyz", "-o {tmp}/out.xyz has the extension '.xyz'; give a file name"),
        ("/sys/tacotune.wav", "-o /sys/tacotune.wav: cannot write in /sys ("),
    ],
    ids=["directory", "under-a-file", "no-extension", "unknown-extension", "unwritable"],
)
def test_synthesis_outputs_are_checked_before_the_checkpoint_loads(
    target: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("notes", encoding="utf-8")
    missing = tmp_path / "missing.pt"  # were it loaded first, the error would be about it
    argv = ["synthesize", str(missing), "привет", "-o", target.format(tmp=tmp_path)]
    code, _, err = _cli(capsys, *argv)
    assert code == 1 and expected.format(tmp=tmp_path) in _error(err)


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_seed_out_of_range_is_refused(
    seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    argv = ["synthesize", str(missing), "привет", "-o", str(tmp_path / "a.wav"), "--seed", seed]
    code, _, err = _cli(capsys, *argv)
    assert code == 1
    assert f"the seed must be an integer in [0, 2**63 - 1], found {seed}" in _error(err)


def test_an_out_dir_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "lines.txt").write_text("раз.\n", encoding="utf-8")
    taken = tmp_path / "taken"
    taken.write_text("", encoding="utf-8")
    argv = ["synthesize", str(tmp_path / "missing.pt"), "--file", str(tmp_path / "lines.txt")]
    code, _, err = _cli(capsys, *argv, "--out-dir", str(taken))
    assert code == 1 and f"--out-dir {taken} is a file, not a directory" in _error(err)


def test_a_long_file_writes_each_batch_and_logs_progress_without_a_terminal(
    voice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = ["раз два.", "три четыре.", "пять шесть.", "семь восемь.", "девять десять."]
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    monkeypatch.setattr(synthesize, "FILE_BATCH_TEXTS", 2)
    monkeypatch.setattr(synthesize, "PROGRESS_SECONDS", 0.0)
    real, batches = synthesize.Synthesizer.speak_split, []

    def speak_split(self: synthesize.Synthesizer, *args: Any, **kwargs: Any) -> Any:
        batches.append(args[0])
        if len(batches) == 3:  # Ctrl-C during the last batch
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(synthesize.Synthesizer, "speak_split", speak_split)
    out = tmp_path / "out"
    argv = ["synthesize", str(voice), "--file", str(tmp_path / "lines.txt"), "--out-dir", str(out)]
    code = main(argv)  # without -q: progress lines, as under a pipe or nohup
    err = capsys.readouterr().err
    assert code == 130
    assert batches == [texts[:2], texts[2:4], texts[4:]]
    assert sorted(p.name for p in out.iterdir()) == [
        "0001.wav",
        "0002.wav",
        "0003.wav",
        "0004.wav",
        "synthesis.json",
    ]
    summary = json.loads((out / "synthesis.json").read_text(encoding="utf-8"))
    assert [record["text"] for record in summary] == texts[:4]
    assert "synthesized texts: 2/5 (40%)" in err and "synthesized texts: 4/5 (80%)" in err
