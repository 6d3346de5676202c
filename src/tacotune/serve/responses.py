"""Answers made of synthesized pieces: streamed audio, whole files, JSON and NDJSON.

What a client gets:

- POST /v1/audio/speech, wav: a chunked response; the first chunk is a 44-byte wav header
  whose sizes read 0xFFFFFFFF (length unknown, like OpenAI's) followed by the first piece,
  then one chunk per piece (16-bit mono PCM) as it is synthesized. pcm: the same without
  the header, at 24 kHz like OpenAI's. flac: one whole file once every piece is done.
- POST /v1/synthesize: one JSON object with the whole file in base64, or with "stream":
  true NDJSON, one line per piece as it is ready (its own audio file in base64), then a
  final "done" line with totals and timing.

The first piece is synthesized before the status line is sent, so every error that can
be known (text, limits, a deadline passed while waiting) is a proper error status. A
deadline that passes later drops a wav/pcm connection (the client sees an incomplete
response, not a short file) and ends an NDJSON stream with an "error" line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tacotune.serve.api import ApiError, SynthesizeRequest, describe_piece
from tacotune.serve.audio import MEDIA_TYPES, encode, streaming_wav_header, to_pcm16
from tacotune.serve.middleware import RequestRecord, StreamCut
from tacotune.serve.runner import Chunk, RenderedPiece
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import Voice

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check: its voice, pieces, output rate, pieces to come."""

    voice: Voice
    chunks: list[Chunk]
    rate: int  # Hz of the audio sent
    pieces: AsyncGenerator[RenderedPiece, None]  # SynthesisRunner.render, not started


def timeout_error(settings: ServerSettings) -> ApiError:
    """504: the request did not finish within its time."""
    return ApiError(
        504,
        f"synthesis did not finish within {settings.request_timeout_s:g} s (the server's "
        "per-request limit); send shorter text or retry when the server is less busy",
        code="timeout",
    )


async def audio_response(
    prepared: Prepared, fmt: str, record: RequestRecord, settings: ServerSettings
) -> Response:
    """The OpenAI endpoint's answer: streamed wav/pcm, or a whole flac."""
    headers = {"X-Sample-Rate": str(prepared.rate), "X-Pieces": str(len(prepared.chunks))}
    if fmt == "flac":
        pieces = await _all_pieces(prepared, record, settings)
        samples = np.concatenate([p.samples for p in pieces])
        data = await asyncio.to_thread(encode, samples, prepared.rate, fmt)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)
    first = await _first_piece(prepared, record, settings)
    head = streaming_wav_header(prepared.rate) if fmt == "wav" else b""

    async def body() -> AsyncIterator[bytes]:
        yield head + to_pcm16(first.samples)
        async with aclosing(prepared.pieces) as rest:
            try:
                async for piece in rest:
                    record.add(piece)
                    yield to_pcm16(piece.samples)
            except TimeoutError as error:
                raise StreamCut(_cut_note(record, settings)) from error

    return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt], headers=headers)


async def synthesize_response(
    prepared: Prepared, request: SynthesizeRequest, record: RequestRecord, settings: ServerSettings
) -> Response:
    """tacotune's answer: JSON with the whole audio, or NDJSON piece by piece."""
    if not request.stream:
        pieces = await _all_pieces(prepared, record, settings)
        samples = np.concatenate([p.samples for p in pieces])
        data = await asyncio.to_thread(encode, samples, prepared.rate, request.format)
        return JSONResponse(
            {
                **_summary(prepared, request, record, pieces),
                "audio": base64.b64encode(data).decode("ascii"),
                "pieces": [describe_piece(p, request.alignment) for p in pieces],
            }
        )
    first = await _first_piece(prepared, record, settings)

    async def lines() -> AsyncIterator[bytes]:
        done = [first]
        yield _line(_piece_line(first, prepared, request))
        async with aclosing(prepared.pieces) as rest:
            try:
                async for piece in rest:
                    record.add(piece)
                    done.append(piece)
                    yield _line(_piece_line(piece, prepared, request))
            except TimeoutError:
                record.note = _cut_note(record, settings)
                yield _line({"type": "error", **ApiError(504, record.note).body()})
                return
        yield _line({"type": "done", **_summary(prepared, request, record, done)})

    return StreamingResponse(lines(), media_type=NDJSON)


async def _first_piece(
    prepared: Prepared, record: RequestRecord, settings: ServerSettings
) -> RenderedPiece:
    try:
        first = await anext(prepared.pieces)
    except TimeoutError as error:
        raise timeout_error(settings) from error
    record.add(first)
    return first


async def _all_pieces(
    prepared: Prepared, record: RequestRecord, settings: ServerSettings
) -> list[RenderedPiece]:
    pieces = []
    try:
        async for piece in prepared.pieces:
            record.add(piece)
            pieces.append(piece)
    except TimeoutError as error:
        raise timeout_error(settings) from error
    return pieces


def _piece_line(
    piece: RenderedPiece, prepared: Prepared, request: SynthesizeRequest
) -> dict[str, Any]:
    data = encode(piece.samples, prepared.rate, request.format)
    return {
        "type": "piece",
        "of": len(prepared.chunks),
        **describe_piece(piece, request.alignment),
        "audio": base64.b64encode(data).decode("ascii"),
    }


def _summary(
    prepared: Prepared,
    request: SynthesizeRequest,
    record: RequestRecord,
    pieces: list[RenderedPiece],
) -> dict[str, Any]:
    total = time.perf_counter() - record.started
    return {
        "voice": prepared.voice.name,
        "format": request.format,
        "sample_rate": prepared.rate,
        "seconds": round(sum(p.seconds for p in pieces), 4),
        "complete": all(p.piece.reached_end and not p.piece.hit_max_steps for p in pieces),
        "timing": {
            "total_seconds": round(total, 4),
            "compute_seconds": round(record.compute_s, 4),
            "waiting_seconds": round(max(0.0, total - record.compute_s), 4),
            "first_audio_seconds": round(record.first_audio_s or 0.0, 4),
            "rtf": round(record.rtf or 0.0, 4),
        },
    }


def _cut_note(record: RequestRecord, settings: ServerSettings) -> str:
    return (
        f"the per-request limit of {settings.request_timeout_s:g} s passed after "
        f"{record.audio_s:.2f} s of audio; the rest was not synthesized"
    )


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
