"""Stress marks: `+` immediately BEFORE the stressed vowel (`зам+ок`).

Sources, highest priority first:
1. marks the user wrote (`+`, or U+0301 / `'` after the vowel, converted by
   `convert_input_marks`);
2. a user dictionary of `word|w+ord` lines;
3. automatic accentuation with silero-stress (offline, MIT), which also restores ё.

Mode `auto` uses all three, `manual` the first two, `off` strips every mark.
Words with one vowel get no mark unless the user wrote one.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tacotune.errors import StressError
from tacotune.text.symbols import STRESS, VOWELS

log = logging.getLogger(__name__)

StressMode = Literal["auto", "manual", "off"]

_COMBINING_ACUTE = "\u0301"
_VOWEL_CLASS = VOWELS + VOWELS.upper()
# (decomposed text) a vowel, with the diaeresis of ё if any, then U+0301
_ACUTE_AFTER_VOWEL = re.compile(rf"([{_VOWEL_CLASS}]\u0308?){_COMBINING_ACUTE}")
# a vowel, then an apostrophe inside a word: за'мок
_APOSTROPHE_INSIDE = re.compile(rf"([{_VOWEL_CLASS}]\u0308?)'(?=[а-яА-Я])")
# a vowel, then an apostrophe ending a word: молоко'
_APOSTROPHE_AT_END = re.compile(rf"([{_VOWEL_CLASS}]\u0308?)'(?![а-яА-Я])")
# an apostrophe opening a quotation: 'слово' uses apostrophes as quotes, not stress marks
_OPENING_APOSTROPHE = re.compile(r"(?:^|[\s(«\"])'(?=\w)")
# a Cyrillic word, stress marks included; hyphens split words (кто-то = кто, то)
_WORD = re.compile(r"[а-яё+]+")
# a stress mark that does not stand before a vowel
_MISPLACED_MARK = re.compile(rf"\+(?![{VOWELS}])")
# The longest word (in letters) automatic stress accepts. silero-stress's time and memory grow
# with the square of a word's length (1,000 letters: 2.7 GB; 1,500: 7.6 GB and 102 s), while
# the longest Russian dictionary words have about 35 letters. A longer word is refused before
# silero-stress runs, not left unstressed: it is no speakable word, and refusing keeps one
# request from holding a server's memory.
MAX_STRESS_WORD_LETTERS = 64


def convert_input_marks(text: str) -> str:
    """Turn U+0301 and `'` written after a vowel into `+` before it: `за́мок` -> `з+амок`.

    The text is decomposed first so that a precomposed accented vowel is caught too,
    then recomposed (й and ё stay single characters). An apostrophe at the end of a
    word counts as a stress mark only if the text does not use apostrophes as quotes.
    """
    text = unicodedata.normalize("NFD", text)
    text = _ACUTE_AFTER_VOWEL.sub(lambda m: STRESS + m.group(1), text)
    text = _APOSTROPHE_INSIDE.sub(lambda m: STRESS + m.group(1), text)
    if not _OPENING_APOSTROPHE.search(text):
        text = _APOSTROPHE_AT_END.sub(lambda m: STRESS + m.group(1), text)
    return unicodedata.normalize("NFC", text)


def vowel_count(word: str) -> int:
    """Number of vowels in a lower-case word."""
    return sum(ch in VOWELS for ch in word)


def fold_yo(word: str) -> str:
    """The lookup form of a word: no stress marks, ё written as е."""
    return word.replace(STRESS, "").replace("ё", "е")


def check_marks(word: str) -> None:
    """Raise StressError if a `+` in the word does not stand right before a vowel."""
    if _MISPLACED_MARK.search(word) or "++" in word:
        raise StressError(
            f"stress mark misplaced in {word!r}: write '+' immediately before the stressed "
            "vowel, e.g. 'зам+ок'"
        )


def load_dictionary(path: str | Path) -> dict[str, str]:
    """Read `word|w+ord` lines (UTF-8, `#` comments) into {folded word: stressed word}.

    Every problem in the file is reported at once, with line numbers.
    """
    entries: dict[str, str] = {}
    problems: list[str] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise StressError(f"cannot read stress dictionary {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise StressError(
            f"stress dictionary {path} is not UTF-8 (byte {error.start}); re-save it as UTF-8"
        ) from error
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, sep, stressed = line.partition("|")
        word = word.strip().lower()
        stressed = convert_input_marks(stressed.strip().lower())
        if not sep or not word or not stressed:
            problems.append(f"line {number}: expected 'word|w+ord', found {line!r}")
        elif fold_yo(stressed) != fold_yo(word):
            problems.append(f"line {number}: {stressed!r} is not a stressed form of {word!r}")
        elif STRESS not in stressed and "ё" not in stressed:
            problems.append(f"line {number}: {stressed!r} has no '+' stress mark")
        else:
            try:
                check_marks(stressed)
            except StressError as error:
                problems.append(f"line {number}: {error}")
                continue
            entries[fold_yo(word)] = stressed
    if problems:
        raise StressError(f"stress dictionary {path} has errors:\n  " + "\n  ".join(problems))
    return entries


@dataclass(frozen=True)
class StressedText:
    """Text with stress marks, and how many words got their stress from each source."""

    text: str
    sources: Counter[str] = field(default_factory=Counter)  # manual/dictionary/auto/none


class Stresser:
    """Places stress marks according to the mode, a dictionary and silero-stress."""

    def __init__(
        self,
        mode: StressMode,
        dictionary: Mapping[str, str] | None = None,
        accentor: Callable[[str], str] | None = None,
    ) -> None:
        """`accentor` replaces silero-stress (tests); by default it is loaded on first use."""
        self.mode = mode
        self.dictionary = dict(dictionary or {})
        self._accentor = accentor

    def apply(self, text: str) -> StressedText:
        """Mark stress in lower-case normalized text."""
        words = list(_WORD.finditer(text))
        for match in words:
            check_marks(match.group())
        if self.mode == "off":
            return StressedText(text.replace(STRESS, ""), Counter(none=len(words)))
        automatic = None
        if self.mode == "auto":
            check_word_lengths(words)
            automatic = self._automatic(text, len(words))
        sources: Counter[str] = Counter()
        pieces, last = [], 0
        for index, match in enumerate(words):
            word = match.group()
            choice, source = self._choose(word, automatic[index] if automatic else None)
            sources[source] += 1
            pieces.append(text[last : match.start()] + choice)
            last = match.end()
        pieces.append(text[last:])
        return StressedText("".join(pieces), sources)

    def _choose(self, word: str, automatic: str | None) -> tuple[str, str]:
        if STRESS in word:
            return word, "manual"
        known = self.dictionary.get(fold_yo(word))
        if known is not None:
            return known, "dictionary"
        if automatic is not None and (STRESS in automatic or automatic != word):
            return automatic, "auto"
        return word, "none"

    def _automatic(self, text: str, n_words: int) -> list[str]:
        """silero-stress's reading of every word, aligned one-to-one with `_WORD` matches."""
        accentor = self._accentor or silero_accentor()
        clean = text.replace(STRESS, "")
        marked = accentor(clean)
        words_in = _WORD.findall(clean)
        words_out = _WORD.findall(marked)
        unmarked_out = [fold_yo(w) for w in words_out]
        if len(words_out) != n_words or unmarked_out != [fold_yo(w) for w in words_in]:
            raise StressError(
                "silero-stress changed the words of the text, so its stress cannot be used:\n"
                f"  input:  {clean!r}\n  output: {marked!r}\n"
                "Mark the stress yourself or set text.stress to 'manual'."
            )
        return words_out


