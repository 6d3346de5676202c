"""OpenAI's own Python client against `tacotune serve` on loopback: an app written for
OpenAI's speech API works by changing only `base_url` (issue 19).

The voice is tests/serving.py's tiny untrained one: audio of a known rate and length in
milliseconds, so every call below is fast.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import openai
import pytest
import soundfile as sf
import torch

from test_synthesize import untrained_payload

from serving import RATE, TWO_PIECES, serving, tiny_voice

TEXT = "Привет."
# Hz of each format's audio: OpenAI's pcm is 24 kHz, Opus takes 24 kHz; the rest is native
RATES = {"mp3": RATE, "opus": 24000, "aac": RATE, "flac": RATE, "wav": RATE, "pcm": 24000}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a busy machine
    payload = untrained_payload("model.max_decoder_steps=30", "audio.griffin_lim_iters=4")
    try:
        with serving([tiny_voice(payload)]) as url:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    finally:
        torch.set_num_threads(threads)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """(samples, Hz) of an answer: raw for pcm, ffmpeg (PyAV) for aac, libsndfile else."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, RATES["pcm"]
    if fmt == "aac":
        with av.open(io.BytesIO(data)) as container:
            frames = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
            return np.concatenate(frames), container.streams.audio[0].rate
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def seconds(client: openai.OpenAI, **extra: Any) -> float:
    answer = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, **extra)
    samples, rate = decode(answer.content, extra.get("response_format", "mp3"))
    return len(samples) / rate


@pytest.mark.parametrize("fmt", list(RATES))
def test_every_openai_format_decodes(client: openai.OpenAI, fmt: str) -> None:
    answer = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt
    )
    samples, rate = decode(answer.content, fmt)
    assert rate == RATES[fmt] and answer.headers["x-sample-rate"] == str(rate)
    assert len(samples) > 0.2 * rate and np.abs(samples).max() > 0.01
    assert answer.headers["x-tacotune-voice"] == "tiny"


def test_mp3_is_the_default(client: openai.OpenAI) -> None:
    answer = client.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=TEXT)
    assert answer.headers["content-type"] == "audio/mpeg"
    assert decode(answer.content, "mp3")[1] == RATE


def test_speed_spans_openais_range(client: openai.OpenAI) -> None:
    normal = seconds(client, response_format="wav")
    slow = seconds(client, response_format="wav", speed=0.25)
    fast = seconds(client, response_format="wav", speed=4.0)
    assert slow == pytest.approx(4 * normal, rel=0.05)
    assert fast == pytest.approx(normal / 4, rel=0.1)


def test_instructions_are_accepted_and_said_to_be_ignored(client: openai.OpenAI) -> None:
    answer = client.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=TEXT, instructions="Говори шёпотом."
    )
    assert answer.status_code == 200
    assert answer.headers["x-tacotune-instructions"] == "ignored"
    assert len(decode(answer.content, "mp3")[0]) > 0


@pytest.mark.parametrize(("fmt", "stream_format"), [("mp3", None), ("wav", None), ("wav", "audio")])
def test_streaming_to_a_file(
    client: openai.OpenAI, tmp_path: Path, fmt: str, stream_format: str | None
) -> None:
    path = tmp_path / f"speech.{fmt}"
    extra = {"stream_format": stream_format} if stream_format else {}
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TWO_PIECES, response_format=fmt, **extra
    ) as answer:
        answer.stream_to_file(path)
    samples, rate = sf.read(path, dtype="float32")
    assert rate == RATE and len(samples) > 0.5 * RATE
    streamed = path.read_bytes()[4:8] == b"\xff\xff\xff\xff"  # a wav of unknown length
    assert streamed == (fmt == "wav" and stream_format == "audio")


def test_sse_events_carry_the_audio_then_done(client: openai.OpenAI) -> None:
    answer = client.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=TWO_PIECES, stream_format="sse"
    )
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in answer.text.split("\n\n")
        if line.startswith("data: ")
    ]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    samples, rate = decode(audio, "mp3")
    assert rate == RATE and len(samples) > 0.5 * RATE


def test_models_list_has_openais_models_and_the_voices(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["tiny", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
