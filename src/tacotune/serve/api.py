"""Request and response shapes: OpenAI's speech request, tacotune's own, errors, pieces.

Every error answer has OpenAI's shape, so OpenAI clients show its message:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tacotune.serve.audio import DEFAULT_FORMAT
from tacotune.serve.runner import RenderedPiece


class ApiError(Exception):
    """An error answer: HTTP status, a message that says what to change, the field."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.code,
            }
        }


class VoiceId(BaseModel):
    """OpenAI's custom voice reference, ``{"id": "voice_1234"}``: the id is a voice name."""

    model_config = ConfigDict(extra="forbid")

    id: str


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech, the OpenAI speech API's request (app.py resolves the voice)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="tts-1, tts-1-hd, gpt-4o-mini-tts..., or a voice's name")
    input: str = Field(description="Russian text; stress marks such as зам+ок are honoured")
    voice: str | VoiceId | None = Field(
        default=None,
        description="a voice (GET /v1/voices), an alias, or an OpenAI voice such as alloy "
        "(the default voice); ignored when `model` names a voice",
    )
    instructions: str | None = Field(
        default=None, description="accepted and ignored (X-Tacotune-Instructions: ignored)"
    )
    response_format: str = Field(
        default=DEFAULT_FORMAT, description="mp3, opus, aac, flac, wav or pcm (24 kHz)"
    )
    speed: float = Field(default=1.0, description="tempo, 0.25-4.0")
    stream_format: str | None = Field(
        default=None, description="'audio' (wav then streams too) or 'sse' (OpenAI's events)"
    )


class SynthesizeRequest(BaseModel):
    """POST /v1/synthesize, tacotune's own request."""

    model_config = ConfigDict(extra="forbid")

    voice: str = Field(description="the voice to speak with (GET /v1/voices lists them)")
    text: str = Field(description="Russian text; stress marks such as зам+ок are honoured")
    format: str = Field(default="wav", description="as response_format (of each audio field)")
    speed: float = Field(default=1.0, description="tempo, 0.25-4.0")
    stream: bool = Field(default=False, description="NDJSON, one line per piece as it is ready")
    alignment: bool = Field(default=False, description="add each piece's attention matrix")


def stop_reason(piece: RenderedPiece) -> str:
    """Why decoding of the piece ended: gate, end_of_text or max_steps."""
    if piece.piece.stopped_by_gate:
        return "gate"
    return "end_of_text" if piece.piece.stopped_at_end else "max_steps"


def describe_piece(rendered: RenderedPiece, with_alignment: bool) -> dict[str, Any]:
    """JSON-ready facts of one piece (no audio)."""
    piece, metrics = rendered.piece, rendered.piece.metrics
    info: dict[str, Any] = {
        "index": rendered.index,
        "text": piece.text,
        "seconds": round(rendered.seconds, 4),
        "stop_reason": stop_reason(rendered),
        "reached_end": piece.reached_end,
        "compute_seconds": round(rendered.compute_s, 4),
        "metrics": {
            "diagonality": _finite(metrics.diagonality),
            "focus": _finite(metrics.focus),
            "monotonicity": _finite(metrics.monotonicity),
            "coverage": _finite(metrics.coverage),
        },
    }
    if with_alignment:
        info["alignment"] = alignment_json(piece.alignment.numpy())
    return info


def alignment_json(alignment: np.ndarray) -> dict[str, Any]:
    """(S, N) attention -> {steps, chars, data}: data is base64 of S*N bytes, row by row
    (decoder step major), each weight * 255 rounded; compact enough for long pieces."""
    quantized = np.round(np.clip(alignment, 0.0, 1.0) * 255).astype(np.uint8)
    return {
        "steps": int(alignment.shape[0]),
        "chars": int(alignment.shape[1]),
        "data": base64.b64encode(quantized.tobytes()).decode("ascii"),
    }


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
