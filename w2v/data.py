"""The streaming loader: tar shards → length-bucketed, normalised, padded CTC batches.

How it works, in one direction:

1. **Plan from metadata.** The shard index gives every sample's key, duration and text. For each
   epoch, the shard order is shuffled from (seed, epoch), split by node (rank) and then by
   dataloader worker; each worker's *stream* (the samples it will read, in read order) goes through
   a bounded shuffle buffer, the filters (duration bounds, CTC feasibility), and the numba bucketer
   (`w2v.bucketing.plan_batches`). This is a pure function of (seed, epoch, rank, worker), so
   every rank computes every rank's batch count and equalises its own by splitting batches
   (`equalize_batch_count`): every rank yields the same number of batches (no DDP hang), and in
   epoch mode every sample is used exactly once per epoch across ranks and workers.
2. **Stream audio.** Each worker reads its shards sequentially (local files, or any URL WebDataset's
   `gopen` opens: `pipe:`, `https://`), decodes only the members its plan needs from bytes in
   memory (`w2v.flac` for mono 16-bit FLAC, a zero-copy view for WAV, soundfile for anything
   else; no temporary files), and releases each planned batch as soon as its last
   member is decoded. Memory is bounded by the shuffle buffer plus the bucketer's buffer.
3. **Normalise and pad** (`w2v.padding`, numba): zero mean / unit variance per utterance into one
   preallocated float32 batch, `attention_mask` when the model wants one, labels padded with -100.

Resume is exact and cheap: the state is (epoch, batches consumed per worker); the plan is recomputed
and each worker skips what was consumed without decoding it. Bad data (a truncated shard, a member
that does not decode) is logged, counted and skipped; a batch that loses all its members is still
yielded, as an `empty` batch, so that ranks stay in step.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from braceexpand import braceexpand

from w2v.bucketing import bucket_edges, equalize_batch_count, padding_fraction, plan_batches, shuffle_order
from w2v.flac import UnsupportedFlac, decode_flac
from w2v.padding import attention_mask_from_lengths, normalize_and_pad, pad_labels
from w2v.shards import FORMAT_TAG, INDEX_NAME

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
REMOTE = re.compile(r"^(pipe:|https?://|s3://|gs://|sftp://|scp://|file:)")


# ----------------------------------------------------------------------------------------------
# Shard specs and their index
# ----------------------------------------------------------------------------------------------


@dataclass
class ShardMeta:
    url: str
    keys: list[str]
    durations: np.ndarray
    texts: list[str]
    bytes: int | None = None  # size recorded by the writer: a shorter read means a truncated shard


def _open_url(url: str):
    if REMOTE.match(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def expand_spec(spec: str | Path | Sequence[str]) -> list[str]:
    """A folder, brace pattern, glob, URL, comma-separated string or list → shard URLs."""
    if isinstance(spec, list | tuple):
        return [u for s in spec for u in expand_spec(s)]
    spec = str(spec)
    if "," in spec and not REMOTE.match(spec):
        return [u for s in spec.split(",") if s for u in expand_spec(s)]
    if os.path.isdir(spec):
        return [str(Path(spec) / s["name"]) for s in _read_index(str(Path(spec) / INDEX_NAME))["shards"]]
    urls = list(braceexpand(spec))
    if REMOTE.match(spec):
        return urls
    found = [m for u in urls for m in (sorted(glob.glob(u)) if glob.has_magic(u) else [u])]
    return found


def _read_index(path: str) -> dict:
    with _open_url(path) as handle:
        index = json.loads(handle.read().decode("utf-8"))
    if index.get("format") != FORMAT_TAG:
        raise ValueError(f"{path}: not a w2v shard index (format {index.get('format')!r})")
    return index


def _shard_name(url: str) -> str:
    """The tar file name inside a path, URL or `pipe:` command."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    if not names:
        raise ValueError(f"cannot find a .tar file name in shard URL {url!r}")
    return names[-1]


def _default_index(url: str) -> str | None:
    if url.startswith("pipe:"):
        return None
    return url.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in url else INDEX_NAME


