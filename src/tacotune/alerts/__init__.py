"""Alerts: selected run events become plain-text messages for Telegram, a webhook and the log.

`AlertDispatcher.on_event` (it is a `RunListener`) formats an event, writes the `Alert` to the
log at once and queues it for every other notifier; each of them has its own daemon thread that
delivers with a few retries, so a slow or dead server can neither block nor crash training, nor
delay the log or another notifier. Summaries (`evaluation` events) are rate-limited.
Secrets come only from the environment or a KEY=VALUE file; every error message built here goes
through a redaction function, so the Telegram token reaches no log line, exception or file.
Telegram gets `parse_mode=HTML` with escaped text, so no character can break a message.
What an event's message says is `messages.format_alert`.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from tacotune.alerts.messages import Alert, format_alert, real_number
from tacotune.config.schema import AlertsConfig
from tacotune.errors import TacotuneError
from tacotune.names import Event, RunStatus
from tacotune.runlog import RunListener

log = logging.getLogger(__name__)

_TOKEN_VAR = "TACOTUNE_TELEGRAM_TOKEN"
_CHAT_VAR = "TACOTUNE_TELEGRAM_CHAT_ID"
_API_VAR = "TACOTUNE_TELEGRAM_API"
_WEBHOOK_VAR = "TACOTUNE_WEBHOOK_URL"
_SECRET_KEYS = (_TOKEN_VAR, _CHAT_VAR, _API_VAR, _WEBHOOK_VAR)
_DEFAULT_API = "https://api.telegram.org"
_HEADERS = {"User-Agent": "tacotune-alerts"}
_REDACTED = "<redacted>"
_QUEUE_SIZE = 100  # queued alerts; beyond it the oldest summary or the new alert is dropped
_BACKOFF_SECONDS = 0.5  # first wait between attempts, doubled each time
_MAX_WAIT_SECONDS = 5.0  # cap on the backoff and on a server's retry_after
_MAX_TEXT = 3500  # characters per message (Telegram allows 4096 after escaping)
_WARNING_EVENTS = frozenset({Event.ROLLBACK, Event.DIVERGED, Event.EARLY_STOP, Event.AUTO_FAILED})


class AlertsError(TacotuneError):
    """Alert settings or secrets are unusable (missing secrets file, malformed line, bad URL)."""


class NotifierError(Exception):
    """A notifier could not deliver; the message is already redacted."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked us to wait


class Notifier(Protocol):
    """Somewhere alerts go; `send` raises NotifierError."""

    name: str

    def send(self, alert: Alert) -> None: ...


def _redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every (non-empty) secret replaced by <redacted>, longest first."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


