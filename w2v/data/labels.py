"""Labels from the columns: normalised texts per normaliser, label ids per vocabulary, cached.

Planning needs, per sample, whether CTC can fit its labels (labels plus repeats against the frames
the conv stack makes) and a batch needs the ids of its members. Both come from caches under the
index's `columns/` (w2v.data.columns): the texts normalised once per `TextNormalizer` (the only
per-text Python work, done once), then per vocabulary the ids of every character, mapped with one
table lookup over the whole corpus in numpy, and the minimum frames per sample.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from w2v.data.columns import ShardColumns, Strings, cached, map_array
from w2v.text import TextNormalizer, Vocabulary

_CHUNK_TEXTS = 200_000  # texts mapped at a time: bounds the UTF-32 buffers of the label build


def _digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def normalizer_settings(normalizer: TextNormalizer) -> dict:
    return {"nfkc": normalizer.nfkc, "lower": normalizer.lower, "upper": normalizer.upper,
            "chars_to_ignore": normalizer.chars_to_ignore, "replacements": [list(r) for r in normalizer.replacements]}


class NormalizedTexts:
    """The normalised texts of a columns store: UTF-8 `texts`, and `chars` offsets (in characters)."""

    def __init__(self, folder: Path):
        self.texts = Strings(map_array(folder / "texts.bin", "uint8"), map_array(folder / "byte_offsets.i8", "int64"))
        self.chars = map_array(folder / "char_offsets.i8", "int64")


def normalized(columns: ShardColumns, normalizer: TextNormalizer) -> NormalizedTexts:
    def build(tmp: Path) -> None:
        byte_lengths, char_lengths = [], []
        with open(tmp / "texts.bin", "wb") as out:
            for text in columns.texts:
                line = normalizer(text)
                data = line.encode("utf-8")
                out.write(data)
                byte_lengths.append(len(data))
                char_lengths.append(len(line))
        for name, lengths in (("byte_offsets.i8", byte_lengths), ("char_offsets.i8", char_lengths)):
            np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64).tofile(tmp / name)

    folder = columns.folder / f"normalized-{_digest(normalizer_settings(normalizer))}"
    return NormalizedTexts(cached(folder, build))


def char_counts(columns: ShardColumns, normalizer: TextNormalizer, first: int = 0, last: int | None = None) -> Counter:
    """Characters of the normalised texts of rows [first, last) with counts (what a vocabulary is
    built from), without the space."""
    texts = normalized(columns, normalizer).texts
    last = len(texts) if last is None else last
    counts: Counter = Counter()
    for start in range(first, last, _CHUNK_TEXTS):  # a C-speed count over a chunk's one string
        end = min(start + _CHUNK_TEXTS, last)
        counts.update(bytes(texts.data[texts.offsets[start]:texts.offsets[end]]).decode("utf-8"))
    counts.pop(" ", None)
    return counts


class Labels:
    """Label ids of every sample of a store (`ids[offsets[i]:offsets[i + 1]]`) and CTC's minimum
    frames per sample (`need`: one per label, plus a blank between equal neighbours)."""

    def __init__(self, folder: Path):
        self.ids = map_array(folder / "ids.u2", "uint16")
        self.offsets = map_array(folder / "offsets.i8", "int64")
        self.need = map_array(folder / "need.i8", "int64")

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[i]:self.offsets[i + 1]], dtype=np.int64)


def vocabulary_table(vocab: Vocabulary) -> np.ndarray:
    """id per Unicode code point: the vocabulary's characters, the space its word delimiter, the
    rest [UNK] (exactly Vocabulary.encode)."""
    table = np.full(0x110000, vocab.unk_id, dtype=np.int32)
    for token, i in vocab.tokens.items():
        if len(token) == 1:
            table[ord(token)] = i
    table[ord(" ")] = vocab.delimiter_id
    return table


def labels(columns: ShardColumns, vocab: Vocabulary) -> Labels:
    if len(vocab) > 1 << 16:
        raise ValueError(f"a vocabulary of {len(vocab)} tokens: the label cache holds ids below 65,536")
    texts = normalized(columns, vocab.normalizer)

    def build(tmp: Path) -> None:
        table = vocabulary_table(vocab)
        offsets = np.asarray(texts.chars)
        with open(tmp / "ids.u2", "wb") as out:
            for start in range(0, len(texts.texts), _CHUNK_TEXTS):
                end = min(start + _CHUNK_TEXTS, len(texts.texts))
                chunk = bytes(texts.texts.data[texts.texts.offsets[start]:texts.texts.offsets[end]]).decode("utf-8")
                points = np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)
                out.write(table[points].astype(np.uint16).tobytes())
        ids = map_array(tmp / "ids.u2", "uint16")
        equal = np.concatenate([[0], np.cumsum(ids[1:] == ids[:-1], dtype=np.int64)]) if len(ids) else np.zeros(1)
        starts, ends = offsets[:-1], offsets[1:]
        repeats = np.where(ends > starts, equal[np.maximum(ends - 1, 0)] - equal[np.minimum(starts, len(equal) - 1)], 0)
        (ends - starts + repeats).astype(np.int64).tofile(tmp / "need.i8")
        offsets.astype(np.int64).tofile(tmp / "offsets.i8")

    settings = {"tokens": vocab.tokens, "specials": [vocab.specials.pad, vocab.specials.unk, vocab.specials.delimiter],
                "normalizer": normalizer_settings(vocab.normalizer)}
    return Labels(cached(columns.folder / f"labels-{_digest(settings)}", build))
