"""Duration bucketing for streamed CTC batches: a batch *plan* computed from metadata only.

The loader knows every sample's duration in the order the stream will deliver it (from the shard
index), runs :func:`plan_batches` over those durations, then streams and decodes audio and emits each
planned batch once all its members have arrived. Everything here is therefore a pure, deterministic
function of (durations in stream order, parameters): the same plan on every rank and every rerun.

Design (compared with Lhotse's DynamicBucketingSampler, the reference):

* Buckets hold about equal *total duration* (:func:`bucket_edges`, Lhotse's estimate).
* A batch is capped by its padded size, ``n * longest <= max_batch_seconds`` using the true longest
  member, so batches are as full as the cap allows.
* Each bucket keeps a FIFO queue of up to ``lookahead`` batches' worth of samples. When it must emit,
  it sorts its queue by duration and emits the one full batch around its *oldest* sample that holds
  the most real audio. Sorting inside the queue cuts padding well below the bucket width (what
  limits Lhotse to ~4 % at 30 buckets), and anchoring on the oldest sample means no sample starves
  (a "take the longest" rule would strand the shortest samples of a bucket until the epoch ends).
  ``lookahead=1`` is exactly the plain rule "emit the queue when the next sample would break the cap".
* Memory bound. A sample is *buffered* from its arrival until its batch is emitted. At most
  ``buffer_size`` samples are buffered (when the count reaches it, the fullest bucket by padded
  seconds emits), and each bucket holds under ``lookahead * max_batch_seconds`` padded seconds plus
  one sample, so at most about ``num_buckets * lookahead * max_batch_seconds`` seconds of audio.
  A loader that releases the planned batches in plan order, each as soon as its last member has
  been decoded, never holds more than the plan buffers (each batch is emitted by the plan no earlier
  than its last member arrives), so these bounds are the loader's memory bounds too. Note that the
  bound is on *count/seconds*, not on stream distance: a sample of a rare bucket may wait long
  (it is still counted in the buffer while it waits).
* A single sample longer than ``max_batch_seconds`` forms a batch alone; the loader is expected to
  drop over-long samples (max duration filter) before planning.

All hot loops are numba ``@njit(cache=True)``; planning runs at several million samples per second.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "bucket_edges",
    "shuffle_order",
    "plan_batches",
    "padding_fraction",
]


# ----------------------------------------------------------------------------------------------
# Bucket edges
# ----------------------------------------------------------------------------------------------


def bucket_edges(durations: np.ndarray, num_buckets: int = 30) -> np.ndarray:
    """Return ``num_buckets - 1`` increasing inner edges so each bucket holds ~equal total duration.

    Bucket ``b`` holds durations ``edges[b-1] <= d < edges[b]`` (first bucket from 0, last to inf),
    i.e. ``np.searchsorted(edges, d, side="right")``. Edges are taken at the sorted durations where
    the running total crosses ``k / num_buckets`` of the grand total (Lhotse's estimate; repeated
    durations can make two edges equal, which just leaves a bucket empty).
    """
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    d = np.sort(np.asarray(durations, dtype=np.float64))
    if d.size == 0 or num_buckets == 1:
        return np.empty(0, dtype=np.float64)
    cum = np.cumsum(d)
    targets = cum[-1] * np.arange(1, num_buckets, dtype=np.float64) / num_buckets
    # First sorted index whose running total passes each target starts the next bucket.
    idx = np.minimum(np.searchsorted(cum, targets, side="right") + 1, d.size - 1)
    return d[idx]


# ----------------------------------------------------------------------------------------------
# Random numbers (own generator so results never depend on numpy's global state or version)
# ----------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _splitmix64(x: np.uint64) -> np.uint64:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    if z == np.uint64(0):  # xorshift must not start at 0
        z = np.uint64(1)
    return z


@numba.njit(cache=True)
def _randint(state: np.uint64, m: np.int64) -> tuple[np.uint64, np.int64]:
    """xorshift64* step; returns (new state, uniform integer in [0, m)) for 0 < m < 2**32."""
    x = state
    x = x ^ (x >> np.uint64(12))
    x = x ^ (x << np.uint64(25))
    x = x ^ (x >> np.uint64(27))
    r = (x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32)
    # Multiply-shift maps 32 random bits onto [0, m) (Lemire); bias < m / 2**32, negligible.
    return x, np.int64((r * np.uint64(m)) >> np.uint64(32))


@numba.njit(cache=True)
def _shuffle_kernel(n: int, buffer_size: int, seed: np.uint64) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    b = min(buffer_size, n)
    buf = np.arange(b)
    state = _splitmix64(seed)
    k = 0
    for p in range(b, n):  # buffer full: emit a random buffered item, the new one takes its slot
        state, j = _randint(state, b)
        out[k] = buf[j]
        k += 1
        buf[j] = p
    m = b
    while m > 0:  # stream ended: drain the buffer in random order
        state, j = _randint(state, m)
        out[k] = buf[j]
        k += 1
        buf[j] = buf[m - 1]
        m -= 1
    return out


def shuffle_order(n: int, buffer_size: int, seed: int) -> np.ndarray:
    """Output order of a bounded (WebDataset-style) shuffle buffer over a stream of ``n`` items.

    The first ``buffer_size`` items fill the buffer; then each new item evicts a uniformly chosen
    buffered item (which is emitted) and takes its slot; at the end the buffer drains in random
    order. ``out[i]`` is the stream position of the i-th emitted item. Deterministic for ``seed``
    (own xorshift64* generator). Bound: ``out[i] <= i + buffer_size - 1``, i.e. the item at position
    ``p`` is never emitted before output index ``p - buffer_size + 1``.
    """
    if n < 0 or buffer_size < 1:
        raise ValueError("need n >= 0 and buffer_size >= 1")
    if buffer_size >= 2**32:
        raise ValueError("buffer_size must be < 2**32")
    return _shuffle_kernel(int(n), int(buffer_size), np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))


# ----------------------------------------------------------------------------------------------
# Batch planning
# ----------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _fit_count(longest: float, cap: float, max_count: int) -> int:
    """Largest n with n * longest <= cap (and n <= max_count if set), at least 1."""
    if longest <= 0.0:
        n = 1 << 62
    else:
        n = int(cap / longest)
        # Fix float rounding so the result agrees exactly with the test `n * longest <= cap`.
        while (n + 1) * longest <= cap:
            n += 1
        while n > 1 and n * longest > cap:
            n -= 1
    if max_count > 0 and n > max_count:
        n = max_count
    return max(n, 1)


@numba.njit(cache=True)
def _collect(b, head, nxt, durations, tmp_pos, tmp_dur, q=0):
    """Copy bucket ``b``'s queue (a linked list through ``nxt``) to ``tmp_*[q:]`` in arrival order."""
    p = head[b]
    while p >= 0:
        tmp_pos[q] = p
        tmp_dur[q] = durations[p]
        q += 1
        p = nxt[p]
    return q


