"""Every command's --help, read as a set: one default per option, none that says nothing."""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from pathlib import Path

import pytest

from tacotune.cli import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser and every sub-command's, depth first, with their command lines."""
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_help_shows_each_default_once_and_no_empty_one() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 14  # every command and sub-command was found
    for prog, parser in parsers:
        text = " ".join(parser.format_help().split())  # defaults may wrap across lines
        assert "(default: None)" not in text, prog
        assert "(default: False)" not in text, prog
        doubled = re.search(r"\(default: [^)]*\) \(default: [^)]*\)", text)
        assert doubled is None, f"{prog}: {doubled and doubled.group(0)}"
        for action in parser._actions:  # each option's own text: no "the the"
            words = re.search(r"\b(\w+) \1\b", action.help or "")
            assert words is None, f"{prog} {action.dest}: {words and words.group(0)}"


def test_the_cli_logs_to_the_stderr_of_the_moment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging is configured once, by the first command; a later stderr (a notebook's, the
    next test's capture) gets the records, and a closed earlier one breaks nothing."""
    from tacotune.cli import main

    assert main(["synthesize", str(tmp_path / "missing.pt"), "да", "-o", "a.wav"]) == 1
    assert "missing.pt does not exist" in capsys.readouterr().err
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("tacotune").warning("a later record")
    assert "a later record" in later.getvalue()
