"""Reading tar shards: the members of a shard, streamed, from a file or any URL.

A small reader of its own instead of tarfile's stream mode, whose per-record Python calls cost a
large share of decoding time on FLAC shards (`benchmarks/bench_loader.py` measures the loader with
it): ustar headers with checksums, GNU long names and pax `path` records for tars written by other
tools, and truncation detected (a short member, or fewer bytes than the index recorded).
"""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from w2v.shards.index import is_remote
from w2v.shards.remote import ResumingStream


def read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the stream (pipes may return short reads)."""
    data = read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def tar_members(url: str | Path, expected_bytes: int | None = None, attempts: int = 5, backoff: float = 1.0,
                stats: Counter | None = None) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of each file member, streamed; raises tarfile.ReadError on damage.

    Local shards are read unbuffered, one read per member straight into its bytes object (a
    buffered reader would copy everything twice); the previous member's padding and the next
    header come in one read. The key is the member's base name up to its first dot (WebDataset's
    rule), the extension the rest.
    """
    url = str(url)
    # a remote read that fails mid-shard resumes where it stopped (w2v.shards.remote); `attempts`,
    # `backoff` and `stats` (its retries are counted there) apply to remote URLs only
    source = (ResumingStream(url, expected_bytes, attempts, backoff, stats) if is_remote(url)
              else open(url, "rb", buffering=0))  # noqa: SIM115 (closed by the with)
    with source as handle:
        read, count, skip, long_name = handle.read, 0, 0, None
        while True:
            block = read_exact(read, skip + 512)
            count += len(block)
            header = block[skip:]
            if len(header) < 512:
                if header:
                    raise tarfile.ReadError("truncated header")
                break  # no end-of-archive blocks: checked against the index below
            if header.count(0) == 512:
                break  # end of archive
            if sum(header[:148]) + 8 * 32 + sum(header[156:]) != _octal(header[148:156]):
                raise tarfile.ReadError("bad header checksum")
            size, kind = _octal(header[124:136]), header[156:157]
            data = read_exact(read, size)
            count += len(data)
            if len(data) != size:
                raise tarfile.ReadError("member truncated")
            skip = -size % 512
            if kind in (b"L", b"x"):  # the next member's long name (GNU) or extended header (pax)
                long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8")
                continue
            name = long_name or _ustar_name(header)
            long_name = None
            if kind in (b"0", b"\0", b"7"):
                key, _, ext = os.path.basename(name).partition(".")
                yield key, ext, data
        while block := read(1 << 20):  # the end-of-archive padding
            count += len(block)
        if expected_bytes is not None and count < expected_bytes:
            raise tarfile.ReadError(f"truncated: {count} of {expected_bytes} bytes")


def iter_tar_samples(url: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, grouping consecutive members by key."""
    key, group = None, {}
    for member_key, ext, data in tar_members(url):
        if key is not None and member_key != key:
            yield key, group
            group = {}
        key = member_key
        group[ext] = data
    if key is not None:
        yield key, group


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"bad number field {field!r}") from None


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")


def _pax_path(records: bytes) -> str | None:
    for record in records.split(b"\n"):
        _, _, field = record.partition(b" ")
        if field.startswith(b"path="):
            return field[5:].decode("utf-8", "replace")
    return None
