"""Answers made of synthesized pieces: streamed audio, whole files, JSON and NDJSON.

What a client gets:

- POST /v1/audio/speech: mp3, opus, aac and pcm are sent piece by piece as each is
  synthesized (encoded as they come: audio.py), flac whole once every piece is done. wav
  is whole, with exact sizes, unless the request asks for a stream (stream_format) and
  the text has several pieces: then its header's sizes read 0xFFFFFFFF (unknown), as
  OpenAI's streamed wav. With stream_format "sse" the same bytes come base64 in OpenAI's
  events, `data: {"type": "speech.audio.delta", "audio": ...}` per chunk, then
  `data: {"type": "speech.audio.done", "usage": {...}}`.
- POST /v1/synthesize: one JSON object with the whole file in base64, or with "stream":
  true NDJSON, one line per piece as it is ready (its own audio file in base64), then a
  final "done" line with totals and timing.

The first piece is synthesized before the status line is sent, so every error that can
be known (text, limits, a deadline passed while waiting) is a proper error status. What a
deadline that passes later does (a dropped audio connection; the NDJSON or SSE "error"
line registered here as the record's trailer) is lifetime.py's.
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
from tacotune.serve.audio import MEDIA_TYPES, WHOLE_ONLY, encode, encoder
from tacotune.serve.lifetime import RequestRecord
from tacotune.serve.runner import Chunk, RenderedPiece
from tacotune.serve.voices import Voice

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check: its voice, pieces, output rate, pieces to come."""

    voice: Voice
    chunks: list[Chunk]
    rate: int  # Hz of the audio sent
    pieces: AsyncGenerator[RenderedPiece, None]  # SynthesisRunner.render, not started


async def audio_response(
    prepared: Prepared,
    fmt: str,
    stream_format: str | None,
    record: RequestRecord,
    headers: dict[str, str],
) -> Response:
    """The OpenAI endpoint's answer (see the module docstring for which format streams)."""
    headers = {
        **headers,
        "X-Sample-Rate": str(prepared.rate),
        "X-Pieces": str(len(prepared.chunks)),
    }
    several = len(prepared.chunks) > 1
    whole = fmt in WHOLE_ONLY or (fmt == "wav" and not (stream_format and several))
    if whole and stream_format != "sse":
        pieces = await _all_pieces(prepared, record)
        samples = np.concatenate([p.samples for p in pieces])
        data = await asyncio.to_thread(encode, samples, prepared.rate, fmt)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)
    frames = [0]  # spectrogram frames decoded so far: SSE's usage
    first = await _first_piece(prepared, record)
    chunks = _encoded(prepared, fmt, whole, record, first, frames)
    if stream_format == "sse":
        record.trailer = _error_event
        events = _events(chunks, prepared, frames)
        return StreamingResponse(events, media_type=SSE, headers=headers)
    return StreamingResponse(chunks, media_type=MEDIA_TYPES[fmt], headers=headers)


async def _encoded(
    prepared: Prepared,
    fmt: str,
    whole: bool,
    record: RequestRecord,
    first: RenderedPiece,
    frames: list[int],
) -> AsyncGenerator[bytes, None]:
    """The response's bytes as each piece is encoded (the first is already rendered);
    `frames[0]` counts the pieces' spectrogram frames."""
    coder = encoder(fmt, prepared.rate, whole)
    frames[0] += first.piece.mel.shape[-1]
    yield await asyncio.to_thread(coder.feed, first.samples)
    async with aclosing(prepared.pieces) as rest:
        async for piece in rest:
            record.add(piece)
            frames[0] += piece.piece.mel.shape[-1]
            data = await asyncio.to_thread(coder.feed, piece.samples)
            if data:
                yield data
    yield await asyncio.to_thread(coder.finish)


async def _events(
    chunks: AsyncGenerator[bytes, None], prepared: Prepared, frames: list[int]
) -> AsyncIterator[bytes]:
    """OpenAI's speech events: a delta per chunk of audio, then done with the usage
    (input: symbols of the pieces' model input; output: spectrogram frames)."""
    async with aclosing(chunks):
        async for data in chunks:
            if data:
                audio = base64.b64encode(data).decode("ascii")
                yield _event({"type": "speech.audio.delta", "audio": audio})
    symbols = sum(len(ids) for _, ids in prepared.chunks)
    usage = {
        "input_tokens": symbols,
        "output_tokens": frames[0],
        "total_tokens": symbols + frames[0],
    }
    yield _event({"type": "speech.audio.done", "usage": usage})


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _error_event(note: str) -> bytes:
    """The last event of an SSE stream cut by its deadline."""
    return _event({"type": "error", **ApiError(504, note, code="timeout").body()})


async def synthesize_response(
    prepared: Prepared, request: SynthesizeRequest, record: RequestRecord
) -> Response:
    """tacotune's answer: JSON with the whole audio, or NDJSON piece by piece."""
    if not request.stream:
        pieces = await _all_pieces(prepared, record)
        samples = np.concatenate([p.samples for p in pieces])
        data = await asyncio.to_thread(encode, samples, prepared.rate, request.format)
        return JSONResponse(
            {
                **_summary(prepared, request, record, pieces),
                "audio": base64.b64encode(data).decode("ascii"),
                "pieces": [describe_piece(p, request.alignment) for p in pieces],
            }
        )
    first = await _first_piece(prepared, record)

    async def lines() -> AsyncIterator[bytes]:
        done = [first]
        yield _line(_piece_line(first, prepared, request))
        async with aclosing(prepared.pieces) as rest:
            async for piece in rest:
                record.add(piece)
                done.append(piece)
                yield _line(_piece_line(piece, prepared, request))
        yield _line({"type": "done", **_summary(prepared, request, record, done)})

    record.trailer = _error_line
    return StreamingResponse(lines(), media_type=NDJSON)


def _error_line(note: str) -> bytes:
    """The last line of an NDJSON stream cut by its deadline."""
    return _line({"type": "error", **ApiError(504, note, code="timeout").body()})


async def _first_piece(prepared: Prepared, record: RequestRecord) -> RenderedPiece:
    first = await anext(prepared.pieces)
    record.add(first)
    return first


async def _all_pieces(prepared: Prepared, record: RequestRecord) -> list[RenderedPiece]:
    pieces = []
    async for piece in prepared.pieces:
        record.add(piece)
        pieces.append(piece)
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


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
