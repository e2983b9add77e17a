"""The shard index: the file that lists a folder's shards and every sample's key, duration and text.

    DIR/<prefix>-000000.tar   members <key>.flac (or .wav) and <key>.json, grouped by key
    DIR/index.json            every shard with its sample count and each sample's key, duration, text
    DIR/skipped.jsonl         one line per input that was not written, with its reason

The index is columnar per shard (keys, durations, texts lists), so that bucket edges, the vocabulary
and epoch sizes are known without reading audio. `shards/README.md` documents the format; shard
specs (which shards a run reads) are resolved in `w2v.shards.spec`.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

INDEX_NAME = "index.json"
SKIPPED_NAME = "skipped.jsonl"
FORMAT_TAG = "w2v-shards/1"
SAMPLE_RATE = 16000
REMOTE = re.compile(r"^(pipe:|https?://|s3://|gs://|sftp://|scp://|file:)")


def is_remote(url: str) -> bool:
    return REMOTE.match(url) is not None


def open_url(url: str, buffering: int = -1) -> BinaryIO:
    """A local file, or a stream from any URL WebDataset's `gopen` opens."""
    if is_remote(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb", buffering=buffering)  # noqa: SIM115 (the caller closes it)


def read_index(location: str | Path) -> dict:
    """The index of a shard folder, or an index.json given by path or URL."""
    location = str(location)
    if not is_remote(location) and os.path.isdir(location):
        location = str(Path(location) / INDEX_NAME)
        if not os.path.isfile(location):
            raise FileNotFoundError(f"{location}: no shard index (was this folder made by w2v-make-shards?)")
    with open_url(location) as handle:
        index = json.loads(handle.read().decode("utf-8"))
    if index.get("format") != FORMAT_TAG:
        raise ValueError(f"{location}: not a w2v shard index (format {index.get('format')!r})")
    return index


class _JSONStream:
    """A JSON text read a piece at a time: values are decoded from a buffer that holds the current
    one (json's own decoder; a value cut by the buffer's end is decoded again with more text)."""

    def __init__(self, handle: BinaryIO, location: str, piece: int = 1 << 22):
        self.handle, self.utf8 = handle, codecs.getincrementaldecoder("utf-8")()
        self.location, self.piece = location, piece
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.handle.read(self.piece)
        self.eof = not data
        text = self.utf8.decode(data, final=self.eof)
        self.buf, self.pos = self.buf[self.pos:] + text, 0
        return not self.eof

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, chars: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise ValueError(f"{self.location}: not a w2v shard index (invalid JSON near {found!r})")
        self.pos += 1
        return found

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise ValueError(f"{self.location}: not a w2v shard index (invalid JSON)") from None
            if end == len(self.buf) and self._more():  # a number may go on in the next piece
                continue
            self.pos = end
            return value


def iter_index_shards(location: str, piece: int = 1 << 22) -> Iterator[dict]:
    """The entries of an index's `shards` list, one at a time: an index of 10 M utterances is over
    a gigabyte of JSON, several gigabytes as Python objects when parsed whole."""
    with open_url(location) as handle:
        stream = _JSONStream(handle, location, piece)
        header: dict = {}
        stream.expect("{")
        while stream.peek() != "}":
            key = stream.value()
            stream.expect(":")
            if key == "shards":
                if header.get("format", FORMAT_TAG) != FORMAT_TAG:
                    break
                stream.expect("[")
                while stream.peek() != "]":
                    yield stream.value()
                    if stream.expect(",]") == "]":
                        stream.pos -= 1
                stream.expect("]")
            else:
                header[key] = stream.value()
            if stream.expect(",}") == "}":
                stream.pos -= 1
        if header.get("format") != FORMAT_TAG:
            raise ValueError(f"{location}: not a w2v shard index (format {header.get('format')!r})")
