"""`tacotune serve`: an HTTP API (FastAPI on uvicorn) for trained voices.

    settings.py    ServerSettings: address, limits, API key (light: the CLI imports it)
    voices.py      Voice, the SpeechEngine protocol and load_voice (the one place a voice is built)
    runner.py      the single synthesis thread: admission (bounded queue), one piece at a time
    audio.py       samples -> wav / flac / pcm bytes, the streaming wav header, tempo change
    api.py         request shapes (OpenAI speech, tacotune synthesize), API errors, piece facts
    responses.py   streamed audio, whole files, JSON and NDJSON answers
    middleware.py  one log line, metrics and cleanup per request
    metrics.py     the Prometheus metrics of one app
    app.py         the ASGI app: routes and the API key
    server.py      run the app with uvicorn (SIGTERM lets in-flight requests finish)
    static/        the web page at `/` (plain HTML + JS, no build step, nothing external)

FastAPI, uvicorn and prometheus-client come with the `serve` extra. Nothing in the core
imports this package; this file imports nothing, so `tacotune.serve.settings` stays light.
"""
