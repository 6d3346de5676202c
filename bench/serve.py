"""HTTP serving: requests/s and latency by concurrency, and time to first audio.

    python bench/serve.py [CHECKPOINT] [--threads 2] [--concurrency 1 4 16] [--texts one five]
                          [--max-batch 8 1]

Starts `tacotune serve CHECKPOINT` in a subprocess on a free loopback port (torch threads:
--threads) and drives it from this process with httpx (asyncio, one connection per
concurrent client). The first request after the server is up (1 sentence) is timed on its
own: the cold start, to compare with the steady state. Then for a 1-sentence and a
5-sentence text (--texts), at each concurrency, max(8, 2 x concurrency) requests to POST
/v1/audio/speech (wav, body read to the end) give requests/s, p50/p95 latency and
throughput relative to the lowest concurrency. --max-batch runs all that once per batch
size (the most pieces of one voice decoded together: 8 is the server's, 1 serves one piece
at a time as before batching), each on a fresh server. Then, in this process, what the
synthesis thread spends per piece: decoding alone, in a batch, vocoding. Time to first
audio compares, for the 5-sentence text at concurrency 1, the streamed wav (first chunk:
header + first piece) with the same text unstreamed (POST /v1/synthesize, whole JSON) and
with flac (a whole file).

Without CHECKPOINT it makes the demo preset's model, untrained, with the stop token off
and decoding bounded to a speech rate (model.max_frames_per_char=6, ~14 characters per
second): the audio is noise, but each request costs what the same text costs a trained
demo voice of that length. Give a trained checkpoint (a run directory works) for real speech.
Results: tables on stdout, runs/bench/serve.json, serve_first_request.json,
serve_thread_costs.json and serve_first_audio.json; the server's one-line-per-request
log: runs/bench/serve_batchN.log.
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
from tacotune.synthesize import Synthesizer, split_text
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


# `tacotune serve` with the synthesis runner's batch size set (argv[1]; the rest: the CLI's)
SERVE_WITH_BATCH = (
    "import sys; from tacotune.serve import runner; "
    "runner.SynthesisRunner.__init__.__defaults__ = ((), int(sys.argv[1])); "
    "from tacotune.cli import main; sys.exit(main(sys.argv[2:]))"
)


def start_server(
    checkpoint: Path, threads: int, log: Path, max_batch: int
) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        SERVE_WITH_BATCH,
        str(max_batch),
        "serve",
        f"voice={checkpoint}",
    ]
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


def wav(text: str) -> dict[str, str]:
    """The speech request of every timed call: a whole wav (its size gives the audio length)."""
    return {"model": "voice", "input": text, "response_format": "wav"}


def first_request(url: str) -> dict[str, Any]:
    """The first request after start (cold) against the median of the next five (steady)."""
    times = []
    for _ in range(6):
        started = time.perf_counter()
        httpx.post(f"{url}/v1/audio/speech", json=wav(ONE), timeout=600).raise_for_status()
        times.append(time.perf_counter() - started)
    steady = statistics.median(times[1:])
    return {"first_s": times[0], "steady_p50_s": steady, "first_over_steady": times[0] / steady}


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
                response = await client.post(f"{url}/v1/audio/speech", json=wav(text))
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
    speech = wav(text)
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


def thread_costs(checkpoint: Path, threads: int, max_batch: int) -> dict[str, Any]:
    """In this process, what the synthesis thread spends on one 1-sentence piece: decoding it
    alone, its share of a batch of `max_batch`, vocoding it (median of 3 each)."""
    torch.set_num_threads(threads)
    synthesizer = Synthesizer(checkpoint)
    chunks = split_text(synthesizer.frontend, ONE)
    mel = synthesizer.decode(chunks)[0].mel  # the first calls pay for loading: not timed

    def seconds(work: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return {
        "decode_alone_s": seconds(lambda: synthesizer.decode(chunks)),
        f"decode_in_batch_of_{max_batch}_s": seconds(lambda: synthesizer.decode(chunks * max_batch))
        / max_batch,
        "vocode_s": seconds(lambda: synthesizer.vocoder(mel)),
    }


def measure(
    checkpoint: Path, args: argparse.Namespace, max_batch: int, log: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """On a fresh server: the first request, each text at each concurrency and (with the
    5-sentence text) the time to first audio."""
    server, url = start_server(checkpoint, args.threads, log, max_batch)
    firsts: list[dict[str, Any]] = []
    pieces: list[Any] = []
    try:
        cold = {"max_batch": max_batch, **first_request(url)}
        texts = [{"one": ONE, "five": FIVE}[name] for name in args.texts]
        rows = [
            {"max_batch": max_batch, **asyncio.run(level(url, text, c, max(8, 2 * c)))}
            for text in texts
            for c in args.concurrency
        ]
        for row in rows:  # throughput relative to the lowest concurrency of the same text
            base = next(r for r in rows if r["text"] == row["text"])
            row["vs_lowest"] = row["requests_per_s"] / base["requests_per_s"]
        if "five" in args.texts:
            firsts = first_audio(url, FIVE, args.repeats)
            body = {"voice": "voice", "text": FIVE}
            pieces = httpx.post(f"{url}/v1/synthesize", json=body, timeout=600).json()["pieces"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return cold, rows, firsts, pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="a .pt file or run directory")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3, help="time-to-first-audio repeats")
    parser.add_argument("--texts", nargs="+", choices=["one", "five"], default=["one", "five"])
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8], help="8: the server's")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint or make_untrained(OUT / "serve_untrained_demo.pt"))
    colds: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    firsts: list[dict[str, Any]] = []
    pieces: list[Any] = []
    for max_batch in args.max_batch:
        log = OUT / f"serve_batch{max_batch}.log"
        cold, more, first, piece_list = measure(checkpoint, args, max_batch, log)
        colds.append(cold)
        rows += more
        firsts, pieces = firsts or first, pieces or piece_list
    print(f"checkpoint: {checkpoint}; server torch threads: {args.threads}\n")
    report("serve_first_request", colds)
    report("serve_thread_costs", [thread_costs(checkpoint, args.threads, max(args.max_batch))])
    report("serve", rows)
    if not firsts:
        return
    print(f"\nthe 5-sentence text is {len(pieces)} pieces of", [len(p["text"]) for p in pieces])
    print("characters; time to first audio at concurrency 1:\n")
    report("serve_first_audio", firsts)


if __name__ == "__main__":
    main()
