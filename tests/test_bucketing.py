"""Batch planning kernels: coverage, caps, determinism, memory bound, equalisation, shuffle buffer."""

import numpy as np
import pytest

from w2v.data.bucketing import bucket_edges, padding_fraction, plan_batches, shuffle_order
from w2v.data.equalize import equalize_batch_count


def librispeech_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.7, rng.uniform(2, 16, n), rng.uniform(16, 35, n))


def batches(order: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [order[offsets[j] : offsets[j + 1]] for j in range(len(offsets) - 1)]


def assert_exactly_once(order: np.ndarray, offsets: np.ndarray, n: int) -> None:
    assert offsets[0] == 0 and offsets[-1] == n == len(order)
    assert np.all(np.diff(offsets) >= 1), "no empty batches"
    assert np.array_equal(np.sort(order), np.arange(n))


def assert_caps(order, offsets, d, cap, max_size=0) -> None:
    for b in batches(order, offsets):
        if len(b) > 1:
            assert len(b) * d[b].max() <= cap
        if max_size:
            assert len(b) <= max_size


def loader_held(order: np.ndarray, offsets: np.ndarray, d: np.ndarray) -> tuple[int, float]:
    """Peak samples / seconds a loader holds if it releases batches in plan order, each as soon as
    its last member has arrived: sample i is held from its arrival until that release."""
    n = len(order)
    last = np.array([b.max() for b in batches(order, offsets)])
    release = np.maximum.accumulate(last)  # plan order: a batch also waits for the earlier ones
    batch_of = np.repeat(np.arange(len(last)), np.diff(offsets))
    rel = np.empty(n, dtype=np.int64)
    rel[order] = release[batch_of]
    # held after processing arrival t: arrived (i <= t) and released later (rel[i] > t).
    count = np.zeros(n + 1)
    secs = np.zeros(n + 1)
    np.add.at(count, np.arange(n), 1)
    np.add.at(count, rel, -1)
    np.add.at(secs, np.arange(n), d)
    np.add.at(secs, rel, -d)
    # The sample arriving at its own release time is counted for that instant too (+1 below).
    return int(np.cumsum(count).max()) + 1, float(np.cumsum(secs).max() + d.max())


# ---------------------------------------------------------------------------------------------


def test_bucket_edges_equal_total_duration():
    d = librispeech_like(50_000)
    e = bucket_edges(d, 30)
    assert e.shape == (29,) and np.all(np.diff(e) >= 0)
    totals = np.bincount(np.searchsorted(e, d, side="right"), weights=d, minlength=30)
    # each bucket holds 1/30 of the audio, up to the one sample that crosses an edge
    assert np.abs(totals - d.sum() / 30).max() <= d.max() + 1e-9
    assert bucket_edges(d, 1).size == 0 and bucket_edges(np.empty(0), 30).size == 0


@pytest.mark.parametrize("lookahead", [1, 2, 4])
def test_plan_every_sample_once_and_caps(lookahead):
    d = librispeech_like(20_000, seed=1)
    order, offsets = plan_batches(d, bucket_edges(d, 30), 200.0, lookahead=lookahead)
    assert_exactly_once(order, offsets, d.size)
    assert_caps(order, offsets, d, 200.0)
    assert padding_fraction(order, offsets, d) < (0.05 if lookahead == 1 else 0.03)


def test_plan_count_cap_and_short_utterances():
    rng = np.random.default_rng(2)
    d = rng.uniform(0.5, 3.0, 10_000)
    order, offsets = plan_batches(d, bucket_edges(d, 10), 200.0, max_batch_size=32)
    assert_exactly_once(order, offsets, d.size)
    assert_caps(order, offsets, d, 200.0, max_size=32)
    sizes = np.diff(offsets)
    assert np.median(sizes) == 32  # the count cap binds long before 200 s


def test_plan_is_deterministic_and_depends_on_input_order():
    d = librispeech_like(5_000, seed=3)
    e = bucket_edges(d, 30)
    a = plan_batches(d, e, 150.0)
    b = plan_batches(d.copy(), e, 150.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = plan_batches(d[::-1].copy(), e, 150.0)
    assert not np.array_equal(a[0], c[0])


def test_overlong_sample_forms_a_batch_alone():
    d = np.array([5.0, 250.0, 5.0, 5.0, 300.0, 5.0])
    order, offsets = plan_batches(d, np.array([10.0]), 200.0)
    assert_exactly_once(order, offsets, d.size)
    groups = [sorted(b.tolist()) for b in batches(order, offsets)]
    assert [1] in groups and [4] in groups
    assert_caps(order, offsets, d, 200.0)


def test_lookahead_one_is_the_plain_rule():
    """lookahead=1: a bucket emits its whole queue when the next sample would break the cap."""
    d = librispeech_like(3_000, seed=4)
    e = bucket_edges(d, 12)
    order, offsets = plan_batches(d, e, 120.0, lookahead=1)
    queues: dict[int, list[int]] = {}
    expected = []
    for p, b in enumerate(np.searchsorted(e, d, side="right")):
        q = queues.setdefault(int(b), [])
        if q and (len(q) + 1) * max(d[q].max(), d[p]) > 120.0:
            expected.append(sorted(q))
            q.clear()
        q.append(p)
    got = [sorted(b.tolist()) for b in batches(order, offsets)]
    assert got[: len(expected)] == expected
    # the end of the stream: every bucket's leftovers pooled and packed from the longest down
    pool = sorted((p for q in queues.values() for p in q), key=lambda p: (d[p], p))
    drained = []
    while pool:
        n = max(1, int(120.0 // d[pool[-1]]))
        while n > 1 and n * d[pool[-1]] > 120.0:
            n -= 1
        drained.append(sorted(pool[-n:]))
        del pool[-n:]
    assert sorted(got[len(expected):]) == sorted(drained)


@pytest.mark.parametrize("buffer_size", [7, 40, 500, 20000])
def test_loader_memory_is_bounded_by_the_buffer(buffer_size):
    """The right invariant is on what the loader must hold (count and seconds), not on stream
    distance: a sample of a rare bucket may wait arbitrarily long, but it is counted meanwhile."""
    d = librispeech_like(8_000, seed=5)
    e = bucket_edges(d, 30)
    lookahead = 2
    order, offsets = plan_batches(d, e, 200.0, buffer_size=buffer_size, lookahead=lookahead)
    assert_exactly_once(order, offsets, d.size)
    assert_caps(order, offsets, d, 200.0)
    held, _ = loader_held(order, offsets, d)
    assert held <= buffer_size
    # each bucket on its own queues under lookahead batches' worth of padded seconds, plus one
    # sample (with a buffer of 20,000 the count never binds: this is the only bound there)
    bucket = np.searchsorted(e, d, side="right")
    for b in np.unique(bucket):
        _, bucket_seconds = loader_held(order, offsets, np.where(bucket == b, d, 0.0))
        assert bucket_seconds <= lookahead * 200.0 + d[bucket == b].max(), b


def test_empty_and_tiny_inputs():
    order, offsets = plan_batches(np.empty(0), np.array([1.0]), 10.0)
    assert order.size == 0 and offsets.tolist() == [0]
    order, offsets = plan_batches(np.array([3.0]), np.empty(0), 10.0)
    assert order.tolist() == [0] and offsets.tolist() == [0, 1]
    with pytest.raises(ValueError):
        plan_batches(np.array([np.nan]), np.empty(0), 10.0)


def test_padding_fraction_by_hand():
    d = np.array([1.0, 2.0, 4.0, 4.0])
    order = np.array([0, 1, 2, 3])
    offsets = np.array([0, 2, 4])
    # batch 1 pads to 2 x 2 s = 4 s for 3 s real; batch 2 is 8 s for 8 s: 1 - 11/12
    assert padding_fraction(order, offsets, d) == pytest.approx(1 - 11 / 12)


# ---------------------------------------------------------------------------------------------


def test_equalize_reaches_target_exactly():
    d = librispeech_like(6_000, seed=6)
    order, offsets = plan_batches(d, bucket_edges(d, 30), 200.0)
    nb = len(offsets) - 1
    for target in (nb, nb + 1, nb + 37, 2 * nb):
        o2, off2 = equalize_batch_count(order, offsets, d, target)
        assert len(off2) - 1 == target
        assert_exactly_once(o2, off2, d.size)
        assert_caps(o2, off2, d, 200.0)  # splitting never breaks a cap
        # splitting a length-sorted batch never adds padding
        assert padding_fraction(o2, off2, d) <= padding_fraction(order, offsets, d) + 1e-12


def test_equalize_splits_the_largest_batch_by_length():
    d = np.array([1.0, 9.0, 1.0, 10.0, 2.0])
    order = np.array([0, 1, 2, 3, 4])
    offsets = np.array([0, 1, 5])  # [0] (1 s), [1, 2, 3, 4] padded 40 s
    o2, off2 = equalize_batch_count(order, offsets, d, 3)
    assert [b.tolist() for b in batches(o2, off2)] == [[0], [2, 4], [1, 3]]


def test_equalize_fewer_samples_than_target():
    d = np.array([3.0, 1.0, 2.0])
    o2, off2 = equalize_batch_count(np.array([0, 1, 2]), np.array([0, 3]), d, 10)
    assert len(off2) - 1 == 3  # one sample per batch; the caller pads with empty batches
    assert_exactly_once(o2, off2, 3)


# ---------------------------------------------------------------------------------------------


def test_shuffle_order_permutation_deterministic_and_seeded():
    a = shuffle_order(10_000, 100, seed=1)
    assert np.array_equal(np.sort(a), np.arange(10_000))
    assert np.array_equal(a, shuffle_order(10_000, 100, seed=1))
    assert not np.array_equal(a, shuffle_order(10_000, 100, seed=2))
    assert not np.array_equal(a, np.arange(10_000))


@pytest.mark.parametrize("n,buffer_size", [(10_000, 100), (1_000, 1), (50, 200), (300, 300)])
def test_shuffle_order_is_bounded_by_the_buffer(n, buffer_size):
    out = shuffle_order(n, buffer_size, seed=7)
    assert np.array_equal(np.sort(out), np.arange(n))
    # output slot i can only hold an item that had arrived: position <= i + buffer_size - 1
    assert np.all(out <= np.arange(n) + buffer_size - 1)
    if buffer_size == 1:
        assert np.array_equal(out, np.arange(n))


def test_shuffle_mixes_within_the_buffer():
    out = shuffle_order(100_000, 1000, seed=3)
    delay = np.empty_like(out)
    delay[out] = np.arange(out.size) - out  # output index minus stream position
    assert delay.min() >= -999
    assert 500 < np.median(np.abs(delay)) < 3000  # actually mixed, on the buffer's scale


def test_plan_over_a_shuffled_stream():
    d = librispeech_like(4_000, seed=8)
    perm = shuffle_order(d.size, 500, seed=0)
    order, offsets = plan_batches(d[perm], bucket_edges(d, 30), 200.0)
    assert_exactly_once(perm[order], offsets, d.size)  # positions map back to sample ids
