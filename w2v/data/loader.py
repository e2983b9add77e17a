"""The streaming loader: tar shards → length-bucketed, normalised, padded CTC batches for one rank.

1. **Plan from metadata** (`w2v.data.plan`): which worker reads which samples and how they are
   batched, the same on every rank and every rerun.
2. **Stream audio.** Each worker reads its shards sequentially (`w2v.shards.tar`: local files, or any
   URL WebDataset's `gopen` opens), decodes only the members its plan needs from bytes in memory
   (`w2v.data.decode`), and releases each planned batch as soon as its last member is decoded.
   Memory is bounded by the shuffle buffer plus the bucketer's buffer.
3. **Normalise and pad** (`w2v.data.padding`, numba): zero mean / unit variance per utterance into
   one float32 batch, a bool `attention_mask` when the model wants one, labels padded with -100.

Resume is exact and cheap: the state is (epoch, batches consumed per worker); the plan is recomputed
and each worker skips what was consumed without decoding it. Bad data (a truncated shard, a member
that does not decode) is logged, counted and skipped; a batch that loses all its members is still
yielded, as an `empty` batch, so that ranks stay in step.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import signal
import tarfile
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from w2v.data.bucketing import bucket_edges
from w2v.data.decode import decode_member
from w2v.data.flac import decode_flac
from w2v.data.padding import attention_mask_from_lengths, normalize_and_pad, pad_labels
from w2v.data.plan import (
    LoaderConfig,
    SampleTable,
    Segment,
    WorkerPlan,
    count_drops,
    plan_epoch,
    remaining_samples,
)
from w2v.preemption import signal_when_parent_dies
from w2v.shards.audio import encode
from w2v.shards.index import SAMPLE_RATE
from w2v.shards.spec import SelectedShard, select_shards
from w2v.shards.tar import tar_members
from w2v.text import Vocabulary

log = logging.getLogger(__name__)


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
        want = {self.table.key(i): seg.start + k for k, i in enumerate(seg.ids) if needed[k]}
        try:
            for key, ext, data in tar_members(shard.url, shard.bytes, self.cfg.remote_attempts,
                                              self.cfg.remote_backoff_seconds, self.stats):
                pos = want.get(key)
                if pos is None or ext == "json":
                    continue
                del want[key]
                start = time.perf_counter()
                try:
                    pending[pos] = decode_member(data, self.cfg.flac_decoder)
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
        labels = [table.label_ids(i) for i in ids] if table.has_labels else None
        if not waves:  # a stand-in the training loop weights by zero: ranks stay in step
            waves = [np.zeros(SAMPLE_RATE, np.int16)]
            labels = None if labels is None else [np.full(1, -100, np.int64)]
        values = normalize_and_pad(waves)
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
        batch["keys"] = [table.key(i) for i in ids]
        batch["texts"] = [table.text(i) for i in ids]
        batch["audio_seconds"] = float(lengths.sum()) / SAMPLE_RATE if ids else 0.0
        batch["padded_seconds"] = float(values.size) / SAMPLE_RATE if ids else 0.0
        return batch


_kernels_ready = False


def load_kernels() -> float:
    """Compile or load this process's numba kernels (FLAC decoding, normalise + pad) now; the
    seconds it took. Called before DataLoader forks its workers (they inherit the kernels instead
    of each loading them from the cache again every epoch), and by train.py before its first
    update, so that a first run's compilation is not counted as waiting for batches."""
    global _kernels_ready
    start = time.perf_counter()
    if not _kernels_ready:
        decode_flac(encode(np.zeros(64, np.int16), "flac"))
        normalize_and_pad([np.zeros(8, np.int16)])
        _kernels_ready = True
    return time.perf_counter() - start


# DataLoader iterators whose workers may still run. The workers ignore SIGTERM (_ignore_stop_signals),
# and the interpreter's exit terminates, then joins, its child processes: a run that ends with an
# error mid-epoch (its iterator kept alive by the traceback) would wait on them for ever. An exit
# handler registered after multiprocessing's own runs before it and shuts them down.
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()
_exit_handler_registered = False


def shut_down_at_exit(iterator) -> None:
    global _exit_handler_registered
    if not _exit_handler_registered:  # multiprocessing registered its handler when it started the workers
        atexit.register(_shut_down_live_iterators)
        _exit_handler_registered = True
    _LIVE_ITERATORS.add(iterator)


def _shut_down_live_iterators() -> None:
    for iterator in list(_LIVE_ITERATORS):
        iterator._shutdown_workers()


def _ignore_stop_signals(worker_id: int) -> None:
    """A preemption signal is for the training process to act on (torchrun sends it to the whole
    process group): a worker it killed would take the batch in flight with it. Workers end with
    the process that owns them."""
    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):  # Ctrl-C too: the training process says what happens
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal_when_parent_dies(signal.SIGKILL)  # and a worker cannot outlive its process, stuck on a read


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


