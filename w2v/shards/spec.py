"""Shard specs: what a user names (a folder, brace pattern, glob, list, URLs) as the shards to read.

A shard spec is a folder (its index lists the shards), a brace pattern, a glob, a comma-separated
string or a list, or URLs that WebDataset's `gopen` opens (`pipe:…`, `https://…`), which need the
location of their index. `select_shards` resolves one into `SelectedShard`s: each shard's URL and
its rows in its index's memory-mapped columns. A run resolves each spec once and passes the
selection on (vocabulary, loader, LM text).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from braceexpand import braceexpand

from w2v.shards.columns import ShardColumns, open_columns
from w2v.shards.index import INDEX_NAME, is_remote, read_index


def expand_spec(spec: str | Path | Sequence[str]) -> list[str]:
    """A folder, brace pattern, glob, URL, comma-separated string or list → shard URLs."""
    if isinstance(spec, list | tuple):
        return [u for s in spec for u in expand_spec(s)]
    spec = str(spec)
    if "," in spec and not is_remote(spec) and not os.path.exists(spec):  # a path may hold a comma
        return [u for s in spec.split(",") if s for u in expand_spec(s)]
    if os.path.isdir(spec):
        return [str(Path(spec) / s["name"]) for s in read_index(spec)["shards"]]
    urls = list(braceexpand(spec))
    if is_remote(spec):
        return urls
    return [m for u in urls for m in (sorted(glob.glob(u)) if glob.has_magic(u) else [u])]


def shard_name(url: str) -> str:
    """The tar file name inside a path, URL or `pipe:` command."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    if not names:
        raise ValueError(f"cannot find a .tar file name in shard URL {url!r}")
    return names[-1]


def default_index(url: str) -> str | None:
    """index.json beside a shard; None for a `pipe:` command, whose index must be named."""
    if url.startswith("pipe:"):
        return None
    return url.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in url else INDEX_NAME




class SelectedShard:
    """One shard of a spec: where to read it, and its rows in its index's columns."""

    __slots__ = ("url", "columns", "position")

    def __init__(self, url: str, columns: ShardColumns, position: int):
        self.url, self.columns, self.position = url, columns, position

    @property
    def start(self) -> int:
        return int(self.columns.starts[self.position])

    @property
    def size(self) -> int:
        return int(self.columns.starts[self.position + 1]) - self.start

    @property
    def bytes(self) -> int | None:
        return self.columns.bytes[self.position]




def select_shards(spec, index: str | None = None) -> list[SelectedShard]:
    """A shard spec as shards with their columns; clear errors for an empty or unindexed spec.
    A folder lists its shards from its columns, without parsing index.json."""
    if isinstance(spec, str | Path) and not is_remote(str(spec)) and os.path.isdir(spec):
        location = index or str(Path(spec) / INDEX_NAME)
        if not is_remote(location) and not os.path.isfile(location):
            raise ValueError(f"{location}: no shard index (a folder made by w2v-make-shards has one; parts get it "
                             "from w2v-merge-shards)")
        columns = open_columns(location)
        selected = [SelectedShard(str(Path(spec) / name), columns, k) for k, name in enumerate(columns.names)]
        missing = next((s.url for s in selected if not os.path.isfile(s.url)), None)
        if missing:
            raise ValueError(f"{missing}: shard file not found")
        return selected
    urls = expand_spec(spec)
    if not urls:
        raise ValueError(f"shard spec {spec!r} matches no shards")
    stores: dict[str, tuple[ShardColumns, dict[str, int]]] = {}
    selected = []
    for url in urls:
        if not is_remote(url) and not os.path.exists(url):
            raise ValueError(f"{url}: no such file or folder")
        location = index or default_index(url)
        if location is None:
            raise ValueError(f"{url}: pass the index.json location for pipe: shards (index=...)")
        if location not in stores:
            if not is_remote(location) and not os.path.isfile(location):
                raise ValueError(f"no {INDEX_NAME} for {url} at {location}: shards need their index "
                                 "(made by w2v-make-shards) or an explicit index=")
            columns = open_columns(location)
            stores[location] = (columns, {name: k for k, name in enumerate(columns.names)})
        columns, positions = stores[location]
        position = positions.get(shard_name(url))
        if position is None:
            raise ValueError(f"{url}: not listed in {location}")
        if not is_remote(url) and not os.path.isfile(url):
            raise ValueError(f"{url}: shard file not found")
        selected.append(SelectedShard(url, columns, position))
    return selected
