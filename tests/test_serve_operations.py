"""`tacotune serve`, what an operator meets: warm-up, limits, the log's reasons, full queues
and deadlines, API keys, settings refused at start, start failures, OpenAI-shaped errors
and SIGTERM (a real server on loopback and httpx: tests/serving.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tacotune.checkpoint import save_checkpoint
from tacotune.cli import main
from tacotune.errors import ConfigError
from tacotune.serve import server as server_module
from tacotune.serve import voices as voices_module
from tacotune.serve.server import run_server, server_for
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import ServeError, Voice
from tacotune.synthesize import Synthesizer
from test_synthesize import untrained_payload

from serving import (  # noqa: F401 (one_torch_thread: an autouse fixture)
    SENTENCE,
    TWO_PIECES,
    BatchRecorder,
    GatedEngine,
    one_torch_thread,
    serving,
    speech,
    tiny_payload,
    tiny_voice,
    wait_until_up,
)


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return tiny_payload()


def test_each_voice_is_warmed_up_before_the_server_answers(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    engine = BatchRecorder(Synthesizer(payload), hold_from=99)  # records, holds nothing
    threads: list[str] = []  # where each decode ran: warm-up and request on one thread
    record = engine.decode

    def decode(chunks: list[tuple[str, tuple[int, ...]]]) -> Any:
        threads.append(threading.current_thread().name)
        return record(chunks)

    engine.decode = decode  # type: ignore[method-assign]
    servers: list[uvicorn.Server] = []

    def keep(voices: list[Voice], settings: ServerSettings) -> uvicorn.Server:
        servers.append(server_for(voices, settings))
        return servers[-1]

    monkeypatch.setattr(server_module, "server_for", keep)
    sock = socket.create_server(("127.0.0.1", 0))
    settings = ServerSettings(port=sock.getsockname()[1])
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    thread = threading.Thread(target=run_server, args=([voice], settings, [sock]), daemon=True)
    thread.start()
    try:
        health = httpx.get(f"http://127.0.0.1:{settings.port}/health", timeout=30)
        decoded_before_ready = list(engine.batches)  # before any request asked for speech
        vocoded_before_ready = engine.vocoder.calls
        spoken = httpx.post(
            f"http://127.0.0.1:{settings.port}/v1/audio/speech", json=speech(SENTENCE), timeout=60
        )
    finally:
        while not servers:
            time.sleep(0.01)
        servers[0].should_exit = True
        thread.join(20)
        sock.close()
    assert health.status_code == 200
    assert len(decoded_before_ready) == 1 and vocoded_before_ready == 1  # frontend to vocoder
    assert spoken.status_code == 200 and len(threads) == 2
    assert threads[0] == threads[1] and threads[0].startswith("tacotune-synth")
    messages = [r.getMessage() for r in caplog.records if r.name == "tacotune.serve"]
    warmed = next(i for i, m in enumerate(messages) if m.startswith("voice 'tiny' warmed up in"))
    assert warmed < next(i for i, m in enumerate(messages) if m.startswith("serving tiny on"))


def test_serve_loads_its_voices_on_the_synthesis_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Torch slows 2-3x on a thread after another thread ran parallel ops (serve/runner.py):
    the voices load where they will be served."""
    loaded_on: list[str] = []

    def load_voices(specs: list[str], registry: object, device: str = "cpu") -> list[Voice]:
        loaded_on.append(threading.current_thread().name)
        raise ServeError("no voice here (the test stops the server before it starts)")

    monkeypatch.setattr(voices_module, "load_voices", load_voices)
    assert main(["serve", "anna", "--port", "0", "--registry", str(tmp_path)]) == 1
    assert len(loaded_on) == 1 and loaded_on[0].startswith("tacotune-synth")


