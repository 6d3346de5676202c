"""`tacotune serve`: a real uvicorn server on a free loopback port, a real HTTP client (httpx).

The voice is an untrained tiny model whose gate never fires, so every piece decodes to its
step limit: audio of a known length, in milliseconds. Stalls and the deadline are injected
by wrapping the engine (`GatedEngine`), so queue and timeout tests need no timing luck.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn

from tacotune.audio import fit_full_scale
from tacotune.checkpoint import save_checkpoint
from tacotune.cli import main
from tacotune.errors import ConfigError
from tacotune.registry import Registry, RegistryError
from tacotune.serve import server as server_module
from tacotune.serve.server import run_server, server_for
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import ServeError, Voice, load_voice, load_voices
from tacotune.synthesize import PAUSE_SECONDS, Piece, Synthesizer, split_text
from test_synthesize import untrained_payload

SENTENCE = "Мама мыла раму."
# over MAX_CHUNK_CHARS (200) characters: two pieces, split at the sentence end
TWO_PIECES = (
    "Это первое предложение, довольно длинное, чтобы весь текст не поместился в одну часть "
    "и разделился на две. А это второе предложение: оно тоже не очень короткое, в нём много "
    "слов, и заканчивается оно точкой, как и положено."
)
RATE = 22050
PCM_STEP = 2.0 / 32768  # 16-bit rounding, written as x * 32767 and read as x / 32768


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from two threads, and on a busy machine OpenMP's
    waiting makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return untrained_payload("model.max_decoder_steps=30", "audio.griffin_lim_iters=4")


def tiny_voice(payload: dict[str, Any], name: str = "tiny") -> Voice:
    return Voice(name, Synthesizer(payload), source="test", stage=None, vocoder="griffin-lim")


class GatedEngine:
    """A Synthesizer whose decode waits at a gate the test opens (an injected stall).

    `pass_first` decodes go through at once; later ones wait."""

    def __init__(self, inner: Synthesizer, pass_first: int = 0) -> None:
        self.inner = inner
        self.frontend = inner.frontend
        self.vocoder = inner.vocoder
        self.pass_first = pass_first
        self.calls = 0
        self.waiting = threading.Event()  # a decode is held at the gate
        self.gate = threading.Event()

    def decode(self, chunks: list[tuple[str, tuple[int, ...]]]) -> list[Piece]:
        self.calls += 1
        if self.calls > self.pass_first:
            self.waiting.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.decode(chunks)


@dataclass
class Running:
    """A server running in a thread of the test process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def running(
    voices: list[Voice], send_buffer: int | None = None, **settings: Any
) -> Iterator[Running]:
    """A real uvicorn server in a thread on a free loopback port (stopped as SIGTERM would).

    `send_buffer` bytes of kernel buffer per connection, as on a slow network (default:
    loopback's, which grows to megabytes before a client that does not read is noticed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:  # accepted connections inherit it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = server_for(voices, ServerSettings(port=port, **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@contextmanager
def serving(voices: list[Voice], **settings: Any) -> Iterator[str]:
    """A real uvicorn server in a thread on a free loopback port; yields its base URL."""
    with running(voices, **settings) as server:
        yield server.url


def speech(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "input": text, "voice": "alloy", "response_format": "wav", **extra}


def expected_audio(payload: dict[str, Any], text: str) -> np.ndarray:
    """What the server should send for `text`: each piece decoded alone, scaled, paused."""
    synthesizer = Synthesizer(payload)
    chunks = split_text(synthesizer.frontend, text)
    parts = []
    for index, chunk in enumerate(chunks):
        piece = synthesizer.decode([chunk])[0]
        parts.append(fit_full_scale(synthesizer.vocoder(piece.mel)))
        if index < len(chunks) - 1:
            parts.append(np.zeros(round(PAUSE_SECONDS * RATE), dtype=np.float32))
    return np.concatenate(parts)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def test_openai_request_returns_a_playable_wav_of_the_expected_duration(
    payload: dict[str, Any],
) -> None:
    speech_alone = Synthesizer(payload).speak(SENTENCE)  # `tacotune synthesize`'s audio
    frames = speech_alone.pieces[0].mel.shape[1]
    with serving([tiny_voice(payload)]) as url:
        response = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE, speed=1.0))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    audio, rate = read_wav(response.content)
    assert rate == RATE and len(audio) == frames * 256 == len(speech_alone.audio)
    # a whole wav has exact sizes: Python's wave reads the frame count from the header
    with wave.open(io.BytesIO(response.content)) as header:
        assert header.getnframes() == len(audio)
    assert int.from_bytes(response.content[4:8], "little") == len(response.content) - 8
    np.testing.assert_allclose(audio, fit_full_scale(speech_alone.audio), atol=PCM_STEP)


def test_pcm_is_24khz_flac_is_whole_and_speed_changes_the_length(
    payload: dict[str, Any],
) -> None:
    expected = expected_audio(payload, SENTENCE)
    with serving([tiny_voice(payload)]) as url:
        pcm = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE, response_format="pcm"))
        flac = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE, response_format="flac"))
        fast = httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE, speed=2.0))
    assert pcm.status_code == flac.status_code == fast.status_code == 200
    assert pcm.headers["x-sample-rate"] == "24000"
    assert len(pcm.content) // 2 == pytest.approx(len(expected) * 24000 / RATE, abs=2)
    flac_audio, rate = read_wav(flac.content)
    assert rate == RATE and flac.headers["content-length"] == str(len(flac.content))
    np.testing.assert_allclose(flac_audio, expected, atol=PCM_STEP)
    assert len(read_wav(fast.content)[0]) == round(len(expected) / 256 / 2.0) * 256


@pytest.mark.parametrize(
    ("fmt", "stream_format", "start"),
    [
        ("wav", "audio", b"RIFF\xff\xff\xff\xffWAVE"),  # sizes unknown, as OpenAI's
        ("mp3", None, b"\xff\xf3"),  # an MPEG-2 layer III frame: no tag to fill in later
        ("opus", None, b"OggS"),
        ("aac", None, b"\xff\xf1"),  # an ADTS frame
    ],
)
def test_streams_send_the_first_piece_before_the_rest_is_synthesized(
    payload: dict[str, Any], fmt: str, stream_format: str | None, start: bytes
) -> None:
    engine = GatedEngine(Synthesizer(payload), pass_first=1)
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    expected = expected_audio(payload, TWO_PIECES)
    with serving([voice]) as url, httpx.Client(timeout=30) as client:
        request = speech(TWO_PIECES, response_format=fmt, stream_format=stream_format)
        with client.stream("POST", f"{url}/v1/audio/speech", json=request) as response:
            assert response.status_code == 200 and response.headers["x-pieces"] == "2"
            chunks = response.iter_raw()
            first = next(chunks)
            assert engine.waiting.wait(10)  # the second piece is held: nothing more can come
            assert first.startswith(start) and len(first) > 1000
            engine.gate.set()
            body = first + b"".join(chunks)
    audio, rate = decode_audio(body)
    if fmt == "wav":
        assert rate == RATE
        np.testing.assert_allclose(audio, expected, atol=PCM_STEP)
    else:  # lossy: the length, within the encoders' delay and padding
        assert len(audio) == pytest.approx(len(expected) * rate / RATE, abs=2400)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Any answer's audio: libsndfile for wav/flac/mp3/ogg, ffmpeg (PyAV) for aac."""
    if data[:2] != b"\xff\xf1":
        return read_wav(data)
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
        return np.concatenate(frames), container.streams.audio[0].rate


