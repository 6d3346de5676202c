"""The run monitor: snapshots of hand-written run dirs, the view, the live loop, TensorBoard."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tacotune.config import load_config, save_config
from tacotune.errors import TacotuneError
from tacotune.monitor import (
    MonitorError,
    RunSnapshot,
    View,
    monitor,
    render,
    render_run,
    run_active,
    snapshot,
)
from tacotune.monitor import dashboards as dashboards_module
from tacotune.monitor import live as monitor_module
from tacotune.monitor.dashboards import Dashboard, DashboardError, start_dashboards, stop_dashboards
from tacotune.runlog import EVENTS_FILE, METRICS_FILE

T0 = 1_700_000_000.0  # the run's start (unix seconds)
MAX_STEPS = 600  # train.max_steps of configs/demo.yaml

FIRST_EVAL = {
    "step": 100,
    "wall_time": T0 + 40.0,
    "score": 0.9,
    "val/mel_postnet": 1.25,
    "free/diagonality": 0.3,
    "train_mean/learning_rate": 0.001,
    "train_mean/grad_norm": None,  # non-finite values are written as null
}
SECOND_EVAL = {
    "step": 200,
    "wall_time": T0 + 80.0,
    "score": 0.4321,
    "val/mel_postnet": 1.0,
    "free/diagonality": 0.6,
    "free/quality": 0.7,  # new in this record: no trend yet
    "train_mean/learning_rate": 0.001,
    "train_mean/grad_norm": 3.5,
}
STARTED = {"time": T0, "step": 0, "event": "started", "device": "cpu", "precision": "fp32"}
RUNNING_EVENTS = [
    STARTED,
    {"time": T0 + 41.0, "step": 100, "event": "best", "score": 0.9},
    {"time": T0 + 81.0, "step": 200, "event": "best", "score": 0.4321},
]


def write_jsonl(path: Path, records: list[dict[str, Any]], tail: str | bytes = "") -> None:
    """Records as JSON lines, then `tail` (e.g. a half-written line) without a newline."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(data + (tail.encode("utf-8") if isinstance(tail, str) else tail))


def make_run(
    root: Path,
    events: list[dict[str, Any]] | None = None,
    metrics: list[dict[str, Any]] | None = None,
    name: str = "run",
) -> Path:
    """A run directory as `tacotune train` leaves it (config.yaml from demo.yaml)."""
    run = root / name
    run.mkdir()
    save_config(load_config("demo.yaml"), run / "config.yaml")
    write_jsonl(run / EVENTS_FILE, RUNNING_EVENTS if events is None else events)
    write_jsonl(run / METRICS_FILE, [FIRST_EVAL, SECOND_EVAL] if metrics is None else metrics)
    return run


def text_of(renderable: Any, width: int = 120) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_running_run(tmp_path: Path) -> None:
    snap = snapshot(make_run(tmp_path))
    assert snap.status == "running"
    assert run_active(snap)
    assert snap.step == 200
    assert snap.max_steps == MAX_STEPS
    assert snap.steps_per_second == pytest.approx(100 / 40)  # (200 - 100) steps in 40 s
    assert snap.eta_seconds == pytest.approx((MAX_STEPS - 200) / 2.5)  # 160 s
    assert snap.trends == {
        "score": "↓",
        "val/mel_postnet": "↓",
        "free/diagonality": "↑",
        "train_mean/learning_rate": "→",
    }  # free/quality is new and train/grad_norm was null before: no trend
    assert snap.best == (200, 0.4321)
    assert snap.latest["score"] == 0.4321
    assert snap.latest["free/quality"] == 0.7
    assert [e["event"] for e in snap.events] == ["started", "best", "best"]
    assert snap.updated == T0 + 81.0


def test_rate_from_started_event_with_one_evaluation(tmp_path: Path) -> None:
    run = make_run(tmp_path, events=[STARTED], metrics=[{**FIRST_EVAL, "wall_time": T0 + 50}])
    snap = snapshot(run)
    assert snap.steps_per_second == pytest.approx(100 / 50)
    assert snap.eta_seconds == pytest.approx((MAX_STEPS - 100) / 2.0)
    assert snap.best is None
    assert snap.trends == {}


def test_rate_after_resume_ignores_the_pause(tmp_path: Path) -> None:
    events = [
        *RUNNING_EVENTS,
        {"time": T0 + 90, "step": 200, "event": "interrupted"},
        {"time": T0 + 1000, "step": 200, "event": "resumed"},
    ]
    third = {"step": 300, "wall_time": T0 + 1040, "score": 0.5}
    snap = snapshot(make_run(tmp_path, events, [FIRST_EVAL, SECOND_EVAL, third]))
    assert snap.status == "running"
    assert snap.step == 300
    assert snap.steps_per_second == pytest.approx(100 / 40)  # from "resumed", not from step 200
    assert snap.trends["score"] == "↑"


