"""What the server tests share: a real uvicorn server on a free loopback port, a real HTTP
client (httpx), and an untrained tiny voice.

The voice's gate never fires, so every piece decodes to its step limit: audio of a known
length, in milliseconds. Stalls and the deadline are injected by wrapping the engine
(`GatedEngine`), so queue and timeout tests need no timing luck. Test modules import the
autouse fixture `one_torch_thread` from here.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn

from tacotune.audio import fit_full_scale
from tacotune.serve.server import server_for
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import Voice
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


def tiny_payload() -> dict[str, Any]:
    """The tiny voice's checkpoint: 30 decoder steps at most, 4 Griffin-Lim iterations."""
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


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Any answer's audio: libsndfile for wav/flac/mp3/ogg, ffmpeg (PyAV) for aac."""
    if data[:2] != b"\xff\xf1":
        return read_wav(data)
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
        return np.concatenate(frames), container.streams.audio[0].rate


def raw_speech(port: int, text: str) -> socket.socket:
    body = json.dumps(speech(text)).encode()
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode() + body)
    return sock


def read_all(sock: socket.socket) -> bytes:
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


def wait_until_up(url: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not answer /health within 120 s")


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
