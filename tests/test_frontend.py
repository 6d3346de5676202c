"""The whole text frontend: stages, unknown characters, ids, and no letter ever lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tacotune.config import TextConfig
from tacotune.errors import TextError, UnknownSymbolError
from tacotune.text.frontend import MAX_TEXT_CHARACTERS, TextFrontend, ids_to_text
from tacotune.text.normalize import normalize_text
from tacotune.text.symbols import EOS_ID, LETTERS, PAD, SYMBOL_TO_ID, SYMBOLS

REPO = Path(__file__).resolve().parents[1]
MANUAL = TextFrontend(TextConfig(stress="manual"))


def test_symbol_table_has_every_russian_letter_once() -> None:
    assert len(SYMBOLS) == len(set(SYMBOLS))
    assert set("абвгдеёжзийклмнопрстуфхцчшщъыьэюя") <= set(SYMBOLS)
    assert {"+", " ", "—", "…", "«", "»"} <= set(SYMBOLS)
    assert SYMBOLS[0] == PAD


def test_stages_of_a_sentence() -> None:
    result = MANUAL.process("В 2024 году з+амок был закрыт.")
    assert result.normalized == "в две тысячи двадцать четвёртом году з+амок был закрыт."
    assert result.stressed == result.normalized  # manual mode, no dictionary: nothing added
    assert result.ids is not None and result.ids[-1] == EOS_ID
    assert ids_to_text(result.ids) == result.stressed
    assert result.unknown == ()


def test_unknown_characters_are_reported_with_count_and_position() -> None:
    result = MANUAL.process("привет 😀 мир 😀 日")
    assert result.ids is None
    found = {u.char: (u.count, u.positions) for u in result.unknown}
    assert found == {"😀": (2, (7, 13)), "日": (1, (15,))}
    with pytest.raises(UnknownSymbolError, match=r"U\+1F600\) x2 at 7, 13"):
        result.require_ids()


def test_unknown_characters_are_located_in_the_text_as_written() -> None:
    raw = "За\u0301мок в 2024 году 😀 и Щ\u0308!"  # a stress mark and a number come first
    result = MANUAL.process(raw)
    found = {u.char: (u.count, u.positions) for u in result.unknown}
    assert found == {"😀": (1, (raw.index("😀"),)), "\u0308": (1, (raw.index("\u0308"),))}
    with pytest.raises(UnknownSymbolError, match=rf"U\+1F600\) x1 at {raw.index('😀')}\b"):
        result.require_ids()
    latin = TextFrontend(TextConfig(stress="manual", latin="report")).process("в 5 Ké")
    assert {u.char: u.positions for u in latin.unknown} == {"k": (4,), "é": (5,)}


def test_a_text_beyond_the_limit_is_refused_before_any_work() -> None:
    text = "а" * MAX_TEXT_CHARACTERS
    assert MANUAL.process(text).stressed == text
    with pytest.raises(TextError, match=f"more than the {MAX_TEXT_CHARACTERS} one call reads"):
        MANUAL.process(text + "б")


def test_latin_can_be_reported_instead_of_spelled() -> None:
    spelled = MANUAL.process("USB")
    reported = TextFrontend(TextConfig(stress="manual", latin="report")).process("USB")
    assert spelled.stressed == "ю эс би" and spelled.ids is not None
    assert [u.char for u in reported.unknown] == ["u", "s", "b"]


def test_empty_text_has_no_ids() -> None:
    with pytest.raises(TextError, match="empty after normalization"):
        MANUAL.encode("   ")


def test_frontend_state_round_trip_and_symbol_table_check() -> None:
    frontend = TextFrontend(TextConfig(stress="manual"), dictionary={"замок": "зам+ок"})
    restored = TextFrontend.from_state(frontend.state())
    assert restored.encode("замок") == frontend.encode("замок")
    state = {**frontend.state(), "symbols": ["_", "~", "a"]}
    with pytest.raises(TextError, match="different symbol table"):
        TextFrontend.from_state(state)


def _demo_rows() -> list[tuple[str, str, str]]:
    lines = (REPO / "data/demo/metadata.csv").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("|")) for line in lines]  # type: ignore[misc]


@pytest.mark.parametrize(("utt_id", "raw", "spoken"), _demo_rows(), ids=lambda v: str(v)[:12])
def test_demo_corpus_hand_readings_match_the_normalizer(utt_id: str, raw: str, spoken: str) -> None:
    # the corpus' third column was written by hand as a careful reader says the sentence
    assert normalize_text(raw) == normalize_text(spoken)


def _letters(text: str) -> str:
    return "".join(c for c in text.lower().replace("ё", "е") if c in LETTERS)


CYRILLIC_TEXT = st.text(
    alphabet=st.sampled_from("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВЁЖЯ ,.!?—-«»"),
    min_size=1,
    max_size=60,
)


def _keeps_every_letter(text: str, spoken: str) -> bool:
    """Every letter of `text` is in `spoken`, in order (an abbreviation may add letters:
    "г. Ё" is read "город ё", "т.е." "то есть"; nothing may drop one)."""
    rest = iter(_letters(spoken))
    return all(letter in rest for letter in _letters(text))


@settings(max_examples=300, deadline=None)
@given(CYRILLIC_TEXT)
@example("г.Ё")  # "г." before a capital is the abbreviation of "город"
def test_no_cyrillic_letter_is_ever_lost(text: str) -> None:
    result = MANUAL.process(text)
    assert _keeps_every_letter(text, result.normalized)
    assert _letters(result.stressed) == _letters(result.normalized)
    if result.ids is not None:
        assert _letters(ids_to_text(result.ids)) == _letters(result.normalized)


@settings(max_examples=40, deadline=None)
@given(CYRILLIC_TEXT)
@example("г.Ё")
def test_no_letter_is_lost_with_automatic_stress(text: str) -> None:
    result = TextFrontend(TextConfig(stress="auto")).process(text)
    assert _keeps_every_letter(text, result.normalized)
    # silero only adds + and restores ё
    assert _letters(result.stressed) == _letters(result.normalized)


def test_cli_text_prints_every_stage_as_json() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tacotune",
            "-q",
            "text",
            "--json",
            "--set",
            "text.stress=manual",
            "В 2024 году з+амок был закрыт. 😀",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1  # unknown characters make the text unusable
    out = json.loads(done.stdout)
    assert out["stressed"].startswith("в две тысячи двадцать четвёртом году з+амок")
    assert out["ids"] is None
    assert out["unknown"][0]["codepoint"] == "U+1F600"


def test_every_symbol_id_decodes() -> None:
    ids = [SYMBOL_TO_ID[c] for c in "з+амок, «да» — нет…"] + [EOS_ID]
    assert ids_to_text(ids) == "з+амок, «да» — нет…"
