"""Fault injection for `tacotune serve`: hostile clients against a real uvicorn server on
loopback (test_serve.running), each case ending with an honest request that must succeed
within its deadline.

Hostile clients are raw sockets: stalled readers send a request and never read (a small
receive buffer, so the server's writes block at once), slow writers trickle their headers,
a flood fills the queue, others send bad headers. Slow synthesis is a sleep before each
decoder step of a voice (`Slowed`), so that a test sees whether a piece nobody will hear
keeps the synthesis thread busy.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch

from tacotune.serve.voices import Voice
from tacotune.synthesize import Synthesizer
from test_synthesize import untrained_payload

from serving import SENTENCE, one_torch_thread, running, serving, speech, tiny_voice  # noqa: F401

TIMEOUT = 2.0  # the servers' per-request limit, seconds
SMALL_BUFFER = 8192  # kernel bytes per socket: a first piece fills them and the rest waits
HONEST = "Да."  # a few milliseconds of synthesis
LONG = " ".join(["Мама мыла раму, а папа читал газету у окна."] * 40)  # ~9 pieces of 200 kB
SLOW_TEXT = "Это длинное предложение, которое медленный голос читает долго, шаг за шагом до конца."


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    """Pieces of 400 frames (about 200 kB of wav each) in a fraction of a second."""
    payload = untrained_payload("model.max_decoder_steps=200", "audio.griffin_lim_iters=4")
    Synthesizer(payload).speak(HONEST)  # the first Griffin-Lim of a process takes seconds
    return payload


class Slowed:
    """A voice named "slow" whose pieces take many seconds, in its decoder (a sleep before
    each of 1000 steps) or in its vocoder (1000 Griffin-Lim iterations). `started` is set
    when the slow part begins."""

    def __init__(self, part: str) -> None:
        iterations = 1000 if part == "vocoder" else 2
        payload = untrained_payload(
            "model.max_decoder_steps=1000", f"audio.griffin_lim_iters={iterations}"
        )
        engine = Synthesizer(payload)
        engine.model.decoder.prenet.register_forward_pre_hook(self._step)  # once per step
        self.vocoder = engine.vocoder
        self.sample_rate = engine.vocoder.sample_rate
        engine.vocoder = self  # announces, then vocodes
        self.voice = Voice("slow", engine, source="test", stage=None, vocoder="griffin-lim")
        self.part = part
        self.steps = 0
        self.started = threading.Event()

    def _step(self, *_: Any) -> None:
        self.steps += 1
        if self.part == "decoder":
            self.started.set()
            time.sleep(0.005)

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        if self.part == "vocoder":
            self.started.set()
        return self.vocoder(mel)

    def assert_stopped(self) -> None:
        """No decoder step any more (the one under way aside), no Griffin-Lim busy."""
        steps, cpu = self.steps, time.process_time()
        time.sleep(0.5)
        steps, cpu = self.steps - steps, time.process_time() - cpu
        assert steps <= 1 and cpu < 0.2, f"synthesis goes on: {steps} steps, {cpu:.2f} s CPU"


@pytest.fixture(params=["decoder", "vocoder"])
def slow(request: pytest.FixtureRequest) -> Slowed:
    return Slowed(request.param)


def raw(
    url: str, request: bytes, receive_buffer: int | None = None
) -> socket.socket:  # a hostile client
    """A socket to the server that has sent `request` (and reads nothing unless told)."""
    address = urlsplit(url)
    sock = socket.socket()
    if receive_buffer is not None:  # set before connecting: it sizes the TCP window
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((address.hostname, address.port))
    sock.sendall(request)
    return sock


def post_bytes(path: str, body: dict[str, Any], host: str = "127.0.0.1") -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


def queue(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["queue"])


def wait_for(condition: Callable[[], bool], within: float, what: str) -> float:
    """The time.monotonic() at which `condition` became true (AssertionError after `within`)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.05)
    return time.monotonic()