def test_rate_after_rollback_counts_from_the_rollback_target(tmp_path: Path) -> None:
    rollback = {"time": T0 + 100, "step": 150, "event": "rollback", "from_step": 250}
    events = [*RUNNING_EVENTS, {**rollback, "to_step": 150, "attempt": 1}]
    third = {"step": 200, "wall_time": T0 + 125, "score": 0.45}  # 50 steps after the rollback
    snap = snapshot(make_run(tmp_path, events, [FIRST_EVAL, SECOND_EVAL, third]))
    assert snap.status == "running"
    assert snap.steps_per_second == pytest.approx(50 / 25)
    assert snap.eta_seconds == pytest.approx((MAX_STEPS - 200) / 2.0)


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        (["finished"], "finished"),
        (["diverged"], "diverged"),
        (["interrupted"], "interrupted"),
        (["early_stop"], "stopped early"),
        (["early_stop", "finished"], "stopped early"),  # the first end after the start decides
    ],
)
def test_ended_runs(tmp_path: Path, ending: list[str], status: str) -> None:
    events = RUNNING_EVENTS + [
        {"time": T0 + 90 + i, "step": 200, "event": name} for i, name in enumerate(ending)
    ]
    snap = snapshot(make_run(tmp_path, events))
    assert snap.status == status
    assert not run_active(snap)
    assert snap.eta_seconds is None
    assert snap.steps_per_second == pytest.approx(2.5)


def test_no_lifecycle_event_yet_is_starting(tmp_path: Path) -> None:
    snap = snapshot(make_run(tmp_path, events=[], metrics=[]))
    assert snap.status == "starting"
    assert run_active(snap)
    assert (snap.step, snap.steps_per_second, snap.eta_seconds, snap.latest) == (0, None, None, {})


