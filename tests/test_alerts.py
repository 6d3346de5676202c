"""Alerts against a real (fake) Telegram Bot API and webhook served on 127.0.0.1."""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tacotune import alerts
from tacotune.alerts import (
    Alert,
    AlertDispatcher,
    AlertsError,
    Delivery,
    LogNotifier,
    NotifierError,
    TelegramNotifier,
    WebhookNotifier,
    build_dispatcher,
    format_alert,
    load_secrets,
)
from tacotune.config.schema import AlertsConfig
from tacotune.errors import TacotuneError

TOKEN = "987654321:AAH-SeCrEt_tokenValue42"
CHAT = "-100123456"
NAMES = ("telegram", "webhook")
FAST = AlertsConfig(timeout_seconds=0.3, retries=1, summary_every_minutes=10.0)
ALERTED = [
    "started",
    "resumed",
    "evaluation",
    "best",
    "aligned",
    "rollback",
    "early_stop",
    "diverged",
    "finished",
    "interrupted",
    "vocoder_beats_griffin_lim",
]


@dataclass
class Received:
    path: str
    method: str  # the last path component: sendMessage, sendAudio, ...
    fields: dict[str, Any]
    files: dict[str, tuple[str, bytes]]  # form field: (file name, content)


@dataclass
class FakeServer:
    """Records requests; `behaviour` is ok | slow | error | rate_limited (once, then ok)."""

    url: str = ""
    behaviour: str = "ok"
    received: list[Received] = field(default_factory=list)
    hits: list[tuple[float, str]] = field(default_factory=list)  # (time, path) of every request
    release: threading.Event = field(default_factory=threading.Event)

    def messages(self) -> list[Received]:
        return [r for r in self.received if r.method == "sendMessage"]


def _parse(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}, {}
    if content_type.startswith("application/json"):
        return json.loads(body), {}
    assert content_type.startswith("multipart/form-data"), content_type
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            files[str(name)] = (part.get_filename(), payload)
        else:
            fields[str(name)] = payload.decode()
    return fields, files


def _handler(server: FakeServer, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (slow behaviour)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            server.hits.append((time.monotonic(), self.path))
            if token is not None and not self.path.startswith(f"/bot{token}/"):
                return self.answer(401, {"ok": False, "description": "Unauthorized"})
            if server.behaviour == "slow":
                server.release.wait(2.0)
                return self.answer(200, {"ok": True, "result": {}})
            if server.behaviour == "error":
                return self.answer(500, {"ok": False, "description": "Internal Server Error"})
            if server.behaviour == "rate_limited":
                server.behaviour = "ok"
                too_many = {"description": "Too Many Requests: retry after 1"}
                return self.answer(429, {"ok": False, "parameters": {"retry_after": 1}, **too_many})
            fields, files = _parse(self.headers.get("Content-Type", ""), body)
            method = self.path.rsplit("/", 1)[-1]
            server.received.append(Received(self.path, method, fields, files))
            self.answer(200, {"ok": True, "result": {}})

    return Handler


def _serve(token: str | None) -> Iterator[FakeServer]:
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake, token))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def telegram() -> Iterator[FakeServer]:
    """A fake Bot API that knows TOKEN."""
    yield from _serve(TOKEN)


@pytest.fixture
def webhook() -> Iterator[FakeServer]:
    """A fake JSON webhook (any path)."""
    yield from _serve(None)


