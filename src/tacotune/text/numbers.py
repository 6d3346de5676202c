"""Russian number words with grammatical agreement.

Low-level helpers for :mod:`tacotune.text.normalize`: cardinals, ordinals and
decimals in any case and gender (via num2words), plus the pymorphy3 look-ups
that pick the case from a preceding preposition and the gender from a
following noun. pymorphy3 is imported lazily, on the first look-up.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Literal

from num2words import num2words

if TYPE_CHECKING:
    from pymorphy3 import MorphAnalyzer

Case = Literal["n", "g", "d", "a", "i", "p"]
Gender = Literal["m", "f", "n"]
Count = Literal["one", "few", "many", "frac"]
Parse = Any  # pymorphy3.analyzer.Parse ships without type information

CASES: tuple[Case, ...] = ("n", "g", "d", "a", "i", "p")

# num2words' Russian group names stop at 10**32; longer numbers are read digit by digit.
_MAX_DIGITS = 30
# Fractions with more digits than this are read as "запятая" plus single digits.
_MAX_FRACTION_DIGITS = 6

_DIGIT_NAMES = ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять")
# "ноль" per case (num2words says "ноле" in the prepositional).
_ZERO: dict[str, str] = {
    "n": "ноль", "g": "нуля", "d": "нулю", "a": "ноль", "i": "нулём", "p": "нуле",
}  # fmt: skip

# Cases a preposition (or a quantity word like "более") governs, most likely first.
PREP_CASES: dict[str, tuple[Case, ...]] = {
    **dict.fromkeys(
        (
            "без", "до", "из", "изо", "от", "ото", "у", "для", "около", "после", "вокруг",
            "кроме", "среди", "против", "более", "менее", "свыше", "больше", "меньше",
            "порядка", "вместо", "возле", "мимо", "вне", "внутри", "из-за", "из-под",
        ),
        ("g",),
    ),
    **dict.fromkeys(("к", "ко", "благодаря", "согласно"), ("d",)),
    **dict.fromkeys(("через", "про", "сквозь", "спустя", "включая"), ("a",)),
    **dict.fromkeys(("над", "надо", "перед", "передо", "между"), ("i",)),
    **dict.fromkeys(("о", "об", "обо", "при"), ("p",)),
    **dict.fromkeys(("с", "со"), ("g", "i")),
    **dict.fromkeys(("в", "во", "на"), ("a", "p")),
    "за": ("a", "i"),
    "под": ("i", "a"),
    "по": ("d", "a", "p"),
}  # fmt: skip

# pymorphy3 grammemes that count as each num2words case.
_CASE_GRAMMEMES: dict[Case, frozenset[str]] = {
    "n": frozenset({"nomn"}), "g": frozenset({"gent", "gen1", "gen2"}),
    "d": frozenset({"datv"}), "a": frozenset({"accs", "acc2"}),
    "i": frozenset({"ablt"}), "p": frozenset({"loct", "loc1", "loc2"}),
}  # fmt: skip
_INFLECT_CASE: dict[Case, str] = {
    "n": "nomn", "g": "gent", "d": "datv", "a": "accs", "i": "ablt", "p": "loct",
}  # fmt: skip
GENDERS: dict[str, Gender] = {"masc": "m", "femn": "f", "neut": "n"}

# Forms of "целая" (the integer part of a decimal): singular and plural per case.
_WHOLE_SING: dict[Case, str] = {
    "n": "целая", "g": "целой", "d": "целой", "a": "целую", "i": "целой", "p": "целой",
}  # fmt: skip
_WHOLE_PLUR: dict[Case, str] = {
    "n": "целых", "g": "целых", "d": "целым", "a": "целых", "i": "целыми", "p": "целых",
}  # fmt: skip

# Ordinal variants tried against a written ending: (case, gender, plural).
_GENDER_NUMBERS: tuple[tuple[Gender, bool], ...] = (
    ("m", False),
    ("f", False),
    ("n", False),
    ("m", True),
)
_ORDINAL_VARIANTS = tuple((c, g, plural) for c in CASES for g, plural in _GENDER_NUMBERS)
# Endings that usually mark a cardinal when a cardinal form fits ("2-х" = двух, "5-ти" = пяти).
_CARDINAL_SUFFIXES = frozenset({"х", "ух", "ёх", "ех", "ти", "ми", "мя"})
# Compound-word stems that are not the genitive ("однолетний", "столетний", "девяностолетний").
_COMPOUND_PARTS = {1: "одно", 90: "девяносто", 100: "сто"}
# "одна тысяча ..." at the start of a cardinal: num2words says it, Russian says "тысяча".
_ONE_THOUSAND_RE = re.compile(r"^одн[а-я]*\s+(?=тысяч)")

# Unit abbreviations (lower-case) -> (dictionary noun, words said after it).
UNITS: dict[str, tuple[str, str]] = {
    "%": ("процент", ""), "₽": ("рубль", ""), "руб": ("рубль", ""), "р": ("рубль", ""),
    "коп": ("копейка", ""), "$": ("доллар", ""), "долл": ("доллар", ""), "€": ("евро", ""),
    "£": ("фунт", ""), "°c": ("градус", "цельсия"), "°с": ("градус", "цельсия"),
    "℃": ("градус", "цельсия"), "°f": ("градус", "фаренгейта"), "°": ("градус", ""),
    "км/ч": ("километр", "в час"), "м/с": ("метр", "в секунду"), "км": ("километр", ""),
    "м": ("метр", ""), "см": ("сантиметр", ""), "мм": ("миллиметр", ""),
    "кг": ("килограмм", ""), "г": ("грамм", ""), "мг": ("миллиграмм", ""), "т": ("тонна", ""),
    "л": ("литр", ""), "мл": ("миллилитр", ""), "га": ("гектар", ""), "ч": ("час", ""),
    "мин": ("минута", ""), "сек": ("секунда", ""), "шт": ("штука", ""),
    "гб": ("гигабайт", ""), "мб": ("мегабайт", ""), "кб": ("килобайт", ""),
    "тыс": ("тысяча", ""), "млн": ("миллион", ""), "млрд": ("миллиард", ""),
    "трлн": ("триллион", ""),
}  # fmt: skip
MULTIPLIERS = ("тыс", "млн", "млрд", "трлн")
CURRENCIES = ("руб", "р", "₽", "коп", "долл", "$", "€", "£")

MONTHS = (
    "января", "февраля", "марта", "апреля", "мая", "июня",
    "июля", "августа", "сентября", "октября", "ноября", "декабря",
)  # fmt: skip
# Case of "год" from its written form.
YEAR_WORD_CASES: dict[str, Case] = {
    "год": "n", "года": "g", "году": "p", "годом": "i", "годе": "p",
    "годы": "n", "годов": "g", "годам": "d", "годами": "i", "годах": "p",
}  # fmt: skip
YEAR_SING: dict[Case, str] = {
    "n": "год", "g": "года", "d": "году", "a": "год", "i": "годом", "p": "году",
}  # fmt: skip
YEAR_PLUR: dict[Case, str] = {
    "n": "годы", "g": "годов", "d": "годам", "a": "годы", "i": "годами", "p": "годах",
}  # fmt: skip
# Prepositions whose case before a date or year differs from their usual first case.
_DATE_CASE_OVERRIDES: dict[str, Case] = {"в": "p", "во": "p", "по": "a", "на": "a", "за": "a"}

# A word right after a number, and optionally the word after it (stress marks allowed).
_NEXT_WORDS_RE = re.compile(r"\s*([а-яё+]+(?:-[а-яё+]+)?)(?:\s+([а-яё+]+))?", re.IGNORECASE)
# The word right before a position, separated from it by whitespace only.
_PREV_WORD_RE = re.compile(r"(?<![а-яё+-])([а-яё+]+(?:-[а-яё+]+)?)\s+$", re.IGNORECASE)


def count_class(digits: str, fractional: bool = False) -> Count:
    """Classify a number by the noun form it requires.

    Returns:
        "one" (1, 21, 101), "few" (2-4, 22), "many" (0, 5-20, 25) or "frac".
    """
    if fractional:
        return "frac"
    integer = int(digits[-2:])
    if integer % 10 == 1 and integer % 100 != 11:
        return "one"
    if 2 <= integer % 10 <= 4 and not 12 <= integer % 100 <= 14:
        return "few"
    return "many"


def spell_digits(digits: str) -> str:
    """Read a string of ASCII digits one by one ("007" -> "ноль ноль семь")."""
    return " ".join(_DIGIT_NAMES[int(d)] for d in digits)


@functools.lru_cache(maxsize=4096)
def cardinal(
    digits: str,
    case: Case = "n",
    gender: Gender = "m",
    *,
    plural: bool = False,
    animate: bool = False,
) -> str:
    """Say a non-negative integer written as ASCII digits as a cardinal.

    Args:
        digits: The number, e.g. "21"; leading zeros are read as "ноль".
        case: Grammatical case (num2words letters n, g, d, a, i, p).
        gender: Gender of the counted noun (matters for 1 and 2).
        plural: Plural form of "один" (for plural-only nouns: "одни сутки").
        animate: Animate accusative ("одного человека").
    """
    stripped = digits.lstrip("0")
    zeros = len(digits) - len(stripped)
    if not stripped:
        return spell_digits(digits) if len(digits) > 1 else _ZERO[case]
    if zeros or len(stripped) > _MAX_DIGITS:
        head = spell_digits(digits[:zeros]) + " " if zeros else ""
        if len(stripped) > _MAX_DIGITS:
            return head + spell_digits(stripped)
        return head + cardinal(stripped, case, gender, plural=plural, animate=animate)
    return _n2w(int(stripped), "cardinal", case, gender, plural=plural, animate=animate)


@functools.lru_cache(maxsize=4096)
def ordinal(digits: str, case: Case = "n", gender: Gender = "m", plural: bool = False) -> str:
    """Say a non-negative integer as an ordinal ("пятый", "второго", "третья", "девяностые").

    Numbers too long for num2words are read digit by digit.
    """
    if len(digits) > _MAX_DIGITS:
        return spell_digits(digits)
    return _n2w(int(digits), "ordinal", case, gender, plural=plural)


def _n2w(
    number: int,
    kind: str,
    case: Case,
    gender: Gender,
    *,
    plural: bool = False,
    animate: bool = False,
) -> str:
    """Call num2words for Russian with the given grammatical features."""
    words = num2words(
        number, lang="ru", to=kind, case=case, gender=gender, plural=plural, animate=animate
    )
    return _ONE_THOUSAND_RE.sub("", str(words))


def decimal(integer: str, fraction: str, case: Case = "n") -> str:
    """Say a decimal fraction in a case ("3", "14" -> "три целых четырнадцать сотых")."""
    if len(fraction) > _MAX_FRACTION_DIGITS:
        return f"{cardinal(integer, case, 'f')} запятая {spell_digits(fraction)}"
    whole = (_WHOLE_SING if count_class(integer) == "one" else _WHOLE_PLUR)[case]
    head = f"{cardinal(integer, case, 'f')} {whole}"
    numerator = str(int(fraction))
    denominator = str(10 ** len(fraction))
    if count_class(numerator) == "one":
        part = ordinal(denominator, case, "f")
    elif case in ("n", "a"):
        part = ordinal(denominator, "g", "f", plural=True)
    else:
        part = ordinal(denominator, case, "f", plural=True)
    return f"{head} {cardinal(numerator, case, 'f')} {part}"


def say_number(integer: str, fraction: str | None, case: Case, parse: Parse | None = None) -> str:
    """Say a cardinal (or decimal) in ``case``, taking gender and animacy from ``parse``."""
    if fraction is not None:
        return decimal(integer, fraction, case)
    if parse is None:
        return cardinal(integer, case)
    tag = parse.tag
    gender = GENDERS.get(str(tag.gender), "m")
    plural = "Pltm" in tag and count_class(integer) == "one"
    return cardinal(integer, case, gender, plural=plural, animate=tag.animacy == "anim")


@functools.cache
def morph() -> MorphAnalyzer:
    """Return the shared pymorphy3 analyzer (imported and built on first use)."""
    import pymorphy3

    return pymorphy3.MorphAnalyzer()


@functools.lru_cache(maxsize=8192)
def noun_parses(word: str) -> tuple[Parse, ...]:
    """Return the noun readings of a lower-case word, most likely first.

    Words whose most likely reading is not a noun ("до" is also a musical
    note) give no readings, so they never drive agreement.
    """
    parses = morph().parse(word)
    if not parses or parses[0].tag.POS != "NOUN":
        return ()
    return tuple(p for p in parses if p.tag.POS == "NOUN")


@functools.lru_cache(maxsize=8192)
def _is_adjective(word: str) -> bool:
    """Whether the most likely reading of a word is an adjective or participle."""
    parses = morph().parse(word)
    return bool(parses) and parses[0].tag.POS in ("ADJF", "PRTF")


def prev_word(text: str, pos: int) -> str | None:
    """Return the lower-case word right before ``pos`` (stress marks removed), if any."""
    match = _PREV_WORD_RE.search(text[max(0, pos - 40) : pos])
    return match.group(1).replace("+", "").lower() if match else None


def next_word_span(text: str, pos: int) -> tuple[int, int] | None:
    """Return the span of the word right after ``pos`` (whitespace allowed between)."""
    match = _NEXT_WORDS_RE.match(text, pos)
    return match.span(1) if match else None


def noun_after(text: str, pos: int) -> tuple[Parse, ...]:
    """Noun readings of the word after ``pos``, looking past one adjective."""
    match = _NEXT_WORDS_RE.match(text, pos)
    if match is None:
        return ()
    first = match.group(1).replace("+", "").lower()
    second = match.group(2)
    if second is not None and _is_adjective(first):
        return noun_parses(second.replace("+", "").lower())
    return noun_parses(first)


def noun_form(count: Count, case: Case) -> tuple[Case, bool]:
    """Case and plurality of a noun counted by a number of class ``count`` in ``case``.

    In the nominative and accusative the number governs the noun (2 -> genitive
    singular, 5 -> genitive plural); in oblique cases the noun takes the case.
    """
    if count == "frac":
        return "g", False
    if case in ("n", "a"):
        if count == "one":
            return case, False
        return "g", count == "many"
    return case, count != "one"


def agrees_case(parse: Parse, case: Case) -> bool:
    """Whether a pymorphy3 reading is in the given case."""
    return parse.tag.case in _CASE_GRAMMEMES[case]


def agrees(parse: Parse, count: Count, case: Case) -> bool:
    """Whether a noun parse is the form a number of class ``count`` in ``case`` requires."""
    want_case, plural = noun_form(count, case)
    tag = parse.tag
    if not agrees_case(parse, want_case):
        return False
    if "Pltm" in tag or "Fixd" in tag:
        return True
    return (tag.number == "plur") == plural


@functools.lru_cache(maxsize=4096)
def governed_cases(word: str | None) -> tuple[Case, ...] | None:
    """Cases a preceding word imposes on a number: a preposition's, or the genitive after
    a comparative ("длиннее 500 километров" -> "пятисот"); None when it imposes none."""
    if not word:
        return None
    if word in PREP_CASES:
        return PREP_CASES[word]
    parses = morph().parse(word)
    return ("g",) if parses and "COMP" in parses[0].tag else None


def agreement(
    count: Count, prep: str | None, parses: tuple[Parse, ...]
) -> tuple[Case, Parse | None]:
    """Choose the case of a number from its preposition and the noun after it.

    With a known preposition the first of its cases that the noun agrees with
    wins (its first case if none does). Without one, the nominative or
    accusative is taken when the noun fits; an oblique case only when every
    reading of the noun is in it; otherwise the nominative.

    Returns:
        The case and the agreeing noun reading (None when no reading agrees).
    """
    cases = governed_cases(prep)
    if cases is not None:
        for case in cases:
            for parse in parses:
                if agrees(parse, count, case):
                    return case, parse
        return cases[0], None
    for case in ("n", "a"):
        for parse in parses:
            if agrees(parse, count, case):
                return case, parse
    for case in ("d", "i", "p"):
        if parses and all(agrees(p, count, case) for p in parses):
            return case, parses[0]
    return "n", None


@functools.lru_cache(maxsize=1024)
def inflect_noun(lemma: str, case: Case, plural: bool) -> str:
    """Inflect a dictionary noun ("рубль") into a case and number ("рублей")."""
    parses = noun_parses(lemma)
    if not parses:
        return lemma
    form = parses[0].inflect({_INFLECT_CASE[case], "plur" if plural else "sing"})
    return str(form.word) if form is not None else lemma


@functools.lru_cache(maxsize=1024)
def lemma_parse(lemma: str) -> Parse | None:
    """The first noun reading of a dictionary noun, or None if it is unknown."""
    parses = noun_parses(lemma)
    return parses[0] if parses else None


def counted_noun(lemma: str, count: Count, case: Case) -> str:
    """Form of the noun ``lemma`` counted by a number ("5", "рубль" -> "рублей")."""
    want_case, plural = noun_form(count, case)
    return inflect_noun(lemma, want_case, plural)


def reinflect(word: str, count: Count, case: Case) -> str:
    """Put an inflected noun into the form a number requires, if it is not already.

    Words with stress marks or without a noun reading are returned unchanged.
    """
    if "+" in word:
        return word
    parses = noun_parses(word.lower())
    if not parses or any(agrees(p, count, case) for p in parses):
        return word
    want_case, plural = noun_form(count, case)
    form = parses[0].inflect({_INFLECT_CASE[want_case], "plur" if plural else "sing"})
    return str(form.word) if form is not None else word


def suffixed(digits: str, suffix: str, prep: str | None, parses: tuple[Parse, ...]) -> str | None:
    """Say a number written with a hyphenated ending.

    The ending picks the form: an ordinal whose case/gender/number ends with it
    ("5-й" -> "пятый", "2-го" -> "второго"), a cardinal for endings like "-х",
    "-ти" ("2-х" -> "двух"), or a compound adjective ("5-летний" ->
    "пятилетний"). Among several fitting forms the preposition ``prep`` and
    the noun readings ``parses`` after the number decide.

    Returns:
        The words, or None if the ending fits no form.
    """
    if len(digits) > 9:
        return None
    allowed = PREP_CASES.get(prep or "", CASES)
    cardinals = [
        (case, gender)
        for case in sorted(CASES, key=lambda c: c not in allowed)
        for gender in ("m", "f")
        if cardinal(digits, case, gender).endswith(suffix)
    ]
    variants = sorted(
        (v for v in _ORDINAL_VARIANTS if ordinal(digits, *v).endswith(suffix)),
        key=lambda v: v[0] not in allowed,
    )
    if cardinals and (suffix in _CARDINAL_SUFFIXES or not variants):
        return cardinal(digits, *cardinals[0])
    if not variants:
        return compound_prefix(digits) + suffix if len(suffix) > 3 else None
    for variant in variants:
        if any(_ordinal_agrees(p, *variant) for p in parses):
            return ordinal(digits, *variant)
    if suffix == "е" and int(digits) % 10 == 0 and int(digits) >= 20:
        variants = [v for v in variants if v[2]] or variants  # "90-е" -> "девяностые"
    return ordinal(digits, *variants[0])


def _ordinal_agrees(parse: Parse, case: Case, gender: Gender, plural: bool) -> bool:
    """Whether a noun reading agrees with an ordinal of the given case, gender, number."""
    tag = parse.tag
    if not agrees_case(parse, case):
        return False
    if plural or "Pltm" in tag:
        return plural and (tag.number == "plur" or "Fixd" in tag)
    return tag.number == "sing" and GENDERS.get(str(tag.gender)) == gender


def compound_prefix(digits: str) -> str:
    """First part of a compound word: "5" -> "пяти" (пятилетний), "21" -> "двадцатиодно"."""
    value = int(digits)
    parts = [value // 100 * 100, value % 100] if 10 <= value % 100 <= 19 else [
        value // 100 * 100, value % 100 // 10 * 10, value % 10
    ]  # fmt: skip
    words = [_COMPOUND_PARTS.get(p) or cardinal(str(p), "g") for p in parts if p]
    return "".join(words).replace(" ", "") or "нуль"


def date_case(prep: str | None, default: Case) -> Case:
    """Case of a date or year after the preposition ``prep``."""
    cases = PREP_CASES.get(prep or "")
    if cases is None:
        return default
    return _DATE_CASE_OVERRIDES.get(prep or "", cases[0])
