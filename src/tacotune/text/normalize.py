"""Russian text normalization: raw text -> lower-case spoken form.

The output is ready for stress marking: numbers, units, abbreviations and
symbols are spelled out, punctuation is unified to the model's symbol set
(``. , ! ? : ; — … « » " ( ) -``), whitespace is collapsed and everything is
lower-cased. Stress marks already in the text (``+`` before a vowel) survive.

Anything not recognised passes through unchanged (lower-cased): the caller
reports characters outside the symbol table, so nothing is ever dropped here.

Readings a reviewer may want to know about:

* A number range without a preposition reads "от A до B" with the noun in
  the genitive ("2-3 дня" -> "от двух до трёх дней"); after a preposition
  both ends take its case, joined by a dash ("в 2-3 раза" -> "в два — три
  раза"). Two years, or a day range before a month, read as ordinals.
* A day before a month name defaults to the genitive ("12 мая" ->
  "двенадцатого мая"), as in running text; prepositions override it.
* "г." after a 4-digit number (1000-2100), or after a 3-digit number that
  follows a preposition, is "год"; otherwise "г" is "грамм".
* Groups of three digits after a space join into one number ("1 000 000").
* Three or more numbers joined by periods that are no real date ("45.13.2020",
  "31.02.2021", a version "1.2.3", an address "192.168.0.1") are read number by
  number with "точка" between them: "сорок пять точка тринадцать точка две тысячи
  двадцать", as the digits are read aloud; never as a date or a decimal fraction.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable
from typing import Literal

from tacotune.text import numbers as num
from tacotune.text.numbers import Case

Handler = Callable[[re.Match[str]], tuple[str, int]]

# A dash opening a line (dialogue), unless it is a minus sign right before a digit.
_LINE_DASH_RE = re.compile(r"^[^\S\n]*(?:--?|[–—‒―])(?![\d-])[^\S\n]*", re.MULTILINE)
# Any run of whitespace (tabs, newlines, NBSP, thin spaces).
_SPACE_RE = re.compile(r"\s+")
# What follows the end of a sentence: the end of the text or a capitalised word.
_SENTENCE_END_RE = re.compile(r"\s*$|\s+[«\"“„(]?[A-ZА-ЯЁ]")

# Abbreviations read as fixed phrases; each consumes its final period.
_ABBREVIATIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "т.е." / "т. е."
    (re.compile(r"(?<![а-яё])т\.\s?е\.", re.IGNORECASE), "то есть"),
    # "т.д." ("и т.д.")
    (re.compile(r"(?<![а-яё])т\.\s?д\.", re.IGNORECASE), "так далее"),
    # "т.п." ("и т.п.")
    (re.compile(r"(?<![а-яё])т\.\s?п\.", re.IGNORECASE), "тому подобное"),
    # "т.к."
    (re.compile(r"(?<![а-яё])т\.\s?к\.", re.IGNORECASE), "так как"),
    # "т.ч." ("в т.ч.")
    (re.compile(r"(?<![а-яё])т\.\s?ч\.", re.IGNORECASE), "том числе"),
    # "и др."
    (re.compile(r"(?<![а-яё])(?<=и )др\.", re.IGNORECASE), "другие"),
    # "и пр."
    (re.compile(r"(?<![а-яё])(?<=и )пр\.", re.IGNORECASE), "прочее"),
    # "г." before a capitalised name and not after a number: "г. Москва"
    (re.compile(r"(?<![а-яёА-ЯЁ\d])(?<!\d )г\.\s?(?=[А-ЯЁ])"), "город "),
)

# "+" between two numbers ("2+2", "2 + 2").
_PLUS_RE = re.compile(r"(?<=\d)\s*\+\s*(?=\d)")
# "+" opening a number at word start ("+5", "+7 999").
_SIGN_PLUS_RE = re.compile(r"(?<![^\s(\[«])\+(?=\d)")
# U+2212 between numbers, or a hyphen/en dash between numbers of an equation ("5 - 3 = 2").
_MINUS_RE = re.compile(r"(?<=\d)\s*(?:−|[-–](?=\s*\d+(?:[.,]\d+)?\s*=))\s*(?=\d)")
# Digits grouped by spaces into thousands ("1 000 000"; NBSP is a space by now).
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?!\d)")
# A currency sign before a number ("$5", "€ 10 млн"): it is moved after the number.
_CURRENCY_FIRST_RE = re.compile(
    r"(?P<cur>[$€£₽])\s?(?P<num>\d+(?:[.,]\d+)?)(?P<mult>\s?(?:тыс|млн|млрд|трлн)\.?(?![а-яё]))?",
    re.IGNORECASE,
)


def _alternation(keys: tuple[str, ...] | list[str]) -> str:
    """Regex alternation of literal keys, longest first."""
    return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))


# A unit after a number: a multiplier with a currency ("млн руб.") or any single unit;
# a letter unit may take an abbreviation period.
_UNIT = (
    rf"(?:(?P<mult>{_alternation(num.MULTIPLIERS)})\.?\s?(?P<cur>{_alternation(num.CURRENCIES)})"
    rf"|(?P<unit>{_alternation(list(num.UNITS))}))(?P<dot>(?<=[а-яё])\.)?(?![а-яёa-z-])"
)
# A number: integer digits and an optional decimal fraction (not a dotted chain "1.2.3").
_NUM = r"(?P<int>\d+)(?:[.,](?P<frac>\d+)(?![.,]?\d))?"
# A number with an optional minus at word start and an optional unit after it.
_QUANTITY_RE = re.compile(
    rf"(?:(?<![^\s(\[«„“\x22])(?P<sign>[-−]))?{_NUM}(?:\s?{_UNIT})?", re.IGNORECASE
)
# Two numbers joined by a dash ("5-10", "5 – 10 км"), not part of a longer chain.
_RANGE_RE = re.compile(
    r"(?<![\d.,:\-–—‒−])(?P<a>\d+(?:[.,]\d+)?)\s*[-–—‒]\s*(?P<b>\d+(?:[.,]\d+)?)"
    rf"(?![.,]?\d)(?!\s*[-–—‒]\s*\d)(?:\s?{_UNIT})?",
    re.IGNORECASE,
)
# A number with a hyphenated ending ("5-й", "2-го", "1990-х", "5-ти", "5-летний").
_ORDINAL_RE = re.compile(r"(?<![\d.,])(?P<num>\d+)-(?P<suf>[а-яё]+)(?![а-яё-])", re.IGNORECASE)
# A year or a range of years with "г."/"гг." or a form of "год" ("2024 г.", "в 2024 году").
_YEAR_RE = re.compile(
    r"(?<![\d.,])(?P<a>\d{3,4})(?:\s*[-–—‒]\s*(?P<b>\d{3,4}))?\s?"
    r"(?:(?P<abbr>гг?(?P<dot>\.)?)|(?P<word>год(?:ами|ом|ах|ам|ов|а|у|е|ы)?))(?![а-яё])",
    re.IGNORECASE,
)
# A numeric date dd.mm.yyyy, optionally followed by "г." or "года".
_DATE_RE = re.compile(
    r"(?<![\d.,])(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4})(?![.,]?\d)"
    r"(?P<tail>\s?г\.|\s+года(?![а-яё]))?",
    re.IGNORECASE,
)
# Three or more numbers joined by periods ("1.2.3", "192.168.0.1", an impossible date).
_DOTTED_RE = re.compile(r"(?<![\d.,])\d+(?:\.\d+){2,}(?![.,]?\d)")
# A clock time hh:mm or hh:mm:ss.
_TIME_RE = re.compile(
    r"(?<![\d:.,])(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d))?(?![\d:])"
)
# A day of the month (or a range of days) right before a month name ("12 мая", "5-10 мая").
_DAY_MONTH_RE = re.compile(
    rf"(?<![\d.,\-–—])(?P<a>\d{{1,2}})(?:\s*[-–—‒]\s*(?P<b>\d{{1,2}}))?\s(?P<month>{'|'.join(num.MONTHS)})(?![а-яё])",
    re.IGNORECASE,
)

# Three or more periods.
_ELLIPSIS_RE = re.compile(r"\.{3,}")
# A hyphen (or two) standing alone between spaces, or two or more hyphens anywhere.
_HYPHEN_DASH_RE = re.compile(r"(?<!\S)--?(?!\S)|-{2,}")
# Any dash other than the hyphen, with the whitespace around it.
_DASH_RE = re.compile(r"\s*[—–‒―]\s*")
# A pair of straight double quotes.
_STRAIGHT_QUOTES_RE = re.compile(r'"([^"]*)"')
# A pair of straight single quotes around text, not apostrophes inside words.
_SINGLE_QUOTES_RE = re.compile(r"(?<!\w)'([^'\n]+?)'(?!\w)")
# A pair of typographic single quotes (‘…’, ‚…‘).
_CURLY_SINGLE_RE = re.compile(r"[‘‚]([^‘’‚\n]*)[’‘]")
# Any typographic double quote; opening or closing is decided by what precedes it.
_CURLY_DOUBLE_RE = re.compile(r"[“”„‟]")
# Characters after which a double quote opens a quotation.
_QUOTE_OPENERS = frozenset("([«—–-")
# Single guillemets and square brackets mapped to the symbols the model knows.
_PUNCT_TABLE = str.maketrans({"‹": "«", "›": "»", "[": "(", "]": ")"})

# Symbols read as words: "&", "=", "№".
_SYMBOLS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\s*&\s*"), " и "),
    (re.compile(r"\s*=\s*"), " равно "),
    (re.compile(r"\s*№\s*"), " номер "),
)
# A "+" standing alone between spaces (not a stress mark): arithmetic.
_LONE_PLUS_RE = re.compile(r"(?<!\S)\+(?!\S)")

# Russian names of the English letters.
_LATIN_NAMES = {
    "a": "эй", "b": "би", "c": "си", "d": "ди", "e": "и", "f": "эф", "g": "джи", "h": "эйч",
    "i": "ай", "j": "джей", "k": "кей", "l": "эл", "m": "эм", "n": "эн", "o": "оу", "p": "пи",
    "q": "кью", "r": "ар", "s": "эс", "t": "ти", "u": "ю", "v": "ви", "w": "дабл-ю", "x": "экс",
    "y": "уай", "z": "зи",
}  # fmt: skip
# Latin words read as words rather than letter by letter.
_LATIN_WORDS = {"wi-fi": "вай-фай", "wifi": "вай-фай"}
# A known Latin word, or any run of (lower-case) Latin letters.
_LATIN_RE = re.compile(r"(?<![a-z])wi-?fi(?![a-z])|[a-z]+")


def normalize_text(text: str, latin: Literal["spell", "report"] = "spell") -> str:
    """Raw Russian text -> lower-case spoken form, ready for stress marking.

    Args:
        text: Raw text; a ``+`` right before a vowel is a stress mark and is kept.
        latin: "spell" reads Latin letters by their Russian names ("usb" -> "ю эс
            би"); "report" leaves them (lower-cased) for the caller to report.

    Returns:
        The normalized text.

    Raises:
        ValueError: If ``latin`` is neither "spell" nor "report".
    """
    if latin not in ("spell", "report"):
        raise ValueError(f"latin must be 'spell' or 'report', not {latin!r}")
    text = unicodedata.normalize("NFC", text)
    text = _LINE_DASH_RE.sub("— ", text)
    text = _SPACE_RE.sub(" ", text).strip()
    for pattern, phrase in _ABBREVIATIONS:
        text = _rewrite(pattern, text, _phrase_handler(phrase))
    text = _expand_numbers(text)
    for pattern, words in _SYMBOLS:
        text = pattern.sub(words, text)
    text = _LONE_PLUS_RE.sub("плюс", _unify_punctuation(text)).lower()
    if latin == "spell":
        text = _rewrite(_LATIN_RE, text, _latin_words)
    return _SPACE_RE.sub(" ", text).strip()


def _rewrite(pattern: re.Pattern[str], text: str, handler: Handler) -> str:
    """Replace each match of ``pattern`` by what ``handler`` says.

    The handler gets the match (its ``string`` is the whole text, for context)
    and returns the replacement and the index where it ends, so that it may
    also consume words after the match. Words glued to letters get a space.
    """
    parts: list[str] = []
    pos = 0
    for match in pattern.finditer(text):
        start = match.start()
        if start < pos:
            continue
        words, end = handler(match)
        if words != text[start:end]:
            if words[:1].isalnum() and start > 0 and text[start - 1].isalnum():
                words = " " + words
            if words[-1:].isalnum() and end < len(text) and text[end].isalnum():
                words += " "
        parts.append(text[pos:start])
        parts.append(words)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _keep(match: re.Match[str], end: int) -> tuple[str, int]:
    """Handler result that leaves the text of ``match`` up to ``end`` unchanged."""
    return match.string[match.start() : end], end


def _ends_sentence(text: str, pos: int) -> bool:
    """Whether the text at ``pos`` starts a new sentence (or ends)."""
    return _SENTENCE_END_RE.match(text, pos) is not None


def _period(match: re.Match[str], consumed: bool) -> str:
    """A period to put back if ``match`` consumed one that also ended the sentence."""
    return "." if consumed and _ends_sentence(match.string, match.end()) else ""


def _phrase_handler(phrase: str) -> Handler:
    """Handler replacing an abbreviation by ``phrase``, keeping a sentence-final period."""

    def handle(match: re.Match[str]) -> tuple[str, int]:
        return phrase + _period(match, True), match.end()

    return handle


def _expand_numbers(text: str) -> str:
    """Spell out every run of ASCII digits, with agreement where it is reliable."""
    text = _PLUS_RE.sub(" плюс ", text)
    text = _SIGN_PLUS_RE.sub("плюс ", text)
    text = _MINUS_RE.sub(" минус ", text)
    text = _THOUSANDS_RE.sub(lambda m: m.group(0).replace(" ", ""), text)
    text = _CURRENCY_FIRST_RE.sub(
        lambda m: f"{m.group('num')}{m.group('mult') or ''} {m.group('cur')}", text
    )
    passes: tuple[tuple[re.Pattern[str], Handler], ...] = (
        (_DATE_RE, _date_words),
        (_DOTTED_RE, _dotted_words),
        (_TIME_RE, _time_words),
        (_YEAR_RE, _year_words),
        (_DAY_MONTH_RE, _day_month_words),
        (_ORDINAL_RE, _ordinal_words),
        (_RANGE_RE, _range_words),
        (_QUANTITY_RE, _quantity_words),
    )
    for pattern, handler in passes:
        text = _rewrite(pattern, text, handler)
    return text


def _date_words(match: re.Match[str]) -> tuple[str, int]:
    """ "12.05.2024" -> "двенадцатого мая две тысячи двадцать четвёртого года"."""
    day, month = int(match.group("d")), int(match.group("m"))
    try:
        datetime.date(int(match.group("y")), month, day)
    except ValueError:  # no such day ("45.13.2020", "31.02.2021"): _dotted_words reads it
        return _keep(match, match.end("y"))
    case = num.date_case(num.prev_word(match.string, match.start()), "g")
    tail = match.group("tail") or ""
    words = (
        f"{num.ordinal(str(day), case, 'n')} {num.MONTHS[month - 1]} "
        f"{num.ordinal(match.group('y'), 'g')} года"
    )
    return words + _period(match, tail.endswith(".")), match.end()


def _dotted_words(match: re.Match[str]) -> tuple[str, int]:
    """ "45.13.2020" -> "сорок пять точка тринадцать точка две тысячи двадцать"."""
    return " точка ".join(num.cardinal(p) for p in match.group().split(".")), match.end()


def _time_words(match: re.Match[str]) -> tuple[str, int]:
    """ "10:30" -> "десять тридцать", "10:05" -> "десять ноль пять"."""
    parts = [p for p in match.group("h", "m", "s") if p is not None]
    return " ".join(num.cardinal(p) for p in parts), match.end()


def _is_year(digits: str, match: re.Match[str], prep: str | None) -> bool:
    """Whether a number before "г."/"год" is a year rather than grams or a count."""
    value = int(digits)
    if match.group("word") is not None:
        return 1000 <= value <= 2100 or match.group("word").lower() in ("году", "годом", "годе")
    if match.group("dot") is None and prep not in num.PREP_CASES:
        return False  # "1500 г муки": grams
    return value <= 2100 and (value >= 1000 or prep in num.PREP_CASES)


def _year_words(match: re.Match[str]) -> tuple[str, int]:
    """ "в 2024 г." -> "в две тысячи двадцать четвёртом году"; ranges join with a dash."""
    text = match.string
    first, second = match.group("a", "b")
    prep = num.prev_word(text, match.start())
    if not all(_is_year(d, match, prep) for d in (first, second) if d is not None):
        return _keep(match, match.end("a"))
    word = match.group("word")
    if word is not None:
        case = num.YEAR_WORD_CASES[word.lower()]
        if case == "p" and num.PREP_CASES.get(prep or "") == ("d",):
            case = "d"
        tail = word
    else:
        default: Case = "g" if prep in num.MONTHS else "n"
        case = num.date_case(prep, default)
        plural = second is not None or match.group("abbr").lower().startswith("гг")
        tail = (num.YEAR_PLUR if plural else num.YEAR_SING)[case]
        tail += _period(match, match.group("dot") is not None)
    words = num.ordinal(first, case)
    if second is not None:
        words += " — " + num.ordinal(second, case)
    return f"{words} {tail}", match.end()


def _day_month_words(match: re.Match[str]) -> tuple[str, int]:
    """ "12 мая" -> "двенадцатого мая"; "5-10 мая" -> "с пятого по десятое мая"."""
    first, second = match.group("a", "b")
    if not all(1 <= int(d) <= 31 for d in (first, second) if d is not None):
        return _keep(match, match.end("a"))
    month = match.group("month")
    if second is not None:
        days = f"с {num.ordinal(first, 'g', 'n')} по {num.ordinal(second, 'a', 'n')}"
        return f"{days} {month}", match.end()
    case = num.date_case(num.prev_word(match.string, match.start()), "g")
    return f"{num.ordinal(first, case, 'n')} {month}", match.end()


def _ordinal_words(match: re.Match[str]) -> tuple[str, int]:
    """ "5-й" -> "пятый", "в 2-х томах" -> "в двух томах", "5-летний" -> "пятилетний"."""
    text = match.string
    prep = num.prev_word(text, match.start())
    words = num.suffixed(
        match.group("num"), match.group("suf").lower(), prep, num.noun_after(text, match.end())
    )
    if words is None:
        return _keep(match, match.end("num"))
    return words, match.end()


def _unit_words(match: re.Match[str], count: num.Count, case: Case) -> tuple[str, num.Parse]:
    """The counted unit noun (with what follows it) and the reading it agrees with."""
    mult = match.group("mult")
    lemma, trailer = num.UNITS[(mult or match.group("unit")).lower()]
    words = [num.counted_noun(lemma, count, case)]
    if mult is not None:
        words.append(num.inflect_noun(num.UNITS[match.group("cur").lower()][0], "g", True))
    if trailer:
        words.append(trailer)
    text = " ".join(words) + _period(match, match.group("dot") is not None)
    return text, num.lemma_parse(lemma)


def _has_unit(match: re.Match[str]) -> bool:
    """Whether a quantity or range match includes a unit."""
    return match.group("unit") is not None or match.group("mult") is not None


def _split(number: str) -> tuple[str, str | None]:
    """Split "3,14" into ("3", "14"); "5" into ("5", None)."""
    integer, _, fraction = number.replace(",", ".").partition(".")
    return integer, fraction or None


def _range_words(match: re.Match[str]) -> tuple[str, int]:
    """ "5-10 лет" -> "от пяти до десяти лет"; "в 2-3 раза" -> "в два — три раза"."""
    text = match.string
    (a_int, a_frac), (b_int, b_frac) = _split(match.group("a")), _split(match.group("b"))
    prep = num.prev_word(text, match.start())
    cases = num.PREP_CASES.get(prep or "")
    count = num.count_class(b_int, b_frac is not None)
    plain = not _has_unit(match) and a_frac is None is b_frac and len(a_int) == len(b_int) == 4
    if plain and 1000 <= int(a_int) < int(b_int) <= 2100:
        case = num.date_case(prep, "n")
        return f"{num.ordinal(a_int, case)} — {num.ordinal(b_int, case)}", match.end()
    end = match.end()
    if _has_unit(match):
        case = cases[0] if cases else "g"
        noun, parse = _unit_words(match, count, case)
    elif cases:
        case, parse = num.agreement(count, prep, num.noun_after(text, end))
        noun = ""
    else:
        case, noun = "g", ""
        parses = num.noun_after(text, end)
        parse = parses[0] if parses else None
        span = num.next_word_span(text, end)
        if span is not None and num.noun_parses(text[span[0] : span[1]].lower()):
            noun, end = num.reinflect(text[span[0] : span[1]], count, "g"), span[1]
    first = num.say_number(a_int, a_frac, case, parse)
    second = num.say_number(b_int, b_frac, case, parse)
    words = f"{first} — {second}" if cases else f"от {first} до {second}"
    return f"{words} {noun}".rstrip(), end


def _quantity_words(match: re.Match[str]) -> tuple[str, int]:
    """A number with optional sign and unit: "до 5 лет" -> "до пяти лет", "5 км" -> ..."""
    text = match.string
    integer, fraction = match.group("int", "frac")
    sign = "минус " if match.group("sign") else ""
    prep = num.prev_word(text, match.start())
    count = num.count_class(integer, fraction is not None)
    if _has_unit(match):
        cases = num.governed_cases(prep)
        case: Case = cases[0] if cases else "n"
        noun, parse = _unit_words(match, count, case)
        return f"{sign}{num.say_number(integer, fraction, case, parse)} {noun}", match.end()
    parses = num.noun_after(text, match.end())
    year_like = len(integer) == 4 and 1000 <= int(integer) <= 2100
    if prep in ("в", "во") and year_like and not (sign or fraction or parses):
        # "в 2024" -> "в две тысячи двадцать четвёртом"
        return num.ordinal(integer, "p"), match.end()
    case, parse = num.agreement(count, prep, parses)
    return sign + num.say_number(integer, fraction, case, parse), match.end()


def _unify_punctuation(text: str) -> str:
    """Map quotes, dashes and ellipses to the symbols the model knows."""
    text = _ELLIPSIS_RE.sub("…", text)
    text = _DASH_RE.sub(" — ", text)
    text = _DASH_RE.sub(" — ", _HYPHEN_DASH_RE.sub("—", text))
    text = _STRAIGHT_QUOTES_RE.sub(r"«\1»", text)
    text = _SINGLE_QUOTES_RE.sub(r"«\1»", text)
    text = _CURLY_SINGLE_RE.sub(r"«\1»", text)
    text = _CURLY_DOUBLE_RE.sub(_curly_quote, text)
    return text.translate(_PUNCT_TABLE)


def _curly_quote(match: re.Match[str]) -> str:
    """« when a typographic double quote opens a quotation, » when it closes one."""
    start = match.start()
    before = match.string[start - 1] if start else " "
    return "«" if before.isspace() or before in _QUOTE_OPENERS else "»"


def _latin_words(match: re.Match[str]) -> tuple[str, int]:
    """Read a run of Latin letters by the Russian names of the English letters."""
    word = match.group(0)
    if word in _LATIN_WORDS:
        return _LATIN_WORDS[word], match.end()
    return " ".join(_LATIN_NAMES[c] for c in word), match.end()
