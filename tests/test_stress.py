"""Stress marks: input conversion, priorities (manual > dictionary > silero), modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tacotune.errors import StressError
from tacotune.text.stress import (
    MAX_STRESS_WORD_LETTERS,
    Stresser,
    convert_input_marks,
    load_dictionary,
    silero_accentor,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("за\u0301мок", "з+амок"),  # combining acute after the vowel
        ("за'мок", "з+амок"),  # apostrophe after the vowel
        ("молоко'", "молок+о"),  # apostrophe ending a word
        ("О\u0301льга", "+Ольга"),  # capital vowel
        ("ещё\u0301", "ещ+ё"),  # acute on ё (NFD puts a diaeresis in between)
        ("з+амок", "з+амок"),  # already in tacotune's convention
        ("'мама' сказала", "'мама' сказала"),  # apostrophes used as quotes stay quotes
        ("йод", "йод"),  # й and ё survive decomposition
    ],
)
def test_input_marks_become_plus_before_the_vowel(raw: str, expected: str) -> None:
    assert convert_input_marks(raw) == expected


def _fake_accentor(marks: dict[str, str]):  # type: ignore[no-untyped-def]
    def accent(text: str) -> str:
        return " ".join(marks.get(w, w) for w in text.split(" "))

    return accent


def test_priority_is_manual_then_dictionary_then_automatic() -> None:
    accentor = _fake_accentor({"замок": "зам+ок", "мука": "мук+а", "стол": "стол"})
    stresser = Stresser("auto", {"мука": "м+ука"}, accentor)
    result = stresser.apply("з+амок мука замок стол")
    assert result.text == "з+амок м+ука зам+ок стол"
    assert result.sources == {"manual": 1, "dictionary": 1, "auto": 1, "none": 1}


def test_manual_mode_uses_marks_and_dictionary_but_never_the_model() -> None:
    def forbidden(text: str) -> str:
        raise AssertionError("manual mode must not call the accentor")

    result = Stresser("manual", {"замок": "зам+ок"}, forbidden).apply("замок з+амок дом")
    assert result.text == "зам+ок з+амок дом"


def test_off_mode_strips_every_mark() -> None:
    assert Stresser("off").apply("з+амок был закр+ыт").text == "замок был закрыт"


def test_misplaced_mark_is_an_error_not_a_guess() -> None:
    with pytest.raises(StressError, match="immediately before the stressed vowel"):
        Stresser("manual").apply("з+мок")


def test_a_word_beyond_the_limit_is_refused_before_the_accentor_runs() -> None:
    def forbidden(text: str) -> str:
        raise AssertionError("the accentor must not see an over-long word")

    at_limit = "д" + "а" * (MAX_STRESS_WORD_LETTERS - 1)
    assert Stresser("auto", accentor=lambda t: t).apply(f"дом {at_limit}").text.endswith("а")
    too_long = "з+" + "а" * MAX_STRESS_WORD_LETTERS  # the mark is no letter
    with pytest.raises(StressError, match=rf"word 2 .* has {MAX_STRESS_WORD_LETTERS + 1} letters"):
        Stresser("auto", accentor=forbidden).apply(f"дом {too_long} стоит")
    assert Stresser("manual", accentor=forbidden).apply(too_long).text == too_long  # no cost


def test_accentor_that_changes_words_is_refused() -> None:
    stresser = Stresser("auto", accentor=lambda text: text + " лишнее")
    with pytest.raises(StressError, match="changed the words"):
        stresser.apply("дом стоит")


def test_dictionary_file_is_validated_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text(
        "# comment\nзамок|зам+ок\nмука|му'ка\nвсе|всё\nгитара|гита+ра\nдом\nкошка|к+ошкa\n",
        encoding="utf-8",
    )
    with pytest.raises(StressError) as error:
        load_dictionary(path)
    message = str(error.value)
    assert "line 5" in message and "immediately before" in message  # the mark-after convention
    assert "line 6: expected 'word|w+ord'" in message
    assert "line 7" in message  # Latin 'a' makes it a different word
    good = tmp_path / "good.txt"
    good.write_text("замок|зам+ок\nмука|му'ка\nвсе|всё\n", encoding="utf-8")
    assert load_dictionary(good) == {"замок": "зам+ок", "мука": "м+ука", "все": "всё"}


# silero-stress itself: a tricky-word table (the model ships in the wheel, no network)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("з+амок был закрыт", "з+амок был закр+ыт"),  # manual mark kept, the rest filled in
        ("зам+ок был закрыт", "зам+ок был закр+ыт"),
        ("всё хорошо", "всё хорош+о"),
        ("ежик и елка", "+ёжик и +ёлка"),  # ё restored
        ("еще", "ещ+ё"),
        ("на столе лежит книга", "на стол+е леж+ит кн+ига"),
        ("договор", "догов+ор"),
        ("позвонишь", "позвон+ишь"),
        ("в дом", "в дом"),  # one-vowel words get no mark
    ],
)
def test_silero_fills_missing_marks(text: str, expected: str) -> None:
    assert Stresser("auto", accentor=silero_accentor()).apply(text).text == expected


def test_loading_silero_leaves_torch_global_state_alone() -> None:
    import torch

    torch.set_num_threads(2)
    silero_accentor.cache_clear()
    silero_accentor()("мама мыла раму")
    assert torch.get_num_threads() == 2
    assert torch.is_grad_enabled()
