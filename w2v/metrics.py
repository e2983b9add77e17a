"""WER and CER from corpus-level edit counts (jiwer), which add up exactly across batches and ranks.

Averaging per-utterance WERs, or per-batch WERs, weights short utterances too much; summing the
edit operations and the reference lengths, then dividing once, is the standard corpus WER.

Every utterance counts. A reference that normalises to nothing (a transcript such as "?!") has no
words for the hypothesis to match: each hypothesis word is an insertion, each character a character
insertion, and the utterance is counted in `empty_references` as well.
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
    empty_references: int = 0

    @classmethod
    def of(cls, refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
        if len(refs) != len(hyps):
            raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
        pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
        counts = cls(utterances=len(refs), empty_references=len(refs) - len(pairs))
        for ref, hyp in zip(refs, hyps, strict=True):
            if not ref.strip():  # nothing to match: the whole hypothesis is insertions
                counts.word_edits += len(hyp.split())
                counts.char_edits += len(" ".join(hyp.split()))
        if pairs:
            words = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
            chars = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
            counts.word_edits += words.substitutions + words.deletions + words.insertions
            counts.words = words.substitutions + words.deletions + words.hits
            counts.char_edits += chars.substitutions + chars.deletions + chars.insertions
            counts.chars = chars.substitutions + chars.deletions + chars.hits
        return counts

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True)))

    def as_list(self) -> list[int]:
        return [self.word_edits, self.words, self.char_edits, self.chars, self.utterances, self.empty_references]

    @property
    def wer(self) -> float:
        return self.word_edits / self.words if self.words else float("nan")

    @property
    def cer(self) -> float:
        return self.char_edits / self.chars if self.chars else float("nan")