def test_every_error_is_logged_with_its_reason(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    with serving([tiny_voice(payload)]) as url:
        bad = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE, response_format="ogg"))
        odd = httpx.post(f"{url}/v1/audio/speech", json=speech("Мама\nмыла \x1b[31mраму"))
        missing = httpx.get(f"{url}/v1/nowhere")
    lines = [r.getMessage() for r in caplog.records if r.name == "tacotune.serve"]
    for answer, start in [
        (bad, "POST /v1/audio/speech 400"),
        (odd, "POST /v1/audio/speech 400"),
        (missing, "GET /v1/nowhere 404"),
    ]:
        error = answer.json()["error"]
        line = next(line for line in lines if line.startswith(start) and error["code"] in line)
        assert f"error={error['code']}: " in line
        assert error["message"][:40].replace("\n", "\\n") in line
        assert "\n" not in line and "\x1b" not in line  # escaped: one line, no terminal codes
    assert all("error=" not in line for line in lines if " 200 " in line)


def test_limits_answer_with_the_reason(payload: dict[str, Any]) -> None:
    huge = json.dumps(speech("а" * 20000)).encode()
    with serving([tiny_voice(payload)], max_input_chars=100, max_pieces=1) as url:
        long = httpx.post(f"{url}/v1/audio/speech", json=speech("а" * 101))
        pieces = httpx.post(f"{url}/v1/audio/speech", json=speech(TWO_PIECES[:100]))
        many = httpx.post(f"{url}/v1/synthesize", json={"voice": "tiny", "text": TWO_PIECES})
        sized = httpx.post(f"{url}/v1/audio/speech", content=huge)
        chunked = httpx.post(f"{url}/v1/audio/speech", content=iter([huge[:9000], huge[9000:]]))
    assert sized.status_code == chunked.status_code == 413
    assert sized.json()["error"]["message"] == (
        f"the request body has {len(huge)} bytes; this server takes at most 17584"
    )
    assert "more than 17584 bytes" in chunked.json()["error"]["message"]
    assert long.status_code == 413
    assert long.json()["error"]["message"].startswith("the text has 101 characters")
    assert "at most 100 per request" in long.json()["error"]["message"]
    assert pieces.status_code == 200
    assert many.status_code == 413 and len(TWO_PIECES) > 100  # refused before splitting
    with serving([tiny_voice(payload)], max_pieces=1) as url:
        many = httpx.post(f"{url}/v1/synthesize", json={"voice": "tiny", "text": TWO_PIECES})
    assert many.status_code == 413
    assert "splits into 2 pieces" in many.json()["error"]["message"]
    assert many.json()["error"]["param"] == "text"


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"input": "привет 😀"}, 400, ["U+1F600", "at 7", "outside the symbol table"]),
        ({"input": "?!?!"}, 400, ["nothing to say"]),
        ({"response_format": "ogg"}, 400, ["'ogg' is not supported", "mp3, opus, aac, flac"]),
        ({"speed": 4.5}, 400, ["speed 4.5 is out of range", "0.25-4.0"]),
        ({"speed": 0.2}, 400, ["speed 0.2 is out of range", "0.25-4.0"]),
        ({"model": "nobody"}, 404, ["no model named 'nobody'", "tts-1", "'tiny'"]),
        ({"model": "tts-1", "voice": "nobody"}, 404, ["no voice named 'nobody'", "'tiny'"]),
        ({"model": "tts-1", "voice": {"id": "x"}}, 404, ["no voice named 'x'", "alloy"]),
        ({"inptu": "x"}, 400, ["inptu", "Extra inputs are not permitted"]),
        ({"stream_format": "chunks"}, 400, ["'chunks' is not supported", "'sse'"]),
    ],
)
def test_bad_requests_are_errors_that_say_why(
    payload: dict[str, Any], change: dict[str, Any], status: int, words: list[str]
) -> None:
    with serving([tiny_voice(payload)]) as url:
        response = httpx.post(f"{url}/v1/audio/speech", json={**speech(SENTENCE), **change})
    assert response.status_code == status
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message


def test_a_full_queue_is_503_and_a_stalled_request_times_out(payload: dict[str, Any]) -> None:
    engine = GatedEngine(Synthesizer(payload))
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    with serving([voice], max_queue=1, request_timeout_s=3.0) as url:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, f"{url}/v1/audio/speech", json=speech(SENTENCE))
            assert engine.waiting.wait(10)
            refused = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE))
            queue = httpx.get(f"{url}/metrics").text
            first = held.result(timeout=30)  # the held request passes its deadline
        engine.gate.set()  # the stalled decode ends; the next request waits for it
        after = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "the server is busy" in refused.json()["error"]["message"]
    assert "tacotune_queue_length 1.0" in queue
    assert first.status_code == 504
    assert "did not finish within 3 s" in first.json()["error"]["message"]
    assert after.status_code == 200


