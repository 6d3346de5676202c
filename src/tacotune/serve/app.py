"""The ASGI app: OpenAI-shaped speech, tacotune's synthesize, voices, health, metrics, web page.

Routes (all under the API key when one is set, except `/`, `/static/*` and `/health`;
without a key, every route answers only a Host header that names this server: middleware.py):

    POST /v1/audio/speech   OpenAI's request: mp3 (default), opus, aac, flac, wav, pcm; SSE
    POST /v1/synthesize     JSON with base64 audio, stop reasons, timing (NDJSON when streamed)
    GET  /v1/voices         the voices and where they come from
    GET  /v1/models         the voices and OpenAI's speech models, in OpenAI's list shape
    GET  /health            liveness, voice count, whether a key is needed
    GET  /metrics           Prometheus text
    GET  /                  the web page

Every error, the app's own, routing's (404, 405) and unparsable bodies included, has
OpenAI's shape (api.py).

Which voice speaks (`Service.speaker`; the answer names it in X-Tacotune-Voice):
1. `model` names a served voice: that voice, whatever `voice` says (tacotune's own use);
2. otherwise `model` must be one of OpenAI's speech models (OPENAI_MODELS), and `voice`
   picks: a served voice's name; an alias (`serve --alias NAME=VOICE`); one of OpenAI's
   stock voices (OPENAI_VOICES), or no voice: the default voice, the first one served.
Anything else is a 404 naming what there is. `instructions` are accepted and ignored
(X-Tacotune-Instructions: ignored): the voices have no style control to give them to.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from tacotune import __version__
from tacotune.errors import TextError, short_repr
from tacotune.extras import MissingExtraError, require
from tacotune.serve.api import ApiError, SpeechRequest, SynthesizeRequest, VoiceId
from tacotune.serve.audio import FORMATS, SPEED_RANGE, output_rate
from tacotune.serve.lifetime import RequestLife, record_of
from tacotune.serve.metrics import ServerMetrics
from tacotune.serve.middleware import BodyLimit, HostCheck
from tacotune.serve.responses import Prepared, audio_response, synthesize_response
from tacotune.serve.runner import Busy, Chunk, SynthesisRunner
from tacotune.serve.settings import ServerSettings
from tacotune.serve.voices import ServeError, Voice

# the page loads nothing from anywhere else; audio and the plot come from blob: URLs
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'"
)
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # and dated gpt-4o-mini-tts-...
OPENAI_VOICES = (  # OpenAI's stock voices: the default voice unless an alias says otherwise
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable",
    "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip


class Service:
    """The voices, the synthesis thread and the settings that every route shares."""

    def __init__(self, voices: Sequence[Voice], settings: ServerSettings) -> None:
        self.voices = {voice.name: voice for voice in voices}
        self.default = voices[0]
        self.aliases = {name: self._alias_target(name, to) for name, to in settings.voice_aliases}
        self.settings = settings
        self.runner = SynthesisRunner(settings.max_queue, [voice.engine for voice in voices])
        self.metrics = ServerMetrics(lambda: self.runner.admitted)

    def _alias_target(self, name: str, target: str) -> Voice:
        if name in self.voices or target not in self.voices:
            raise ServeError(
                f"--alias {name}={target}: an alias names no served voice and points to one; "
                f"the voices served are {', '.join(map(repr, self.voices))}"
            )
        return self.voices[target]

    def speaker(self, model: str | None, voice: str | VoiceId | None) -> Voice:
        """The voice that speaks for a request (the order is in the module docstring);
        `model` None: tacotune's own request, which names only a voice."""
        if model is not None and model in self.voices:
            return self.voices[model]
        if model is not None and not _openai_model(model):
            raise ApiError(
                404,
                f"no model named {model!r}: give one of OpenAI's ({', '.join(OPENAI_MODELS)}) "
                f"or a voice, {', '.join(map(repr, self.voices))} (GET /v1/voices lists them)",
                param="model",
                code="model_not_found",
            )
        name = voice.id if isinstance(voice, VoiceId) else voice
        if name is None or (name in OPENAI_VOICES and name not in self.aliases):
            return self.voices.get(name or "", self.default)
        found = self.voices.get(name) or self.aliases.get(name)
        if found is None:
            aliases = f" or an alias ({', '.join(self.aliases)})" if self.aliases else ""
            raise ApiError(
                404,
                f"no voice named {name!r}: give one of {', '.join(map(repr, self.voices))}"
                f"{aliases} or an OpenAI voice such as 'alloy' (the default voice, "
                f"{self.default.name!r}, speaks for those)",
                param="voice",
                code="voice_not_found",
            )
        return found

    async def prepare(
        self, request: Request, voice: Voice, text: str, fmt: str, speed: float, openai: bool
    ) -> Prepared:
        """Check the request, take a queue slot and split the text (errors before any audio)."""
        settings = self.settings
        await _check_options(fmt, speed, "response_format" if openai else "format")
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
        chunks = await _split(self.runner, voice, text, settings, "input" if openai else "text")
        out_rate = output_rate(fmt, voice.sample_rate, openai)
        pieces = self.runner.render(voice, chunks, speed, out_rate)
        return Prepared(voice, chunks, out_rate, pieces)


