"""Raw Russian text -> symbol ids, with every intermediate stage kept for inspection.

    raw --convert_input_marks--> --normalize_text--> normalized --Stresser--> stressed --> ids

A character outside the symbol table is never dropped: it is reported with its
count and its positions in the text as the user wrote it, and the text has no ids
until it is fixed. One call reads at most MAX_TEXT_CHARACTERS; automatic stress
also bounds the length of a word (stress.MAX_STRESS_WORD_LETTERS).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tacotune.config.schema import TextConfig
from tacotune.errors import TextError, UnknownSymbolError
from tacotune.text.normalize import normalize_text
from tacotune.text.stress import Stresser, convert_input_marks, load_dictionary
from tacotune.text.symbols import EOS, EOS_ID, PAD, SYMBOL_TO_ID, SYMBOLS

# The longest text one call of `process` reads, in characters of the raw input: about four
# pages, or ten minutes of speech. Every stage is linear below it (10,000 characters take
# well under a second); the bound keeps one request from taking unbounded time or memory.
MAX_TEXT_CHARACTERS = 10_000


@dataclass(frozen=True)
class UnknownCharacter:
    """A character the model cannot read: how often, and where it stands."""

    char: str  # as the frontend outputs it (lower-case, composed)
    count: int  # occurrences in the model input
    # 0-based indices in the text as the user wrote it (by `process`; in the model input for
    # `find_unknown`); () when the character only appears after normalization
    positions: tuple[int, ...]

    def describe(self) -> str:
        """E.g. `'😀' (U+1F600) x2 at 4, 9`."""
        head = f"{self.char!r} (U+{ord(self.char):04X}) x{self.count}"
        if not self.positions:
            return f"{head} (produced by normalization, not in the text as written)"
        where = ", ".join(str(p) for p in self.positions[:10])
        more = " ..." if len(self.positions) > 10 else ""
        return f"{head} at {where}{more}"


@dataclass(frozen=True)
class ProcessedText:
    """Every stage of the frontend for one text."""

    raw: str
    normalized: str
    stressed: str  # the model input, before ids
    ids: tuple[int, ...] | None  # None when `unknown` is not empty
    unknown: tuple[UnknownCharacter, ...]
    stress_sources: Mapping[str, int] = field(default_factory=dict)

    def require_ids(self) -> tuple[int, ...]:
        """The ids, or UnknownSymbolError/TextError saying what prevents them."""
        if self.unknown:
            listed = "; ".join(u.describe() for u in self.unknown)
            raise UnknownSymbolError(
                f"text has characters outside the symbol table: {listed}. "
                f"Normalized text: {self.stressed!r}. Remove or spell them out."
            )
        if self.ids is None or len(self.ids) <= 1:
            raise TextError(f"text {self.raw!r} is empty after normalization")
        return self.ids


class TextFrontend:
    """The Russian frontend configured by a TextConfig (and an optional dictionary)."""

    def __init__(
        self,
        config: TextConfig,
        dictionary: Mapping[str, str] | None = None,
        stresser: Stresser | None = None,
    ) -> None:
        """Loads `config.stress_dictionary` unless a dictionary is given."""
        if dictionary is None:
            dictionary = (
                load_dictionary(config.stress_dictionary) if config.stress_dictionary else {}
            )
        self.config = config
        self.dictionary = dict(dictionary)
        self.stresser = stresser or Stresser(config.stress, self.dictionary)

    def process(self, raw: str) -> ProcessedText:
        """Run every stage and report unknown characters (located in `raw`).

        Raises TextError for a text longer than MAX_TEXT_CHARACTERS, StressError for a
        malformed stress mark or (automatic stress) a word beyond MAX_STRESS_WORD_LETTERS.
        """
        if len(raw) > MAX_TEXT_CHARACTERS:
            raise TextError(
                f"the text has {len(raw)} characters, more than the {MAX_TEXT_CHARACTERS} one "
                f"call reads (it starts {raw[:40]!r}); split it into paragraphs and pass each"
            )
        normalized = normalize_text(convert_input_marks(raw), latin=self.config.latin)
        stressed = self.stresser.apply(normalized)
        unknown = locate_in_input(find_unknown(stressed.text), raw)
        ids = None if unknown else (*(SYMBOL_TO_ID[c] for c in stressed.text), EOS_ID)
        return ProcessedText(raw, normalized, stressed.text, ids, unknown, dict(stressed.sources))

    def encode(self, raw: str) -> tuple[int, ...]:
        """Symbol ids ending in EOS; raises UnknownSymbolError/TextError."""
        return self.process(raw).require_ids()

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores so that synthesis reads text exactly like training."""
        return {
            "symbols": list(SYMBOLS),
            "stress": self.config.stress,
            "latin": self.config.latin,
            "dictionary": dict(self.dictionary),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TextFrontend:
        """Rebuild the frontend stored in a checkpoint; refuses a different symbol table."""
        if list(state["symbols"]) != list(SYMBOLS):
            raise TextError(
                "the checkpoint was trained with a different symbol table than this tacotune "
                "version has; use the tacotune version that trained it"
            )
        config = TextConfig(stress=state["stress"], latin=state["latin"])
        return cls(config, dictionary=state["dictionary"])


def find_unknown(text: str) -> tuple[UnknownCharacter, ...]:
    """Characters of `text` outside the symbol table, in order of first appearance."""
    positions: dict[str, list[int]] = {}
    for index, char in enumerate(text):
        if char not in SYMBOL_TO_ID or char in (PAD, EOS):
            positions.setdefault(char, []).append(index)
    return tuple(UnknownCharacter(c, len(p), tuple(p)) for c, p in positions.items())


def locate_in_input(
    unknown: tuple[UnknownCharacter, ...], raw: str
) -> tuple[UnknownCharacter, ...]:
    """`unknown` with positions in `raw`, the text as the user wrote it (one pass).

    Normalization keeps unknown characters but lower-cases and composes them, so a raw
    character matches when it is the character, its upper-case form, or a letter whose
    combining mark composes into it. The positions are every place `raw` has it.
    """
    found: dict[str, list[int]] = {u.char: [] for u in unknown}
    if not found:
        return unknown
    for index, char in enumerate(raw):
        composed = unicodedata.normalize("NFC", raw[index : index + 2]).lower()
        for form in {char, char.lower(), composed}:
            if form in found:
                found[form].append(index)
    return tuple(dataclasses.replace(u, positions=tuple(found[u.char])) for u in unknown)


def model_input_to_ids(text: str) -> tuple[int, ...]:
    """Ids of text that already went through the frontend (a manifest's or a split piece), + EOS."""
    unknown = find_unknown(text)
    if unknown:
        listed = "; ".join(u.describe() for u in unknown)
        raise UnknownSymbolError(
            f"model input {text[:60]!r} has characters outside the symbol table: {listed}"
        )
    return (*(SYMBOL_TO_ID[c] for c in text), EOS_ID)


def ids_to_text(ids: Iterable[int]) -> str:
    """Inverse of encoding: symbols for ids, without padding and end-of-sequence."""
    return "".join(SYMBOLS[i] for i in ids if SYMBOLS[i] not in (PAD, EOS))