@numba.njit(cache=True)
def _emit_one(b, head, tail, nxt, count, qmax, durations, cap, max_count, tmp_pos, tmp_dur,
              tmp_cum, taken, order, offsets, n_out, n_batches):
    """Emit from bucket ``b`` the full batch around its oldest sample holding the most real audio.

    The bucket's FIFO queue is copied to ``tmp_*`` in arrival order, sorted by duration (stable, so ties keep arrival order and the result is deterministic),
    and the window of consecutive sorted samples that contains the oldest one, fits the cap and has
    the largest total duration is emitted. Maximising real seconds per batch minimises
    padding + unused capacity together. Returns updated (n_out, n_batches).
    """
    q = _collect(b, head, nxt, durations, tmp_pos, tmp_dur)
    srt = np.argsort(tmp_dur[:q], kind="mergesort")
    r = 0  # rank of the oldest sample (tmp index 0) in sorted order
    tmp_cum[0] = 0.0
    for k in range(q):
        if srt[k] == 0:
            r = k
        tmp_cum[k + 1] = tmp_cum[k] + tmp_dur[srt[k]]
    best_i = r
    best_j = r
    best_total = -1.0
    for j in range(r, q):
        n_fit = _fit_count(tmp_dur[srt[j]], cap, max_count)
        i = j - n_fit + 1
        if i > r:  # windows topped by longer samples no longer reach the oldest one
            break
        if i < 0:
            i = 0
        total = tmp_cum[j + 1] - tmp_cum[i]
        if total > best_total:
            best_total = total
            best_i = i
            best_j = j
    for k in range(best_i, best_j + 1):
        taken[srt[k]] = True
        order[n_out] = tmp_pos[srt[k]]
        n_out += 1
    n_batches += 1
    offsets[n_batches] = n_out
    # Relink the remaining samples in arrival order and recompute the queue's stats.
    head[b] = -1
    tail[b] = -1
    cnt = 0
    mx = 0.0
    for k in range(q):
        if taken[k]:
            taken[k] = False
            continue
        p = tmp_pos[k]
        nxt[p] = -1
        if tail[b] < 0:
            head[b] = p
        else:
            nxt[tail[b]] = p
        tail[b] = p
        cnt += 1
        if tmp_dur[k] > mx:
            mx = tmp_dur[k]
    count[b] = cnt
    qmax[b] = mx
    return n_out, n_batches


