"""`tacotune serve`, what a client gets: OpenAI-style speech in every format, streams,
concurrent and batched requests, /v1/synthesize, voices, health, metrics and voice resolution
(a real server on loopback and httpx: tests/serving.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tacotune.audio import fit_full_scale
from tacotune.checkpoint import save_checkpoint
from tacotune.registry import Registry, RegistryError
from tacotune.serve.server import server_for
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import ServeError, Voice, load_voice, load_voices
from tacotune.synthesize import Synthesizer
from test_synthesize import untrained_payload

from serving import (  # noqa: F401 (one_torch_thread: an autouse fixture)
    PCM_STEP,
    RATE,
    SENTENCE,
    TWO_PIECES,
    BatchRecorder,
    GatedEngine,
    decode_audio,
    expected_audio,
    one_torch_thread,
    raw_speech,
    read_all,
    read_wav,
    serving,
    speech,
    tiny_payload,
    tiny_voice,
    wait_for_queue,
)


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return tiny_payload()


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
        clients = {text: raw_speech(port, text) for text in BATCH_TEXTS}
        assert engine.waiting.wait(20), engine.batches  # a batch of 2+ is being decoded
        held = engine.batches[-1]
        gone = next(text for text in BATCH_TEXTS if text.lower() in held[0].replace("+", ""))
        clients.pop(gone).close()  # its client hangs up while its piece is in the batch
        deadline = time.monotonic() + 10
        while " gone " not in caplog.text:
            assert time.monotonic() < deadline, "the server did not notice the hang-up"
            time.sleep(0.05)
        engine.gate.set()
        replies = {text: read_all(sock) for text, sock in clients.items()}
    for text, reply in replies.items():
        assert reply.startswith(b"HTTP/1.1 200"), (text, reply[:200])
    decoded = sum(len(batch) for batch in engine.batches)
    assert decoded == len(BATCH_TEXTS)  # the gone request's piece was decoded (in the batch) ...
    assert engine.vocoder.calls == len(BATCH_TEXTS) - 1  # ... but not vocoded


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