def resolve_shards(spec: str | Path | Sequence[str], index: str | None = None) -> list[ShardMeta]:
    """Shard URLs with their index metadata; clear errors for an empty or unindexed spec."""
    urls = expand_spec(spec)
    if not urls:
        raise ValueError(f"shard spec {spec!r} matches no shards")
    indexes: dict[str, dict] = {}
    metas = []
    for url in urls:
        index_path = index or _default_index(url)
        if index_path is None:
            raise ValueError(f"{url}: pass the index.json location for pipe: shards (index=...)")
        if index_path not in indexes:
            try:
                indexes[index_path] = {s["name"]: s for s in _read_index(index_path)["shards"]}
            except FileNotFoundError:
                raise ValueError(f"no {INDEX_NAME} for {url} at {index_path}: shards need their index "
                                 "(made by tools/make_shards.py) or an explicit index=") from None
        entry = indexes[index_path].get(_shard_name(url))
        if entry is None:
            raise ValueError(f"{url}: not listed in {index_path}")
        if not REMOTE.match(url) and not os.path.isfile(url):
            raise ValueError(f"{url}: shard file not found")
        metas.append(ShardMeta(url, entry["keys"], np.asarray(entry["durations"], dtype=np.float64),
                               entry["texts"], entry.get("bytes")))
    return metas


# ----------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------


