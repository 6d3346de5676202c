"""HTTP serving: requests/s and latency by concurrency, and time to first audio.

    python bench/serve.py [CHECKPOINT] [--threads 2] [--concurrency 1 4 16]

Starts `tacotune serve CHECKPOINT` in a subprocess on a free loopback port (torch threads:
--threads) and drives it from this process with httpx (asyncio, one connection per
concurrent client). For a 1-sentence and a 5-sentence text, at each concurrency,
max(8, 2 x concurrency) requests to POST /v1/audio/speech (wav, body read to the end)
give requests/s and p50/p95 latency. Time to first audio compares, for the 5-sentence
text at concurrency 1, the streamed wav (first chunk: header + first piece) with the
same text unstreamed (POST /v1/synthesize, whole JSON) and with flac (a whole file).

Without CHECKPOINT it makes the demo preset's model, untrained, with the stop token off
and decoding bounded to a speech rate (model.max_frames_per_char=6, ~14 characters per
second): the audio is noise, but each request costs what the same text costs a trained
demo voice of that length. Give a trained checkpoint (a run directory works) for real speech.
Results: a table on stdout, runs/bench/serve.json and serve_first_audio.json; the
server's one-line-per-request log: runs/bench/serve.log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from common import OUT, report

from tacotune.checkpoint import config_payload, save_checkpoint
from tacotune.config import load_config
from tacotune.model import Tacotron2
from tacotune.text.frontend import TextFrontend
from tacotune.text.symbols import SYMBOLS

ONE = "Завтра синоптики обещают мокрый снег с дождём."
FIVE = (
    "Завтра синоптики обещают мокрый снег с дождём. "
    "Съешь же ещё этих мягких французских булок, да выпей чаю. "
    "В две тысячи двадцать четвёртом году замок был закрыт на ремонт. "
    "Поезд прибывает на третий путь через пять минут. "
    "Пожалуйста, не забывайте свои вещи в вагоне."
)


def make_untrained(path: Path) -> Path:
    """The demo preset's model, untrained, stop token off, decoding bounded to speech rate."""
    config = load_config(
        "demo.yaml",
        ["model.gate_threshold=1.0", "model.end_hold_frames=0", "model.max_frames_per_char=6"],
    )
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(SYMBOLS), config.audio.n_mels)
    payload = {
        "config": config_payload(config),
        "n_symbols": len(SYMBOLS),
        "model": model.state_dict(),
        "text_frontend": TextFrontend(config.text).state(),
    }
    save_checkpoint(path, payload)
    return path


def start_server(checkpoint: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tacotune", "serve", f"voice={checkpoint}"]
    options = ["--port", str(port), "--threads", str(threads), "--queue", "64", "--timeout", "600"]
    server = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={k: v for k, v in os.environ.items() if k != "TACOTUNE_API_KEY"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited; see {log}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit(f"the server did not come up in 180 s; see {log}")


async def level(url: str, text: str, concurrency: int, total: int) -> dict[str, Any]:
    """`total` requests from `concurrency` clients at once."""
    latencies: list[float] = []
    audio = 0.0
    left = list(range(total))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def client_loop() -> None:
            nonlocal audio
            while left:
                left.pop()
                started = time.perf_counter()
                response = await client.post(
                    f"{url}/v1/audio/speech", json={"model": "voice", "input": text}
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                audio += (len(response.content) - 44) / 2 / 22050

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    return {
        "text": "1 sentence" if text == ONE else "5 sentences",
        "concurrency": concurrency,
        "requests": total,
        "requests_per_s": total / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": cuts[18],
        "audio_s_per_request": audio / total,
        "audio_s_per_wall_s": audio / wall,
    }


def first_audio(url: str, text: str, repeats: int) -> list[dict[str, Any]]:
    """Seconds until audio can start playing: the streamed wav's first piece vs whole answers."""
    speech = {"model": "voice", "input": text}
    ways = [
        ("wav, streamed (/v1/audio/speech)", "/v1/audio/speech", speech, True),
        (
            "flac, whole (/v1/audio/speech)",
            "/v1/audio/speech",
            {**speech, "response_format": "flac"},
            False,
        ),
        ("JSON, whole (/v1/synthesize)", "/v1/synthesize", {"voice": "voice", "text": text}, False),
    ]
    rows = []
    with httpx.Client(timeout=600) as client:
        for way, path, body, streamed in ways:
            firsts, totals = [], []
            for _ in range(repeats):
                started, received, first = time.perf_counter(), 0, None
                with client.stream("POST", url + path, json=body) as response:
                    response.raise_for_status()
                    for chunk in response.iter_raw():
                        received += len(chunk)
                        if streamed and first is None and received > 44:  # past the header
                            first = time.perf_counter() - started
                totals.append(time.perf_counter() - started)
                firsts.append(first if first is not None else totals[-1])
            rows.append(
                {
                    "answer": way,
                    "first_audio_s": statistics.median(firsts),
                    "last_byte_s": statistics.median(totals),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="a .pt file or run directory")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3, help="time-to-first-audio repeats")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint or make_untrained(OUT / "serve_untrained_demo.pt"))
    server, url = start_server(checkpoint, args.threads, OUT / "serve.log")
    try:
        httpx.post(f"{url}/v1/audio/speech", json={"model": "voice", "input": ONE}, timeout=600)
        rows = [
            asyncio.run(level(url, text, c, max(8, 2 * c)))
            for text in (ONE, FIVE)
            for c in args.concurrency
        ]
        firsts = first_audio(url, FIVE, args.repeats)
        pieces = httpx.post(
            f"{url}/v1/synthesize", json={"voice": "voice", "text": FIVE}, timeout=600
        ).json()["pieces"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    print(f"checkpoint: {checkpoint}; server torch threads: {args.threads}\n")
    report("serve", rows)
    print(f"\nthe 5-sentence text is {len(pieces)} pieces of", [len(p["text"]) for p in pieces])
    print("characters; time to first audio at concurrency 1:\n")
    report("serve_first_audio", firsts)


if __name__ == "__main__":
    main()
