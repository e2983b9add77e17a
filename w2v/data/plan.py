"""The epoch plan: which worker of which rank reads which samples, and how they are batched.

Metadata only, no I/O: everything here is computed from the shard index (durations, texts), so it
is a pure function of (seed, epoch, rank, worker). For each epoch the shard order is shuffled from
(seed, epoch) and split by rank, then by dataloader worker (by sample when there are fewer shards
than ranks or workers); each worker's read order goes through a bounded shuffle buffer, the
filters (duration bounds, CTC feasibility) and the numba bucketer (`w2v.data.bucketing`). Every
rank computes every rank's batch count and splits batches until all have the same number: no DDP
hang, and in epoch mode every sample is used exactly once per epoch across ranks and workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from w2v.data.bucketing import plan_batches, shuffle_order
from w2v.data.decode import FLAC_DECODERS
from w2v.data.equalize import equalize_batch_count
from w2v.data.labels import labels
from w2v.shards.columns import ShardColumns
from w2v.shards.index import SAMPLE_RATE
from w2v.shards.spec import SelectedShard
from w2v.text import Vocabulary


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


# Why a sample is left out of the plan: code i + 1 is DROP_REASONS[i]; 0 (KEPT) means it is planned.
DROP_REASONS = ("below_min_duration", "above_max_duration", "empty_labels", "ctc_infeasible")
KEPT = 0
BELOW_MIN_DURATION, ABOVE_MAX_DURATION, EMPTY_LABELS, CTC_INFEASIBLE = range(1, len(DROP_REASONS) + 1)


def count_drops(codes: np.ndarray) -> dict[str, int]:
    """{reason: count} for the dropped samples among `codes` (kept ones are not listed)."""
    counts = np.bincount(codes, minlength=len(DROP_REASONS) + 1)
    return {reason: int(counts[i + 1]) for i, reason in enumerate(DROP_REASONS) if counts[i + 1]}


def per_sample(shards: list[SelectedShard], column: Callable[[ShardColumns], np.ndarray], dtype) -> np.ndarray:
    """One value per sample of the selected shards, from a per-row array of their columns: the
    memory map itself when the shards are all of one index in its order (a folder), so its pages
    stay shared between ranks; else the slices, copied together."""
    if not shards:
        return np.zeros(0, dtype=dtype)
    first = shards[0].columns
    if all(s.columns is first and s.position == k for k, s in enumerate(shards)) and len(shards) == len(first.names):
        return column(first).astype(dtype, copy=False)
    return np.concatenate([column(s.columns)[s.start:s.start + s.size] for s in shards]).astype(dtype, copy=False)


class SampleTable:
    """Every sample of the selected shards as flat arrays (global sample id = row): shard, position
    in it, duration, drop reason. Keys, texts and labels stay in the memory-mapped columns and are
    read when a batch is made."""

    def __init__(self, shards: list[SelectedShard], durations: np.ndarray, drop_reason: np.ndarray,
                 label_ids: Callable[[int], np.ndarray] | None):
        self.shards = shards
        self.shard_sizes = np.array([s.size for s in shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)  # and the total
        self.shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), self.shard_sizes)
        self.local = (np.arange(int(self.shard_starts[-1]), dtype=np.int64)
                      - self.shard_starts[self.shard_of]).astype(np.int32)
        self.durations = durations
        self.drop_reason = drop_reason  # int8 per sample: KEPT, or the code of the filter that drops it
        self._label_ids = label_ids
        self._label_stores: dict | None = None  # id(columns) → Labels, when labels come from the cache

    @classmethod
    def build(cls, shards: list[SelectedShard], cfg: LoaderConfig, vocab: Vocabulary | None = None,
              labeler: Callable[[str], Sequence[int]] | None = None, conv_kernel: Sequence[int] | None = None,
              conv_stride: Sequence[int] | None = None) -> SampleTable:
        """Labels from `vocab` are read from the columns' label cache (built once per vocabulary);
        from `labeler` (text → label ids), it is called once per text; with neither, there are no
        labels and no label filters."""
        if vocab is not None and labeler is not None:
            raise ValueError("give the labels by vocab (cached) or by labeler (per text), not both")
        durations = per_sample(shards, lambda columns: columns.durations, np.float64)
        reason = np.zeros(len(durations), dtype=np.int8)  # the first filter that drops a sample names it
        if cfg.min_duration:
            reason[durations < cfg.min_duration] = BELOW_MIN_DURATION
        cap = cfg.max_duration or np.inf
        if not cfg.long_alone:  # in training, a batch must not exceed its cap: that is what bounds memory
            cap = min(cap, cfg.max_batch_seconds)
        reason[(durations > cap) & (reason == KEPT)] = ABOVE_MAX_DURATION
        table = cls(shards, durations, reason, None)
        if vocab is not None:
            need = table._cached_labels(vocab)
        elif labeler is not None:
            need = table._computed_labels(labeler)
        else:
            return table
        reason[(need == 0) & (reason == KEPT)] = EMPTY_LABELS
        if conv_kernel is not None:
            frames = output_frames(np.rint(durations * SAMPLE_RATE), conv_kernel, conv_stride)
            reason[(need > frames) & (reason == KEPT)] = CTC_INFEASIBLE
        return table

    def _cached_labels(self, vocab: Vocabulary) -> np.ndarray:
        """Labels from the columns' cache for this vocabulary; CTC's minimum frames per sample."""
        stores = {}  # id(columns) → its labels, cached per vocabulary
        for shard in self.shards:
            if id(shard.columns) not in stores:
                stores[id(shard.columns)] = labels(shard.columns, vocab)

        def label_ids(i: int) -> np.ndarray:
            shard = self.shards[self.shard_of[i]]
            return stores[id(shard.columns)][shard.start + int(self.local[i])]

        self._label_ids = label_ids
        self._label_stores = stores
        return per_sample(self.shards, lambda columns: stores[id(columns)].need, np.int32)

    def _computed_labels(self, labeler: Callable[[str], Sequence[int]]) -> np.ndarray:
        """Labels from calling `labeler` on every text; CTC's minimum frames per sample."""
        computed = [np.asarray(labeler(self.text(i)), dtype=np.int64) for i in range(len(self))]
        self._label_ids = computed.__getitem__
        return np.array([ctc_min_frames(lab) for lab in computed], dtype=np.int64)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def has_labels(self) -> bool:
        return self._label_ids is not None

    def _row(self, i: int) -> tuple[ShardColumns, int]:
        shard = self.shards[self.shard_of[i]]
        return shard.columns, shard.start + int(self.local[i])

    def key(self, i: int) -> str:
        columns, row = self._row(i)
        return columns.keys[row]

    def text(self, i: int) -> str:
        columns, row = self._row(i)
        return columns.texts[row]

    def texts(self) -> Iterator[str]:
        return (self.text(i) for i in range(len(self)))

    def label_ids(self, i: int) -> np.ndarray:
        return self._label_ids(i)

    def samples_with_label(self, label: int) -> np.ndarray:
        """Ids of the samples whose labels hold `label`; for [UNK] with cached labels, from the rows
        the cache found when it was built."""
        stores = self._label_stores
        if stores is None or any(store.unk_id != label for store in stores.values()):
            return np.array([i for i in range(len(self)) if (self.label_ids(i) == label).any()], dtype=np.int64)
        found, first = [], 0
        for shard in self.shards:
            rows = stores[id(shard.columns)].unknown_rows
            lo, hi = np.searchsorted(rows, [shard.start, shard.start + shard.size])
            found.append(np.asarray(rows[lo:hi]) - shard.start + first)
            first += shard.size
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def kept(self) -> np.ndarray:
        """bool per sample: not dropped by a filter."""
        return self.drop_reason == KEPT

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