def output_frames(num_samples: np.ndarray, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> np.ndarray:
    """Frames the wav2vec2 conv feature encoder produces for inputs of these lengths."""
    n = np.asarray(num_samples, dtype=np.int64)
    for k, s in zip(conv_kernel, conv_stride, strict=True):
        n = np.maximum((n - k) // s + 1, 0)
    return n


def ctc_min_frames(labels: np.ndarray) -> int:
    """CTC needs one frame per label plus a blank between each pair of equal adjacent labels."""
    if len(labels) == 0:
        return 0
    return int(len(labels) + np.count_nonzero(labels[1:] == labels[:-1]))


@dataclass
class SampleTable:
    """Every sample of every shard, as flat arrays (global sample id = row)."""

    shards: list[ShardMeta]
    shard_of: np.ndarray  # int32: shard index per sample
    local: np.ndarray  # int32: position inside its shard
    durations: np.ndarray  # float64 seconds
    labels: list[np.ndarray] | None  # int64 ids per sample, None without a labeler
    drop_reason: np.ndarray  # object: None or the filter reason, per sample

    @classmethod
    def build(cls, shards: list[ShardMeta], labeler: Callable[[str], Sequence[int]] | None,
              min_duration: float | None, max_duration: float | None,
              conv_kernel: Sequence[int] | None, conv_stride: Sequence[int] | None,
              max_batch_seconds: float) -> SampleTable:
        counts = [len(s.keys) for s in shards]
        shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
        local = np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if counts else np.zeros(0, np.int32)
        durations = np.concatenate([s.durations for s in shards]) if shards else np.zeros(0)
        reason = np.full(len(durations), None, dtype=object)
        if min_duration:
            reason[durations < min_duration] = "below_min_duration"
        cap = min(max_duration or np.inf, max_batch_seconds)  # longer than a batch cannot be batched
        reason[(durations > cap) & (reason == None)] = "above_max_duration"  # noqa: E711
        labels = None
        if labeler is not None:
            labels = [np.asarray(labeler(t), dtype=np.int64) for s in shards for t in s.texts]
            need = np.array([ctc_min_frames(lab) for lab in labels], dtype=np.int64)
            reason[(need == 0) & (reason == None)] = "empty_labels"  # noqa: E711
            if conv_kernel is not None:
                frames = output_frames(np.rint(durations * SAMPLE_RATE), conv_kernel, conv_stride)
                reason[(need > frames) & (reason == None)] = "ctc_infeasible"  # noqa: E711
        return cls(shards, shard_of, local, durations, labels, reason)

    def __len__(self) -> int:
        return len(self.durations)


# ----------------------------------------------------------------------------------------------
# The plan: which worker reads what, and how it batches
# ----------------------------------------------------------------------------------------------


@dataclass
class Segment:
    shard: int  # shard index
    start: int  # first stream position of this segment
    ids: np.ndarray  # global sample ids read from this shard, in order


@dataclass
class WorkerPlan:
    segments: list[Segment]
    stream: np.ndarray  # global sample id per stream position (read order)
    order: np.ndarray  # batches: stream positions, batch j = order[offsets[j]:offsets[j+1]]
    offsets: np.ndarray
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def num_batches(self) -> int:
        return len(self.offsets) - 1


def _split(items: np.ndarray, part: int, parts: int, by_shard: bool, shard_of: np.ndarray) -> np.ndarray:
    """Samples of `part` out of `parts`: whole shards when there are enough, else every parts-th sample."""
    if parts == 1:
        return items
    if by_shard:
        # each shard's rank among the shards of `items`, in order of first appearance (vectorised:
        # this runs for every rank and worker of a cluster, over every sample)
        shards = shard_of[items]
        uniq, first = np.unique(shards, return_index=True)
        rank_of = np.empty(int(uniq.max()) + 1, dtype=np.int64)
        rank_of[uniq[np.argsort(first)]] = np.arange(len(uniq))
        return items[rank_of[shards] % parts == part]
    return items[part::parts]


def _segments(ids: np.ndarray, shard_of: np.ndarray) -> list[Segment]:
    """Consecutive runs of the same shard in a read order."""
    if len(ids) == 0:
        return []
    cuts = np.flatnonzero(np.diff(shard_of[ids])) + 1
    starts = np.concatenate([[0], cuts])
    return [Segment(int(shard_of[ids[s]]), int(s), ids[s:e])
            for s, e in zip(starts, np.concatenate([cuts, [len(ids)]]), strict=True)]


def _batch_stream(table: SampleTable, ids: np.ndarray, cfg: LoaderConfig, seed: int,
                  edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Shuffle buffer → filters → bucketer over one worker's read order; batches as stream positions."""
    positions = np.arange(len(ids), dtype=np.int64)
    if cfg.shuffle and cfg.shuffle_buffer > 1 and len(ids) > 1:
        positions = shuffle_order(len(ids), cfg.shuffle_buffer, seed)
    reasons = table.drop_reason[ids[positions]]
    keep = reasons == None  # noqa: E711
    drops = Counter(r for r in reasons[~keep])
    positions = positions[keep]
    order, offsets = plan_batches(table.durations[ids[positions]], edges, cfg.max_batch_seconds,
                                  cfg.max_batch_size, cfg.bucket_buffer, cfg.lookahead, seed)
    return positions[order], offsets, drops


@dataclass
class LoaderConfig:
    max_batch_seconds: float = 200.0
    max_batch_size: int = 0
    num_buckets: int = 30
    bucket_buffer: int = 20000
    # Batches' worth of samples a bucket queues before emitting: 2 pads ~2% (1: ~4%, Lhotse's rule).
    # Memory per worker is about num_buckets × lookahead × max_batch_seconds of audio at most.
    lookahead: int = 2
    shuffle: bool = True
    shuffle_buffer: int = 1000
    seed: int = 0
    min_duration: float | None = None
    max_duration: float | None = None
    mode: str = "epoch"  # "epoch": each sample once per epoch; "resampled": shards drawn with replacement
    steps_per_epoch: int | None = None  # resampled mode: batches per rank per epoch
    return_attention_mask: bool = True
    num_workers: int = 0


def plan_epoch(table: SampleTable, cfg: LoaderConfig, epoch: int, world: int, workers: int,
               edges: np.ndarray) -> list[list[WorkerPlan]]:
    """plans[rank][worker] for one epoch, equal batch counts per rank."""
    if cfg.mode == "resampled":
        return [[_resampled_plan(table, cfg, epoch, r, w, world, workers, edges) for w in range(workers)]
                for r in range(world)]
    rng = np.random.default_rng([cfg.seed, epoch])
    shard_order = rng.permutation(len(table.shards)) if cfg.shuffle else np.arange(len(table.shards))
    # every sample id in read order: shards in the epoch's order, samples in tar order
    starts = np.concatenate([[0], np.cumsum([len(s.keys) for s in table.shards])]).astype(np.int64)
    all_ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shard_order]) if len(starts) > 1 \
        else np.zeros(0, np.int64)
    plans = []
    for rank in range(world):
        rank_ids = _split(all_ids, rank, world, len(table.shards) >= world, table.shard_of)
        n_rank_shards = len(np.unique(table.shard_of[rank_ids])) if len(rank_ids) else 0
        rank_plans = []
        for worker in range(workers):
            ids = _split(rank_ids, worker, workers, n_rank_shards >= workers, table.shard_of)
            order, offsets, drops = _batch_stream(table, ids, cfg, _seed(cfg.seed, epoch, rank, worker), edges)
            rank_plans.append(WorkerPlan(_segments(ids, table.shard_of), ids, order, offsets, dict(drops)))
        plans.append(rank_plans)
    target = max(sum(p.num_batches for p in rank_plans) for rank_plans in plans)
    for rank_plans in plans:
        _equalize(rank_plans, table, target)
    return plans


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _equalize(worker_plans: list[WorkerPlan], table: SampleTable, target: int) -> None:
    """Give this rank exactly `target` batches: split batches, or add empty ones if it must."""
    have = [p.num_batches for p in worker_plans]
    want = list(have)
    for _ in range(target - sum(have)):  # each extra batch goes to the worker with the fullest batches
        room = [(len(p.order) - want[i]) / max(want[i], 1) for i, p in enumerate(worker_plans)]
        want[int(np.argmax(room))] += 1
    for p, n in zip(worker_plans, want, strict=True):
        if n > p.num_batches:
            p.order, p.offsets = equalize_batch_count(p.order, p.offsets, table.durations[p.stream], n)
        if p.num_batches < n:  # fewer samples than batches: empty batches keep the ranks in step
            p.offsets = np.concatenate([p.offsets, np.full(n - p.num_batches, p.offsets[-1])])


def _resampled_plan(table: SampleTable, cfg: LoaderConfig, epoch: int, rank: int, worker: int,
                    world: int, workers: int, edges: np.ndarray) -> WorkerPlan:
    """Shards drawn with replacement until this worker has its share of `steps_per_epoch` batches."""
    if not cfg.steps_per_epoch:
        raise ValueError("mode 'resampled' needs steps_per_epoch")
    need = cfg.steps_per_epoch // workers + (1 if worker < cfg.steps_per_epoch % workers else 0)
    rng = np.random.default_rng([cfg.seed, epoch, rank, worker, 7])
    starts = np.concatenate([[0], np.cumsum([len(s.keys) for s in table.shards])]).astype(np.int64)
    kept_seconds = table.durations[table.drop_reason == None].sum()  # noqa: E711
    if kept_seconds <= 0:
        raise ValueError("no sample passes the filters")
    drawn: list[int] = []
    while True:
        per_shard = kept_seconds / len(table.shards)
        while len(drawn) * per_shard < 1.2 * need * cfg.max_batch_seconds + per_shard:
            drawn.append(int(rng.integers(len(table.shards))))
        ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in drawn])
        order, offsets, drops = _batch_stream(table, ids, cfg, _seed(cfg.seed, epoch, rank, worker), edges)
        if len(offsets) - 1 >= need:
            offsets = offsets[: need + 1]
            return WorkerPlan(_segments(ids, table.shard_of), ids, order[: offsets[-1]], offsets, dict(drops))
        drawn.append(int(rng.integers(len(table.shards))))


