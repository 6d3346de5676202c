"""Watch a training run from its run directory: status, metrics, trends, ETA and events.

Everything is computed from the files a run writes, so a run in progress, a finished one or a
copy can be watched. `snapshot_run` (files in, `RunSnapshot` out) and `render_run` form the run
`View`; `monitor` refreshes a view in a `rich.live.Live`, beside TensorBoard if asked.
Other kinds of directories (e.g. studies) plug in as another `View`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from tacotune import progress
from tacotune.config import load_config
from tacotune.errors import ConfigError, TacotuneError
from tacotune.monitor.dashboards import Dashboard, start_dashboards, stop_dashboards
from tacotune.runlog import EVENTS_FILE, METRICS_FILE, read_jsonl

STARTS = {"started", "resumed"}
ENDS = {
    "finished": "finished",
    "diverged": "diverged",
    "early_stop": "stopped early",
    "interrupted": "interrupted",
    "stopped": "stopped",  # by a callback, e.g. a pruned tuning trial
}
ACTIVE = {"running", "starting"}  # statuses under which the live view keeps refreshing
VOCODER_METRICS = (  # a vocoder run (tacotune vocoder train): its numbers beside Griffin-Lim's
    *("eval/mel_l1", "gl/mel_l1", "eval/mcd", "gl/mcd", "eval/pesq", "gl/pesq"),
    *("eval/stoi", "gl/stoi", "train_mean/g_mel", "train_mean/d_total"),
)
KEY_METRICS = (
    *("score", "free/mcd_ratio", "free/mcd", "val/mel_postnet", "val/gate"),
    *("free/diagonality", "free/aligned_rate", "free/quality", "free/max_steps_rate"),
    *VOCODER_METRICS,
    *("train_mean/total", "train_mean/grad_norm", "train_mean/learning_rate"),
)
LOWER_IS_BETTER = {
    *("score", "free/mcd_ratio", "free/mcd", "val/mel_postnet", "val/gate"),
    *("free/max_steps_rate", "train_mean/total", "eval/mel_l1", "eval/mcd", "train_mean/g_mel"),
}
HIGHER_IS_BETTER = {
    *("free/diagonality", "free/aligned_rate", "free/quality", "eval/pesq", "eval/stoi"),
}
STATUS_STYLE = {"running": "green", "starting": "cyan", "finished": "blue", "diverged": "red"}
EVENT_STYLE = {
    **{"best": "green", "aligned": "green", "voice_ready": "green"},
    **{"diverged": "red", "rollback": "yellow"},
}
EVENTS_SHOWN = 8
ONCE_WIDTH = 160  # columns of `monitor --once` off a terminal

S = TypeVar("S")


class MonitorError(TacotuneError):
    """A directory cannot be monitored (dashboards that do not start raise DashboardError)."""


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the run view shows, computed from the run directory."""

    run_dir: Path
    status: str  # running | starting | finished | diverged | stopped early | interrupted
    step: int  # newest step seen in metrics or events
    max_steps: int | None
    latest: dict[str, float | None]  # newest metrics record
    trends: dict[str, str]  # key metric -> ↓ ↑ → (newest value against the one before)
    best: tuple[int, float] | None  # (step, score) of the newest "best" event
    steps_per_second: float | None
    eta_seconds: float | None  # only while running
    events: list[dict[str, Any]]  # the last EVENTS_SHOWN, newest last; step_skipped runs collapsed
    updated: float | None = None  # unix time of the newest record (tells a stalled run apart)


def snapshot_run(run_dir: Path) -> RunSnapshot:
    """Read a run directory into a `RunSnapshot`; MonitorError if it is not a run."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    metrics = _records(run_dir / METRICS_FILE)
    events = _records(run_dir / EVENTS_FILE)
    status = _run_status(events)
    step = _newest_step(metrics, events)
    vocoder = any("discriminator_parameters" in e for e in events[:1])  # its "started"
    max_steps = _max_steps(run_dir, vocoder)
    rate = _steps_per_second(metrics, _restart(events))
    eta = None
    if status == "running" and rate and max_steps is not None:
        eta = max(max_steps - step, 0) / rate
    times = [_number(r.get("wall_time")) for r in metrics[-1:]]
    times += [_number(e.get("time")) for e in events[-1:]]
    return RunSnapshot(
        run_dir=run_dir,
        status=status,
        step=step,
        max_steps=max_steps,
        latest={k: _number(v) for k, v in (metrics[-1] if metrics else {}).items()},
        trends=_trends(metrics),
        best=_best(events),
        steps_per_second=rate,
        eta_seconds=eta,
        events=_shown_events(events),
        updated=max((t for t in times if t is not None), default=None),
    )


def check_run_dir(run_dir: Path) -> None:
    """MonitorError unless `run_dir` holds a run's metrics or events."""
    if not (run_dir / EVENTS_FILE).is_file() and not (run_dir / METRICS_FILE).is_file():
        raise MonitorError(
            f"{run_dir} is not a training run: expected {EVENTS_FILE} or {METRICS_FILE} in it; "
            f"a run directory is written by `tacotune train PREPARED_DIR -o {run_dir}`"
        )


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file that may be being appended to right now."""
    return [r for r in read_jsonl(path) if isinstance(r, dict)]


def _number(value: Any) -> float | None:
    """A finite float, or None for null, text, booleans and non-finite numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _step(record: dict[str, Any]) -> int | None:
    value = record.get("step")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _run_status(events: list[dict[str, Any]]) -> str:
    """The first end event after the last started/resumed decides (an early stop or a
    divergence may be followed by "finished"); no lifecycle event at all: starting."""
    last = max((i for i, e in enumerate(events) if e.get("event") in STARTS), default=-1)
    ends = [ENDS[name] for e in events[last + 1 :] if (name := e.get("event")) in ENDS]
    return ends[0] if ends else "running" if last >= 0 else "starting"