def test_incomplete_last_lines_are_ignored(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_jsonl(run / METRICS_FILE, [FIRST_EVAL, SECOND_EVAL], tail='{"step": 300, "wall_ti')
    cut = "привет".encode()[:3]  # a Cyrillic character cut in half by a write in progress
    write_jsonl(run / EVENTS_FILE, RUNNING_EVENTS, tail=b'{"step": 250, "event": "x", "n": "' + cut)
    snap = snapshot(run)
    assert snap.step == 200
    assert snap.latest["score"] == 0.4321
    assert [e["event"] for e in snap.events] == ["started", "best", "best"]
    assert snap.status == "running"


def test_event_list_collapses_skipped_steps_and_leaves_out_evaluations(tmp_path: Path) -> None:
    skipped = [
        {"time": T0 + 50 + i, "step": 150 + i, "event": "step_skipped", "reason": "nan"}
        for i in range(3)
    ]
    bests = [
        {"time": T0 + 60 + i, "step": 160 + i, "event": "best", "score": 1.0} for i in range(7)
    ]
    evaluations = [{**best, "event": "evaluation"} for best in bests]  # the metrics table has these
    mixed = [event for pair in zip(bests, evaluations, strict=True) for event in pair]
    snap = snapshot(make_run(tmp_path, [STARTED, *skipped, *mixed]))
    assert len(snap.events) == 8
    assert snap.events[0]["event"] == "step_skipped"
    assert (snap.events[0]["count"], snap.events[0]["first_step"]) == (3, 150)
    assert snap.events[0]["step"] == 152
    assert snap.events[-1]["step"] == 166  # newest last
    assert [e["event"] for e in snap.events[1:]] == ["best"] * 7
    assert "count=3" in text_of(render(snap))


@pytest.mark.parametrize("content", ["empty", "missing", "config only"])
def test_not_a_run(tmp_path: Path, content: str) -> None:
    directory = tmp_path / "not_a_run"
    if content != "missing":
        directory.mkdir()
    if content == "config only":
        save_config(load_config("demo.yaml"), directory / "config.yaml")
    with pytest.raises(MonitorError, match="tacotune train") as caught:
        snapshot(directory)
    assert isinstance(caught.value, TacotuneError)
    assert EVENTS_FILE in str(caught.value)


def test_render_shows_header_present_metrics_best_and_events(tmp_path: Path) -> None:
    text = text_of(render_run(snapshot(make_run(tmp_path))))
    assert "RUNNING" in text
    assert "step 200/600" in text
    assert "2.5 steps/s" in text
    assert "ETA 0:02:40" in text
    for name in (
        "score",
        "val/mel_postnet",
        "free/diagonality",
        "free/quality",
        "train_mean/grad_norm",
    ):
        assert name in text
    assert "val/gate" not in text  # not in the metrics: not shown
    assert "0.4321" in text
    assert "best step 200, score 0.4321" in text
    assert time.strftime("%H:%M:%S", time.localtime(T0 + 81.0)) in text  # the last event's time
    assert "device=cpu" in text


def test_a_vocoder_run_shows_its_steps_and_griffin_lim_beside_it(tmp_path: Path) -> None:
    started = {**STARTED, "discriminator_parameters": 70_000_000}  # `tacotune vocoder train`
    evaluation = {"step": 200, "wall_time": T0 + 80.0, "score": 0.9, "eval/mcd": 7.5}
    run = make_run(tmp_path, [started], [{**evaluation, "gl/mcd": 6.5, "eval/pesq": 1.5}])
    snap = snapshot(run)
    assert snap.max_steps == load_config("demo.yaml").vocoder.max_steps  # not train.max_steps
    text = text_of(render_run(snap))
    assert "eval/mcd" in text and "gl/mcd" in text and "eval/pesq" in text


def test_monitor_once(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    assert monitor(make_run(tmp_path), once=True, console=console) == 0
    text = console.export_text()
    assert "200/600" in text
    assert "0.4321" in text
    assert "best" in text
    assert "started" in text


def test_monitor_once_prints_to_stdout_at_full_width(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`monitor --once > f` holds the whole view: stdout, not stderr; not cut at 80 columns."""
    from tacotune.cli import main

    run = make_run(tmp_path, name="a-run-with-a-long-name-" * 3)
    assert main(["-q", "monitor", str(run), "--once"]) == 0
    out, err = capsys.readouterr()
    assert "train_mean/learning_rate" in out and "200/600" in out
    assert "train_mean/learning_rate" not in err
    assert any(run.name in line for line in out.splitlines())  # not wrapped at 80 columns


def test_monitor_returns_at_once_on_a_finished_run(tmp_path: Path) -> None:
    events = [*RUNNING_EVENTS, {"time": T0 + 90, "step": 200, "event": "finished"}]
    console = Console(record=True)
    assert monitor(make_run(tmp_path, events), interval=0.01, console=console) == 0
    assert "FINISHED" in console.export_text()


def test_live_loop_follows_the_run_until_it_ends(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    console = Console(record=True, width=120)
    result: list[int] = []
    watcher = threading.Thread(
        target=lambda: result.append(monitor(run, interval=0.01, console=console)), daemon=True
    )
    watcher.start()
    time.sleep(0.3)
    assert watcher.is_alive()  # still running: the loop keeps refreshing
    third = {"step": 300, "wall_time": T0 + 120, "score": 0.25}
    write_jsonl(run / METRICS_FILE, [FIRST_EVAL, SECOND_EVAL, third])
    ended = {"time": T0 + 121, "step": 300, "event": "finished", "reason": "max_steps"}
    write_jsonl(run / EVENTS_FILE, [*RUNNING_EVENTS, ended])
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert result == [0]
    text = console.export_text()
    assert "FINISHED" in text
    assert "step 300/600" in text
    assert "0.25" in text


def test_ctrl_c_stops_the_live_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    calls: list[Path] = []

    def snapshot_then_ctrl_c(directory: Path) -> RunSnapshot:
        calls.append(directory)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return snapshot(directory)

    view = View(snapshot_then_ctrl_c, render_run, run_active)
    monkeypatch.setattr(monitor_module, "view_for", lambda directory: view)
    console = Console(record=True, width=120)
    try:
        code = monitor(run, interval=0.01, console=console)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped monitor()")
    assert code == 0
    assert len(calls) == 3
    assert "stopped watching" in console.export_text()


def test_dashboards_need_a_tensorboard_directory(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="tensorboard"):
        start_dashboards(make_run(tmp_path))


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status)


@pytest.mark.slow
def test_tensorboard_starts_on_localhost_and_stops(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "tensorboard").mkdir()
    dashboards = start_dashboards(run, timeout=30)
    try:
        assert [d.name for d in dashboards] == ["TensorBoard"]
        board = dashboards[0]
        assert board.url.startswith("http://127.0.0.1:")
        args = list(board.process.args)  # type: ignore[arg-type]
        assert args[args.index("--host") + 1] == "127.0.0.1"
        assert board.process.poll() is None
        assert _get(board.url) == 200
    finally:
        stop_dashboards(dashboards)
    assert board.process.poll() is not None


@pytest.mark.slow
def test_tensorboard_that_dies_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    (run / "tensorboard").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(dashboards_module, "_free_port", lambda: port)
        with pytest.raises(
            DashboardError, match=f"(?s)exited with code \\d+.*could not bind to port {port}"
        ):
            start_dashboards(run, timeout=30)


@pytest.mark.slow
def test_monitor_stops_dashboards_on_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path)
    (run / "tensorboard").mkdir()
    started: list[Dashboard] = []

    def recording_start(run_dir: Path) -> list[Dashboard]:
        started.extend(start_dashboards(run_dir, timeout=30))
        return started

    def ctrl_c(directory: Path) -> RunSnapshot:
        raise KeyboardInterrupt

    monkeypatch.setattr(monitor_module, "start_dashboards", recording_start)
    first = snapshot(run)
    view = View(
        lambda directory: first if not started else ctrl_c(directory), render_run, run_active
    )
    monkeypatch.setattr(monitor_module, "view_for", lambda directory: view)
    console = Console(record=True, width=120)
    try:
        code = monitor(run, dashboards=True, interval=0.01, console=console)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped monitor()")
    assert code == 0
    assert len(started) == 1
    assert started[0].url in console.export_text()
    assert started[0].process.poll() is not None