def check_word_lengths(words: list[re.Match[str]]) -> None:
    """Raise StressError for the first word longer than MAX_STRESS_WORD_LETTERS."""
    for number, match in enumerate(words, start=1):
        word = match.group()
        letters = len(word) - word.count(STRESS)
        if letters > MAX_STRESS_WORD_LETTERS:
            raise StressError(
                f"word {number} of the normalized text ({word[:20] + '…'!r}) has {letters} "
                f"letters, more than the {MAX_STRESS_WORD_LETTERS} letters automatic stress "
                "accepts: split it with spaces or hyphens, or set text.stress to 'manual' or 'off'"
            )


@functools.cache
def silero_accentor() -> Callable[[str], str]:
    """Load silero-stress once per process (it ships its model in the wheel; ~3 s)."""
    import torch

    # silero_stress sets the thread count to 1 and switches autograd off globally when it
    # is imported and loaded: both are restored, or training after it silently breaks
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    try:
        from silero_stress import load_accentor

        model = load_accentor("ru")
    except ImportError as error:
        raise StressError(
            "automatic stress needs the silero-stress package: `pip install silero-stress`, "
            "or set text.stress to 'manual' (your marks and dictionary only) or 'off'"
        ) from error
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)

    def accent(text: str) -> str:
        with torch.inference_mode():
            return str(model(text, stress_single_vowel=False))

    return accent