class _RedactRequests(logging.Filter):
    """httpx logs every request's URL (INFO "HTTP Request: POST ..."); a Telegram URL holds
    the token and a webhook URL may hold a secret: this filter redacts the ones registered."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _redact(record.getMessage(), self.secrets), None
        return True


_REQUEST_LOG = _RedactRequests()
logging.getLogger("httpx").addFilter(_REQUEST_LOG)


def _post(
    url: str, timeout: float, redact: Callable[[str], str], headers: Mapping[str, str], **body: Any
) -> tuple[int, bytes]:
    """POST `body` (httpx's `data`, `files` or `content`): the HTTP status and answer.
    Transport failures (refused, timed out, a malformed URL) raise NotifierError."""
    try:
        response = httpx.post(url, timeout=timeout, headers=headers, **body)
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        problem = f"{type(err).__name__}: {err}"
    else:
        return response.status_code, response.content
    # raised outside the except block, so no chained exception carries the URL
    raise NotifierError(redact(f"request to {url} failed: {problem}"))


def _read_attachment(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise NotifierError(f"cannot read attachment {path}: {err.strerror}") from None


class TelegramNotifier:
    """Telegram Bot API: sendMessage (HTML-escaped text), sendAudio/sendDocument for files."""

    name: str = "telegram"

    def __init__(
        self, token: str, chat_id: str, api_base: str = _DEFAULT_API, timeout: float = 10.0
    ) -> None:
        self._token, self._chat_id, self._timeout = token, chat_id, timeout
        _REQUEST_LOG.secrets.update((token, urllib.parse.quote(token, safe="")))
        self._api_base = api_base.rstrip("/")

    def __repr__(self) -> str:
        return f"TelegramNotifier(chat_id={self._chat_id!r}, api_base={self._api_base!r})"

    def redact(self, text: str) -> str:
        """`text` without the token, raw or URL-encoded (URLs keep `/bot<redacted>/`)."""
        return _redact(text, (self._token, urllib.parse.quote(self._token, safe="")))

    def send(self, alert: Alert) -> None:
        """The text, then each attachment; raises NotifierError (redacted) on any failure."""
        text = html.escape(alert.text[:_MAX_TEXT], quote=False)
        fields = {"chat_id": self._chat_id, "text": text, "parse_mode": "HTML"}
        self._call("sendMessage", data=fields)  # a form, url-encoded
        for path in alert.attachments:
            is_audio = path.suffix.lower() == ".wav"
            method, field = ("sendAudio", "audio") if is_audio else ("sendDocument", "document")
            upload = {field: (path.name, _read_attachment(path))}  # multipart, type by name
            self._call(method, data={"chat_id": self._chat_id}, files=upload)

    def _call(self, method: str, **body: Any) -> None:
        url = f"{self._api_base}/bot{self._token}/{method}"
        status, raw = _post(url, self._timeout, self.redact, _HEADERS, **body)
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        answer = answer if isinstance(answer, dict) else {"description": "no JSON object"}
        if status == 200 and answer.get("ok") is True:
            return
        parameters = answer.get("parameters")
        hint = parameters.get("retry_after") if isinstance(parameters, dict) else None
        retry_after = real_number(hint)
        message = f"{method} to {url} answered HTTP {status}: {answer.get('description')}"
        raise NotifierError(self.redact(message), retry_after=retry_after)


class WebhookNotifier:
    """A generic JSON webhook: POST {"event", "text", "attachments": [file names]}."""

    name: str = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._url, self._timeout = url, timeout  # the URL may embed a secret: never shown
        _REQUEST_LOG.secrets.add(url)

    def __repr__(self) -> str:
        return f"WebhookNotifier(url={_REDACTED!r})"

    def send(self, alert: Alert) -> None:
        """POST the alert as JSON; a failure or non-2xx answer raises NotifierError."""
        names = [path.name for path in alert.attachments]
        payload = {"event": alert.event, "text": alert.text, "attachments": names}
        body = json.dumps(payload, ensure_ascii=False).encode()
        redact = lambda text: _redact(text, [self._url])  # noqa: E731
        headers = {**_HEADERS, "Content-Type": "application/json"}
        status, _ = _post(self._url, self._timeout, redact, headers, content=body)
        if not 200 <= status < 300:
            raise NotifierError(f"webhook answered HTTP {status}")


class LogNotifier:
    """The log: WARNING for rollback/diverged/early_stop/auto_failed, INFO otherwise."""

    name: str = "log"

    def send(self, alert: Alert) -> None:
        """Log the alert text and the attached file names."""
        level = logging.WARNING if alert.event in _WARNING_EVENTS else logging.INFO
        files = "".join(f"\nattached: {path}" for path in alert.attachments)
        log.log(level, "%s%s", alert.text, files)


@dataclass(frozen=True)
class Delivery:
    """What happened to the alerts of a dispatcher, counted when it closed."""

    failed: int  # (alert, notifier) deliveries that failed after all attempts
    dropped: int  # (alert, notifier) deliveries never attempted (queue full, shutdown)

    @property
    def complete(self) -> bool:
        """Every alert reached every notifier."""
        return self.failed == 0 and self.dropped == 0


class AlertDispatcher(RunListener):
    """Formats events on the caller's thread; writes the log at once and hands every other
    notifier the alert on its own queue and daemon thread."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        config: AlertsConfig,
        run_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config, self._run_dir, self._clock = config, run_dir, clock
        self._last_summary: float | None = None
        # the log is local and instant: written in on_event, so it always gets every alert
        self._direct = tuple(n for n in notifiers if isinstance(n, LogNotifier))
        self._channels = tuple(
            _Channel(n, config) for n in notifiers if not isinstance(n, LogNotifier)
        )
        self._delivery: Delivery | None = None  # set by close()

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Format, log, and enqueue for the other notifiers; never blocks (delivery failures
        are the channels' business; format_alert copes with any details an event carries)."""
        if self._delivery is not None:
            log.debug("alerts: %s came after close(); not sent", event.get("event"))
            return
        if event.get("event") == Event.EVALUATION and not self._summary_due():
            return
        alert = format_alert(event, self._run_dir, self._config.send_samples)
        if alert is None:
            return
        for notifier in self._direct:
            notifier.send(alert)
        for channel in self._channels:
            channel.put(alert)

    def on_close(self, status: RunStatus) -> None:
        """The run is over: deliver what is queued within alerts.timeout_seconds."""
        self.close(timeout=self._config.timeout_seconds)

    def close(self, timeout: float = 5.0) -> Delivery:
        """Deliver what is queued within `timeout` seconds (for all notifiers together),
        then stop the threads; what is still queued then counts as dropped."""
        if self._delivery is not None:
            return self._delivery
        deadline = time.monotonic() + max(timeout, 0.0)
        for channel in self._channels:
            channel.finish()
        counts = [channel.join(deadline) for channel in self._channels]
        failed, dropped = sum(f for f, _ in counts), sum(d for _, d in counts)
        self._delivery = Delivery(failed, dropped)
        if failed or dropped:
            log.warning("alerts: %d deliveries failed, %d messages dropped", failed, dropped)
        return self._delivery

    def _summary_due(self) -> bool:
        every = self._config.summary_every_minutes * 60.0
        now = self._clock()
        if every <= 0 or (self._last_summary is not None and now - self._last_summary < every):
            return False
        self._last_summary = now
        return True


class _Channel:
    """One notifier's queue and delivery thread, so that a slow or dead server delays only
    its own alerts: each attempt is bounded (timeout, retries, backoff)."""

    def __init__(self, notifier: Notifier, config: AlertsConfig) -> None:
        self._notifier, self._config = notifier, config
        self._pending: deque[Alert] = deque()
        self._cond = threading.Condition()  # guards _pending, _closing and the counters
        self._abandon = threading.Event()  # join() ran out of time: stop at once
        self._closing = False
        self._failed = 0  # alerts that failed after all attempts
        self._dropped = 0  # alerts never delivered nor failed (queue full, shutdown)
        self._sending = False  # an attempt is under way (abandoned at shutdown: dropped)
        self._warned = False  # the first failure was logged
        name = f"tacotune-alerts-{notifier.name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, alert: Alert) -> None:
        """Queue `alert`; a full queue drops its oldest summary, or else `alert`."""
        with self._cond:
            if self._closing:
                return
            if len(self._pending) >= _QUEUE_SIZE:
                self._dropped += 1
                summary = next((a for a in self._pending if a.event == "evaluation"), None)
                if summary is None:
                    return
                self._pending.remove(summary)
            self._pending.append(alert)
            self._cond.notify()

    def finish(self) -> None:
        """Accept nothing more; the thread ends once the queue is empty."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def join(self, deadline: float) -> tuple[int, int]:
        """Wait for the thread until `deadline` (time.monotonic), then abandon it; the
        (failed, dropped) counts."""
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            self._abandon.set()
        with self._cond:
            self._dropped += len(self._pending) + int(self._sending)
            self._pending.clear()
            self._sending = False  # counted; a late outcome of that attempt is not
            return self._failed, self._dropped

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._abandon.is_set() or not self._pending:
                    return
                alert = self._pending.popleft()
                self._sending = True
            failed = not self._deliver(alert)
            with self._cond:
                if self._sending and failed:
                    self._failed += 1
                self._sending = False

    def _deliver(self, alert: Alert) -> bool:
        """Send with retries; whether it arrived (the first failure is logged)."""
        attempts = max(1, self._config.retries)
        for attempt in range(1, attempts + 1):
            try:
                self._notifier.send(alert)
                return True
            except NotifierError as err:
                error = err
            wait = error.retry_after or _BACKOFF_SECONDS * 2 ** (attempt - 1)
            if attempt == attempts or self._abandon.wait(min(wait, _MAX_WAIT_SECONDS)):
                break
        if self._abandon.is_set():  # join() has counted it as dropped and the run has ended
            return False
        first, self._warned = not self._warned, True  # (only this thread reads _warned)
        if first:
            later = "later failures are only counted"
            log.warning(
                "alerts: %s failed on %s: %s (%s)", self._notifier.name, alert.event, error, later
            )
        return False


# --- secrets and assembly -----------------------------------------------------------------


def _read_secrets_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines, `#` comments, `export ` and quotes allowed."""
    fix = f"write {_TOKEN_VAR}=... and {_CHAT_VAR}=... lines there, or set alerts.secrets_file ''"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        shared = os.name == "posix" and bool(path.stat().st_mode & 0o077)
    except FileNotFoundError:
        raise AlertsError(f"alerts.secrets_file {path} does not exist: {fix}") from None
    except UnicodeDecodeError:
        raise AlertsError(f"alerts.secrets_file {path} is not UTF-8 text: {fix}") from None
    except OSError as err:
        raise AlertsError(f"alerts.secrets_file {path} cannot be read ({err.strerror})") from None
    if shared:
        log.warning("alerts: secrets file %s is readable by other users; chmod 600 it", path)
    values: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = (part.strip() for part in line.removeprefix("export ").partition("="))
        if not sep or not key:
            raise AlertsError(
                f"alerts.secrets_file {path}, line {number}: expected KEY=VALUE "
                "(the line is not shown: it may hold a secret)"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key not in _SECRET_KEYS:
            log.warning("alerts: secrets file %s: unknown key %s is ignored", path, key)
        values[key] = value
    return values


def load_secrets(config: AlertsConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The non-empty TACOTUNE_* alert settings: the environment first, then the secrets file."""
    found: dict[str, str] = {}
    if config.secrets_file:
        found = _read_secrets_file(Path(config.secrets_file).expanduser())
    found.update({key: environ[key] for key in _SECRET_KEYS if environ.get(key)})
    return {key: found[key] for key in _SECRET_KEYS if found.get(key)}


def build_dispatcher(
    config: AlertsConfig, run_dir: Path, environ: Mapping[str, str] | None = None
) -> AlertDispatcher:
    """A dispatcher to the log, plus Telegram and the webhook where they are configured."""
    secrets = load_secrets(config, os.environ if environ is None else environ)
    notifiers: list[Notifier] = [LogNotifier()]
    token, chat_id = secrets.get(_TOKEN_VAR), secrets.get(_CHAT_VAR)
    if token and chat_id:
        api = secrets.get(_API_VAR, _DEFAULT_API)
        notifiers.append(TelegramNotifier(token, chat_id, api, config.timeout_seconds))
    elif token or chat_id:
        present, missing = (_TOKEN_VAR, _CHAT_VAR) if token else (_CHAT_VAR, _TOKEN_VAR)
        log.warning("alerts: Telegram is off: %s is set but %s is missing", present, missing)
    url = secrets.get(_WEBHOOK_VAR, config.webhook_url)
    if url:
        notifiers.append(WebhookNotifier(url, config.timeout_seconds))
    # worth a line only when alerts leave this machine (the log is always there)
    level = logging.INFO if len(notifiers) > 1 else logging.DEBUG
    log.log(level, "alerts go to: %s", ", ".join(n.name for n in notifiers))
    return AlertDispatcher(notifiers, config, run_dir)