@numba.njit(cache=True)
def _drain_all(head, nxt, num_buckets, durations, cap, max_count, tmp_pos, tmp_dur, order, offsets, n_out,
               n_batches, seed):
    """End of stream: pool what every bucket still holds, pack it from the longest sample down.

    Pooling (rather than draining each bucket alone) matters for the last batches of an epoch and
    for small data sets: leftovers of neighbouring buckets share batches instead of each bucket
    emitting its own part-empty one. The drained batches are emitted in a random order (from
    ``seed``), so epochs do not all end with the same length-sorted run of batches.
    """
    q = 0
    for b in range(num_buckets):
        q = _collect(b, head, nxt, durations, tmp_pos, tmp_dur, q)
        head[b] = -1
    srt = np.argsort(tmp_dur[:q], kind="mergesort")
    first_batch = n_batches
    start_out = n_out
    j = q - 1
    while j >= 0:
        n_fit = _fit_count(tmp_dur[srt[j]], cap, max_count)
        i = max(j - n_fit + 1, 0)
        for k in range(i, j + 1):
            order[n_out] = tmp_pos[srt[k]]
            n_out += 1
        n_batches += 1
        offsets[n_batches] = n_out
        j = i - 1
    # shuffle the drained batches (Fisher-Yates over batch indices), then rewrite them in that order
    m = n_batches - first_batch
    perm = np.arange(m)
    state = _splitmix64(seed)
    for k in range(m - 1, 0, -1):
        state, r = _randint(state, k + 1)
        perm[k], perm[r] = perm[r], perm[k]
    block = order[start_out:n_out].copy()
    bounds = offsets[first_batch:n_batches + 1].copy() - start_out
    w = start_out
    for k in range(m):
        b = perm[k]
        for t in range(bounds[b], bounds[b + 1]):
            order[w] = block[t]
            w += 1
        offsets[first_batch + k + 1] = w
    return n_out, n_batches


