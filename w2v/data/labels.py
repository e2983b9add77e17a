"""Labels from the columns: normalised texts per normaliser, label ids per vocabulary, cached.

Planning needs, per sample, whether CTC can fit its labels (labels plus repeats against the frames
the conv stack makes) and a batch needs the ids of its members. Both come from caches under the
index's `columns/` (w2v.shards.columns): the texts normalised once per `TextNormalizer` (the only
per-text Python work, done once), then per vocabulary the ids of every character, mapped with one
table lookup over the whole corpus in numpy, and the minimum frames per sample.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from w2v.shards.columns import ShardColumns, Strings, cached, map_array
from w2v.shards.spec import SelectedShard
from w2v.text import TextNormalizer, Vocabulary

_CHUNK_TEXTS = 200_000  # texts per task of a cache build: bounds its buffers (tens of MB)
_MAX_PROCESSES = 16


CACHE_VERSION = 2  # part of every cache's name: a change of what a cache holds gets a new folder


def _digest(settings: dict) -> str:
    keyed = {"version": CACHE_VERSION, **settings}
    return hashlib.sha1(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def normalizer_settings(normalizer: TextNormalizer) -> dict:
    return {"nfkc": normalizer.nfkc, "lower": normalizer.lower, "upper": normalizer.upper,
            "chars_to_ignore": normalizer.chars_to_ignore, "replacements": [list(r) for r in normalizer.replacements]}


class NormalizedTexts:
    """The normalised texts of a columns store: UTF-8 `texts`, `chars` offsets (in characters),
    and `shard_counts`: per shard, its characters with their counts."""

    def __init__(self, folder: Path):
        self.texts = Strings(map_array(folder / "texts.bin", "uint8"), map_array(folder / "byte_offsets.i8", "int64"))
        self.chars = map_array(folder / "char_offsets.i8", "int64")
        self.folder = folder

    @property
    def shard_counts(self) -> list[dict[str, int]]:
        return json.loads((self.folder / "char_counts.json").read_text(encoding="utf-8"))


def _count_chars(points: np.ndarray, ends: np.ndarray) -> list[dict[str, int]]:
    """The count of each code point in points[ends[k - 1]:ends[k]], for each k (one bincount per
    shard: no per-character Python)."""
    out = []
    for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True):
        counts = np.bincount(points[a:b])
        present = np.flatnonzero(counts)
        out.append(dict(zip(map(chr, present.tolist()), counts[present].tolist(), strict=True)))
    return out


def _normalize_chunk(task: tuple[Path, TextNormalizer, int, int]) -> tuple[bytes, np.ndarray, np.ndarray, list]:
    """Shards p0 .. p1 - 1 of the columns in `folder`: their normalised texts (UTF-8, one after
    another), each text's length in bytes and in characters, and each shard's character counts."""
    folder, normalizer, p0, p1 = task
    columns = ShardColumns(folder)
    first, last = int(columns.starts[p0]), int(columns.starts[p1])
    lines = [normalizer(text) for text in columns.texts.slice(first, last)]
    joined = "".join(lines)
    chars = np.array([len(line) for line in lines], dtype=np.int64)
    data = joined.encode("utf-8")
    byte_lengths = np.array([len(line.encode("utf-8")) for line in lines], dtype=np.int64)
    # each shard's characters, counted now: a vocabulary is then built from them in no time
    points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    shard_ends = np.concatenate([[0], np.cumsum(chars)])[columns.starts[p0 + 1:p1 + 1] - first]
    return data, byte_lengths, chars, _count_chars(points, shard_ends)


def normalized(columns: ShardColumns, normalizer: TextNormalizer) -> NormalizedTexts:
    def build(tmp: Path) -> None:
        byte_lengths, char_lengths, shard_counts = [], [], []
        tasks = [(columns.folder, normalizer, p0, p1) for p0, p1 in _shard_chunks(columns)]
        with open(tmp / "texts.bin", "wb") as out:
            for data, in_bytes, in_chars, counts in _in_parallel(_normalize_chunk, tasks):
                out.write(data)
                byte_lengths.append(in_bytes)
                char_lengths.append(in_chars)
                shard_counts += counts
        for name, lengths in (("byte_offsets.i8", byte_lengths), ("char_offsets.i8", char_lengths)):
            np.concatenate([[0], np.cumsum(np.concatenate(lengths or [np.zeros(0, np.int64)]))]).astype(
                np.int64).tofile(tmp / name)
        (tmp / "char_counts.json").write_text(json.dumps(shard_counts, ensure_ascii=False), encoding="utf-8")

    folder = columns.folder / f"normalized-{_digest(normalizer_settings(normalizer))}"
    return NormalizedTexts(cached(folder, build))


def _in_parallel(function, tasks: list) -> Iterator:
    """function(task) for each task, in order: in forked processes, one per CPU, when there are
    several tasks (a large corpus's first use), else in this one."""
    processes = min(len(tasks), len(os.sched_getaffinity(0)), _MAX_PROCESSES)
    if processes < 2:
        yield from map(function, tasks)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap(function, tasks)


def _shard_chunks(columns: ShardColumns) -> list[tuple[int, int]]:
    """Ranges [p0, p1) of shard positions, about _CHUNK_TEXTS rows each (a larger shard alone)."""
    starts, chunks, p0 = columns.starts, [], 0
    for p1 in range(1, len(starts)):
        if starts[p1] - starts[p0] >= _CHUNK_TEXTS or p1 == len(starts) - 1:
            chunks.append((p0, p1))
            p0 = p1
    return chunks


def char_counts(columns: ShardColumns, normalizer: TextNormalizer, positions: Iterable[int]) -> Counter:
    """Characters of the normalised texts of these shards (positions in the columns) with their
    counts (what a vocabulary is built from), without the space; counted once, when the texts
    were normalised."""
    per_shard = normalized(columns, normalizer).shard_counts
    counts: Counter = Counter()
    for k in positions:
        counts.update(per_shard[k])
    counts.pop(" ", None)
    return counts


def vocabulary_from_shards(shards: list[SelectedShard], normalizer: TextNormalizer | None = None) -> Vocabulary:
    """Our vocabulary (`[PAD]`, `[UNK]`, `|`, then the characters, sorted) of the normalised
    transcripts of these shards (`w2v.shards.spec.select_shards`): each shard's character counts,
    counted once when its columns normalised the texts, so a corpus of millions costs no pass over
    its texts after the first."""
    normalizer = normalizer or TextNormalizer()
    counts: Counter = Counter()
    by_columns: dict[int, tuple[ShardColumns, list[int]]] = {}  # id(columns) → its selected shards
    for shard in shards:
        by_columns.setdefault(id(shard.columns), (shard.columns, []))[1].append(shard.position)
    for columns, positions in by_columns.values():
        counts.update(char_counts(columns, normalizer, positions))
    return Vocabulary.from_counts(counts, normalizer)


class Labels:
    """Label ids of every sample of a store (`ids[offsets[i]:offsets[i + 1]]`), CTC's minimum
    frames per sample (`need`: one per label, plus a blank between equal neighbours), and the
    rows whose labels hold the vocabulary's [UNK] (`unknown_rows`, id `unk_id`)."""

    def __init__(self, folder: Path, unk_id: int):
        self.ids = map_array(folder / "ids.u2", "uint16")
        self.offsets = map_array(folder / "offsets.i8", "int64")
        self.need = map_array(folder / "need.i4", "int32")
        self.unknown_rows = map_array(folder / "unknown_rows.i8", "int64")
        self.unk_id = unk_id

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


def _label_chunk(task: tuple[Path, Vocabulary, int, int]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Texts first .. last - 1 of the normalised texts in `folder`: their label ids (uint16, one
    after another), CTC's minimum frames of each, and the rows among them that hold [UNK]."""
    folder, vocab, first, last = task
    texts = NormalizedTexts(folder)
    chunk = bytes(texts.texts.data[texts.texts.offsets[first]:texts.texts.offsets[last]]).decode("utf-8")
    ids = vocabulary_table(vocab)[np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)].astype(np.uint16)
    local = np.asarray(texts.chars[first:last + 1]) - texts.chars[first]  # each text's characters
    # equal[k]: equal neighbours (j, j + 1) with j < k; a text [a, b) has equal[b - 1] - equal[a]
    equal = np.zeros(max(len(ids), 1), dtype=np.int32)
    np.cumsum(ids[1:] == ids[:-1], dtype=np.int32, out=equal[1:len(ids)])
    a, b = local[:-1], local[1:]
    repeats = np.where(b > a, equal[np.maximum(b - 1, 0)] - equal[np.minimum(a, len(equal) - 1)], 0)
    hits = np.flatnonzero(ids == vocab.unk_id)
    unknown = np.unique(np.searchsorted(local, hits, side="right") - 1) + first
    return ids.tobytes(), (b - a + repeats).astype(np.int32), unknown.astype(np.int64)


def labels(columns: ShardColumns, vocab: Vocabulary) -> Labels:
    if len(vocab) > 1 << 16:
        raise ValueError(f"a vocabulary of {len(vocab)} tokens: the label cache holds ids below 65,536")
    texts = normalized(columns, vocab.normalizer)

    def build(tmp: Path) -> None:
        need, unknown = [], []
        tasks = [(texts.folder, vocab, first, min(first + _CHUNK_TEXTS, len(texts.texts)))
                 for first in range(0, len(texts.texts), _CHUNK_TEXTS)]
        with open(tmp / "ids.u2", "wb") as out:
            for ids, chunk_need, chunk_unknown in _in_parallel(_label_chunk, tasks):
                out.write(ids)
                need.append(chunk_need)
                unknown.append(chunk_unknown)
        np.concatenate(need or [np.zeros(0, np.int32)]).tofile(tmp / "need.i4")
        np.concatenate(unknown or [np.zeros(0, np.int64)]).astype(np.int64).tofile(tmp / "unknown_rows.i8")
        np.asarray(texts.chars).astype(np.int64).tofile(tmp / "offsets.i8")

    settings = {"tokens": vocab.tokens, "specials": [vocab.specials.pad, vocab.specials.unk, vocab.specials.delimiter],
                "normalizer": normalizer_settings(vocab.normalizer)}
    return Labels(cached(columns.folder / f"labels-{_digest(settings)}", build), vocab.unk_id)
