"""Transcript normalisation and the character vocabulary, shared by training and the LM stage.

The same `TextNormalizer` turns shard transcripts into training labels and LM text, so the LM's
words are spelled exactly as the acoustic model learns to emit them.
"""

from __future__ import annotations

import dataclasses
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
    upper: bool = False  # for an upper-case vocabulary (facebook/wav2vec2-base-960h's): see for_vocabulary

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
        settings = {"nfkc": self.nfkc, "lower": self.lower, "upper": self.upper,
                    "chars_to_ignore": self.chars_to_ignore, "replacements": [list(r) for r in self.replacements]}
        (Path(folder) / self.SAVE_NAME).write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> TextNormalizer:
        """The normaliser saved with a model; the defaults when the folder has none."""
        path = Path(folder) / cls.SAVE_NAME
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else cls()

    def for_vocabulary(self, vocab: Vocabulary) -> TextNormalizer:
        """This normaliser with its case set to the vocabulary's: an upper-case vocabulary gets
        upper-cased text (not a stream of [UNK]), a lower-case one lower-cased text."""
        if vocab.case == "upper" and not self.upper:
            return dataclasses.replace(self, lower=False, upper=True)
        if vocab.case == "lower" and self.upper:
            return dataclasses.replace(self, lower=True, upper=False)
        return self

    def __call__(self, text: str) -> str:
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        for old, new in self.replacements:
            text = text.replace(old, new)
        if self.lower:
            text = text.lower()
        if self.upper:
            text = text.upper()
        if self._ignore is not None:
            text = self._ignore.sub("", text)
        return " ".join(text.split())


TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer_config.json", "special_tokens_map.json"


@dataclass(frozen=True)
class SpecialTokens:
    """The names of a CTC vocabulary's special tokens (Hugging Face's tokenizer files name them)."""

    pad: str = PAD  # the CTC blank
    unk: str = UNK
    delimiter: str = WORD_DELIMITER
    bos: str | None = None  # sentence markers some vocabularies hold (`<s>`, `</s>`): CTC never emits them
    eos: str | None = None

    @property
    def silent(self) -> set[str]:
        """Tokens that stand for no text in a transcript."""
        return {t for t in (self.pad, self.bos, self.eos) if t is not None}

    def tokenizer_names(self) -> dict[str, str]:
        """As Hugging Face's tokenizer files name them."""
        names = {"pad_token": self.pad, "unk_token": self.unk, "word_delimiter_token": self.delimiter,
                 "bos_token": self.bos, "eos_token": self.eos}
        return {k: v for k, v in names.items() if v is not None}

    @classmethod
    def beside(cls, vocab_file: str | Path) -> SpecialTokens:
        """The names given by `tokenizer_config.json` / `special_tokens_map.json` beside a vocab.json
        (the former wins), else ours."""
        names: dict[str, str] = {}
        for file_name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
            path = Path(vocab_file).with_name(file_name)
            if path.is_file():
                for key, value in json.loads(path.read_text(encoding="utf-8")).items():
                    value = value.get("content") if isinstance(value, dict) else value  # an AddedToken
                    if key.endswith("_token") and isinstance(value, str):
                        names[key] = value
        return cls(names.get("pad_token", PAD), names.get("unk_token", UNK),
                   names.get("word_delimiter_token", WORD_DELIMITER), names.get("bos_token"), names.get("eos_token"))


class Vocabulary:
    """Characters → ids for CTC. Ours: `[PAD]` = 0 is the blank, `[UNK]` = 1, `|` separates words;
    a checkpoint's (`<pad>`, `<unk>`, `<s>`, `</s>`, …) is read with the names its tokenizer files give."""

    def __init__(self, tokens: dict[str, int], normalizer: TextNormalizer | None = None,
                 specials: SpecialTokens | None = None):
        self.tokens = tokens
        self.normalizer = normalizer or TextNormalizer()
        specials = specials or SpecialTokens()
        missing = [t for t in (specials.pad, specials.unk, specials.delimiter) if t not in tokens]
        if missing:
            raise ValueError(f"the vocabulary has no {', '.join(map(repr, missing))} (its blank, unknown and "
                             "word-delimiter tokens)")
        # bos/eos a tokenizer appends after the vocabulary (ours) are not in it: only those that are count
        self.specials = dataclasses.replace(specials, bos=specials.bos if specials.bos in tokens else None,
                                            eos=specials.eos if specials.eos in tokens else None)
        self.unk_id, self.pad_id = tokens[specials.unk], tokens[specials.pad]
        self.delimiter_id = tokens[specials.delimiter]

    @classmethod
    def build(cls, texts: Iterable[str], normalizer: TextNormalizer | None = None) -> Vocabulary:
        """Our vocabulary of the characters of the normalised texts: `[PAD]`, `[UNK]`, `|`, then sorted."""
        normalizer = normalizer or TextNormalizer()
        chars = Counter()
        for text in texts:
            chars.update(normalizer(text))
        return cls.from_counts(chars, normalizer)

    @classmethod
    def from_counts(cls, chars: Counter, normalizer: TextNormalizer | None = None) -> Vocabulary:
        """Ours, from the characters of the normalised texts (the space is the word delimiter)."""
        tokens = {PAD: 0, UNK: 1, WORD_DELIMITER: 2}
        for ch in sorted(set(chars) - {" "}):
            if ch not in tokens:
                tokens[ch] = len(tokens)
        return cls(tokens, normalizer)

    @property
    def case(self) -> str:
        """"upper" when the letters of the vocabulary are all upper-case, else "lower". Only its
        characters count: a multi-character token is a marker (`<s>`, `<unk>`), not text."""
        cased = [token for token in self.tokens if len(token) == 1 and token.lower() != token.upper()]
        return "upper" if cased and all(ch.isupper() for ch in cased) else "lower"

    def decoding_table(self) -> dict[int, str]:
        """id → the text it stands for in a transcript: the delimiter a space, the blank and
        tokens CTC never emits (bos/eos) nothing."""
        silent = self.specials.silent
        return {i: " " if t == self.specials.delimiter else "" if t in silent else t for t, i in self.tokens.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Normalise and map to ids; characters outside the vocabulary become [UNK]."""
        ids = []
        for ch in self.normalizer(text):
            if ch == " ":
                ids.append(self.delimiter_id)
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
        """vocab.json, and beside it the special tokens' names when they are not ours."""
        Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False, indent=1), encoding="utf-8")
        names = Path(path).with_name(TOKENIZER_CONFIG)
        if self.specials != SpecialTokens():
            settings = self.specials.tokenizer_names()
            names.write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")
        else:  # an earlier vocabulary's names must not be read with this one
            names.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, normalizer: TextNormalizer | None = None, lang: str | None = None) -> Vocabulary:
        """A vocab.json, with the special tokens its tokenizer files name (ours by default). An MMS
        vocab.json holds one vocabulary per language: `lang` picks one (a ValueError without it)."""
        tokens = json.loads(Path(path).read_text(encoding="utf-8"))
        if tokens and all(isinstance(v, dict) for v in tokens.values()):  # {language: {token: id}}
            if lang not in tokens:
                raise ValueError(f"{path}: one vocabulary per language; {'no ' + repr(lang) + ', ' if lang else ''}"
                                 f"pick one with --adapter_lang ({', '.join(sorted(tokens)[:20])}"
                                 f"{', …' if len(tokens) > 20 else ''})")
            tokens = tokens[lang]
        return cls(tokens, normalizer, SpecialTokens.beside(path))