def _dead_url() -> str:
    """A port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "demo"
    directory.mkdir()
    return directory


def _samples(run_dir: Path) -> tuple[bytes, bytes]:
    """Two sample steps; step_1000 is newer than step_900 (numerically, not as text)."""
    for step in ("step_900", "step_1000"):
        (run_dir / "samples" / step).mkdir(parents=True)
        (run_dir / "samples" / step / "probe_0.wav").write_bytes(b"RIFF" + step.encode())
        (run_dir / "samples" / step / "probe_0_alignment.png").write_bytes(
            b"\x89PNG" + step.encode()
        )
    return b"RIFFstep_1000", b"\x89PNGstep_1000"


def _telegram(fake: FakeServer, timeout: float = 0.3) -> TelegramNotifier:
    return TelegramNotifier(TOKEN, CHAT, api_base=fake.url, timeout=timeout)


def _wait_for_workers(before: set[threading.Thread], limit: float = 3.0) -> None:
    """Wait until delivery threads started since `before` have finished their last request."""
    deadline = time.monotonic() + limit
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith("tacotune-alerts"):  # one per notifier: -telegram, -webhook
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive()


def _no_token_anywhere(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter()
    assert caplog.records, "nothing was logged: the check would be vacuous"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in formatter.format(record)  # includes any exception traceback
    assert TOKEN not in caplog.text


# --- delivery to Telegram -----------------------------------------------------------------


def test_events_reach_telegram_escaped_with_attachments(
    telegram: FakeServer, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wav, png = _samples(run_dir)
    dispatcher = AlertDispatcher([LogNotifier(), _telegram(telegram)], FAST, run_dir)
    dispatcher.on_event({"time": 1.0, "step": 0, "event": "started", "dataset": "<b>&_*"})
    dispatcher.on_event({"time": 2.0, "step": 500, "event": "step_skipped", "loss": 1.0})
    dispatcher.on_event({"time": 3.0, "step": 1000, "event": "best", "score": 0.41234})
    finished = {"reason": "max_steps", "best_score": 0.41234, "best_step": 1000}
    dispatcher.on_event({"time": 4.0, "step": 1000, "event": "finished", **finished})
    dispatcher.close(timeout=5.0)

    methods = [r.method for r in telegram.received]
    assert methods == ["sendMessage", "sendMessage", "sendMessage", "sendDocument", "sendAudio"]
    texts = [m.fields["text"] for m in telegram.messages()]
    assert all(m.fields["chat_id"] == CHAT for m in telegram.received)
    assert all(m.fields["parse_mode"] == "HTML" for m in telegram.messages())
    assert texts[0].startswith("tacotune run demo: started at step 0")
    assert "dataset: &lt;b&gt;&amp;_*" in texts[0] and "<b>" not in texts[0]
    assert texts[1] == "tacotune run demo: new best score at step 1000\nscore: 0.4123"
    assert "finished at step 1000" in texts[2] and "best score: 0.4123 at step 1000" in texts[2]
    document, audio = telegram.received[3], telegram.received[4]
    assert document.files == {"document": ("probe_0_alignment.png", png)}
    assert audio.files == {"audio": ("probe_0.wav", wav)}
    assert document.fields["chat_id"] == CHAT
    _no_token_anywhere(caplog)
    written = [p.read_bytes() for p in run_dir.rglob("*") if p.is_file()]
    assert all(TOKEN.encode() not in data for data in written)


def test_summaries_are_rate_limited(telegram: FakeServer, run_dir: Path) -> None:
    now = [1000.0]
    dispatcher = AlertDispatcher([_telegram(telegram)], FAST, run_dir, clock=lambda: now[0])
    for step in range(1, 6):  # five evaluations within the 10-minute window
        dispatcher.on_event({"step": step * 100, "event": "evaluation", "score": 1.0 / step})
        now[0] += 60.0
    now[0] = 1000.0 + 10 * 60 + 1  # past the window of the first summary
    dispatcher.on_event({"step": 600, "event": "evaluation", "score": 0.1, "eta_seconds": 7500})
    dispatcher.on_event({"step": 700, "event": "evaluation", "score": 0.05})  # too soon again
    dispatcher.close(timeout=5.0)
    texts = [m.fields["text"] for m in telegram.messages()]
    assert len(texts) == 2
    assert texts[0] == "tacotune run demo: summary at step 100\nscore: 1"
    assert texts[1].startswith("tacotune run demo: summary at step 600\nscore: 0.1\n")
    assert "time left (estimate): 2 h 05 min" in texts[1]


def test_no_summaries_when_disabled(telegram: FakeServer, run_dir: Path) -> None:
    config = AlertsConfig(timeout_seconds=0.3, retries=1, summary_every_minutes=0)
    dispatcher = AlertDispatcher([_telegram(telegram)], config, run_dir)
    dispatcher.on_event({"step": 100, "event": "evaluation", "score": 1.0})
    dispatcher.on_event({"step": 100, "event": "best", "score": 1.0})
    dispatcher.close(timeout=5.0)
    texts = [m.fields["text"] for m in telegram.messages()]
    assert texts == ["tacotune run demo: new best score at step 100\nscore: 1"]


@pytest.mark.parametrize("trouble", ["down", "slow", "error"])
def test_failing_servers_never_block_and_never_leak_the_token(
    trouble: str,
    telegram: FakeServer,
    webhook: FakeServer,
    run_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    if trouble == "down":
        telegram.url = webhook.url = _dead_url()
    telegram.behaviour = webhook.behaviour = trouble
    notifiers = [_telegram(telegram), WebhookNotifier(webhook.url + "/hook/s3cr3t", timeout=0.3)]
    before = set(threading.enumerate())
    dispatcher = AlertDispatcher(notifiers, FAST, run_dir)
    for name in ("started", "best", "finished"):
        started = time.perf_counter()
        dispatcher.on_event({"step": 10, "event": name, "score": 0.5})
        assert time.perf_counter() - started < 0.05
    started = time.perf_counter()
    dispatcher.close(timeout=0.8)  # the slow case needs both first attempts (0.3 s each) in it
    assert time.perf_counter() - started < 0.8 + 0.2
    _wait_for_workers(before)

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    failures = {n: [w for w in warnings if w.startswith(f"alerts: {n} failed")] for n in NAMES}
    assert len(failures["telegram"]) == 1 and len(failures["webhook"]) == 1, warnings
    assert "/bot<redacted>/sendMessage" in failures["telegram"][0]
    assert "s3cr3t" not in " ".join(warnings)
    summaries = [w for w in warnings if w.startswith("alerts: ") and "deliveries failed" in w]
    assert len(summaries) == 1
    assert len(warnings) == 3  # nothing else warned
    if trouble != "slow":  # all three alerts failed on both notifiers before close()
        assert summaries[0] == "alerts: 6 deliveries failed, 0 messages dropped"
        assert len(telegram.hits) == (0 if trouble == "down" else 3)
    _no_token_anywhere(caplog)


def test_a_delivery_abandoned_at_close_logs_nothing_afterwards(
    telegram: FakeServer, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """close() counts the attempt in flight as dropped and the run ends: the thread's late
    failure must not log (the run's logging may be gone by then)."""
    telegram.behaviour = "slow"  # answers after 2 s; the notifier gives up after 0.6 s
    before = set(threading.enumerate())
    dispatcher = AlertDispatcher([_telegram(telegram, timeout=0.6)], FAST, run_dir)
    dispatcher.on_event({"step": 1, "event": "started"})
    while not telegram.hits:  # the attempt is under way
        time.sleep(0.01)
    caplog.set_level(logging.WARNING)
    assert dispatcher.close(timeout=0.1) == Delivery(failed=0, dropped=1)
    closed = [r.getMessage() for r in caplog.records]
    _wait_for_workers(before)  # its request times out now
    assert closed == ["alerts: 0 deliveries failed, 1 messages dropped"]
    assert [r.getMessage() for r in caplog.records] == closed


def test_rate_limited_message_is_delivered_after_retry_after(
    telegram: FakeServer, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    telegram.behaviour = "rate_limited"
    config = AlertsConfig(timeout_seconds=0.3, retries=3)
    dispatcher = AlertDispatcher([_telegram(telegram)], config, run_dir)
    dispatcher.on_event({"step": 10, "event": "best", "score": 0.5})
    dispatcher.close(timeout=5.0)
    assert [m.fields["text"] for m in telegram.messages()] == [
        "tacotune run demo: new best score at step 10\nscore: 0.5"
    ]
    (first, _), (second, _) = telegram.hits
    assert second - first >= 0.9  # retry_after: 1 was honoured
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_server_errors_are_retried_then_given_up(telegram: FakeServer, run_dir: Path) -> None:
    telegram.behaviour = "error"
    config = AlertsConfig(timeout_seconds=0.3, retries=2)
    dispatcher = AlertDispatcher([_telegram(telegram)], config, run_dir)
    dispatcher.on_event({"step": 10, "event": "best", "score": 0.5})
    dispatcher.close(timeout=5.0)
    assert len(telegram.hits) == 2


def test_telegram_errors_are_redacted_and_unchained(telegram: FakeServer) -> None:
    wrong = TelegramNotifier("111:WRONG-token", CHAT, api_base=telegram.url, timeout=0.3)
    with pytest.raises(NotifierError) as caught:
        wrong.send(Alert("best", "hello"))
    assert "HTTP 401: Unauthorized" in str(caught.value)
    assert "111:WRONG-token" not in str(caught.value) and "bot<redacted>" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    dead = TelegramNotifier(TOKEN, CHAT, api_base=_dead_url(), timeout=0.3)
    with pytest.raises(NotifierError) as caught:
        dead.send(Alert("best", "hello"))
    assert "request to" in str(caught.value) and TOKEN not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_bad_events_are_told_or_skipped_and_events_after_close_go_nowhere(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[Alert] = []

    class Recording:
        name = "recording"

        def send(self, alert: Alert) -> None:
            sent.append(alert)

    caplog.set_level(logging.INFO, logger="tacotune.alerts")
    dispatcher = AlertDispatcher([LogNotifier(), Recording()], FAST, run_dir)
    dispatcher.on_event({"event": "best", "step": object(), "score": 0.5})  # odd detail: told
    dispatcher.on_event({"event": 42})  # no such event: skipped
    assert dispatcher.close(timeout=1.0).complete
    dispatcher.on_event({"event": "best", "score": 1.0})  # after close: neither sent nor logged
    dispatcher.close(timeout=1.0)
    assert [(a.event, "0.5" in a.text) for a in sent] == [("best", True)]
    told = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert told == [sent[0].text]


def test_full_queue_drops_the_oldest_summary_first(run_dir: Path) -> None:
    entered, release, sent = threading.Event(), threading.Event(), []

    class Blocking:
        name = "blocking"

        def send(self, alert: Alert) -> None:
            entered.set()
            release.wait(5.0)
            sent.append(alert.event)

    config = AlertsConfig(summary_every_minutes=1.0, retries=1)
    dispatcher = AlertDispatcher([Blocking()], config, run_dir)
    dispatcher.on_event({"event": "started", "step": 0})
    assert entered.wait(2.0)  # the worker holds "started"; the queue is empty
    dispatcher.on_event({"event": "evaluation", "step": 1})
    for step in range(alerts._QUEUE_SIZE - 1):
        dispatcher.on_event({"event": "best", "step": step, "score": 1.0})
    dispatcher.on_event({"event": "finished", "step": 99})  # full: the summary goes
    dispatcher.on_event({"event": "interrupted", "step": 99})  # full, no summary: this goes
    release.set()
    dispatcher.close(timeout=5.0)
    assert sent == ["started"] + ["best"] * (alerts._QUEUE_SIZE - 1) + ["finished"]


# --- webhook ------------------------------------------------------------------------------


def test_webhook_receives_json(webhook: FakeServer, run_dir: Path) -> None:
    _samples(run_dir)
    dispatcher = AlertDispatcher([WebhookNotifier(webhook.url + "/hook")], FAST, run_dir)
    dispatcher.on_event({"step": 1000, "event": "finished", "reason": "max_steps"})
    dispatcher.close(timeout=5.0)
    assert [r.path for r in webhook.received] == ["/hook"]
    assert webhook.received[0].fields == {
        "event": "finished",
        "text": "tacotune run demo: finished at step 1000\nreason: max_steps",
        "attachments": ["probe_0_alignment.png", "probe_0.wav"],
    }


# --- secrets and assembly -----------------------------------------------------------------


def _secrets_file(tmp_path: Path, text: str) -> AlertsConfig:
    path = tmp_path / "secrets.env"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return AlertsConfig(secrets_file=str(path))


def test_secrets_file_parsing_and_environment_precedence(tmp_path: Path) -> None:
    config = _secrets_file(
        tmp_path,
        "# Telegram\n\n"
        "TACOTUNE_TELEGRAM_TOKEN = file-token\n"
        "export TACOTUNE_TELEGRAM_CHAT_ID='12345'\n"
        'TACOTUNE_WEBHOOK_URL="https://example.org/a=b"\n',
    )
    assert load_secrets(config, {}) == {
        "TACOTUNE_TELEGRAM_TOKEN": "file-token",
        "TACOTUNE_TELEGRAM_CHAT_ID": "12345",
        "TACOTUNE_WEBHOOK_URL": "https://example.org/a=b",
    }
    environ = {"TACOTUNE_TELEGRAM_TOKEN": "env-token", "TACOTUNE_TELEGRAM_CHAT_ID": "", "HOME": "/"}
    secrets = load_secrets(config, environ)
    assert secrets["TACOTUNE_TELEGRAM_TOKEN"] == "env-token"
    assert secrets["TACOTUNE_TELEGRAM_CHAT_ID"] == "12345"  # an empty variable does not count
    assert "HOME" not in secrets


def test_missing_or_malformed_secrets_file(tmp_path: Path) -> None:
    missing = AlertsConfig(secrets_file=str(tmp_path / "nope.env"))
    with pytest.raises(AlertsError, match=r"nope\.env does not exist.*TACOTUNE_TELEGRAM_TOKEN"):
        load_secrets(missing, {})
    assert issubclass(AlertsError, TacotuneError)
    broken = _secrets_file(tmp_path, "# ok\nTACOTUNE_TELEGRAM_TOKEN\n")
    with pytest.raises(AlertsError, match="line 2: expected KEY=VALUE") as caught:
        load_secrets(broken, {})
    assert "TACOTUNE_TELEGRAM_TOKEN" not in str(caught.value)  # the line itself is never shown


def test_shared_secrets_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _secrets_file(tmp_path, f"TACOTUNE_TELEGRAM_TOKEN={TOKEN}\n")
    Path(config.secrets_file).chmod(0o644)
    assert load_secrets(config, {}) == {"TACOTUNE_TELEGRAM_TOKEN": TOKEN}
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("variables", "messages", "missing"),
    [
        (("TACOTUNE_TELEGRAM_TOKEN", "TACOTUNE_TELEGRAM_CHAT_ID"), 1, None),
        (("TACOTUNE_TELEGRAM_TOKEN",), 0, "TACOTUNE_TELEGRAM_CHAT_ID"),
        (("TACOTUNE_TELEGRAM_CHAT_ID",), 0, "TACOTUNE_TELEGRAM_TOKEN"),
    ],
)
def test_build_dispatcher_needs_token_and_chat_id(
    variables: tuple[str, ...],
    messages: int,
    missing: str | None,
    telegram: FakeServer,
    run_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = {"TACOTUNE_TELEGRAM_TOKEN": TOKEN, "TACOTUNE_TELEGRAM_CHAT_ID": CHAT}
    environ = {name: values[name] for name in variables}
    environ["TACOTUNE_TELEGRAM_API"] = telegram.url
    dispatcher = build_dispatcher(FAST, run_dir, environ)
    dispatcher.on_event({"step": 0, "event": "started"})
    dispatcher.close(timeout=5.0)
    assert len(telegram.messages()) == messages
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if missing is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"{missing} is missing" in warnings[0]
    assert TOKEN not in caplog.text


def test_build_dispatcher_uses_the_webhook_from_config(webhook: FakeServer, run_dir: Path) -> None:
    config = AlertsConfig(webhook_url=webhook.url + "/cfg", timeout_seconds=0.3, retries=1)
    dispatcher = build_dispatcher(config, run_dir, environ={})
    dispatcher.on_event({"step": 0, "event": "started"})
    dispatcher.close(timeout=5.0)
    assert [r.path for r in webhook.received] == ["/cfg"]


def test_reprs_hide_secrets() -> None:
    assert TOKEN not in repr(TelegramNotifier(TOKEN, CHAT))
    assert CHAT in repr(TelegramNotifier(TOKEN, CHAT))
    assert "s3cr3t" not in repr(WebhookNotifier("https://hooks.example.org/s3cr3t"))


# --- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALERTED)
def test_format_alert_survives_missing_details(name: str, run_dir: Path) -> None:
    alert = format_alert({"event": name}, run_dir, send_samples=True)
    assert alert is not None and alert.event == name
    assert alert.text.startswith("tacotune run demo: ")
    assert alert.attachments == ()
    odd = {"event": name, "step": "?", "score": None, "lr_scale": "x", "best_score": float("inf")}
    assert format_alert(odd, run_dir, send_samples=True) is not None


@pytest.mark.parametrize("name", ["step_skipped", "debug_report", "", None])
def test_format_alert_ignores_other_events(name: str | None, run_dir: Path) -> None:
    assert format_alert({"event": name, "step": 1}, run_dir, send_samples=True) is None
    assert format_alert({}, run_dir, send_samples=True) is None


def test_format_alert_texts(run_dir: Path) -> None:
    rollback = {
        "event": "rollback",
        "step": 1200,
        "attempt": 2,
        "from_step": 1200,
        "to_step": 1000,
        "lr_scale": 0.5,
        "reason": "5 bad steps (non-finite loss)",
    }
    alert = format_alert(rollback, run_dir, send_samples=True)
    assert alert is not None and alert.text == (
        "tacotune run demo: rollback #2 at step 1200 → step 1000, learning rate ×0.50; "
        "reason: 5 bad steps (non-finite loss)"
    )
    started = {
        "event": "started",
        "step": 0,
        "world_size": 2,
        "device": "cuda:0",
        "precision": "bf16",
        "parameters": 28_190_000,
    }
    alert = format_alert(started, run_dir, send_samples=False)
    assert alert is not None and alert.text.splitlines() == [
        "tacotune run demo: started at step 0",
        "device: cuda:0",
        "processes: 2",
        "precision: bf16",
        "parameters: 28.2 M",
    ]
    summary = {
        "event": "evaluation",
        "step": 3000,
        "free/aligned_rate": 0.875,
        "val/mel_postnet": 0.31234,
        "steps_per_second": 2.5,
        "eta_seconds": 600,
    }
    alert = format_alert(summary, run_dir, send_samples=False)
    assert alert is not None and alert.text.splitlines()[1:] == [
        "free-running samples aligned: 88%",
        "validation mel loss (postnet): 0.3123",
        "steps per second: 2.5",
        "time left (estimate): 10 min",
    ]
    early = {
        "event": "early_stop",
        "step": 9000,
        "reason": "plateau",
        "detail": "no improvement for 5 evaluations",
        "best_score": 0.25,
        "best_step": 7000,
    }
    alert = format_alert(early, run_dir, send_samples=True)
    assert alert is not None and alert.text.splitlines() == [
        "tacotune run demo: early stop at step 9000",
        "reason: plateau",
        "detail: no improvement for 5 evaluations",
        "best score: 0.25 at step 7000",
    ]
    finished = {"event": "finished", "step": 10, "best_score": float("inf"), "bad_steps": 2}
    alert = format_alert(finished, run_dir, send_samples=False)
    assert alert is not None and alert.text.splitlines()[1:] == [
        "bad steps: 2",
        "best score: none (no evaluation yet)",
    ]
    beaten = {
        "event": "vocoder_beats_griffin_lim",
        "step": 4000,
        "eval/mcd": 6.1234,
        "gl/mcd": 6.5,
        "eval/mel_l1": 0.3,
        "minutes": 95.0,
    }
    alert = format_alert(beaten, run_dir, send_samples=True)
    assert alert is not None and alert.text.splitlines() == [
        "tacotune run demo: the neural vocoder beats Griffin-Lim at step 4000",
        "vocoder MCD, dB (lower is better): 6.123",
        "Griffin-Lim MCD, dB: 6.5",
        "training time: 1 h 35 min",
    ]
    diverged = {"event": "diverged", "step": 5, "reason": "loss exploded", "rollbacks": 3}
    alert = format_alert(diverged, run_dir, send_samples=True)
    assert alert is not None and alert.text.splitlines()[1:] == [
        "reason: loss exploded",
        "rollbacks: 3",
    ]


def test_samples_attached_only_when_asked(run_dir: Path) -> None:
    _samples(run_dir)
    names = ["probe_0_alignment.png", "probe_0.wav"]
    for event in ("finished", "aligned"):
        alert = format_alert({"event": event}, run_dir, send_samples=True)
        assert alert is not None and [p.name for p in alert.attachments] == names
        assert all(p.parent.name == "step_1000" for p in alert.attachments)
        alert = format_alert({"event": event}, run_dir, send_samples=False)
        assert alert is not None and alert.attachments == ()
    best = format_alert({"event": "best"}, run_dir, send_samples=True)
    assert best is not None and best.attachments == ()


def test_log_notifier_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    LogNotifier().send(Alert("rollback", "rolled back"))
    LogNotifier().send(Alert("best", "better"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "rolled back"),
        (logging.INFO, "better"),
    ]


def test_a_training_run_alerts_and_never_writes_or_logs_the_token(
    telegram: FakeServer,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tacotune.tracking import run_listeners
    from tacotune.train import train

    from conftest import tiny_train

    monkeypatch.setenv("TACOTUNE_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("TACOTUNE_TELEGRAM_CHAT_ID", CHAT)
    monkeypatch.setenv("TACOTUNE_TELEGRAM_API", telegram.url)
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    config = tiny_train()
    train(config, prepared, run, listeners=run_listeners(config, run))  # as the CLI does
    texts = [m.fields["text"] for m in telegram.messages()]
    assert any("started" in t for t in texts) and any("finished" in t for t in texts)
    assert {r.method for r in telegram.received} >= {"sendAudio", "sendDocument"}  # samples
    leaks = [p for p in run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert not any(TOKEN in record.getMessage() for record in caplog.records)
