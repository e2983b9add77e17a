"""Equal batch counts on every rank: split the largest batches of a plan until it has `target`.

Every rank must run the same number of steps per epoch, or DDP hangs at the first collective a
short rank never reaches. The planner (`w2v.data.plan`) computes each rank's batch count and splits
batches of the shorter ranks with :func:`equalize_batch_count`: the batch with the most padded
seconds is split first, sorted by length and cut where the two halves' padded seconds are most even,
so splitting does not add padding. numba kernels, like the bucketer's.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["equalize_batch_count"]



@numba.njit(cache=True)
def _heap_push(heap, size, keys, item):
    heap[size] = item
    c = size
    while c > 0:
        parent = (c - 1) // 2
        if keys[heap[parent]] >= keys[heap[c]]:
            break
        heap[parent], heap[c] = heap[c], heap[parent]
        c = parent
    return size + 1


@numba.njit(cache=True)
def _heap_pop(heap, size, keys):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    c = 0
    while True:
        left = 2 * c + 1
        if left >= size:
            break
        big = left
        if left + 1 < size and keys[heap[left + 1]] > keys[heap[left]]:
            big = left + 1
        if keys[heap[c]] >= keys[heap[big]]:
            break
        heap[c], heap[big] = heap[big], heap[c]
        c = big
    return top, size


@numba.njit(cache=True)
def _segment_key(order, durations, s, e):
    """Split priority: padded seconds, or -1 for a single sample (cannot split)."""
    if e - s < 2:
        return -1.0
    mx = 0.0
    for k in range(s, e):
        if durations[order[k]] > mx:
            mx = durations[order[k]]
    return (e - s) * mx


@numba.njit(cache=True)
def _equalize_kernel(order, offsets, durations, target):
    order = order.copy()
    nb = offsets.shape[0] - 1
    size = max(target, nb)
    starts = np.empty(size, dtype=np.int64)
    ends = np.empty(size, dtype=np.int64)
    keys = np.empty(size, dtype=np.float64)
    heap = np.empty(size, dtype=np.int64)
    hsize = 0
    for j in range(nb):
        starts[j] = offsets[j]
        ends[j] = offsets[j + 1]
        keys[j] = _segment_key(order, durations, starts[j], ends[j])
        hsize = _heap_push(heap, hsize, keys, j)
    m = nb
    while m < target and hsize > 0:
        top, hsize = _heap_pop(heap, hsize, keys)
        if keys[top] < 0.0:  # only single-sample batches left
            break
        s = starts[top]
        e = ends[top]
        seg = order[s:e].copy()
        srt = np.argsort(durations[seg], kind="mergesort")
        for k in range(e - s):
            order[s + k] = seg[srt[k]]
        # Split the length-sorted batch where the larger half's padded seconds is smallest, so
        # both halves cost about the same step time and each keeps low padding.
        n = e - s
        longest = durations[order[e - 1]]
        best_k = 1
        best_cost = 1e300
        for k in range(1, n):
            cost = max(k * durations[order[s + k - 1]], (n - k) * longest)
            if cost < best_cost:
                best_cost = cost
                best_k = k
        ends[top] = s + best_k
        starts[m] = s + best_k
        ends[m] = e
        keys[top] = _segment_key(order, durations, starts[top], ends[top])
        keys[m] = _segment_key(order, durations, starts[m], ends[m])
        hsize = _heap_push(heap, hsize, keys, top)
        hsize = _heap_push(heap, hsize, keys, m)
        m += 1
    # Segments still tile order[0:n] contiguously: sorting by start gives the new offsets.
    srt = np.argsort(starts[:m])
    new_offsets = np.empty(m + 1, dtype=np.int64)
    for j in range(m):
        new_offsets[j] = starts[srt[j]]
    new_offsets[m] = order.shape[0]
    return order, new_offsets


def equalize_batch_count(
    order: np.ndarray, offsets: np.ndarray, durations: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the largest batches (most padded seconds) until there are exactly ``target`` batches.

    Each split sorts the batch by length and cuts it where the two halves' padded seconds are most
    even, so padding does not grow. Split halves stay in the position of the original batch. If
    there are more batches than ``target`` already, nothing changes (the caller must drop or
    reassign). If there are fewer samples than ``target``, the result has one sample per batch,
    i.e. fewer than ``target`` batches: the caller pads with empty batches.
    """
    o = np.ascontiguousarray(order, dtype=np.int64)
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    d = np.ascontiguousarray(durations, dtype=np.float64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != o.size:
        raise ValueError("offsets must start at 0 and end at len(order)")
    return _equalize_kernel(o, off, d, int(target))
