"""WER and CER from corpus-level edit counts (jiwer), which add up exactly across batches and ranks.

Averaging per-utterance WERs, or per-batch WERs, weights short utterances too much; summing the
edit operations and the reference lengths, then dividing once, is the standard corpus WER.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer


@dataclass
class ErrorCounts:
    word_edits: int = 0
    words: int = 0
    char_edits: int = 0
    chars: int = 0
    utterances: int = 0

    @classmethod
    def of(cls, refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
        if not refs:
            return cls()
        if any(not r.strip() for r in refs):
            raise ValueError("empty reference transcript: WER is undefined for it")
        words = jiwer.process_words(list(refs), list(hyps))
        chars = jiwer.process_characters(list(refs), list(hyps))
        return cls(words.substitutions + words.deletions + words.insertions,
                   words.substitutions + words.deletions + words.hits,
                   chars.substitutions + chars.deletions + chars.insertions,
                   chars.substitutions + chars.deletions + chars.hits, len(refs))

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True)))

    def as_list(self) -> list[int]:
        return [self.word_edits, self.words, self.char_edits, self.chars, self.utterances]

    @property
    def wer(self) -> float:
        return self.word_edits / self.words if self.words else float("nan")

    @property
    def cer(self) -> float:
        return self.char_edits / self.chars if self.chars else float("nan")
