"""Tests for tacotune.text.normalize: the raw text -> spoken form table and its properties."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tacotune.text.normalize import normalize_text

CASES: list[tuple[str, str]] = [
    # Stress marks, ё, case.
    ("З+амок закрыт.", "з+амок закрыт."),
    ("+Ёлка стоит.", "+ёлка стоит."),
    ("Ёжик и ЁЛКА", "ёжик и ёлка"),
    ("5 д+омов", "пять д+омов"),
    # Whitespace.
    ("Ёжик\tи   ёлка ", "ёжик и ёлка"),
    ("  раз\n\nдва\u00a0три\u2009четыре\u202fпять ", "раз два три четыре пять"),
    # Quotes, dashes, ellipsis, brackets.
    ('"Привет" - сказал он...', "«привет» — сказал он…"),
    ("«Привет», — сказал он.", "«привет», — сказал он."),
    ("„Привет“, “мир”", "«привет», «мир»"),
    ("‹да›", "«да»"),
    ("'да' и д'Артаньян", "«да» и д'артаньян"),
    ("«цитата “вложенная” тут»", "«цитата «вложенная» тут»"),
    ("- Привет, - сказал он.\n- Пока.", "— привет, — сказал он. — пока."),
    ("слово — слово–слово―слово‒слово", "слово — слово — слово — слово — слово"),
    ("кто-то -- кое-где", "кто-то — кое-где"),
    ("Что?!?!?!", "что?!?!?!"),
    ("Да.... Нет…", "да… нет…"),
    ("[сноска]", "(сноска)"),
    # Cardinals with agreement and prepositions.
    ("5 домов", "пять домов"),
    ("1 книга", "одна книга"),
    ("2 книги", "две книги"),
    ("21 день", "двадцать один день"),
    ("1 окно", "одно окно"),
    ("до 5 лет", "до пяти лет"),
    ("к 3 часам", "к трём часам"),
    ("о 2 книгах", "о двух книгах"),
    ("В 5 домах жили 100 человек.", "в пяти домах жили сто человек."),
    ("на 1 неделю", "на одну неделю"),
    ("с 2 друзьями", "с двумя друзьями"),
    ("около 1000 рублей", "около тысячи рублей"),
    ("Глава 1 книги", "глава один книги"),
    ("1 000 000", "один миллион"),
    ("10\u00a0000 рублей", "десять тысяч рублей"),
    ("007", "ноль ноль семь"),
    # Ordinals from suffixes.
    ("5-й", "пятый"),
    ("2-го", "второго"),
    ("3-я", "третья"),
    ("10-е", "десятое"),
    ("1-м", "первым"),
    ("в 1-м классе", "в первом классе"),
    ("в 3-ю очередь", "в третью очередь"),
    ("в 2-х томах", "в двух томах"),
    ("5-летний", "пятилетний"),
    ("в 90-е", "в девяностые"),
    # Years and dates.
    ("в 2024 году", "в две тысячи двадцать четвёртом году"),
    ("2024 года", "две тысячи двадцать четвёртого года"),
    ("2024 год", "две тысячи двадцать четвёртый год"),
    ("Это было в 2024 г.", "это было в две тысячи двадцать четвёртом году."),
    ("с 2020 г.", "с две тысячи двадцатого года."),
    (
        "с 2020 г. по 2024 г. включительно",
        "с две тысячи двадцатого года по две тысячи двадцать четвёртый год включительно",
    ),
    ("за 2024 г. отчёт", "за две тысячи двадцать четвёртый год отчёт"),
    ("в 1990-х", "в тысяча девятьсот девяностых"),
    ("12.05.2024", "двенадцатого мая две тысячи двадцать четвёртого года"),
    ("29.02.2024", "двадцать девятого февраля две тысячи двадцать четвёртого года"),
    ("с 1.9.2023 г.", "с первого сентября две тысячи двадцать третьего года."),
    # No such day: the numbers as they are written, never a date or a decimal.
    ("45.13.2020", "сорок пять точка тринадцать точка две тысячи двадцать"),
    ("31.02.2021", "тридцать один точка ноль два точка две тысячи двадцать один"),
    ("29.02.2023 года", "двадцать девять точка ноль два точка две тысячи двадцать три года"),
    ("версия 1.2.3.", "версия один точка два точка три."),
    ("192.168.0.1", "сто девяносто два точка сто шестьдесят восемь точка ноль точка один"),
    ("до 12 мая", "до двенадцатого мая"),
    ("в 1941–1945 гг.", "в тысяча девятьсот сорок первом — тысяча девятьсот сорок пятом годах."),
    # Decimals, signs, ranges, times, arithmetic.
    ("3,14", "три целых четырнадцать сотых"),
    ("3.14", "три целых четырнадцать сотых"),
    ("до 0,5 л", "до нуля целых пяти десятых литра"),
    ("-5 градусов", "минус пять градусов"),
    ("температура −5°C", "температура минус пять градусов цельсия"),
    ("5-10 лет", "от пяти до десяти лет"),
    ("5–10", "от пяти до десяти"),
    ("2-3 дня", "от двух до трёх дней"),
    ("в 2-3 раза", "в два — три раза"),
    ("5-10 января", "с пятого по десятое января"),
    ("10:30", "десять тридцать"),
    ("10:05", "десять ноль пять"),
    ("2+2=4", "два плюс два равно четыре"),
    ("5 - 3 = 2", "пять минус три равно два"),
    # Percent, number sign, money and units.
    ("5%", "пять процентов"),
    ("1%", "один процент"),
    ("2,5%", "две целых пять десятых процента"),
    ("№ 5", "номер пять"),
    ("№5", "номер пять"),
    ("100 руб. в месяц", "сто рублей в месяц"),
    ("Стоит 100 руб. Дорого.", "стоит сто рублей. дорого."),
    ("1 руб.", "один рубль."),
    ("50 коп.", "пятьдесят копеек."),
    ("5 км", "пять километров"),
    ("2 кг", "два килограмма"),
    ("21 км", "двадцать один километр"),
    ("$5", "пять долларов"),
    ("5 $", "пять долларов"),
    ("€10", "десять евро"),
    ("20°", "двадцать градусов"),
    ("5 млн руб.", "пять миллионов рублей."),
    # Abbreviations and symbols.
    ("яблоки, груши и т.д.", "яблоки, груши и так далее."),
    ("т.е. это так", "то есть это так"),
    ("и т.п. и т. д., а т.к. он", "и тому подобное и так далее, а так как он"),
    ("в т.ч. дети", "в том числе дети"),
    ("г. Москва", "город москва"),
    ("кошки & собаки", "кошки и собаки"),
    # Latin letters (spell is the default).
    ("USB", "ю эс би"),
    ("ok", "оу кей"),
    ("Wi-Fi", "вай-фай"),
    ("mp3", "эм пи три"),
    # Unknown characters pass through.
    ("Снег ☃ и 字 ✓", "снег ☃ и 字 ✓"),
    ("½ и ‰", "½ и ‰"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("USB-порт и Wi-Fi", "usb-порт и wi-fi"),
        ("Version 2", "version два"),
        ("OK, ладно", "ok, ладно"),
    ],
)
def test_latin_report_leaves_latin_lower_cased(raw: str, expected: str) -> None:
    assert normalize_text(raw, latin="report") == expected


def test_latin_spell_differs_from_report() -> None:
    assert normalize_text("USB") == "ю эс би"
    assert normalize_text("USB", latin="report") == "usb"


def test_unknown_latin_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="latin"):
        normalize_text("текст", latin="drop")  # type: ignore[arg-type]


def test_sentence_final_abbreviation_keeps_one_period() -> None:
    assert (
        normalize_text("Фрукты и т.д. Овощи и т.п.") == "фрукты и так далее. овощи и тому подобное."
    )
    assert normalize_text("и т.д., и т.п. и всё") == "и так далее, и тому подобное и всё"


def test_pymorphy_is_imported_lazily() -> None:
    code = "import sys, tacotune.text.normalize; print('pymorphy3' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


_LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
_CYRILLIC_RE = re.compile(r"[а-яё]")
# A one- or two-letter word followed by a period: a possible abbreviation ("т.е.", "г.", "др.").
_SHORT_ABBREVIATION_RE = re.compile(r"(?<![а-яё])[а-яё]{1,2}\.", re.IGNORECASE)


def _cyrillic(text: str) -> list[str]:
    return _CYRILLIC_RE.findall(text.lower())


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=_LETTERS + " \t\n\u00a0,!?:;-—–…«»\"'()", max_size=60))
def test_cyrillic_letters_survive_without_periods(text: str) -> None:
    assert _cyrillic(normalize_text(text)) == _cyrillic(text)


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=_LETTERS + " .,!?-…", max_size=60))
def test_cyrillic_letters_survive_with_periods(text: str) -> None:
    assume(_SHORT_ABBREVIATION_RE.search(text) is None)
    assert _cyrillic(normalize_text(text)) == _cyrillic(text)


_VOWELS = "аеёиоуыэюяАЕЁИОУЫЭЮЯ"
_stressed_words = st.lists(
    st.tuples(st.text(alphabet=_LETTERS, max_size=4), st.sampled_from(_VOWELS)).map(
        lambda pair: f"{pair[0]}+{pair[1]}"
    ),
    min_size=1,
    max_size=4,
).map("".join)


@settings(deadline=None, max_examples=100)
@given(st.lists(_stressed_words, min_size=1, max_size=5))
def test_stress_marks_survive(words: list[str]) -> None:
    text = " ".join(words)
    assert normalize_text(text) == text.lower()


_MIXED = _LETTERS[:20] + "0123456789" * 2 + " " * 5 + ".,!?:;-—–…«»\"'()+=&%$€°№/\n\u00a0" + "гкмрт"


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=_MIXED, max_size=40))
def test_every_digit_is_spelled_out(text: str) -> None:
    assert re.search(r"[0-9]", normalize_text(text)) is None


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=_MIXED + "abcXYZ", max_size=40))
def test_normalization_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
