"""Writing shards: samples into `<prefix>-NNNNNN.tar`, and the index beside them.

Shards are byte-reproducible: members carry a fixed mtime and mode, and keys and order are the
caller's (deterministic). Every file is written atomically (`w2v.atomic`), so a crash never leaves
a truncated shard or index under a final name. The format is in `w2v.shards.index` and
`shards/README.md`.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from w2v.atomic import AtomicFile, write_atomic
from w2v.shards.index import FORMAT_TAG, SAMPLE_RATE


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

    Each shard is an `AtomicFile`: it appears under its name, fsynced, only when closed.
    """

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int, max_samples: int = 0):
        self.out_dir, self.prefix = out_dir, prefix
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.records: list[ShardRecord] = []
        self._file: AtomicFile | None = None
        self._tar: tarfile.TarFile | None = None

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.records):06d}.tar"
        self._file = AtomicFile(self.out_dir / name)
        try:
            self._tar = tarfile.open(fileobj=self._file.file, mode="w", format=tarfile.USTAR_FORMAT)
        except BaseException:
            self._file.abort()
            raise
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
        self._tar.close()  # the end-of-archive blocks; the file itself stays open
        self.records[-1].bytes = self._file.file.tell()
        self._file.commit()
        self._tar, self._file = None, None

    def abort(self) -> None:
        """Drop the open shard (its temporary file) after an error; finished shards stay."""
        if self._tar is not None:
            self._file.abort()
            self.records.pop()
            self._tar, self._file = None, None


def write_index(path: Path, records: list[ShardRecord], extra: dict) -> dict:
    """The index of these shards (`w2v-shards/1`), written atomically to `path`."""
    shards = [r.to_json() for r in records]
    index = {
        "format": FORMAT_TAG,
        "sample_rate": SAMPLE_RATE,
        "num_shards": len(shards),
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_seconds": round(sum(s["seconds"] for s in shards), 3),
        **extra,
        "shards": shards,
    }
    write_atomic(path, json.dumps(index, ensure_ascii=False).encode("utf-8"))
    return index