@numba.njit(cache=True)
def _plan_kernel(durations, bucket, num_buckets, cap, max_count, buffer_size, lookahead, seed):
    n = durations.shape[0]
    order = np.empty(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    head = np.full(num_buckets, -1, dtype=np.int64)
    tail = np.full(num_buckets, -1, dtype=np.int64)
    count = np.zeros(num_buckets, dtype=np.int64)
    qmax = np.zeros(num_buckets, dtype=np.float64)
    qsize = min(n, buffer_size) + 1
    tmp_pos = np.empty(qsize, dtype=np.int64)
    tmp_dur = np.empty(qsize, dtype=np.float64)
    tmp_cum = np.empty(qsize + 1, dtype=np.float64)
    taken = np.zeros(qsize, dtype=np.bool_)
    queue_cap = lookahead * cap
    queue_count_cap = lookahead * max_count
    n_out = 0
    n_batches = 0
    total = 0
    for p in range(n):
        d = durations[p]
        b = bucket[p]
        # Would adding this sample push the bucket past `lookahead` batches? Emit first.
        while count[b] > 0 and (
            (count[b] + 1) * max(qmax[b], d) > queue_cap
            or (max_count > 0 and count[b] + 1 > queue_count_cap)
        ):
            before = n_out
            n_out, n_batches = _emit_one(
                b, head, tail, nxt, count, qmax, durations, cap, max_count,
                tmp_pos, tmp_dur, tmp_cum, taken, order, offsets, n_out, n_batches,
            )
            total -= n_out - before
        # Append to the bucket's FIFO queue.
        if tail[b] < 0:
            head[b] = p
        else:
            nxt[tail[b]] = p
        tail[b] = p
        count[b] += 1
        if d > qmax[b]:
            qmax[b] = d
        total += 1
        # Global memory bound: the fullest bucket (padded seconds) gives up a batch.
        while total >= buffer_size:
            fb = 0
            best = -1.0
            for k in range(num_buckets):
                padded = count[k] * qmax[k]
                if count[k] > 0 and padded > best:
                    best = padded
                    fb = k
            before = n_out
            n_out, n_batches = _emit_one(
                fb, head, tail, nxt, count, qmax, durations, cap, max_count,
                tmp_pos, tmp_dur, tmp_cum, taken, order, offsets, n_out, n_batches,
            )
            total -= n_out - before
    n_out, n_batches = _drain_all(head, nxt, num_buckets, durations, cap, max_count, tmp_pos, tmp_dur, order,
                                  offsets, n_out, n_batches, seed)
    return order, offsets[: n_batches + 1].copy()


def plan_batches(
    durations: np.ndarray,
    edges: np.ndarray,
    max_batch_seconds: float,
    max_batch_size: int = 0,
    buffer_size: int = 20000,
    lookahead: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Plan padded-duration-capped batches over samples arriving in stream order.

    Args:
        durations: float seconds per sample, in the order the stream delivers them.
        edges: inner bucket edges (:func:`bucket_edges`); bucket = ``searchsorted(edges, d, "right")``.
        max_batch_seconds: cap on ``n * longest`` per batch (the padded audio of the batch).
        max_batch_size: cap on samples per batch; 0 = none.
        buffer_size: max samples buffered (arrived, batch not yet emitted) at any time.
        lookahead: batches' worth of samples each bucket may queue before emitting (sorting a
            deeper queue lowers padding; memory is about ``len(edges)+1`` x ``lookahead`` x
            ``max_batch_seconds`` seconds of audio). 1 = the plain "emit when full" rule.
        seed: orders the batches drained at the end of the stream (everything else is seedless).

    Returns:
        ``(order, offsets)``: batch ``j`` is ``order[offsets[j]:offsets[j+1]]`` (stream positions),
        in emission order. Every position appears exactly once. Batches obey both caps, except that a
        sample longer than ``max_batch_seconds`` forms a batch alone (filter those out beforehand).
    """
    d = np.ascontiguousarray(durations, dtype=np.float64)
    e = np.ascontiguousarray(edges, dtype=np.float64)
    if d.ndim != 1 or e.ndim != 1:
        raise ValueError("durations and edges must be 1-d")
    if not np.all(np.isfinite(d)) or (d.size and d.min() < 0):
        raise ValueError("durations must be finite and >= 0")
    if not max_batch_seconds > 0 or buffer_size < 1 or lookahead < 1 or max_batch_size < 0:
        raise ValueError("need max_batch_seconds > 0, buffer_size >= 1, lookahead >= 1, max_batch_size >= 0")
    bucket = np.searchsorted(e, d, side="right").astype(np.int64)
    return _plan_kernel(d, bucket, e.size + 1, float(max_batch_seconds), int(max_batch_size),
                        int(buffer_size), int(lookahead), np.uint64(seed))


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _padding_kernel(order, offsets, durations):
    real = 0.0
    padded = 0.0
    for j in range(offsets.shape[0] - 1):
        mx = 0.0
        for k in range(offsets[j], offsets[j + 1]):
            d = durations[order[k]]
            real += d
            if d > mx:
                mx = d
        padded += (offsets[j + 1] - offsets[j]) * mx
    return real, padded


def padding_fraction(order: np.ndarray, offsets: np.ndarray, durations: np.ndarray) -> float:
    """Fraction of padded frames: ``1 - sum(duration) / sum(n_b * longest_b)`` (0 if empty)."""
    real, padded = _padding_kernel(
        np.ascontiguousarray(order, dtype=np.int64),
        np.ascontiguousarray(offsets, dtype=np.int64),
        np.ascontiguousarray(durations, dtype=np.float64),
    )
    return 0.0 if padded <= 0.0 else 1.0 - real / padded