def test_concurrent_requests_get_their_own_audio() -> None:
    # lengths in proportion to the text (2 frames a character), so that each text's audio
    # has a length of its own (its samples may differ from its solo ones when it is decoded
    # in a batch: its dropout draws depend on the batch, see runner.py)
    payload = untrained_payload(
        "model.max_decoder_steps=200", "model.max_frames_per_char=2", "audio.griffin_lim_iters=4"
    )
    texts = ["Мама мыла раму.", "В лесу родилась ёлочка!", "Кошка спит.", TWO_PIECES]
    with serving([tiny_voice(payload)]) as url:
        alone = [httpx.post(f"{url}/v1/audio/speech", json=speech(t)).content for t in texts]
        with ThreadPoolExecutor(8) as pool:
            together = list(
                pool.map(
                    lambda t: httpx.post(f"{url}/v1/audio/speech", json=speech(t), timeout=60),
                    texts * 2,
                )
            )
    solo = [read_wav(data)[0] for data in alone]
    assert len({len(audio) for audio in solo}) == len(texts)  # a length of its own each
    for response, text in zip(together, texts * 2, strict=True):
        assert response.status_code == 200
        audio, own = read_wav(response.content)[0], solo[texts.index(text)]
        assert len(audio) == len(own)  # its own text's audio, no one else's


