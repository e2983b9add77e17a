"""Per-utterance normalisation and padding of a batch, written straight into one padded array.

``normalize_and_pad`` matches ``Wav2Vec2FeatureExtractor(do_normalize=True)`` (its
``zero_mean_unit_var_norm``: ``(x - mean) / sqrt(var + 1e-7)`` over the real samples of each
utterance, padding 0.0) to within 1e-5, but in two passes over each utterance instead of the
extractor's many temporary arrays: one pass for the statistics (float64 accumulation, shifted by
the first sample so a DC offset costs no accuracy), one pass writing the normalised float32 row.
int16 input (what the decoders give) is normalised as ``x / 32768`` without a separate conversion
pass.

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
def _write_row(x, scale, vrow):
    """Normalise one utterance ``x`` into the padded row ``vrow`` (zeros after it)."""
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


def _as_audio(x: np.ndarray) -> np.ndarray:
    """float32 or int16 contiguous 1-d audio; anything else is converted to float32 (as HF does)."""
    x = np.asarray(x)
    if x.dtype != np.int16 and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x).reshape(-1)


def normalize_and_pad(audio: Sequence[np.ndarray]) -> np.ndarray:
    """Normalise each utterance to zero mean / unit variance and pad them into one float32 batch.

    ``audio``: 1-d arrays, float32 or int16 (read as ``x / 32768``); other dtypes are converted
    to float32 first. Returns ``float32[B, T_max]``, padding 0.0. Statistics use only each
    utterance's real samples, so padding never changes the values. The attention mask, when the
    model wants one, comes from the lengths (``attention_mask_from_lengths``).
    """
    rows = [_as_audio(x) for x in audio]
    values = np.empty((len(rows), max((r.size for r in rows), default=0)), dtype=np.float32)
    # One kernel call per utterance: the per-call overhead (~1 us) is negligible next to 1e5
    # samples, and it avoids concatenating the batch first (a full extra copy).
    for i, r in enumerate(rows):
        _write_row(r, _INT16_SCALE if r.dtype == np.int16 else 1.0, values[i])
    return values


def attention_mask_from_lengths(lengths: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
    """bool ``[B, width]``: True on each row's first ``lengths[i]`` samples; equal to the feature
    extractor's int32 mask as integers, in a quarter of the bytes (the model only sums and
    compares it).

    Two memsets per row, where ``torch.arange(width) < lengths[:, None]`` materialises an int64
    ramp and compares element by element (an order of magnitude slower for a batch of 12 x 10 s).
    """
    mask = np.empty((len(lengths), width), dtype=np.bool_)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
        mask[row, n:] = False
    return mask


def pad_labels(labels: Sequence[Sequence[int]]) -> np.ndarray:
    """Right-pad label id sequences with -100 into ``int64[B, L_max]``: the layout of
    ``DataCollatorCTCWithPadding`` (pad, then ``masked_fill(mask != 1, -100)``)."""
    rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in labels]
    out = np.full((len(rows), max((r.size for r in rows), default=0)), -100, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out
