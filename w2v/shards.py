"""The shard format: POSIX tar shards of 16 kHz audio + per-sample JSON, and the index beside them.

    DIR/<prefix>-000000.tar   members <key>.flac (or .wav) and <key>.json, grouped by key
    DIR/index.json            every shard with its sample count and each sample's key, duration, text
    DIR/skipped.jsonl         one line per input that was not written, with its reason

The index is columnar per shard (keys, durations, texts lists) so that bucket edges, the vocabulary
and epoch sizes are known without reading audio, and a million-utterance index loads in seconds.
Shards are byte-reproducible: members carry a fixed mtime/owner, keys and order are deterministic.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INDEX_NAME = "index.json"
SKIPPED_NAME = "skipped.jsonl"
FORMAT_TAG = "w2v-shards/1"
TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file under a temporary name, fsync, and rename: readers never see half a file."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class ShardRecord:
    """What the index says about one shard."""

    name: str
    keys: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    bytes: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "num_samples": len(self.keys), "bytes": self.bytes,
                "seconds": round(sum(self.durations), 3), "keys": self.keys,
                "durations": self.durations, "texts": self.texts}


class ShardWriter:
    """Writes samples into `<prefix>-NNNNNN.tar`, cutting a new shard by size or sample count.

    Each shard is written as `<name>.tmp` and renamed when closed, so a crash never leaves a
    truncated shard under a final name.
    """

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int, max_samples: int = 0):
        self.out_dir, self.prefix = out_dir, prefix
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.records: list[ShardRecord] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.records):06d}.tar"
        self._tmp_path = self.out_dir / (name + TMP_SUFFIX)
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.USTAR_FORMAT)
        self.records.append(ShardRecord(name))

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, audio_ext: str, audio: bytes, meta: dict) -> None:
        record = self.records[-1] if self._tar is not None else None
        member_bytes = len(audio) + 2048  # two 512-byte headers plus padding, roughly
        if record is not None and record.keys and (
            record.bytes + member_bytes > self.max_bytes
            or (self.max_samples and len(record.keys) >= self.max_samples)
        ):
            self.close_shard()
            record = None
        if record is None:
            self._open()
            record = self.records[-1]
        meta_bytes = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._add_member(f"{key}.{audio_ext}", audio)
        self._add_member(f"{key}.json", meta_bytes)
        record.keys.append(key)
        record.durations.append(meta["duration"])
        record.texts.append(meta["text"])
        record.bytes = self._tar.offset

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        fd = os.open(self._tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.out_dir / self.records[-1].name
        os.replace(self._tmp_path, final)
        self.records[-1].bytes = final.stat().st_size
        self._tar, self._tmp_path = None, None

    def abort(self) -> None:
        """Drop the open shard (its temporary file) after an error; finished shards stay."""
        if self._tar is not None:
            try:
                self._tar.close()
            finally:
                self._tmp_path.unlink(missing_ok=True)
                self.records.pop()
                self._tar, self._tmp_path = None, None


def write_index(out_dir: Path, records: list[ShardRecord], extra: dict) -> dict:
    shards = [r.to_json() for r in records]
    index = {
        "format": FORMAT_TAG,
        "sample_rate": 16000,
        "num_shards": len(shards),
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_seconds": round(sum(s["seconds"] for s in shards), 3),
        **extra,
        "shards": shards,
    }
    write_atomic(out_dir / INDEX_NAME, json.dumps(index, ensure_ascii=False).encode("utf-8"))
    return index


def read_index(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index (was this folder made by tools/make_shards.py?)")
    with open(path, encoding="utf-8") as handle:
        index = json.load(handle)
    if index.get("format") != FORMAT_TAG:
        raise ValueError(f"{path}: unknown index format {index.get('format')!r}")
    return index


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, grouping consecutive members by key."""
    key, group = None, {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            stem, _, ext = base.partition(".")
            if key is not None and stem != key:
                yield key, group
                group = {}
            key = stem
            group[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, group