def test_a_deadline_mid_stream_drops_wav_and_ends_ndjson_and_sse_with_an_error(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    engine = GatedEngine(Synthesizer(payload), pass_first=1)
    engine.inner.speak(TWO_PIECES)  # warm up, so that the first piece beats the deadline
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    ndjson = {"voice": "tiny", "text": TWO_PIECES, "stream": True}
    with serving([voice], request_timeout_s=2.0) as url:
        with pytest.raises(httpx.RemoteProtocolError):  # not a short file that looks whole
            httpx.post(f"{url}/v1/audio/speech", json=speech(TWO_PIECES, stream_format="audio"))
        engine.gate.set()  # the stalled decode ends (unheard); a new gate for the next one
        engine.gate, engine.calls = threading.Event(), 0
        with httpx.stream("POST", f"{url}/v1/synthesize", json=ndjson) as response:
            lines = [json.loads(line) for line in response.iter_lines()]
        engine.gate.set()
        engine.gate, engine.calls = threading.Event(), 0
        sse = speech(TWO_PIECES, stream_format="sse")
        with httpx.stream("POST", f"{url}/v1/audio/speech", json=sse) as response:
            events = [json.loads(e[6:]) for e in response.iter_lines() if e.startswith("data: ")]
        engine.gate.set()
    assert [line["type"] for line in lines] == ["piece", "error"]
    assert "per-request limit of 2 s passed" in lines[1]["error"]["message"]
    assert [event["type"] for event in events] == ["speech.audio.delta", "error"]
    assert "per-request limit of 2 s passed" in events[1]["error"]["message"]
    assert "POST /v1/audio/speech 200 cut" in caplog.text


def test_api_key_is_required_and_compared(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = "k3y-that-must-not-leak"
    with serving([tiny_voice(payload)], api_key=key) as url:
        missing = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE))
        wrong = httpx.get(f"{url}/v1/voices", headers={"Authorization": "Bearer nope"})
        metrics = httpx.get(f"{url}/metrics")
        bearer = httpx.get(f"{url}/v1/voices", headers={"Authorization": f"Bearer {key}"})
        header = httpx.get(f"{url}/v1/voices", headers={"X-API-Key": key})
        health = httpx.get(f"{url}/health")
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "missing or wrong API key" in wrong.json()["error"]["message"]
    assert bearer.status_code == header.status_code == health.status_code == 200
    assert health.json()["auth_required"] is True
    assert "/v1/voices 401" in caplog.text  # requests are logged ...
    assert key not in caplog.text and "nope" not in caplog.text  # ... keys never


def test_settings_refuse_bad_limits_and_keys_no_client_could_send() -> None:
    with pytest.raises(ConfigError, match="max_queue=0"):
        ServerSettings(max_queue=0)
    with pytest.raises(ConfigError, match="request_timeout_s=inf"):
        ServerSettings(request_timeout_s=float("inf"))
    with pytest.raises(ConfigError, match="TACOTUNE_API_KEY is set but empty"):
        ServerSettings(api_key=" ")
    for unsendable in ("key ", "two\nlines"):
        with pytest.raises(ConfigError, match="no HTTP header can carry"):
            ServerSettings(api_key=unsendable)
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        ServerSettings(api_key="ключ\udcff")  # a byte os.environ could not decode
    with pytest.raises(ConfigError, match="'tts\\.example\\.org:80' is not a host name"):
        ServerSettings(allowed_hosts=("tts.example.org:80",))
    assert "секрет" not in repr(ServerSettings(api_key="секрет"))
    with pytest.raises(ConfigError, match="--alias 'nova' \\(to 'a'\\): give each alias once"):
        ServerSettings(voice_aliases=(("nova", "a"), ("nova", "b")))