def _restart(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last point training (re)started from: started, resumed or a rollback's target."""
    for event in reversed(events):
        if event.get("event") in STARTS or event.get("event") == "rollback":
            return {"step": event.get("to_step", event.get("step")), "time": event.get("time")}
    return None


def _newest_step(metrics: list[dict[str, Any]], events: list[dict[str, Any]]) -> int:
    """The step of whichever of the last metrics record and the last event was written later."""
    last = [(r, "wall_time") for r in metrics[-1:]] + [(e, "time") for e in events[-1:]]
    newest = [(_number(r.get(clock)) or -math.inf, _step(r) or 0) for r, clock in last]
    return max(newest)[1] if newest else 0


def _max_steps(run_dir: Path, vocoder: bool = False) -> int | None:
    """train.max_steps (a vocoder run: vocoder.max_steps) from the run's config.yaml (None
    if it is missing or unreadable)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = load_config(path)
        return config.vocoder.max_steps if vocoder else config.train.max_steps
    except (ConfigError, OSError):
        return None


def _steps_per_second(metrics: list[dict[str, Any]], start: dict[str, Any] | None) -> float | None:
    """Step rate between the last two metrics records since the last restart (or that
    restart and the one record after it); none for pairs that do not move forwards."""
    start_time = _number(start.get("time")) if start else None
    points: list[tuple[int, float]] = []
    for record in metrics:
        step, wall_time = _step(record), _number(record.get("wall_time"))
        if step is None or wall_time is None:
            continue
        if start_time is None or wall_time >= start_time:
            points.append((step, wall_time))
    start_step = _step(start) if start else None
    if len(points) < 2 and start_step is not None and start_time is not None:
        points.insert(0, (start_step, start_time))
    if len(points) < 2:
        return None
    (step0, time0), (step1, time1) = points[-2], points[-1]
    if step1 <= step0 or time1 <= time0:
        return None
    return (step1 - step0) / (time1 - time0)


def _trends(metrics: list[dict[str, Any]]) -> dict[str, str]:
    """Key metric -> ↓/↑/→: the newest value against the latest earlier one."""
    trends: dict[str, str] = {}
    for key in KEY_METRICS if metrics else ():
        new = _number(metrics[-1].get(key))
        old = next(
            (v for r in reversed(metrics[:-1]) if (v := _number(r.get(key))) is not None), None
        )
        if new is not None and old is not None:
            trends[key] = "↓" if new < old else "↑" if new > old else "→"
    return trends


def _best(events: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, score) of the newest "best" event."""
    for event in reversed(events):
        step, score = _step(event), _number(event.get("score"))
        if event.get("event") == "best" and step is not None and score is not None:
            return step, score
    return None


def _shown_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last EVENTS_SHOWN events, newest last, without "evaluation" (the metrics table has
    it); consecutive step_skipped become the newest one with count and first_step."""
    out: list[dict[str, Any]] = []
    for event in events:
        name = event.get("event")
        if name == "step_skipped" and out and out[-1].get("event") == "step_skipped":
            previous = out.pop()
            first = previous.get("first_step", previous.get("step"))
            out.append({**event, "count": previous.get("count", 1) + 1, "first_step": first})
        elif name != "evaluation":
            out.append(event)
    return out[-EVENTS_SHOWN:]


def render_run(snap: RunSnapshot) -> RenderableType:
    """Header, key metrics with trends, best score and the last events."""
    parts: list[RenderableType] = [_run_header(snap), _metrics_table(snap)]
    if snap.best is not None:
        parts.append(
            Text.assemble(("best ", "bold"), f"step {snap.best[0]}, score {_fmt(snap.best[1])}")
        )
    if snap.events:
        parts.append(_events_table(snap.events))
    return Group(*parts)


def run_active(snap: RunSnapshot) -> bool:
    """Whether the run may still change (the live view keeps refreshing)."""
    return snap.status in ACTIVE


def _run_header(snap: RunSnapshot) -> Text:
    total = f"/{snap.max_steps}" if snap.max_steps is not None else ""
    rate = f"{snap.steps_per_second:.3g} steps/s" if snap.steps_per_second else "– steps/s"
    header = Text.assemble(
        ("run ", "bold"),
        str(snap.run_dir),
        "\n",
        (snap.status.upper(), "bold " + STATUS_STYLE.get(snap.status, "yellow")),
        f"   step {snap.step}{total}   {rate}",
    )
    if snap.eta_seconds is not None:
        header.append(f"   ETA {_duration(snap.eta_seconds)}")
    if snap.updated is not None:
        header.append(f"   updated {_clock(snap.updated)}", style="dim")
    return header


def _metrics_table(snap: RunSnapshot) -> Table:
    right, center = Column("value", justify="right"), Column("trend", justify="center")
    table = Table("metric", right, center, title="metrics", title_justify="left")
    for key in KEY_METRICS:
        if key not in snap.latest:
            continue
        value = snap.latest[key]
        trend = snap.trends.get(key, "")
        table.add_row(
            key, "–" if value is None else _fmt(value), Text(trend, _trend_style(key, trend))
        )
    return table


def _trend_style(key: str, trend: str) -> str:
    """Green when the metric moved the good way, red when the bad way, dim otherwise."""
    good = "↓" if key in LOWER_IS_BETTER else "↑" if key in HIGHER_IS_BETTER else ""
    if not good or trend not in ("↓", "↑"):
        return "dim"
    return "green" if trend == good else "red"


def _events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(
        Column("time", no_wrap=True, min_width=8),
        Column("step", justify="right", no_wrap=True, min_width=5),
        Column("event", no_wrap=True, min_width=10),
        Column("details", no_wrap=True, overflow="ellipsis", max_width=48),
        title="events",
        title_justify="left",
    )
    for event in events:
        name = str(event.get("event", "?"))
        when = _number(event.get("time"))
        step = _step(event)
        table.add_row(
            _clock(when) if when is not None else "",
            "" if step is None else str(step),
            Text(name, EVENT_STYLE.get(name, "")),
            _details(event),
        )
    return table


def _details(event: dict[str, Any]) -> str:
    """An event's details as `key=value` pairs (long text shortened, empty values left out)."""
    pairs = []
    for key, value in event.items():
        if key in ("time", "step", "event") or value in (None, "", [], {}):
            continue
        if isinstance(value, float):
            text = _fmt(value)
        elif isinstance(value, list | dict):
            text = f"[{len(value)}]"
        else:
            text = str(value)
        pairs.append(f"{key}={text if len(text) <= 32 else text[:31] + '…'}")
    return ", ".join(pairs)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _clock(unix_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class View(Generic[S]):
    """How to watch one kind of directory: read it, draw it, and whether it still changes."""

    snapshot: Callable[[Path], S]
    render: Callable[[S], RenderableType]
    active: Callable[[S], bool]


RUN_VIEW: View[RunSnapshot] = View(snapshot_run, render_run, run_active)
snapshot = snapshot_run  # the names a single run is watched by
render = render_run


def view_for(directory: Path) -> View[Any]:
    """The view that fits `directory`: a study (it has study.json) or a training run."""
    if (directory / "study.json").exists():
        from tacotune.tuning.view import render_study, snapshot_study, study_active

        return View(snapshot_study, render_study, study_active)
    return RUN_VIEW


def monitor(
    run_dir: Path,
    once: bool = False,
    dashboards: bool = False,
    interval: float = 2.0,
    console: Console | None = None,
) -> int:
    """Show a run once, or live until it ends or Ctrl-C; optionally beside its dashboards.

    Dashboards keep serving after the view ends (a finished run's curves are worth a look)
    until Ctrl-C, and are always stopped on the way out.
    """
    run_dir = Path(run_dir)
    out = console if console is not None else _stdout() if once else progress.CONSOLE
    view = view_for(run_dir)
    first = view.snapshot(run_dir)  # not a run: MonitorError before anything starts
    started: list[Dashboard] = []
    try:
        if dashboards:
            started = start_dashboards(run_dir)
            for dashboard in started:
                out.print(f"{dashboard.name}: {dashboard.url}", highlight=False)
        if once:
            out.print(view.render(first))
        else:
            _watch(view, run_dir, first, interval, out)
        if started:
            out.print("dashboards keep serving; Ctrl-C stops them", style="dim")
            while all(d.process.poll() is None for d in started):
                time.sleep(0.5)
    except KeyboardInterrupt:
        out.print("stopped watching (the run itself is not affected)", style="dim")
    finally:
        stop_dashboards(started)
    return 0


def _stdout() -> Console:
    """Where `--once` prints: standard output (so `monitor --once > f` holds the view), at
    full width even off a terminal, where rich would cut the table at 80 columns."""
    return Console(width=None if sys.stdout.isatty() else ONCE_WIDTH)


def _watch(view: View[S], run_dir: Path, snap: S, interval: float, console: Console) -> None:
    """Refresh the view every `interval` seconds while the directory is active."""
    with Live(view.render(snap), console=console, auto_refresh=False) as live:
        while view.active(snap):
            time.sleep(interval)
            snap = view.snapshot(run_dir)
            live.update(view.render(snap), refresh=True)