def _read_order(table: SampleTable, shards: np.ndarray, remaining: np.ndarray | None) -> np.ndarray:
    """The sample ids of these shards in read order (shards in the given order, samples in tar
    order), less those not `remaining`."""
    if len(shards) == 0:
        return np.zeros(0, np.int64)
    starts = table.shard_starts
    ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards.tolist()])
    return ids if remaining is None else ids[remaining[ids]]


def _segments(ids: np.ndarray, shard_of: np.ndarray) -> list[Segment]:
    """The reads of a read order: runs of one shard, split again where the ids start over (the
    same shard drawn twice in a row in resampled mode is two reads, not one)."""
    if len(ids) == 0:
        return []
    cuts = np.flatnonzero((np.diff(shard_of[ids]) != 0) | (np.diff(ids) <= 0)) + 1
    starts = np.concatenate([[0], cuts])
    return [Segment(int(shard_of[ids[s]]), int(s), ids[s:e])
            for s, e in zip(starts, np.concatenate([cuts, [len(ids)]]), strict=True)]


def _batch_stream(table: SampleTable, ids: np.ndarray, cfg: LoaderConfig, seed: int,
                  edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Shuffle buffer → filters → bucketer over one worker's read order; batches as stream positions."""
    positions = np.arange(len(ids), dtype=np.int64)
    if cfg.shuffle and cfg.shuffle_buffer > 1 and len(ids) > 1:
        positions = shuffle_order(len(ids), cfg.shuffle_buffer, seed)
    reasons = table.drop_reason[ids[positions]]
    keep = reasons == KEPT
    drops = count_drops(reasons[~keep])
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
    # "w2v": mono 16-bit FLAC through w2v.data.flac (faster); "soundfile": always libsndfile
    flac_decoder: str = "w2v"
    # A remote shard read that fails is resumed where it stopped, this many attempts in all, waiting
    # backoff × 2^k seconds before the k-th retry (w2v.shards.remote); local files are not affected
    remote_attempts: int = 5
    remote_backoff_seconds: float = 1.0
    # Batches in page-locked memory, for asynchronous copies to a GPU (`.to(device, non_blocking=True)`)
    pin_memory: bool = False
    # An utterance longer than max_batch_seconds: False drops it (above_max_duration), True gives it
    # a batch of its own (evaluation, where every utterance must be scored)
    long_alone: bool = False

    @classmethod
    def evaluation(cls, max_batch_seconds: float, return_attention_mask: bool, num_workers: int = 0,
                   **settings) -> LoaderConfig:
        """The rule for scoring a set: every utterance of it, in index order (no shuffling, no
        duration filter; one longer than the batch cap is batched alone). Train and evaluate alike."""
        return cls(max_batch_seconds=max_batch_seconds, return_attention_mask=return_attention_mask,
                   num_workers=num_workers, shuffle=False, min_duration=None, max_duration=None, long_alone=True,
                   **settings)

    def __post_init__(self) -> None:
        if self.flac_decoder not in FLAC_DECODERS:
            raise ValueError(f"flac_decoder must be one of {FLAC_DECODERS}, not {self.flac_decoder!r}")
        if self.mode not in ("epoch", "resampled"):
            raise ValueError(f"mode must be 'epoch' or 'resampled', not {self.mode!r}")


def plan_epoch(table: SampleTable, cfg: LoaderConfig, epoch: int, world: int, workers: int,
               edges: np.ndarray, remaining: np.ndarray | None = None, part: int = 0) -> list[list[WorkerPlan]]:
    """plans[rank][worker] for one epoch, equal batch counts per rank.

    `remaining` (bool per sample) plans only those samples: the rest of an epoch interrupted and
    resumed on another number of ranks or workers, its `part` 1, 2, … (part 0 is the whole epoch).
    """
    if cfg.mode == "resampled":
        return [[_resampled_plan(table, cfg, epoch, r, w, world, workers, edges) for w in range(workers)]
                for r in range(world)]
    rng = np.random.default_rng([cfg.seed, epoch])
    # the shards in the epoch's read order (those with a sample left to plan); split between ranks,
    # then workers, as whole shards, every world-th one (no pass over the samples to split them)
    shard_order = rng.permutation(table.num_shards) if cfg.shuffle else np.arange(table.num_shards)
    left = table.shard_sizes if remaining is None else np.bincount(table.shard_of[remaining], minlength=table.num_shards)
    shard_order = shard_order[left[shard_order] > 0]
    plans = []
    for rank in range(world):
        if len(shard_order) >= world:
            rank_shards, rank_ids = shard_order[rank::world], None
        else:  # fewer shards than ranks: every world-th sample, from the shards they fall in
            rank_ids = _read_order(table, shard_order, remaining)[rank::world]
            rank_shards = shard_order[np.isin(shard_order, table.shard_of[rank_ids])]
        rank_plans = []
        for worker in range(workers):
            if len(rank_shards) >= workers:  # whole shards, every workers-th one
                mine = rank_shards[worker::workers]
                ids = (_read_order(table, mine, remaining) if rank_ids is None
                       else rank_ids[np.isin(table.shard_of[rank_ids], mine)])
            else:  # every workers-th sample
                ids = (rank_ids if rank_ids is not None else _read_order(table, rank_shards, remaining))[worker::workers]
            seed = _seed(cfg.seed, epoch, rank, worker, *([part] if part else []))
            order, offsets, drops = _batch_stream(table, ids, cfg, seed, edges)
            rank_plans.append(WorkerPlan(_segments(ids, table.shard_of), ids, order, offsets, drops))
        plans.append(rank_plans)
    target = max(sum(p.num_batches for p in rank_plans) for rank_plans in plans)
    for rank_plans in plans:
        _equalize(rank_plans, table, target)
    return plans


def consumed_samples(plans: list[list[WorkerPlan]], consumed: list[list[int]]) -> np.ndarray:
    """The sample ids of the first consumed[rank][worker] batches of each worker's plan."""
    taken = [p.stream[p.order[:p.offsets[c]]] for rank_plans, counts in zip(plans, consumed, strict=True)
             for p, c in zip(rank_plans, counts, strict=True)]
    return np.concatenate(taken) if taken else np.zeros(0, np.int64)


def remaining_samples(table: SampleTable, cfg: LoaderConfig, epoch: int, edges: np.ndarray,
                      history: list[dict]) -> np.ndarray | None:
    """bool per sample: not yet consumed in this epoch, replaying its earlier parts (each planned for
    the world it ran on, `{"world_size", "num_workers", "consumed": [[per worker] per rank]}`);
    None for an epoch with no earlier part."""
    remaining = None
    for part, earlier in enumerate(history):
        plans = plan_epoch(table, cfg, epoch, earlier["world_size"], earlier["num_workers"], edges, remaining, part)
        if remaining is None:
            remaining = table.kept()  # what the filters drop is never to come
        remaining[consumed_samples(plans, earlier["consumed"])] = False
    return remaining


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
    starts = np.concatenate([[0], np.cumsum(table.shard_sizes)]).astype(np.int64)
    kept_seconds = table.durations[table.kept()].sum()
    if kept_seconds <= 0:
        raise ValueError("no sample passes the filters")
    drawn: list[int] = []
    while True:
        per_shard = kept_seconds / table.num_shards
        while len(drawn) * per_shard < 1.2 * need * cfg.max_batch_seconds + per_shard:
            drawn.append(int(rng.integers(table.num_shards)))
        ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in drawn])
        order, offsets, drops = _batch_stream(table, ids, cfg, _seed(cfg.seed, epoch, rank, worker), edges)
        if len(offsets) - 1 >= need:
            offsets = offsets[: need + 1]
            return WorkerPlan(_segments(ids, table.shard_of), ids, order[: offsets[-1]], offsets, drops)
        drawn.append(int(rng.integers(table.num_shards)))
