"""The ASGI app: OpenAI-shaped speech, tacotune's synthesize, voices, health, metrics, web page.

Routes (all under the API key when one is set, except `/`, `/static/*` and `/health`):

    POST /v1/audio/speech   OpenAI's request; wav and pcm stream piece by piece, flac is whole
    POST /v1/synthesize     JSON with base64 audio, stop reasons, timing (NDJSON when streamed)
    GET  /v1/voices         the voices and where they come from
    GET  /v1/models         the same voices in OpenAI's model-list shape
    GET  /health            liveness, voice count, whether a key is needed
    GET  /metrics           Prometheus text
    GET  /                  the web page
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.staticfiles import StaticFiles

from tacotune import __version__
from tacotune.errors import TextError
from tacotune.serve.api import ApiError, SpeechRequest, SynthesizeRequest
from tacotune.serve.audio import FORMATS, OPENAI_PCM_RATE, SPEED_RANGE
from tacotune.serve.metrics import ServerMetrics
from tacotune.serve.middleware import BodyLimit, ObserveRequests, record_of
from tacotune.serve.responses import (
    Prepared,
    audio_response,
    synthesize_response,
    timeout_error,
)
from tacotune.serve.runner import Busy, Chunk, SynthesisRunner
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import Voice

# the page loads nothing from anywhere else; audio and the plot come from blob: URLs
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'"
)


class Service:
    """The voices, the synthesis thread and the settings that every route shares."""

    def __init__(self, voices: Sequence[Voice], settings: ServerSettings) -> None:
        self.voices = {voice.name: voice for voice in voices}
        self.settings = settings
        self.runner = SynthesisRunner(settings.max_queue)
        self.metrics = ServerMetrics(lambda: self.runner.admitted)

    async def prepare(
        self, request: Request, name: str, text: str, fmt: str, speed: float, openai: bool
    ) -> Prepared:
        """Check the request, take a queue slot and split the text (errors before any audio)."""
        settings = self.settings
        voice = _voice(self.voices, name, "model" if openai else "voice")
        _check_options(fmt, speed, "response_format" if openai else "format")
        if len(text) > settings.max_input_chars:
            raise ApiError(
                413,
                f"the text has {len(text)} characters; this server takes at most "
                f"{settings.max_input_chars} per request: send it in several requests",
                param="input" if openai else "text",
                code="input_too_long",
            )
        record = record_of(request)
        record.voice, record.chars = voice.name, len(text)
        try:
            record.cleanup.append(self.runner.admit())
        except Busy as busy:
            raise ApiError(
                503, str(busy), code="server_busy", headers={"Retry-After": "1"}
            ) from busy
        waited = time.perf_counter() - record.started  # the limit counts from arrival
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s - waited
        chunks = await _split(
            self.runner, voice, text, deadline, settings, "input" if openai else "text"
        )
        # OpenAI's pcm is 24 kHz, so OpenAI clients play it right; every other answer is native
        out_rate = OPENAI_PCM_RATE if openai and fmt == "pcm" else voice.sample_rate
        pieces = self.runner.render(voice, chunks, speed, out_rate, deadline)
        return Prepared(voice, chunks, out_rate, pieces)


def create_app(voices: Sequence[Voice], settings: ServerSettings) -> FastAPI:
    """The app serving `voices` under `settings` (models are already loaded)."""
    service = Service(voices, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.runner.close()  # after uvicorn has let the in-flight requests finish

    app = FastAPI(
        title="tacotune",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # the interactive docs load scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    # JSON may spell a character as a 12-byte surrogate pair escape; the rest is small
    app.add_middleware(BodyLimit, max_bytes=settings.max_input_chars * 12 + 16384)
    app.add_middleware(ObserveRequests, metrics=service.metrics)  # outermost: sees every answer
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(packages=[("tacotune.serve", "static")]), name="static")
    authorized = [Depends(_key_check(settings.api_key))]
    _add_speech_routes(app, service, authorized)
    _add_other_routes(app, service, authorized)
    return app


def _add_speech_routes(app: FastAPI, service: Service, authorized: list[Any]) -> None:
    @app.post("/v1/audio/speech", dependencies=authorized, response_model=None)
    async def speech(body: SpeechRequest, request: Request) -> Response:
        if body.instructions:
            raise ApiError(400, "instructions are not supported: leave them out", "instructions")
        if body.stream_format not in (None, "audio"):
            raise ApiError(
                400,
                f"stream_format {body.stream_format!r} is not supported: use 'audio'",
                "stream_format",
            )
        prepared = await service.prepare(
            request, body.model, body.input, body.response_format, body.speed, openai=True
        )
        record = record_of(request)
        return await audio_response(prepared, body.response_format, record, service.settings)

    @app.post("/v1/synthesize", dependencies=authorized, response_model=None)
    async def synthesize(body: SynthesizeRequest, request: Request) -> Response:
        prepared = await service.prepare(
            request, body.voice, body.text, body.format, body.speed, openai=False
        )
        return await synthesize_response(prepared, body, record_of(request), service.settings)


def _add_other_routes(app: FastAPI, service: Service, authorized: list[Any]) -> None:
    @app.get("/v1/voices", dependencies=authorized)
    async def list_voices() -> dict[str, Any]:
        return {"voices": [voice.describe() for voice in service.voices.values()]}

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict[str, Any]:
        models = [{"id": n, "object": "model", "owned_by": "tacotune"} for n in service.voices]
        return {"object": "list", "data": models}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "voices": len(service.voices),
            "auth_required": service.settings.api_key is not None,
            "queue": service.runner.admitted,
            "max_queue": service.settings.max_queue,
        }

    @app.get("/metrics", dependencies=authorized)
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("tacotune.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_POLICY})


def _voice(by_name: dict[str, Voice], name: str, param: str) -> Voice:
    voice = by_name.get(name)
    if voice is None:
        raise ApiError(
            404,
            f"no voice named {name!r}; this server has {', '.join(map(repr, by_name))} "
            "(GET /v1/voices lists them)",
            param=param,
            code="model_not_found",
        )
    return voice


def _check_options(fmt: str, speed: float, format_param: str) -> None:
    if fmt not in FORMATS:
        raise ApiError(
            400,
            f"{format_param} {fmt!r} is not supported: use one of {', '.join(FORMATS)}",
            param=format_param,
            code="unsupported_format",
        )
    low, high = SPEED_RANGE
    if not low <= speed <= high:
        raise ApiError(
            400,
            f"speed {speed} cannot be honoured: tacotune changes tempo by stretching the "
            f"spectrogram, which stays intelligible for {low}-{high}",
            param="speed",
            code="unsupported_speed",
        )


async def _split(
    runner: SynthesisRunner,
    voice: Voice,
    text: str,
    deadline: float,
    settings: ServerSettings,
    param: str,
) -> list[Chunk]:
    """The text's pieces, or the frontend's own message as a 400."""
    try:
        async with asyncio.timeout_at(deadline):
            chunks = await runner.split(voice, text)
    except TextError as error:  # UnknownSymbolError says which characters, and where
        raise ApiError(400, str(error), param=param, code="invalid_text") from error
    except TimeoutError as error:
        raise timeout_error(settings) from error
    if len(chunks) > settings.max_pieces:
        raise ApiError(
            413,
            f"the text splits into {len(chunks)} pieces (sentences); this server speaks at "
            f"most {settings.max_pieces} per request: send it in several requests",
            param=param,
            code="too_many_pieces",
        )
    return chunks


def _key_check(api_key: str | None) -> Any:
    """A dependency that lets a request through only with the right key (if one is set)."""
    expected = api_key.encode("utf-8") if api_key is not None else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        # compare_digest: the time taken does not tell how much of a guess was right
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
            raise ApiError(
                401,
                "missing or wrong API key: send it as 'Authorization: Bearer KEY' "
                "or 'X-API-Key: KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        problems = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors
        ]
        where: list[Any] = list(errors[0]["loc"]) if errors else []
        param = str(where[1]) if len(where) > 1 else None
        return JSONResponse(ApiError(400, "; ".join(problems), param).body(), status_code=400)
