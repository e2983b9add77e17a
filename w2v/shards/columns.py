"""Columnar shard metadata: what planning needs, in memory-mapped files, no Python object per sample.

`index.json` (`w2v-shards/1`) stays the format users and other tools read; a JSON list of millions
of keys and texts, though, costs every rank seconds and gigabytes to parse, and Python objects
whose reference counts make forked workers copy the pages. So the same metadata is also kept as
flat files that every rank and worker maps (the pages are shared, nothing is parsed per sample):

    columns/meta.json                     shard names and byte sizes, sample counts, what index it came from
    columns/durations.f8                  float64 seconds per sample
    columns/keys.bin, key_offsets.i8      the keys, UTF-8, one after another, and where each starts
    columns/texts.bin, text_offsets.i8    the transcripts, the same way
    columns/normalized-<h>/               per text normaliser: the normalised texts, their lengths
                                          in characters, and each shard's character counts
                                          (char_counts.json, what a vocabulary is built from)
    columns/labels-<h>/                   per vocabulary: the label ids of every text (ids.u2,
                                          offsets.i8), CTC's minimum frames per sample (need.i4:
                                          labels plus repeats) and the rows holding [UNK]
                                          (unknown_rows.i8)

Plain binary arrays read with `numpy.memmap`: no dependency beyond numpy, and every array is a
zero-copy view of the page cache (Arrow IPC would do the same with a 40 MB package more).
`w2v-make-shards` and `w2v-merge-shards` write `columns/` beside `index.json`; for an older folder
it is built on first use, by one process while the others wait (a file lock), and rebuilt when
`index.json` changes (its size and modification time are recorded). A folder that cannot be
written, or an index behind a URL, gets its columns in a cache folder (`W2V_CACHE_DIR`, default
`~/.cache/w2v`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from w2v.atomic import atomic_dir, cache_root, locked, write_atomic
from w2v.shards.index import is_remote, iter_index_shards

COLUMNS_DIR = "columns"
COLUMNS_FORMAT = "w2v-columns/1"


class Strings:
    """n strings kept as one UTF-8 buffer and n + 1 offsets; `strings[i]` decodes one."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def slice(self, first: int, last: int) -> list[str]:
        """strings[first:last], decoded from one copy of their bytes (not a memory-map view each)."""
        lo = int(self.offsets[first])
        ends = np.asarray(self.offsets[first:last + 1]) - lo
        data = bytes(self.data[lo:lo + int(ends[-1])]) if last > first else b""
        return [data[a:b].decode("utf-8") for a, b in zip(ends[:-1].tolist(), ends[1:].tolist(), strict=True)]


def map_array(path: Path, dtype: str) -> np.ndarray:
    """A read-only memory map of a raw array file (an empty array for an empty file)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ColumnsWriter:
    """Appends one index's shards to column files in a folder, one shard entry at a time."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = {name: open(folder / name, "wb") for name in ("durations.f8", "keys.bin", "texts.bin")}  # noqa: SIM115
        self.key_lengths: list[np.ndarray] = []
        self.text_lengths: list[np.ndarray] = []
        self.shards: list[dict] = []

    def add_shard(self, entry: dict) -> None:
        keys = [k.encode("utf-8") for k in entry["keys"]]
        texts = [t.encode("utf-8") for t in entry["texts"]]
        self.files["durations.f8"].write(np.asarray(entry["durations"], dtype=np.float64).tobytes())
        self.files["keys.bin"].write(b"".join(keys))
        self.files["texts.bin"].write(b"".join(texts))
        self.key_lengths.append(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)))
        self.text_lengths.append(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
        self.shards.append({"name": entry["name"], "bytes": entry.get("bytes"), "num_samples": len(keys)})

    def finish(self, identity: dict) -> None:
        for handle in self.files.values():
            handle.close()
        for name, lengths in (("key_offsets.i8", self.key_lengths), ("text_offsets.i8", self.text_lengths)):
            offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1)
            offsets.astype(np.int64).tofile(self.folder / name)
        meta = {"format": COLUMNS_FORMAT, "index": identity, "shards": self.shards,
                "num_samples": int(sum(s["num_samples"] for s in self.shards))}
        (self.folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


class ShardColumns:
    """One index's columns, memory-mapped: `names`, `bytes`, `starts` (first sample of each shard,
    and the total), `durations`, `keys`, `texts`; `folder` holds the derived caches."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.names = [s["name"] for s in meta["shards"]]
        self.bytes = [s["bytes"] for s in meta["shards"]]
        self.starts = np.concatenate([[0], np.cumsum([s["num_samples"] for s in meta["shards"]])]).astype(np.int64)
        self.durations = map_array(folder / "durations.f8", "float64")
        self.keys = Strings(map_array(folder / "keys.bin", "uint8"), map_array(folder / "key_offsets.i8", "int64"))
        self.texts = Strings(map_array(folder / "texts.bin", "uint8"), map_array(folder / "text_offsets.i8", "int64"))

    def __len__(self) -> int:
        return int(self.starts[-1])


def index_identity(location: str) -> dict:
    """What a cache of this index must match: a local file's size and modification time, or its URL."""
    if is_remote(location):
        return {"url": location}
    stat = os.stat(location)
    return {"path": str(Path(location).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def columns_folder(location: str) -> Path:
    """`columns/` beside a local, writable index; else a cache folder keyed by the index's location."""
    if not is_remote(location):
        parent = Path(location).resolve().parent
        if os.access(parent, os.W_OK):
            return parent / COLUMNS_DIR
    digest = hashlib.sha1(str(location if is_remote(location) else Path(location).resolve()).encode()).hexdigest()
    return cache_root() / "columns" / digest[:16] / COLUMNS_DIR


def _fresh(folder: Path, identity: dict) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("format") == COLUMNS_FORMAT and meta.get("index") == identity


def write_columns(folder: Path, shards: Iterable[dict], identity: dict) -> None:
    """The columns of these index shard entries, atomically replacing `folder`."""
    with atomic_dir(folder) as tmp:
        writer = ColumnsWriter(tmp)
        for entry in shards:
            writer.add_shard(entry)
        writer.finish(identity)


def open_columns(location: str) -> ShardColumns:
    """The columns of the index at `location` (a path or URL), built or rebuilt first if needed."""
    identity = index_identity(location)
    folder = columns_folder(location)
    if not _fresh(folder, identity):
        with locked(folder):
            if not _fresh(folder, identity):  # another process may have built it meanwhile
                write_columns(folder, iter_index_shards(location), identity)
    return ShardColumns(folder)


def cached(folder: Path, build) -> Path:
    """A derived cache `folder` (normalised texts, labels) under the columns: built once by
    `build(tmp_folder)` under the lock, then reused."""
    if not (folder / "done").is_file():
        with locked(folder):
            if not (folder / "done").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                with atomic_dir(folder) as tmp:
                    build(tmp)
                    write_atomic(tmp / "done", b"")
    return folder
