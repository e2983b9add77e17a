"""Per-utterance normalisation and padding of a batch, written straight into one padded array.

``normalize_and_pad`` matches ``Wav2Vec2FeatureExtractor(do_normalize=True)`` (its
``zero_mean_unit_var_norm``: ``(x - mean) / sqrt(var + 1e-7)`` over the real samples of each
utterance, padding 0.0) to within 1e-5, but in two passes over each utterance instead of the
extractor's many temporary arrays: one pass for the statistics (float64 accumulation, shifted by
the first sample so a DC offset costs no accuracy), one pass writing the normalised float32 row.
int16 input is normalised as ``x / 32768`` without a separate conversion pass.

``pad_labels`` gives the label layout of the HF example's ``DataCollatorCTCWithPadding``: rows
right-padded with -100 (ignored by the CTC loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["attention_mask_from_lengths", "normalize_and_pad", "pad_labels"]

_EPS = 1e-7  # the feature extractor's variance epsilon: a silent utterance stays all zeros
_INT16_SCALE = 1.0 / 32768.0


# fastmath lets LLVM vectorise the float64 reductions and the write loop (reordering only: no
# precision is lost). Loops run over slices because `x[start + t]` indexing defeats vectorisation
# (numba cannot prove the index non-negative, so every access keeps its wraparound check).
@numba.njit(cache=True, fastmath=True)
def _shifted_sums(x):
    """Shift, sum and sum of squares of ``x - x[0]`` in float64.

    Shifting by a sample of the data keeps ``E[y^2] - E[y]^2`` accurate even with a DC offset.
    """
    k = np.float64(x[0])
    s1 = 0.0
    s2 = 0.0
    for t in range(x.size):
        y = np.float64(x[t]) - k
        s1 += y
        s2 += y * y
    return k, s1, s2


@numba.njit(cache=True, fastmath=True, nogil=True)
def _write_row(x, scale, vrow, mrow):
    """Normalise one utterance ``x`` into the padded row ``vrow``; fill the mask row ``mrow``
    unless it is empty (no mask wanted)."""
    length = x.size
    if length > 0:
        k, s1, s2 = _shifted_sums(x)
        m1 = s1 / length
        var = max(s2 / length - m1 * m1, 0.0) * scale * scale
        mean = (k + m1) * scale
        inv_std = 1.0 / np.sqrt(var + _EPS)
        # out = x * a + b  ==  (x * scale - mean) / sqrt(var + eps), in float64 then rounded once.
        a = scale * inv_std
        b = -mean * inv_std
        for t in range(length):
            vrow[t] = np.float32(np.float64(x[t]) * a + b)
    vrow[length:] = 0.0
    if mrow.size > 0:  # separate fills vectorise better than one loop storing both arrays
        mrow[:length] = 1
        mrow[length:] = 0


@numba.njit(cache=True, nogil=True)
def _pad_flat(flat, lengths, scale, values, mask):
    start = 0
    for row in range(lengths.shape[0]):
        _write_row(flat[start : start + lengths[row]], scale, values[row], mask[row])
        start += lengths[row]


def _padded_width(longest: int, pad_to_multiple_of: int | None) -> int:
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        return -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


def _as_audio(x: np.ndarray) -> np.ndarray:
    """float32 or int16 contiguous 1-d audio; anything else is converted to float32 (as HF does)."""
    x = np.asarray(x)
    if x.dtype != np.int16 and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x).reshape(-1)


def _output(out: np.ndarray | None, dtype: type, rows: int, width: int) -> np.ndarray:
    """A fresh ``(rows, width)`` array, or a contiguous view of the start of a reusable workspace."""
    if out is None:
        return np.empty((rows, width), dtype=dtype)
    if out.dtype != dtype or not out.flags.c_contiguous or out.size < rows * width:
        raise ValueError(f"workspace must be C-contiguous {np.dtype(dtype)} with >= {rows * width} elements")
    return out.reshape(-1)[: rows * width].reshape(rows, width)


def normalize_and_pad(
    audio: np.ndarray | Sequence[np.ndarray],
    lengths: np.ndarray | None = None,
    out: np.ndarray | None = None,
    pad_to_multiple_of: int | None = None,
    mask_out: np.ndarray | None = None,
    with_mask: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise each utterance to zero mean / unit variance and pad them into one batch.

    Args:
        audio: either the concatenation of the batch's utterances (1-d, with ``lengths``) or a
            sequence of 1-d arrays (``lengths`` omitted). float32, or int16 read as ``x / 32768``;
            other dtypes are converted to float32 first.
        lengths: samples per utterance (int), when ``audio`` is flat.
        out: optional reusable workspace: any C-contiguous float32 array with at least
            ``B * T_max`` elements; the result is a contiguous ``(B, T_max)`` view of its start.
            Reusing one can save the page faults of a fresh multi-MB array per batch; only safe
            once the previous batch has been copied away (a DataLoader worker's batch is copied
            into shared memory when sent).
        pad_to_multiple_of: round ``T_max`` up to a multiple of this.
        mask_out: the same for the int32 attention mask.
        with_mask: False skips the mask (returned as None). It is a third of the bytes written
            and redundant with the lengths: a GPU builds it as ``arange(T) < lengths[:, None]``.
            (group-norm checkpoints such as wav2vec2-base take no mask at all.)

    Returns:
        ``(values float32[B, T_max], attention_mask int32[B, T_max] or None)``; padding is 0.0 / 0.
        Statistics use only each utterance's real samples, so padding never changes the values.
    """
    if lengths is None:
        rows = [_as_audio(x) for x in audio]
        n = np.array([r.size for r in rows], dtype=np.int64)
        width = _padded_width(int(n.max()) if n.size else 0, pad_to_multiple_of)
        values = _output(out, np.float32, n.size, width)
        mask = _output(mask_out, np.int32, n.size, width if with_mask else 0)
        # One kernel call per utterance: the per-call overhead (~1 us) is negligible next to
        # 1e5 samples, and it avoids concatenating the batch first (a full extra copy).
        for i, r in enumerate(rows):
            _write_row(r, _INT16_SCALE if r.dtype == np.int16 else 1.0, values[i], mask[i])
        return values, mask if with_mask else None
    flat = _as_audio(audio)
    n = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
    if n.size and (n.min() < 0 or int(n.sum()) != flat.size):
        raise ValueError("lengths must be >= 0 and sum to len(audio)")
    width = _padded_width(int(n.max()) if n.size else 0, pad_to_multiple_of)
    values = _output(out, np.float32, n.size, width)
    mask = _output(mask_out, np.int32, n.size, width if with_mask else 0)
    _pad_flat(flat, n, _INT16_SCALE if flat.dtype == np.int16 else 1.0, values, mask)
    return values, mask if with_mask else None


