"""`tacotune serve`: an HTTP API (FastAPI on uvicorn) for trained voices.

    settings.py    ServerSettings: address, limits, API key (light: the CLI imports it)
    voices.py      Voice, the SpeechEngine protocol and load_voice (the one place a voice is built)
    runner.py      the single synthesis thread: admission (bounded queue), one piece at a
                   time, cancellation of work whose request has ended
    audio.py       samples -> mp3 / opus / aac / flac / wav / pcm, whole or streamed; tempo
    api.py         request shapes (OpenAI speech, tacotune synthesize), API errors, piece facts
    responses.py   streamed audio, whole files, JSON and NDJSON answers
    lifetime.py    the life of a request: deadline (write side included), hang-ups, cleanup,
                   one log line and the metrics
    middleware.py  requests refused before the app reads them: body size, Host (keyless)
    metrics.py     the Prometheus metrics of one app
    app.py         the ASGI app: routes, the API key, errors in OpenAI's shape
    connections.py uvicorn's HTTP protocol with a request-head timeout and a bounded close
    server.py      bind the sockets, run the app with uvicorn (SIGTERM lets in-flight
                   requests finish, each within its deadline)
    static/        the web page at `/` (plain HTML + JS, no build step, nothing external)

FastAPI, uvicorn, prometheus-client and PyAV (aac) come with the `serve` extra. Nothing in the core
imports this package; this file imports nothing, so `tacotune.serve.settings` stays light.
"""
