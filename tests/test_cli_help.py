"""Every command's --help, read as a set: one default per option, none that says nothing."""

from __future__ import annotations

import argparse
import re

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