def _is_selection(shards) -> bool:
    return isinstance(shards, list) and bool(shards) and all(isinstance(s, SelectedShard) for s in shards)


class SpeechLoader:
    """Batches for one rank: `for batch in loader` per epoch; `set_epoch`, `len`, state for resume.

    Batches are dicts: `input_values` float32 [B, T] (normalised, zero padded), `input_lengths`,
    `attention_mask` bool [B, T] (when `return_attention_mask`: layer-norm models such as XLS-R;
    group-norm wav2vec2-base must not get one), `labels` int64 [B, L] padded with -100, `keys`,
    `texts`, `audio_seconds`, `padded_seconds`, `empty` (a zero-weight stand-in that keeps ranks in
    step), and `stats` (the worker's running counters: drops by reason, corrupt members).

    `shards`: a selection (`w2v.shards.spec.select_shards`, what a run resolves once) or a spec.
    Labels: `vocab` reads them from the columns' label cache; `labeler` (text → ids) is called on
    every text; with neither, batches have no labels (evaluation scores from the texts).
    """

    def __init__(self, shards: list[SelectedShard] | str | Path | Sequence[str], cfg: LoaderConfig | None = None, *,
                 vocab: Vocabulary | None = None, labeler: Callable[[str], Sequence[int]] | None = None,
                 rank: int = 0, world_size: int = 1, conv_kernel: Sequence[int] | None = None,
                 conv_stride: Sequence[int] | None = None, index: str | None = None):
        self.cfg = cfg or LoaderConfig()
        self.rank, self.world = rank, world_size
        self.workers = max(1, self.cfg.num_workers)
        selected = shards if _is_selection(shards) else select_shards(shards, index)
        self.table = SampleTable.build(selected, self.cfg, vocab, labeler, conv_kernel, conv_stride)
        kept = self.table.durations[self.table.kept()]
        if len(kept) == 0:
            raise ValueError(f"no sample of its {len(selected)} shard(s) passes the filters: {self.drops_at_plan()}")
        self.edges = bucket_edges(kept, self.cfg.num_buckets)
        self.epoch = 0
        self.consumed = [0] * self.workers
        # earlier parts of this epoch, run on other worlds (an elastic resume): see load_state_dict
        self.history: list[dict] = []
        self._plans: tuple[tuple, list] | None = None
        self.worker_stats: dict[int, dict] = {}
        self.wait_seconds = 0.0

    def drops_at_plan(self) -> dict[str, int]:
        return count_drops(self.table.drop_reason)

    def plans(self) -> list[list[WorkerPlan]]:
        """plans[rank][worker] of this epoch: the whole epoch, or after an elastic resume the samples
        its earlier parts did not consume, planned for this world."""
        key = (self.epoch, len(self.history))
        if self._plans is None or self._plans[0] != key:
            remaining = remaining_samples(self.table, self.cfg, self.epoch, self.edges, self.history)
            self._plans = (key, plan_epoch(self.table, self.cfg, self.epoch, self.world, self.workers, self.edges,
                                           remaining, len(self.history)))
        return self._plans[1]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed, self.history = epoch, [0] * self.workers, []

    def __len__(self) -> int:
        return sum(p.num_batches for p in self.plans()[self.rank])

    @property
    def finished(self) -> bool:
        """Every batch of this epoch has been consumed (a checkpoint may land exactly here)."""
        return sum(self.consumed) == len(self)

    def batch_seconds(self, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The audio seconds and the padded seconds (n × longest) of each batch a rank (default:
        this one) plans in this epoch, worker after worker."""
        audio, padded = [np.zeros(0)], [np.zeros(0)]
        for p in self.plans()[self.rank if rank is None else rank]:
            sizes = np.diff(p.offsets)
            full = sizes > 0  # the empty batches that keep ranks in step hold no audio
            seconds = self.table.durations[p.stream][p.order]  # batch after batch
            audio.append(np.zeros(len(sizes)))
            padded.append(np.zeros(len(sizes)))
            if full.any():
                starts = p.offsets[:-1][full]
                audio[-1][full] = np.add.reduceat(seconds, starts)
                padded[-1][full] = sizes[full] * np.maximum.reduceat(seconds, starts)
        return np.concatenate(audio), np.concatenate(padded)

    def padded_seconds_per_batch(self) -> float:
        """The mean padded seconds (n × longest) of this rank's planned batches in this epoch."""
        _, padded = self.batch_seconds()
        return float(padded.mean()) if padded.size else 0.0

    def padding_fraction(self) -> float:
        """The plan's padding fraction for this rank and epoch (what the bucketer achieves)."""
        audio, padded = self.batch_seconds()
        return 1.0 - float(audio.sum() / padded.sum()) if padded.sum() else 0.0

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
            load_kernels()
            # A forked worker's garbage collections would write to every object of the parent (torch's,
            # transformers', the model's: ~100 MB), turning the shared pages into private copies.
            # Frozen objects are never visited; the parent unfreezes once its workers are started.
            gc.freeze()
            try:
                source = iter(torch.utils.data.DataLoader(
                    _EpochStream(self), batch_size=None, num_workers=self.cfg.num_workers,
                    persistent_workers=False, prefetch_factor=4, multiprocessing_context="fork",
                    worker_init_fn=_ignore_stop_signals, pin_memory=self.cfg.pin_memory,
                    # its own generator: creating the iterator must not draw from the global torch RNG, or
                    # a resumed run (new iterator mid-epoch) would see other dropout masks than an uninterrupted one
                    generator=torch.Generator().manual_seed(self.cfg.seed)))
            finally:
                gc.unfreeze()
            shut_down_at_exit(source)
        held: dict[tuple[int, int], dict] = {}
        try:
            for index, worker in expected:
                start = time.perf_counter()
                while (worker, index) not in held:
                    batch = next(source)
                    held[(batch["worker"], batch["index"])] = batch
                self.wait_seconds += time.perf_counter() - start
                batch = held.pop((worker, index))
                if self.cfg.pin_memory and self.cfg.num_workers == 0:  # (a DataLoader pins in its own thread)
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                self.consumed[worker] = index + 1
                self.worker_stats[worker] = batch["stats"]
                yield batch
        finally:
            # Stopped mid-epoch (the run's last update, a preemption): the workers go now. Left to the
            # garbage collector they would outlive main(), and the interpreter's exit would wait on
            # them for ever (they ignore the SIGTERM it sends them, see _ignore_stop_signals).
            shutdown = getattr(source, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def diagnostics(self) -> dict:
        """Counters the training loop logs: drops by reason, corrupt members, loader wait, decode
        time, and the remote reads that were resumed after a failure."""
        totals: Counter = Counter()
        for stats in self.worker_stats.values():
            totals.update(stats)
        decode = totals.pop("decode_seconds_x1e6", 0) / 1e6
        retries = totals.pop("remote_retries", 0)
        return {"drops": dict(totals), "loader_wait_seconds": self.wait_seconds, "decode_seconds": decode,
                "remote_retries": retries}

    def state_dict(self) -> dict:
        """This rank's position: the epoch, the batches each worker consumed, and the earlier parts
        of the epoch (after an elastic resume). Small: no sample lists."""
        return {"epoch": self.epoch, "consumed": list(self.consumed), "seed": self.cfg.seed,
                "world_size": self.world, "num_workers": self.workers, "num_samples": len(self.table),
                "rank": self.rank, "history": self.history}

    def load_state_dict(self, state: dict | list[dict]) -> str:
        """Resume from one state (the same world size and workers: exactly the batches an
        uninterrupted run would yield) or from the list of every old rank's `state_dict()` (any
        world size and workers: the rest of the epoch is planned over the samples it did not
        consume, so each sample is still used once in it). Returns "exact" or "elastic"."""
        states = state if isinstance(state, list) else [state]
        first = states[0]
        for key, mine in (("num_samples", len(self.table)), ("seed", self.cfg.seed)):
            if any(s[key] != mine for s in states):
                raise ValueError(f"loader state was saved with {key}={first[key]}, this run has {mine}: "
                                 "resuming needs the same shards and seed")
        old_world, old_workers = first["world_size"], first["num_workers"]
        if old_world == self.world and old_workers == self.workers:
            mine = states[self.rank] if len(states) == old_world > 1 else first
            self.epoch, self.consumed, self.history = mine["epoch"], list(mine["consumed"]), list(mine.get("history", []))
            return "exact"
        if len(states) != old_world:
            raise ValueError(f"the loader ran on {old_world} ranks × {old_workers} workers, this one on "
                             f"{self.world} × {self.workers}: pass every old rank's state (a list) to resume elastically")
        if self.cfg.mode != "epoch":
            raise ValueError(f"mode {self.cfg.mode!r} resumes only with the same world size and workers")
        if len({(s["epoch"], json.dumps(s.get("history", []))) for s in states}) != 1:
            raise ValueError("the old ranks' states disagree on the epoch: they are not from one checkpoint")
        by_rank = sorted(states, key=lambda s: s.get("rank", states.index(s)))
        self.epoch, self.consumed = first["epoch"], [0] * self.workers
        self.history = [*first.get("history", []), {"world_size": old_world, "num_workers": old_workers,
                                                    "consumed": [list(s["consumed"]) for s in by_rank]}]
        if not remaining_samples(self.table, self.cfg, self.epoch, self.edges, self.history).any():
            self.set_epoch(self.epoch + 1)  # the old ranks had consumed the whole epoch
        return "elastic"