# ----------------------------------------------------------------------------------------------
# The worker side: read shards, decode what the plan needs, release batches in plan order
# ----------------------------------------------------------------------------------------------


def _read_exact(read: Callable[[int], bytes], size: int) -> bytes:
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


def _tar_members(url: str, expected_bytes: int | None = None) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of each file member, streamed; raises TarError on a truncated shard.

    A small reader of its own instead of tarfile's stream mode, which costs ~20% of FLAC decoding
    time in per-record Python calls (benchmarks/bench_loader.py): ustar headers, with GNU long names
    and pax `path` records for tars written by other tools. Local shards are read unbuffered, one
    read per member straight into its bytes object (a buffered reader would copy everything twice);
    the previous member's padding and the next header come in one read.
    """
    with (_open_url(url) if REMOTE.match(url) else open(url, "rb", buffering=0)) as handle:
        read, count, skip, long_name = handle.read, 0, 0, None
        while True:
            block = _read_exact(read, skip + 512)
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
            data = _read_exact(read, size)
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


def _pcm16_wav_view(data: bytes) -> np.ndarray | None:
    """The samples of a 16 kHz mono 16-bit PCM WAV (what make_shards writes) as a zero-copy view.

    libsndfile costs ~10x more than the copy itself for such files; anything else returns None and
    goes through soundfile.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt_ok = 12, False
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            tag, channels, rate = (int.from_bytes(data[body + a:body + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            fmt_ok = tag == 1 and channels == 1 and rate == SAMPLE_RATE and bits == 16
        elif chunk == b"data":
            if not fmt_ok:
                return None
            size = min(size, len(data) - body) // 2 * 2
            return np.frombuffer(data, dtype="<i2", count=size // 2, offset=body)
        pos = body + size + (size & 1)
    return None


def _decode(data: bytes) -> np.ndarray:
    """int16 mono samples of one member: WAV as a view, mono 16-bit FLAC with w2v.flac (1.7x
    libsndfile), anything else through soundfile."""
    view = _pcm16_wav_view(data)
    if view is not None:
        return view
    wave = None
    if data[:4] == b"fLaC":
        try:
            wave, sr = decode_flac(data)
        except UnsupportedFlac:
            pass
    if wave is None:
        wave, sr = sf.read(io.BytesIO(data), dtype="int16")
    if sr != SAMPLE_RATE:
        raise ValueError(f"sample rate {sr}, expected {SAMPLE_RATE}")
    return wave if wave.ndim == 1 else wave.mean(axis=1).astype(np.int16)


class _Batcher:
    """Turns one worker's plan into batches, reading its shards once, sequentially."""

    def __init__(self, table: SampleTable, plan: WorkerPlan, cfg: LoaderConfig, worker: int, skip: int):
        self.table, self.plan, self.cfg, self.worker, self.skip = table, plan, cfg, worker, skip
        self.stats: Counter = Counter(plan.drops)
        n = len(plan.stream)
        self.batch_of = np.full(n, -1, dtype=np.int64)  # stream position → its batch (or -1: dropped)
        for j in range(plan.num_batches):
            self.batch_of[plan.order[plan.offsets[j]:plan.offsets[j + 1]]] = j
        # A batch can be released once the reader has passed its last member.
        self.ready_at = np.array([plan.order[plan.offsets[j]:plan.offsets[j + 1]].max(initial=-1)
                                  for j in range(plan.num_batches)], dtype=np.int64)

    def __iter__(self) -> Iterator[dict]:
        plan, pending = self.plan, {}
        next_batch = self.skip
        for seg in plan.segments:
            needed = self.batch_of[seg.start:seg.start + len(seg.ids)] >= self.skip
            if not needed.any():
                continue
            # release each batch as soon as the reader has passed its last member: memory stays
            # bounded by the plan's buffers, not by the shard size
            for passed in self._read_segment(seg, needed, pending):
                while next_batch < plan.num_batches and self.ready_at[next_batch] <= passed:
                    yield self._make_batch(next_batch, pending)
                    next_batch += 1
        while next_batch < plan.num_batches:  # empty batches, and any left after a bad shard
            yield self._make_batch(next_batch, pending)
            next_batch += 1

    def _read_segment(self, seg: Segment, needed: np.ndarray, pending: dict) -> Iterator[int]:
        """Decodes the needed members of one shard into `pending`; yields the stream position passed."""
        shard = self.table.shards[seg.shard]
        want = {shard.keys[self.table.local[i]]: seg.start + k for k, i in enumerate(seg.ids) if needed[k]}
        try:
            for key, ext, data in _tar_members(shard.url, shard.bytes):
                pos = want.get(key)
                if pos is None or ext == "json":
                    continue
                del want[key]
                start = time.perf_counter()
                try:
                    pending[pos] = _decode(data)
                except Exception as exc:  # noqa: BLE001 (any decoder failure is a skipped member)
                    self.stats["undecodable_member"] += 1
                    log.warning("%s: member %s.%s does not decode (%s); skipped", shard.url, key, ext, exc)
                self.stats["decode_seconds_x1e6"] += int((time.perf_counter() - start) * 1e6)
                yield pos
                if not want:
                    break
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.stats["corrupt_shard"] += 1
            log.warning("%s: unreadable after some members (%s); the rest of this shard is skipped", shard.url, exc)
        if want:
            self.stats["missing_member"] += len(want)
            log.warning("%s: %d indexed samples missing or unreadable; skipped", shard.url, len(want))
        yield seg.start + len(seg.ids) - 1

    def _make_batch(self, j: int, pending: dict) -> dict:
        plan, table = self.plan, self.table
        positions = [int(p) for p in plan.order[plan.offsets[j]:plan.offsets[j + 1]]]
        present = [p for p in positions if p in pending]
        waves = [pending.pop(p) for p in present]
        ids = [int(plan.stream[p]) for p in present]
        batch: dict = {"worker": self.worker, "index": j, "empty": not waves, "stats": dict(self.stats)}
        labels = [table.labels[i] for i in ids] if table.labels is not None else None
        if not waves:  # a stand-in the training loop weights by zero: ranks stay in step
            waves = [np.zeros(SAMPLE_RATE, np.int16)]
            labels = None if labels is None else [np.full(1, -100, np.int64)]
        values, _ = normalize_and_pad(waves, with_mask=False)
        sizes = [len(w) for w in waves]
        lengths = torch.tensor(sizes, dtype=torch.int64)
        batch["input_values"] = torch.from_numpy(values)
        batch["input_lengths"] = lengths
        if self.cfg.return_attention_mask:
            # bool, from the lengths: a quarter of the bytes of an int32 mask written sample by sample
            # (the model only sums it and compares it); equal to the HF mask as integers
            batch["attention_mask"] = torch.from_numpy(attention_mask_from_lengths(sizes, values.shape[1]))
        if labels is not None:
            batch["labels"] = torch.from_numpy(pad_labels(labels))
        batch["keys"] = [table.shards[table.shard_of[i]].keys[table.local[i]] for i in ids]
        batch["texts"] = [table.shards[table.shard_of[i]].texts[table.local[i]] for i in ids]
        batch["audio_seconds"] = float(lengths.sum()) / SAMPLE_RATE if ids else 0.0
        batch["padded_seconds"] = float(values.size) / SAMPLE_RATE if ids else 0.0
        return batch


_kernels_ready = False


def _load_kernels() -> None:
    """Compile or load this process's numba kernels now, before DataLoader forks its workers: they
    inherit them instead of each loading them from the cache again every epoch."""
    global _kernels_ready
    if not _kernels_ready:
        tiny = io.BytesIO()
        sf.write(tiny, np.zeros(64, np.int16), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        decode_flac(tiny.getvalue())
        normalize_and_pad([np.zeros(8, np.int16)], with_mask=False)
        _kernels_ready = True


class _EpochStream(torch.utils.data.IterableDataset):
    """What each DataLoader worker runs: its plan for (epoch, rank, worker), minus consumed batches."""

    def __init__(self, loader: SpeechLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)  # decoding workers must not fight the training process for cores
        ld = self.loader
        plan = ld.plans()[ld.rank][worker]
        yield from _Batcher(ld.table, plan, ld.cfg, worker, ld.consumed[worker])


class SpeechLoader:
    """Batches for one rank: `for batch in loader` per epoch; `set_epoch`, `len`, state for resume.

    Batches are dicts: `input_values` float32 [B, T] (normalised, zero padded), `input_lengths`,
    `attention_mask` bool [B, T] (when `return_attention_mask`: layer-norm models such as XLS-R;
    group-norm wav2vec2-base must not get one), `labels` int64 [B, L] padded with -100, `keys`,
    `texts`, `audio_seconds`, `padded_seconds`, `empty` (a zero-weight stand-in that keeps ranks in
    step), and `stats` (the worker's running counters: drops by reason, corrupt members).
    """

    def __init__(self, shards: str | Path | Sequence[str], cfg: LoaderConfig | None = None, *,
                 labeler: Callable[[str], Sequence[int]] | None = None, rank: int = 0, world_size: int = 1,
                 conv_kernel: Sequence[int] | None = None, conv_stride: Sequence[int] | None = None,
                 index: str | None = None):
        self.cfg = cfg or LoaderConfig()
        self.rank, self.world = rank, world_size
        self.workers = max(1, self.cfg.num_workers)
        self.table = SampleTable.build(resolve_shards(shards, index), labeler, self.cfg.min_duration,
                                       self.cfg.max_duration, conv_kernel, conv_stride, self.cfg.max_batch_seconds)
        kept = self.table.durations[self.table.drop_reason == None]  # noqa: E711
        if len(kept) == 0:
            raise ValueError(f"no sample of {shards!r} passes the filters: {self.drops_at_plan()}")
        self.edges = bucket_edges(kept, self.cfg.num_buckets)
        self.epoch = 0
        self.consumed = [0] * self.workers
        self._plans: tuple[int, list] | None = None
        self.worker_stats: dict[int, dict] = {}
        self.wait_seconds = 0.0

    def drops_at_plan(self) -> dict[str, int]:
        return dict(Counter(r for r in self.table.drop_reason if r is not None))

    def plans(self) -> list[list[WorkerPlan]]:
        if self._plans is None or self._plans[0] != self.epoch:
            self._plans = (self.epoch, plan_epoch(self.table, self.cfg, self.epoch, self.world, self.workers,
                                                  self.edges))
        return self._plans[1]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, [0] * self.workers

    def __len__(self) -> int:
        return sum(p.num_batches for p in self.plans()[self.rank])

    @property
    def finished(self) -> bool:
        """Every batch of this epoch has been consumed (a checkpoint may land exactly here)."""
        return sum(self.consumed) == len(self)

    def padding_fraction(self) -> float:
        """The plan's padding fraction for this rank and epoch (what the bucketer achieves)."""
        real = padded = 0.0
        for p in self.plans()[self.rank]:
            seconds = self.table.durations[p.stream]
            frac = padding_fraction(p.order, p.offsets, seconds)
            real += seconds[p.order].sum()
            padded += seconds[p.order].sum() / (1.0 - frac) if frac < 1 else 0.0
        return 1.0 - real / padded if padded else 0.0

    def __iter__(self) -> Iterator[dict]:
        plans = self.plans()[self.rank]
        if self.finished:  # iterating a finished epoch again: a new pass over the same epoch
            self.consumed = [0] * self.workers
        remaining = [p.num_batches - c for p, c in zip(plans, self.consumed, strict=True)]
        # the canonical order: round-robin over workers by batch index, whatever DataLoader delivers
        expected = sorted(((c + k, w) for w, c in enumerate(self.consumed) for k in range(remaining[w])))
        if self.cfg.num_workers == 0:  # in process: no DataLoader, whose per-batch conversion walks every key
            source = iter(_EpochStream(self))
        else:
            _load_kernels()
            source = iter(torch.utils.data.DataLoader(
                _EpochStream(self), batch_size=None, num_workers=self.cfg.num_workers,
                persistent_workers=False, prefetch_factor=4, multiprocessing_context="fork",
                # its own generator: creating the iterator must not draw from the global torch RNG, or
                # a resumed run (new iterator mid-epoch) would see other dropout masks than an uninterrupted one
                generator=torch.Generator().manual_seed(self.cfg.seed)))
        held: dict[tuple[int, int], dict] = {}
        for index, worker in expected:
            start = time.perf_counter()
            while (worker, index) not in held:
                batch = next(source)
                held[(batch["worker"], batch["index"])] = batch
            self.wait_seconds += time.perf_counter() - start
            batch = held.pop((worker, index))
            self.consumed[worker] = index + 1
            self.worker_stats[worker] = batch["stats"]
            yield batch

    def diagnostics(self) -> dict:
        """Counters the training loop logs: drops by reason, corrupt members, loader wait, decode time."""
        totals: Counter = Counter()
        for stats in self.worker_stats.values():
            totals.update(stats)
        decode = totals.pop("decode_seconds_x1e6", 0) / 1e6
        return {"drops": dict(totals), "loader_wait_seconds": self.wait_seconds, "decode_seconds": decode}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": list(self.consumed), "seed": self.cfg.seed,
                "world_size": self.world, "num_workers": self.workers, "num_samples": len(self.table)}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("world_size", self.world), ("num_workers", self.workers),
                          ("num_samples", len(self.table)), ("seed", self.cfg.seed)):
            if state[key] != mine:
                raise ValueError(f"loader state was saved with {key}={state[key]}, this run has {mine}: "
                                 "exact resume needs the same shards, seed, world size and workers")
        self.epoch, self.consumed = state["epoch"], list(state["consumed"])