def honest(url: str, text: str = HONEST, model: str = "tiny") -> tuple[httpx.Response, float]:
    """An honest request and the seconds it took."""
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/audio/speech", json=speech(text, model=model), timeout=30)
    return response, time.monotonic() - started


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` s (whatever it sent first is read)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error


@pytest.fixture
def stalled() -> Iterator[list[socket.socket]]:
    """Sockets a test opens, closed after it."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


# --- the write side: a client that stops reading ---------------------------------------


def test_stalled_readers_lose_their_queue_slots_at_the_deadline(
    payload: dict[str, Any], stalled: list[socket.socket]
) -> None:
    # head_timeout_s: a response that did complete by its deadline (its bytes handed to the
    # transport) leaves an idle keep-alive connection, closed when no next request arrives
    with running(
        [tiny_voice(payload)],
        SMALL_BUFFER,
        max_queue=2,
        request_timeout_s=TIMEOUT,
        head_timeout_s=1.0,
    ) as server:
        url = server.url
        stalled += [
            raw(url, post_bytes("/v1/audio/speech", speech(LONG)), SMALL_BUFFER) for _ in range(2)
        ]
        admitted = wait_for(lambda: queue(url) == 2, 10, "admitting both")
        freed = wait_for(lambda: queue(url) == 0, TIMEOUT + 5, "freeing the stalled slots")
        answer, seconds = honest(url)
        # the server dropped their connections (a cut response at once; a complete one left
        # unread `request_timeout_s` later, or, once read, at the head timeout)
        dropped = [closed_by_server(sock, 3) for sock in stalled]
    assert freed - admitted < TIMEOUT + 1.0
    assert answer.status_code == 200 and seconds < TIMEOUT
    assert dropped == [True, True]


def test_a_flood_within_the_queue_leaves_room_for_an_honest_request(
    payload: dict[str, Any], stalled: list[socket.socket]
) -> None:
    with serving([tiny_voice(payload)], max_queue=6, request_timeout_s=4 * TIMEOUT) as url:
        flood = [raw(url, post_bytes("/v1/audio/speech", speech(LONG))) for _ in range(5)]
        stalled += flood
        readers = [threading.Thread(target=closed_by_server, args=(s, 30)) for s in flood]
        for reader in readers:  # they read: their pieces keep the synthesis thread busy
            reader.start()
        wait_for(lambda: queue(url) == 5, 10, "admitting the flood")
        answer, seconds = honest(url)
        for sock in flood:
            sock.shutdown(socket.SHUT_RDWR)
        for reader in readers:
            reader.join(10)
    assert answer.status_code == 200 and seconds < 4 * TIMEOUT  # one piece of each ahead


# --- the synthesis side: work nobody will hear stops ------------------------------------


def test_a_request_past_its_deadline_stops_its_synthesis(
    payload: dict[str, Any], slow: Slowed
) -> None:
    with serving([slow.voice, tiny_voice(payload)], request_timeout_s=TIMEOUT) as url:
        late, _ = honest(url, SLOW_TEXT, model="slow")
        slow.assert_stopped()
        answer, seconds = honest(url)  # "Да." does not wait for the unheard piece
    assert late.status_code == 504
    assert "did not finish within 2 s" in late.json()["error"]["message"]
    assert answer.status_code == 200 and seconds < TIMEOUT


def test_a_client_that_hangs_up_stops_its_synthesis(
    payload: dict[str, Any], slow: Slowed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    with serving([slow.voice, tiny_voice(payload)], request_timeout_s=30.0) as url:
        sock = raw(url, post_bytes("/v1/audio/speech", speech(SLOW_TEXT, model="slow")))
        assert slow.started.wait(10)
        sock.close()  # before any audio was sent
        wait_for(lambda: "gone" in caplog.text, 5, "noticing the hang-up")
        slow.assert_stopped()
        answer, seconds = honest(url)
    assert answer.status_code == 200 and seconds < TIMEOUT
    assert "POST /v1/audio/speech - gone voice=slow" in caplog.text
    assert "the client went away" in caplog.text


def test_shutdown_is_prompt_with_stalled_clients_and_unheard_synthesis(
    payload: dict[str, Any], slow: Slowed, stalled: list[socket.socket]
) -> None:
    with running(
        [slow.voice, tiny_voice(payload)], SMALL_BUFFER, request_timeout_s=TIMEOUT
    ) as server:
        url = server.url
        stalled.append(raw(url, post_bytes("/v1/audio/speech", speech(LONG)), SMALL_BUFFER))
        late, _ = honest(url, SLOW_TEXT, model="slow")  # 504, its piece unfinished
        wait_for(lambda: queue(url) == 0, TIMEOUT + 5, "cutting the stalled reader")
        asked = time.monotonic()
        server.server.should_exit = True  # what SIGTERM does
        server.thread.join(20)
        took = time.monotonic() - asked
        alive = server.thread.is_alive()
    assert late.status_code == 504
    assert not alive and took < 2.0, f"the server took {took:.1f} s to stop"
    slow.assert_stopped()


# --- the read side: slow and malformed requests -----------------------------------------


def test_slow_header_writers_are_dropped_while_honest_requests_pass(
    payload: dict[str, Any], stalled: list[socket.socket]
) -> None:
    with serving([tiny_voice(payload)], head_timeout_s=1.0) as url:
        stalled += [raw(url, b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n")]
        stalled += [raw(url, b"") for _ in range(10)]  # connected, silent
        for sock in stalled[:5]:
            sock.sendall(b"X-Slow: 1\r\n")  # a byte now and then keeps no connection open
        answer, seconds = honest(url)
        closed = [closed_by_server(sock, 3) for sock in stalled]
    assert answer.status_code == 200 and seconds < TIMEOUT
    assert all(closed), closed


def test_bad_headers_get_openai_shaped_errors(
    payload: dict[str, Any], stalled: list[socket.socket]
) -> None:
    head = b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with serving([tiny_voice(payload)], request_timeout_s=TIMEOUT) as url:
        huge = httpx.get(f"{url}/health", headers={"X-Huge": "x" * 1_000_000})
        stalled += [
            raw(url, head + b"Content-Length: abc\r\n\r\n{}"),
            raw(url, head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
            raw(url, post_bytes("/v1/audio/speech", speech(HONEST))[:-1]),  # a byte short
        ]
        answers = [answer_of(sock, TIMEOUT + 3) for sock in stalled]
        answer, seconds = honest(url)
    assert_openai_error(huge, 400, "invalid_http")
    assert [status for status, _ in answers] == [400, 400, 408]
    assert [body["error"]["code"] for _, body in answers] == [
        "invalid_http",
        "invalid_http",
        "request_timeout",
    ]
    assert answer.status_code == 200 and seconds < TIMEOUT


def answer_of(sock: socket.socket, within: float) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the one answer a raw socket gets (the server closes)."""
    sock.settimeout(within)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


# --- who may talk to the server, and what it logs ---------------------------------------


def test_a_keyless_server_answers_only_host_names_of_its_own(payload: dict[str, Any]) -> None:
    ours = ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "192.168.1.7", "tts.example.org"]
    with serving([tiny_voice(payload)], allowed_hosts=("tts.example.org",)) as url:
        port = urlsplit(url).port
        answers = {
            host: httpx.get(f"{url}/health", headers={"Host": f"{host}:{port}"})
            for host in [*ours, "attacker.example", "127.0.0.1.attacker.example"]
        }
        speech_refused = httpx.post(
            f"{url}/v1/audio/speech", json=speech(HONEST), headers={"Host": "attacker.example"}
        )
    with serving([tiny_voice(payload)], api_key="k3y") as url:  # a key is the guard there
        keyed = httpx.get(
            f"{url}/v1/voices", headers={"Host": "attacker.example", "X-API-Key": "k3y"}
        )
    assert {h: r.status_code for h, r in answers.items() if h in ours} == dict.fromkeys(ours, 200)
    assert_openai_error(answers["attacker.example"], 400, "host_not_allowed")
    assert "--allow-host" in answers["attacker.example"].json()["error"]["message"]
    assert_openai_error(answers["127.0.0.1.attacker.example"], 400, "host_not_allowed")
    assert_openai_error(speech_refused, 400, "host_not_allowed")
    assert keyed.status_code == 200


def test_a_request_path_cannot_forge_a_log_line(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    forged = "POST /v1/audio/speech 200 voice=tiny chars=3"
    path = "/v1/x%0a" + forged.replace(" ", "%20") + "%0d%1b[31m"
    with serving([tiny_voice(payload)]) as url:
        sock = raw(url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status = sock.recv(65536).split(b" ")[1]
        sock.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tacotune.serve"]
    assert status == b"404"
    assert not [line for line in lines if line.startswith(forged)]
    assert not [line for line in lines if "\n" in line or "\r" in line or "\x1b" in line]
    assert any(line.startswith("GET /v1/x\\nPOST /v1/audio/speech") for line in lines)


def test_a_key_in_any_alphabet_is_accepted_as_utf8(payload: dict[str, Any]) -> None:
    key = "секретный-ключ"
    with serving([tiny_voice(payload)], api_key=key) as url:
        sent = {
            "bearer": httpx.get(
                f"{url}/v1/voices", headers={b"Authorization": b"Bearer " + key.encode()}
            ),
            "x-api-key": httpx.get(f"{url}/v1/voices", headers={b"X-API-Key": key.encode()}),
            "cp1251": httpx.get(f"{url}/v1/voices", headers={b"X-API-Key": key.encode("cp1251")}),
            "not utf-8": httpx.get(f"{url}/v1/voices", headers={b"X-API-Key": b"\xff\xfe"}),
        }
    codes = {name: response.status_code for name, response in sent.items()}
    assert codes == {"bearer": 200, "x-api-key": 200, "cp1251": 401, "not utf-8": 401}
