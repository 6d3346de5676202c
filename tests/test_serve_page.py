"""The web page at `/` in a real browser: Debian's chromium, driven by playwright.

Skipped only where no chromium is installed (`apt-get install -y chromium`; .ci/run does it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from test_serve import SENTENCE, one_torch_thread, serving, tiny_voice  # noqa: F401 (autouse)
from test_synthesize import untrained_payload

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="no browser installed: the web page test needs Debian's chromium "
        "(apt-get install -y chromium)",
    ),
]


def test_the_page_speaks_typed_text_and_draws_the_alignment(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    payload = untrained_payload("model.max_decoder_steps=30", "audio.griffin_lim_iters=4")
    problems: list[str] = []
    with serving([tiny_voice(payload)]) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True
        )
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(url)
        page.wait_for_selector("#voice option[value=tiny]", state="attached")
        page.fill("#text", SENTENCE)
        page.click("#speak")
        page.wait_for_function(
            "() => document.querySelector('#audio').duration > 0", timeout=60_000
        )
        result: dict[str, Any] = page.evaluate(
            """() => {
                const canvas = document.querySelector('#alignment');
                const pixels = canvas.getContext('2d')
                    .getImageData(0, 0, canvas.width, canvas.height).data;
                let lit = 0;
                for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 3] > 0) lit++;
                return {
                    duration: document.querySelector('#audio').duration,
                    lit: lit / (pixels.length / 4),
                    rows: [...document.querySelectorAll('#pieces tbody tr')]
                        .map((row) => row.innerText),
                    status: document.querySelector('#status').textContent,
                };
            }"""
        )
        page.screenshot(path=str(tmp_path / "page.png"))
        page.fill("#text", "привет 😀")
        page.click("#speak")
        page.wait_for_selector("#status.error")
        error = page.text_content("#status")
        browser.close()
    assert result["duration"] == pytest.approx(60 * 256 / 22050, abs=0.01)  # 60 frames
    assert result["lit"] > 0.9  # the alignment fills the canvas
    assert len(result["rows"]) == 1 and "max_steps" in result["rows"][0]
    assert "s of audio" in result["status"]
    assert error is not None and "U+1F600" in error and "at 7" in error
    assert not [p for p in problems if "400" not in p], problems  # the 400 is the error case