def create_app(voices: Sequence[Voice], settings: ServerSettings) -> FastAPI:
    """The app serving `voices` under `settings` (models are already loaded)."""
    service = Service(voices, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.runner.close()  # after the requests in flight (each within its deadline)

    app = FastAPI(
        title="tacotune",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # the interactive docs load scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    # JSON may spell a character as a 12-byte surrogate pair escape; the rest is small
    app.add_middleware(BodyLimit, max_bytes=settings.max_input_chars * 12 + 16384)
    if settings.api_key is None:
        app.add_middleware(HostCheck, names=[settings.host, *settings.allowed_hosts])
    # outermost of ours (added last): sees every answer, bounds every request's life
    app.add_middleware(RequestLife, metrics=service.metrics, timeout_s=settings.request_timeout_s)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(packages=[("tacotune.serve", "static")]), name="static")
    authorized = [Depends(_key_check(settings.api_key))]
    _add_speech_routes(app, service, authorized)
    _add_other_routes(app, service, authorized)
    return app


def _add_speech_routes(app: FastAPI, service: Service, authorized: list[Any]) -> None:
    @app.post("/v1/audio/speech", dependencies=authorized, response_model=None)
    async def speech(body: SpeechRequest, request: Request) -> Response:
        if body.stream_format not in (None, "audio", "sse"):
            raise ApiError(
                400,
                f"stream_format {body.stream_format!r} is not supported: use 'audio' or 'sse'",
                "stream_format",
            )
        voice = service.speaker(body.model, body.voice)
        headers = {"X-Tacotune-Voice": voice.name}
        if body.instructions:
            headers["X-Tacotune-Instructions"] = "ignored"
        fmt = body.response_format
        prepared = await service.prepare(request, voice, body.input, fmt, body.speed, openai=True)
        record = record_of(request)
        return await audio_response(prepared, fmt, body.stream_format, record, headers)

    @app.post("/v1/synthesize", dependencies=authorized, response_model=None)
    async def synthesize(body: SynthesizeRequest, request: Request) -> Response:
        voice = service.speaker(None, body.voice)
        prepared = await service.prepare(
            request, voice, body.text, body.format, body.speed, openai=False
        )
        return await synthesize_response(prepared, body, record_of(request))


def _add_other_routes(app: FastAPI, service: Service, authorized: list[Any]) -> None:
    @app.get("/v1/voices", dependencies=authorized)
    async def list_voices() -> dict[str, Any]:
        return {
            "voices": [voice.describe() for voice in service.voices.values()],
            "default": service.default.name,
            "aliases": {name: voice.name for name, voice in service.aliases.items()},
        }

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict[str, Any]:
        names = [*service.voices, *OPENAI_MODELS]
        models = [{"id": n, "object": "model", "owned_by": "tacotune"} for n in names]
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


def _openai_model(model: str) -> bool:
    return model in OPENAI_MODELS or model.startswith("gpt-4o-mini-tts-")


async def _check_options(fmt: str, speed: float, format_param: str) -> None:
    if fmt not in FORMATS:
        raise ApiError(
            400,
            f"{format_param} {fmt!r} is not supported: use one of {', '.join(FORMATS)}",
            param=format_param,
            code="unsupported_format",
        )
    if fmt == "aac":  # ffmpeg's encoder, from PyAV: the serve extra's, missing in some installs
        try:
            await asyncio.to_thread(require, "av", "serve", "aac audio")
        except MissingExtraError as error:
            others = ", ".join(f for f in FORMATS if f != "aac")
            raise ApiError(
                400, f"{error}; or ask for {others}", param=format_param, code="unsupported_format"
            ) from error
    low, high = SPEED_RANGE
    if not low <= speed <= high:
        raise ApiError(
            400,
            f"speed {speed} is out of range: give {low}-{high} (OpenAI's range)",
            param="speed",
            code="unsupported_speed",
        )


async def _split(
    runner: SynthesisRunner,
    voice: Voice,
    text: str,
    settings: ServerSettings,
    param: str,
) -> list[Chunk]:
    """The text's pieces, or the frontend's own message as a 400."""
    try:
        chunks = await runner.split(voice, text)
    except TextError as error:  # UnknownSymbolError says which characters, and where
        raise ApiError(400, str(error), param=param, code="invalid_text") from error
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
    """A dependency that lets a request through only with the right key (if one is set).

    Header bytes are compared with the key's UTF-8 bytes, so a key in any alphabet works
    for clients that send it as UTF-8 (HTTP itself leaves header bytes uninterpreted)."""
    expected = api_key.encode("utf-8") if api_key is not None else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        headers = request.headers  # decoded as latin-1: .encode("latin-1") gives the bytes
        given = headers.get("x-api-key")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        # compare_digest: the time taken does not tell how much of a guess was right
        if given is None or not hmac.compare_digest(given.encode("latin-1"), expected):
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

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        """Routing's own errors (404, 405) and the framework's (a body it cannot parse)."""
        path = short_repr(request.url.path)
        message = {
            404: f"no such path: {request.method} {path} (the API is under /v1/)",
            405: f"{request.method} is not allowed on {path}",
        }.get(error.status_code, str(error.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        body = ApiError(error.status_code, message, code=code).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        if errors and errors[0]["type"] == "json_invalid":
            where = errors[0]["loc"][-1]
            problem = ApiError(
                400, f"the body is not JSON (at character {where})", code="invalid_json"
            )
            return JSONResponse(problem.body(), status_code=400)
        problems = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors
        ]
        where_list: list[Any] = list(errors[0]["loc"]) if errors else []
        param = str(where_list[1]) if len(where_list) > 1 else None
        return JSONResponse(ApiError(400, "; ".join(problems), param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        """A defect (logged with its traceback by the server-error middleware): 500."""
        message = "the server failed on this request (a bug: its log has the details)"
        return JSONResponse(ApiError(500, message, code="internal_error").body(), status_code=500)