def attention_mask_from_lengths(lengths: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
    """bool ``[B, width]``: True on each row's first ``lengths[i]`` samples.

    Two memsets per row: ~15x faster than ``torch.arange(width) < lengths[:, None]``, which
    materialises an int64 ramp and compares element by element (0.1 ms against 1.5 ms for a
    12 x 160,000 batch, one thread, measured when this replaced it).
    """
    mask = np.empty((len(lengths), width), dtype=np.bool_)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
        mask[row, n:] = False
    return mask


@numba.njit(cache=True)
def _pad_labels_flat(flat, lengths, out):
    start = 0
    for row in range(lengths.shape[0]):
        for t in range(lengths[row]):
            out[row, t] = flat[start + t]
        start += lengths[row]


def pad_labels(
    labels: Sequence[Sequence[int]] | np.ndarray,
    lengths: np.ndarray | None = None,
    pad_to_multiple_of: int | None = None,
) -> np.ndarray:
    """Right-pad label id sequences with -100 into ``int64[B, L_max]``.

    ``labels`` is either a sequence of id sequences, or the flat concatenation with ``lengths``.
    Same layout as ``DataCollatorCTCWithPadding`` (pad, then ``masked_fill(mask != 1, -100)``).
    """
    if lengths is None:
        rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in labels]
        width = _padded_width(max((r.size for r in rows), default=0), pad_to_multiple_of)
        out = np.full((len(rows), width), -100, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : r.size] = r
        return out
    flat = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    n = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
    if n.size and (n.min() < 0 or int(n.sum()) != flat.size):
        raise ValueError("lengths must be >= 0 and sum to len(labels)")
    width = _padded_width(int(n.max()) if n.size else 0, pad_to_multiple_of)
    out = np.full((n.size, width), -100, dtype=np.int64)
    _pad_labels_flat(flat, n, out)
    return out