class CountingVocoder:
    """A vocoder that counts its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.sample_rate, self.calls = inner, inner.sample_rate, 0

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        self.calls += 1
        result: np.ndarray = self.inner(mel)
        return result


class BatchRecorder(GatedEngine):
    """A GatedEngine that records the chunks of every decode and holds only batches of
    `hold_from` or more chunks at its gate (the first such batch)."""

    def __init__(self, inner: Synthesizer, hold_from: int) -> None:
        super().__init__(inner)
        self.hold_from = hold_from
        self.batches: list[list[str]] = []
        self.vocoder = CountingVocoder(inner.vocoder)

    def decode(self, chunks: list[tuple[str, tuple[int, ...]]]) -> list[Piece]:
        self.batches.append([text for text, _ in chunks])
        if len(chunks) >= self.hold_from and not self.waiting.is_set():
            self.waiting.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.decode(chunks)


BATCH_TEXTS = ["Мама мыла раму.", "Кошка спит.", "Дом стоит.", "Лес шумит.", "Пёс лает.", "Да."]


def test_waiting_pieces_of_a_voice_are_decoded_in_one_batch(payload: dict[str, Any]) -> None:
    engine = BatchRecorder(Synthesizer(payload), hold_from=1)  # holds the first decode
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    with serving([voice]) as url, ThreadPoolExecutor(1 + len(BATCH_TEXTS)) as pool:
        first = pool.submit(
            httpx.post, f"{url}/v1/audio/speech", json=speech("Привет."), timeout=60
        )
        assert engine.waiting.wait(10)  # the synthesis thread is busy: the others wait
        others = [
            pool.submit(httpx.post, f"{url}/v1/audio/speech", json=speech(t), timeout=60)
            for t in BATCH_TEXTS
        ]
        wait_for_queue(url, 1 + len(BATCH_TEXTS))
        engine.gate.set()
        answers = [first.result(30), *(other.result(30) for other in others)]
    assert [answer.status_code for answer in answers] == [200] * (1 + len(BATCH_TEXTS))
    sizes = [len(batch) for batch in engine.batches]
    assert sizes[0] == 1 and sum(sizes) == 1 + len(BATCH_TEXTS)  # each piece decoded once
    assert max(sizes) >= 3, sizes  # the waiting pieces went together, not one by one
    assert max(sizes) <= 8  # runner.MAX_BATCH


def test_a_request_gone_mid_batch_leaves_the_others_their_audio(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    engine = BatchRecorder(Synthesizer(payload), hold_from=2)  # holds the first real batch
    voice = Voice("tiny", engine, "test", None, "griffin-lim")
    with serving([voice]) as url:
        port = int(url.rsplit(":", 1)[1])
        clients = {text: _raw_speech(port, text) for text in BATCH_TEXTS}
        assert engine.waiting.wait(20), engine.batches  # a batch of 2+ is being decoded
        held = engine.batches[-1]
        gone = next(text for text in BATCH_TEXTS if text.lower() in held[0].replace("+", ""))
        clients.pop(gone).close()  # its client hangs up while its piece is in the batch
        deadline = time.monotonic() + 10
        while " gone " not in caplog.text:
            assert time.monotonic() < deadline, "the server did not notice the hang-up"
            time.sleep(0.05)
        engine.gate.set()
        replies = {text: _read_all(sock) for text, sock in clients.items()}
    for text, reply in replies.items():
        assert reply.startswith(b"HTTP/1.1 200"), (text, reply[:200])
    decoded = sum(len(batch) for batch in engine.batches)
    assert decoded == len(BATCH_TEXTS)  # the gone request's piece was decoded (in the batch) ...
    assert engine.vocoder.calls == len(BATCH_TEXTS) - 1  # ... but not vocoded


def _raw_speech(port: int, text: str) -> socket.socket:
    body = json.dumps(speech(text)).encode()
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode() + body)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    with sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def wait_for_queue(url: str, requests: int) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["queue"] < requests:
        assert time.monotonic() < deadline, "the requests did not arrive"
        time.sleep(0.02)


def test_each_voice_is_warmed_up_before_the_server_answers(
    payload: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="tacotune.serve")
    engine = BatchRecorder(Synthesizer(payload), hold_from=99)  # records, holds nothing
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
    finally:
        while not servers:
            time.sleep(0.01)
        servers[0].should_exit = True
        thread.join(20)
        sock.close()
    assert health.status_code == 200
    assert len(decoded_before_ready) == 1 and engine.vocoder.calls == 1  # frontend to vocoder
    messages = [r.getMessage() for r in caplog.records if r.name == "tacotune.serve"]
    warmed = next(i for i, m in enumerate(messages) if m.startswith("voice 'tiny' warmed up in"))
    assert warmed < next(i for i, m in enumerate(messages) if m.startswith("serving tiny on"))


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


def test_synthesize_returns_pieces_stop_reasons_timing_and_alignment(
    payload: dict[str, Any],
) -> None:
    expected = expected_audio(payload, TWO_PIECES)
    request = {"voice": "tiny", "text": TWO_PIECES, "alignment": True}
    with serving([tiny_voice(payload)]) as url:
        whole = httpx.post(f"{url}/v1/synthesize", json=request, timeout=30)
        with httpx.stream("POST", f"{url}/v1/synthesize", json={**request, "stream": True}) as r:
            lines = [json.loads(line) for line in r.iter_lines()]
        stressed = httpx.post(f"{url}/v1/synthesize", json={"voice": "tiny", "text": "Зам+ок."})
    assert stressed.json()["pieces"][0]["text"] == "зам+ок."  # the stress mark is read
    assert whole.status_code == 200
    result = whole.json()
    audio, rate = read_wav(base64.b64decode(result["audio"]))
    assert rate == result["sample_rate"] == RATE
    np.testing.assert_allclose(audio, expected, atol=PCM_STEP)
    assert result["seconds"] == pytest.approx(len(expected) / RATE, abs=1e-3)
    assert result["complete"] is False  # an untrained model never reaches the end
    assert [p["stop_reason"] for p in result["pieces"]] == ["max_steps", "max_steps"]
    alignment = result["pieces"][0]["alignment"]
    cells = len(base64.b64decode(alignment["data"]))
    assert cells == alignment["steps"] * alignment["chars"] > 0
    assert alignment["chars"] == len(result["pieces"][0]["text"]) + 1  # + end of sequence
    timing = result["timing"]
    assert 0 < timing["compute_seconds"] <= timing["total_seconds"]
    assert timing["rtf"] == pytest.approx(timing["compute_seconds"] / result["seconds"], 0.01)
    assert [line["type"] for line in lines] == ["piece", "piece", "done"]
    streamed = np.concatenate([read_wav(base64.b64decode(x["audio"]))[0] for x in lines[:2]])
    np.testing.assert_allclose(streamed, audio, atol=PCM_STEP)
    assert lines[-1]["seconds"] == result["seconds"]


def test_voices_health_and_metrics(payload: dict[str, Any]) -> None:
    with serving([tiny_voice(payload), tiny_voice(payload, "other")]) as url:
        voices = httpx.get(f"{url}/v1/voices").json()["voices"]
        models = httpx.get(f"{url}/v1/models").json()
        assert httpx.post(f"{url}/v1/audio/speech", json=speech(SENTENCE)).status_code == 200
        metrics = httpx.get(f"{url}/metrics")
        health = httpx.get(f"{url}/health").json()
    assert [v["name"] for v in voices] == ["tiny", "other"]
    assert voices[0]["vocoder"] == "griffin-lim" and voices[0]["sample_rate"] == RATE
    assert [m["id"] for m in models["data"]] == [
        "tiny",
        "other",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
    ]
    assert health == {
        "status": "ok",
        "voices": 2,
        "auth_required": False,
        "queue": 0,
        "max_queue": 32,
    }
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'tacotune_requests_total{endpoint="/v1/audio/speech",status="200"} 1.0' in text
    assert 'tacotune_real_time_factor_count{voice="tiny"} 1.0' in text
    assert 'tacotune_request_seconds_bucket{endpoint="/v1/voices",le="+Inf"} 1.0' in text
    assert "tacotune_first_audio_seconds_count" in text and "tacotune_queue_length 0.0" in text


def test_voice_resolution_model_voice_aliases_and_the_answer_names_the_voice(
    payload: dict[str, Any],
) -> None:
    voices = [tiny_voice(payload), tiny_voice(payload, "other")]
    asked = [
        ({"model": "tts-1", "voice": "alloy"}, "tiny"),  # OpenAI's voice: the default (first)
        ({"model": "tts-1-hd", "voice": "nova"}, "other"),  # an alias
        ({"model": "gpt-4o-mini-tts", "voice": "other"}, "other"),  # a voice by name
        ({"model": "gpt-4o-mini-tts-2025-12-15", "voice": {"id": "other"}}, "other"),
        ({"model": "tts-1"}, "tiny"),  # no voice: the default
        ({"model": "other", "voice": "alloy"}, "other"),  # model names a voice: as before
    ]
    with serving(voices, voice_aliases=(("nova", "other"),)) as url:
        listed = httpx.get(f"{url}/v1/voices").json()
        answers = [
            httpx.post(f"{url}/v1/audio/speech", json={"input": SENTENCE, **body})
            for body, _ in asked
        ]
    assert listed["default"] == "tiny" and listed["aliases"] == {"nova": "other"}
    for answer, (body, voice) in zip(answers, asked, strict=True):
        assert answer.status_code == 200, (body, answer.text)
        assert answer.headers["x-tacotune-voice"] == voice, body
        assert answer.headers["content-type"] == "audio/mpeg"  # OpenAI's default format
    for aliases, words in [
        ((("nova", "ghost"),), "--alias nova=ghost: an alias names no served voice"),
        ((("other", "tiny"),), "--alias other=tiny: an alias names no served voice"),
    ]:
        with pytest.raises(ServeError, match=words):
            server_for(voices, ServerSettings(voice_aliases=aliases))


def test_voices_come_from_the_registry_or_a_checkpoint(
    payload: dict[str, Any], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    save_checkpoint(checkpoint, {**payload, "dataset_fingerprint": "f", "code_version": "c"})
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ServeError, match="no production version"):
        load_voices([], registry)
    registry.register("anna", checkpoint)
    registry.register("anna", checkpoint, stage="production")
    registry.register("anna", checkpoint)
    served = load_voices([], registry)
    assert [(v.name, v.source, v.stage) for v in served] == [("anna", "anna:2", "production")]
    assert load_voice("anna:3", registry).source == "anna:3"
    from_path = load_voice(str(checkpoint), registry)
    assert (from_path.name, from_path.stage, from_path.vocoder) == ("run", None, "griffin-lim")
    assert load_voice(f"b={checkpoint}", registry).name == "b"
    with pytest.raises(ServeError, match="two voices are named 'anna'"):
        load_voices(["anna", f"anna={checkpoint}"], registry)
    with pytest.raises(RegistryError, match="no model named 'bob'"):
        load_voices(["bob"], registry)


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
        _wait_until_up(url, server)
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


def _wait_until_up(url: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not answer /health within 120 s")
