"""The one symbol table: every character the model can read, and its id.

Order matters: ids are stored in checkpoints, so symbols are only ever appended.
A checkpoint stores this list, and synthesis uses the list from the checkpoint.
"""

from __future__ import annotations

PAD = "_"  # id 0: padding, never produced by the frontend
EOS = "~"  # id 1: end of sequence, appended to every utterance
STRESS = "+"  # stands immediately BEFORE the stressed vowel: зам+ок
SPACE = " "
PUNCTUATION = '.,!?:;—…«»"()-'  # marks that change prosody
LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
VOWELS = "аеёиоуыэюя"

SYMBOLS: tuple[str, ...] = (PAD, EOS, SPACE, STRESS, *PUNCTUATION, *LETTERS)
SYMBOL_TO_ID: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}
PAD_ID = SYMBOL_TO_ID[PAD]
EOS_ID = SYMBOL_TO_ID[EOS]
