"""Transcript normalisation and the character vocabulary, shared by training and the LM stage.

The same `TextNormalizer` turns shard transcripts into training labels and LM text, so the LM's
words are spelled exactly as the acoustic model learns to emit them.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"
# ASCII punctuation except the apostrophe, plus typographic quotes, dashes and symbols users meet
# in Common Voice. Apostrophes stay: "it's" and "its" are different words.
DEFAULT_CHARS_TO_IGNORE = "!\"#$%&()*+,./:;<=>?@[\\]^_`{|}~“”„‟‘‚«»‹›…¿¡·•–—�"
# Applied before lower-casing and removal: the typographic apostrophe becomes the ASCII one, and
# hyphens/dashes separate words ("twenty-two" → "twenty two", not "twentytwo").
DEFAULT_REPLACEMENTS = (("’", "'"), ("ʼ", "'"), ("`", "'"), ("-", " "), ("–", " "), ("—", " "))


@dataclass
class TextNormalizer:
    nfkc: bool = True
    lower: bool = True
    chars_to_ignore: str = DEFAULT_CHARS_TO_IGNORE
    replacements: Sequence[Sequence[str]] = field(default_factory=lambda: list(DEFAULT_REPLACEMENTS))

    def __post_init__(self) -> None:
        self._ignore = re.compile("[" + re.escape(self.chars_to_ignore) + "]") if self.chars_to_ignore else None

    SAVE_NAME = "text_normalizer.json"  # saved beside a model so evaluation normalises as training did

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TextNormalizer:
        """The normaliser a training config asks for: its `lower_case`, `chars_to_ignore` and
        `replacements` (unset ones keep the defaults). `cfg`: `TrainConfig.to_dict()` or the
        settings of a YAML config file."""
        settings = {"lower": cfg.get("lower_case"), "chars_to_ignore": cfg.get("chars_to_ignore"),
                    "replacements": cfg.get("replacements")}
        return cls(**{k: v for k, v in settings.items() if v is not None})

    def save(self, folder: str | Path) -> None:
        settings = {"nfkc": self.nfkc, "lower": self.lower, "chars_to_ignore": self.chars_to_ignore,
                    "replacements": [list(r) for r in self.replacements]}
        (Path(folder) / self.SAVE_NAME).write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> TextNormalizer:
        """The normaliser saved with a model; the defaults when the folder has none."""
        path = Path(folder) / cls.SAVE_NAME
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else cls()

    def __call__(self, text: str) -> str:
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        for old, new in self.replacements:
            text = text.replace(old, new)
        if self.lower:
            text = text.lower()
        if self._ignore is not None:
            text = self._ignore.sub("", text)
        return " ".join(text.split())


class Vocabulary:
    """Characters → ids for CTC: `[PAD]` = 0 is the blank, `[UNK]` = 1, `|` separates words."""

    def __init__(self, tokens: dict[str, int], normalizer: TextNormalizer | None = None):
        self.tokens = tokens
        self.normalizer = normalizer or TextNormalizer()
        self.unk_id, self.pad_id = tokens[UNK], tokens[PAD]

    @classmethod
    def build(cls, texts: Iterable[str], normalizer: TextNormalizer | None = None) -> Vocabulary:
        normalizer = normalizer or TextNormalizer()
        chars = Counter()
        for text in texts:
            chars.update(normalizer(text))
        chars.pop(" ", None)
        tokens = {PAD: 0, UNK: 1, WORD_DELIMITER: 2}
        for ch in sorted(chars):
            if ch not in tokens:
                tokens[ch] = len(tokens)
        return cls(tokens, normalizer)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Normalise and map to ids; characters outside the vocabulary become [UNK]."""
        ids = []
        for ch in self.normalizer(text):
            if ch == " ":
                ids.append(self.tokens[WORD_DELIMITER])
            else:
                ids.append(self.tokens.get(ch, self.unk_id))
        return np.asarray(ids, dtype=np.int64)

    def unknown_chars(self, texts: Iterable[str]) -> Counter:
        """Characters of the normalised texts that are not in the vocabulary, with counts."""
        unknown: Counter = Counter()
        for text in texts:
            unknown.update(ch for ch in self.normalizer(text) if ch != " " and ch not in self.tokens)
        return unknown

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, normalizer: TextNormalizer | None = None) -> Vocabulary:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")), normalizer)