@pytest.mark.parametrize(
    "option",
    [
        ["--timeout", "inf"],
        ["--timeout", "nan"],
        ["--timeout", "0"],
        ["--timeout", "-1"],
        ["--threads", "-1"],
        ["--queue", "0"],
        ["--max-pieces", "x"],
        ["--port", "65536"],
        ["--alias", "nova"],
        ["--alias", "=tiny"],
    ],
)
def test_serve_refuses_bad_numbers_as_usage_errors(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["serve", "tiny", *option])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    last = err.splitlines()[-1]
    assert f"error: argument {option[0]}: " in last and option[1] in last


def test_serve_start_failures_are_one_line_and_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = {}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        errors["in use"] = main(["-q", "serve", "tiny", "--port", str(port)]), capsys.readouterr()
    for host in ("no-such-host.invalid", "203.0.113.9"):  # no name; not this machine's
        errors[host] = main(["-q", "serve", "tiny", "--host", host]), capsys.readouterr()
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the serve extra is not installed
    errors["no extra"] = main(["-q", "serve", "tiny"]), capsys.readouterr()
    for name, (code, (_, err)) in errors.items():
        assert code == 1 and len(err.strip().splitlines()) == 1, (name, err)
    assert f"port {port} is in use" in errors["in use"][1].err
    assert "--host 'no-such-host.invalid'" in errors["no-such-host.invalid"][1].err
    assert "203.0.113.9 is not an address of this machine" in errors["203.0.113.9"][1].err
    assert "pip install 'tacotune[serve]'" in errors["no extra"][1].err


def test_every_error_has_openai_shape(payload: dict[str, Any]) -> None:
    with serving([tiny_voice(payload)]) as url:
        answers = {
            "no route": httpx.get(f"{url}/v1/nowhere"),
            "no file": httpx.get(f"{url}/static/nothing.js"),
            "method": httpx.delete(f"{url}/v1/voices"),
            "not json": httpx.post(
                f"{url}/v1/audio/speech",
                content=b'{"model": ',
                headers={"Content-Type": "application/json"},
            ),
            "form": httpx.post(f"{url}/v1/audio/speech", files={"input": b"x"}),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "no route": 404,
        "no file": 404,
        "method": 405,
        "not json": 400,
        "form": 400,
    }
    for name, answer in answers.items():
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, (name, error)
        assert error["type"] == "invalid_request_error" and error["message"], (name, error)
    assert "GET '/v1/nowhere'" in answers["no route"].json()["error"]["message"]
    assert answers["method"].headers["allow"] == "GET"
    assert answers["not json"].json()["error"]["message"].startswith("the body is not JSON")


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_and_keys_stay_out_of_the_log(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(
        checkpoint, untrained_payload("model.max_decoder_steps=60", "audio.griffin_lim_iters=4")
    )
    key, guess = "k3y-that-must-not-leak", "a-wrong-guess"
    with socket.socket() as probe:  # a free port (uvicorn binds it a moment later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tacotune", "serve", f"tiny={checkpoint}"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--threads", "1"],
        env={**os.environ, "TACOTUNE_API_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    text = " ".join(
        f"Предложение номер {i}, в нём больше ста семидесяти букв." * 4 for i in range(6)
    )
    try:
        wait_until_up(url, server)
        wrong = httpx.get(f"{url}/v1/voices", headers={"Authorization": f"Bearer {guess}"})
        request = {"voice": "tiny", "text": text, "stream": True}
        with httpx.stream(
            "POST", f"{url}/v1/synthesize", json=request, headers=auth, timeout=60
        ) as reply:
            lines = reply.iter_lines()
            first = json.loads(next(lines))
            server.send_signal(signal.SIGTERM)  # the other pieces are still to be synthesized
            rest = [json.loads(line) for line in lines]
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        log = server.communicate()[1]
    assert wrong.status_code == 401
    assert first["type"] == "piece" and first["of"] >= 4
    assert [x["type"] for x in rest] == ["piece"] * (first["of"] - 1) + ["done"], log
    assert code == 0, log
    assert "GET /v1/voices 401" in log and "POST /v1/synthesize 200 voice=tiny" in log
    # the request was still in flight when the shutdown began, and finished after it
    assert log.index("Shutting down") < log.index("POST /v1/synthesize 200")
    assert "rtf=" in log and "server stopped" in log
    assert key not in log and guess not in log
