"""A FLAC decoder in numba for the loader's hot path: mono 16-bit FLAC bytes → int16 samples.

Why not libsndfile: decoding dominates the loader's time on FLAC shards, and libsndfile adds its
own buffering, sample conversion and Python I/O callbacks on top of libFLAC
(`benchmarks/bench_loader.py` compares them). This decoder reads the whole stream from memory, with a
64-bit window for the Rice codes (count-leading-zeros and unaligned big-endian loads as single
instructions, `w2v.data.bitops`), and restores the predictors straight into the output array.

What it decodes: the complete FLAC format for one channel of 16 bits (what `w2v-make-shards` writes,
and what most 16 kHz speech corpora are): CONSTANT, VERBATIM, FIXED and LPC subframes (any order up
to 32), wasted bits, both Rice coding methods, escaped partitions, fixed or variable block sizes.
Each frame's header CRC-8 and frame CRC-16 are checked, so a damaged member is an error, never
silent noise. Anything else (stereo, 24-bit, a stream without its sample count) raises
`UnsupportedFlac`, and the caller falls back to soundfile.
"""

from __future__ import annotations

import numba
import numpy as np

from w2v.data.bitops import INTRINSICS, clz64, load_be64

# numba's disk cache does not record which bit operations a kernel was compiled with: only the
# intrinsic build is cached, so the plain fallback is never mixed up with it (it compiles per process).

__all__ = ["UnsupportedFlac", "decode_flac"]


class UnsupportedFlac(ValueError):
    """A valid FLAC stream outside what this decoder handles (use soundfile instead)."""


# status codes returned by the kernel (numba raises only constant messages; the caller words them)
_OK, _BAD_SYNC, _BAD_HEADER, _HEADER_CRC, _FRAME_CRC, _BAD_SUBFRAME, _OVERRUN, _UNSUPPORTED = range(8)
_ERRORS = {
    _BAD_SYNC: "no frame sync code where a frame should start",
    _BAD_HEADER: "invalid frame header",
    _HEADER_CRC: "frame header CRC-8 mismatch",
    _FRAME_CRC: "frame CRC-16 mismatch",
    _BAD_SUBFRAME: "invalid subframe",
    _OVERRUN: "stream ends inside a frame, or has more samples than its header says",
}


def _crc_table(poly: int, width: int) -> np.ndarray:
    """table[b]: the CRC register (MSB first, from zero) after byte b."""
    table = np.zeros(256, dtype=np.uint16)
    top, mask = 1 << (width - 1), (1 << width) - 1
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else (crc << 1)
        table[byte] = crc & mask
    return table


def _slicing_tables(table: np.ndarray) -> np.ndarray:
    """tables[k, b]: the CRC-16 register after byte b followed by k zero bytes (slicing-by-8)."""
    tables = np.zeros((8, 256), dtype=np.uint16)
    tables[0] = table
    for k in range(1, 8):
        prev = tables[k - 1].astype(np.int64)
        tables[k] = ((prev << 8) & 0xFFFF) ^ table[prev >> 8]
    return tables


_CRC8 = _crc_table(0x07, 8)
_CRC16 = _slicing_tables(_crc_table(0x8005, 16))


# The bit reader is a bit position into `data` (which has _PAD zero bytes appended): `_peek` gives the
# next 64 bits left-aligned, of which at least 57 are real. Everything is uint64 to keep numba from
# promoting mixed signed/unsigned arithmetic to float.


@numba.njit(cache=INTRINSICS)
def _peek(data, pos):
    return load_be64(data, pos >> 3) << np.uint64(pos & 7)


@numba.njit(cache=INTRINSICS)
def _bits(data, pos, n):
    """n (0..57) bits at pos as an unsigned int64."""
    if n == 0:
        return 0
    return np.int64(_peek(data, pos) >> np.uint64(64 - n))


@numba.njit(cache=INTRINSICS)
def _signed(data, pos, n):
    """n (1..57) bits at pos as a two's-complement signed int64."""
    return np.int64(_peek(data, pos)) >> np.int64(64 - n)


@numba.njit(cache=INTRINSICS)
def _unary(data, pos, limit):
    """Zero bits before the next one bit at pos, or -1 if there is none before limit."""
    q = 0
    while pos < limit:
        w = _peek(data, pos)
        valid = 64 - (pos & 7)
        z = np.int64(clz64(w))
        if z < valid:
            return q + z
        q += valid
        pos += valid
    return -1


@numba.njit(cache=INTRINSICS)
def _residual(data, pos, limit, out, start, blocksize, order):
    """Reads the residual of one subframe into out[start + order : start + blocksize].

    Returns the new bit position, or -1 on invalid or overrunning data.
    """
    method = _bits(data, pos, 2)
    if method > 1:
        return -1
    param_bits = 4 if method == 0 else 5
    escape = (1 << param_bits) - 1
    porder = _bits(data, pos + 2, 4)
    pos += 6
    parts = 1 << porder
    if blocksize % parts != 0 or (blocksize >> porder) < order:
        return -1
    i = start + order
    for p in range(parts):
        if pos > limit:
            return -1
        end = start + (p + 1) * (blocksize >> porder)
        k = _bits(data, pos, param_bits)
        pos += param_bits
        if k == escape:
            n = _bits(data, pos, 5)
            pos += 5
            if pos + n * (end - i) > limit:
                return -1
            for j in range(i, end):
                out[j] = _signed(data, pos, n) if n > 0 else 0
                pos += n
            i = end
            continue
        # A 64-bit window `w` of the stream at `pos` with `avail` real bits, consumed by shifting
        # and reloaded only when a code does not fit: the loop-carried chain per sample is then
        # clz + shift, not a memory load.
        if pos > limit:
            return -1
        w = _peek(data, pos)
        avail = 64 - (pos & 7)
        while i < end:
            q = np.int64(clz64(w))
            n = q + 1 + k
            if n < avail:
                v = np.int64((w << np.uint64(q + 1)) >> np.uint64(64 - k)) if k > 0 else 0
                w <<= np.uint64(n)
                avail -= n
                pos += n
            else:  # the window ran out: reload it, and read a code longer than a window in pieces
                if pos > limit:
                    return -1
                q = _unary(data, pos, limit)
                if q < 0:
                    return -1
                pos += q + 1
                v = _bits(data, pos, k)
                pos += k
                w = _peek(data, pos)
                avail = 64 - (pos & 7)
            u = (q << k) | v
            if u > 0xFFFFFFFF:  # a residual outside 32 bits (RFC 9639): damage, not a value
                return -1
            out[i] = (u >> 1) ^ -(u & 1)
            i += 1
    return pos


# The restores are recursive filters: each sample needs the previous ones, so their speed is the
# latency of that chain. Keeping the history in locals (registers) instead of reloading it from
# the array makes them 3-4x faster than the textbook loop.


@numba.njit(cache=INTRINSICS)
def _restore_fixed(out, start, blocksize, order):
    """FIXED predictors: order 1..4 polynomial extrapolation of the previous samples."""
    end = start + blocksize
    if order == 0:
        return
    x1 = np.int64(out[start + order - 1])
    x2 = np.int64(out[start + order - 2]) if order >= 2 else 0
    x3 = np.int64(out[start + order - 3]) if order >= 3 else 0
    x4 = np.int64(out[start + order - 4]) if order >= 4 else 0
    if order == 1:
        for i in range(start + 1, end):
            x1 += out[i]
            out[i] = x1
    elif order == 2:
        for i in range(start + 2, end):
            s = out[i] + 2 * x1 - x2
            out[i] = s
            x2, x1 = x1, s
    elif order == 3:
        for i in range(start + 3, end):
            s = out[i] + 3 * (x1 - x2) + x3
            out[i] = s
            x3, x2, x1 = x2, x1, s
    else:
        for i in range(start + 4, end):
            s = out[i] + 4 * (x1 + x3) - 6 * x2 - x4
            out[i] = s
            x4, x3, x2, x1 = x3, x2, x1, s


@numba.njit(cache=INTRINSICS)
def _restore_lpc12(out, start, blocksize, c, order, shift):
    """LPC of order <= 12 (every FLAC encoder preset): coefficients zero-padded to 12, the last
    12 samples in locals, so the inner loop is 12 independent multiplies and no loads."""
    h = np.zeros(12, dtype=np.int64)
    for j in range(order):
        h[j] = out[start + order - 1 - j]
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]
    for i in range(start + order, start + blocksize):
        acc = (c1 * x1 + c2 * x2 + c3 * x3 + c4 * x4 + c5 * x5 + c6 * x6
               + c7 * x7 + c8 * x8 + c9 * x9 + c10 * x10 + c11 * x11 + c12 * x12)
        s = out[i] + (acc >> shift)
        out[i] = s
        x12, x11, x10, x9, x8, x7, x6, x5, x4, x3, x2, x1 = x11, x10, x9, x8, x7, x6, x5, x4, x3, x2, x1, s


@numba.njit(cache=INTRINSICS)
def _restore_lpc(out, start, blocksize, c, order, shift):
    if order <= 12:
        _restore_lpc12(out, start, blocksize, c, order, shift)
        return
    for i in range(start + order, start + blocksize):
        acc = 0
        for j in range(order):
            acc += c[j] * out[i - 1 - j]
        out[i] += acc >> shift


@numba.njit(cache=INTRINSICS)
def _subframe(data, pos, limit, out, start, blocksize, bps, coefs):
    """Decodes one subframe into out[start : start + blocksize]; returns the new position or -1."""
    if _bits(data, pos, 1) != 0:
        return -1
    kind = _bits(data, pos + 1, 6)
    pos += 7
    wasted = 0
    if _bits(data, pos, 1) == 1:
        z = _unary(data, pos + 1, limit)
        if z < 0:
            return -1
        wasted = z + 1
        pos += z + 1
    pos += 1
    bps -= wasted
    if bps < 1:
        return -1
    if kind == 0:  # CONSTANT
        if pos + bps > limit:
            return -1
        value = _signed(data, pos, bps)
        pos += bps
        for i in range(start, start + blocksize):
            out[i] = value
    elif kind == 1:  # VERBATIM
        if pos + bps * blocksize > limit:
            return -1
        for i in range(start, start + blocksize):
            out[i] = _signed(data, pos, bps)
            pos += bps
    elif 8 <= kind <= 12:  # FIXED, order 0..4
        order = kind - 8
        if order > blocksize or pos + order * bps > limit:
            return -1
        for i in range(start, start + order):
            out[i] = _signed(data, pos, bps)
            pos += bps
        pos = _residual(data, pos, limit, out, start, blocksize, order)
        if pos < 0:
            return -1
        _restore_fixed(out, start, blocksize, order)
    elif kind >= 32:  # LPC, order 1..32
        order = kind - 31
        if order > blocksize or pos + order * bps + 9 > limit:
            return -1
        for i in range(start, start + order):
            out[i] = _signed(data, pos, bps)
            pos += bps
        precision = _bits(data, pos, 4) + 1
        shift = _signed(data, pos + 4, 5)
        pos += 9
        if precision == 16 or shift < 0 or pos + order * precision > limit:
            return -1
        coefs[:] = 0
        for j in range(order):
            coefs[j] = _signed(data, pos, precision)
            pos += precision
        pos = _residual(data, pos, limit, out, start, blocksize, order)
        if pos < 0:
            return -1
        _restore_lpc(out, start, blocksize, coefs, order, shift)
    else:
        return -1
    if wasted:
        for i in range(start, start + blocksize):
            out[i] <<= wasted
    return pos


@numba.njit(cache=INTRINSICS)
def _crc8(data, start, end, table):
    crc = 0
    for i in range(start, end):
        crc = table[crc ^ data[i]]
    return crc


@numba.njit(cache=INTRINSICS)
def _crc16(data, start, end, tables):
    """CRC-16 of data[start:end], eight bytes per step ("slicing-by-8": eight independent table
    lookups per step instead of a chain of eight), which makes it ~4x cheaper than byte by byte."""
    crc = np.uint64(0)
    i = start
    while i + 8 <= end:
        w = load_be64(data, i)
        x = crc ^ (w >> np.uint64(48))
        crc = np.uint64(tables[7, x >> np.uint64(8)] ^ tables[6, x & np.uint64(0xFF)]
                        ^ tables[5, (w >> np.uint64(40)) & np.uint64(0xFF)]
                        ^ tables[4, (w >> np.uint64(32)) & np.uint64(0xFF)]
                        ^ tables[3, (w >> np.uint64(24)) & np.uint64(0xFF)]
                        ^ tables[2, (w >> np.uint64(16)) & np.uint64(0xFF)]
                        ^ tables[1, (w >> np.uint64(8)) & np.uint64(0xFF)]
                        ^ tables[0, w & np.uint64(0xFF)])
        i += 8
    for j in range(i, end):
        crc = ((crc << np.uint64(8)) & np.uint64(0xFFFF)) ^ np.uint64(tables[0, (crc >> np.uint64(8)) ^ data[j]])
    return np.int64(crc)


_PAD = 16  # zero bytes after the stream: bits read just past `limit` before a check stay in bounds
_BLOCK_SIZES = np.array([0, 192, 576, 1152, 2304, 4608, -1, -2, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
                        dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _frames(data, pos, nbytes, total, out, crc8, crc16, block_sizes):
    """Decodes every frame from byte `pos` into out[:total] (int32); returns (status, samples)."""
    coefs = np.zeros(32, dtype=np.int64)
    limit = nbytes * 8
    done = 0
    while pos < nbytes and done < total:
        start = pos
        if nbytes - pos < 6 or data[pos] != 0xFF or (data[pos + 1] & 0xFE) != 0xF8:
            return _BAD_SYNC, done
        code_bs, code_sr = data[pos + 2] >> 4, data[pos + 2] & 0x0F
        channels, code_bps = data[pos + 3] >> 4, (data[pos + 3] >> 1) & 0x07
        if code_bs == 0 or code_sr == 15 or code_bps == 3 or (data[pos + 3] & 1):
            return _BAD_HEADER, done
        pos += 4
        first = data[pos]  # the UTF-8-style coded frame or sample number: skip it
        extra = 0
        while extra < 7 and (first << extra) & 0x80:
            extra += 1
        pos += 1 if extra == 0 else extra
        blocksize = block_sizes[code_bs]
        if blocksize == -1:
            blocksize = data[pos] + 1
            pos += 1
        elif blocksize == -2:
            blocksize = (data[pos] << 8 | data[pos + 1]) + 1
            pos += 2
        pos += 1 if code_sr == 12 else (2 if code_sr == 13 or code_sr == 14 else 0)
        if pos >= nbytes:
            return _OVERRUN, done
        if _crc8(data, start, pos, crc8) != data[pos]:
            return _HEADER_CRC, done
        if channels != 0 or (code_bps != 0 and code_bps != 4):
            return _UNSUPPORTED, done
        pos += 1
        if done + blocksize > total:
            return _OVERRUN, done
        bit = _subframe(data, pos * 8, limit, out, done, blocksize, 16, coefs)
        if bit < 0:
            return _BAD_SUBFRAME, done
        pos = (bit + 7) >> 3  # zero padding to the byte boundary, then the CRC-16
        if pos + 2 > nbytes:
            return _OVERRUN, done
        if _crc16(data, start, pos, crc16) != (data[pos] << 8 | data[pos + 1]):
            return _FRAME_CRC, done
        pos += 2
        done += blocksize
    return _OK, done


def _streaminfo(data: bytes) -> tuple[int, int, int, int, int]:
    """(first frame offset, sample rate, channels, bits per sample, total samples) from the header."""
    if data[:4] != b"fLaC":
        raise ValueError("not a FLAC stream (no fLaC marker)")
    pos, info = 4, None
    while True:
        if pos + 4 > len(data):
            raise ValueError("FLAC metadata truncated")
        last, kind = data[pos] >> 7, data[pos] & 0x7F
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        if kind == 0 and size >= 34 and pos + 4 + 34 <= len(data):
            packed = int.from_bytes(data[pos + 14:pos + 22], "big")  # 20 + 3 + 5 + 36 bits
            info = (packed >> 44, ((packed >> 41) & 0x7) + 1, ((packed >> 36) & 0x1F) + 1, packed & ((1 << 36) - 1))
        pos += 4 + size
        if last:
            break
    if info is None:
        raise ValueError("FLAC stream without STREAMINFO")
    return (pos, *info)


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of a mono 16-bit FLAC stream held in memory.

    Raises `UnsupportedFlac` for other layouts (decode those with soundfile) and ValueError for a
    damaged stream (bad sync, CRC mismatch, truncation).
    """
    pos, rate, channels, bps, total = _streaminfo(data)
    if channels != 1 or bps != 16 or total == 0:
        raise UnsupportedFlac(f"{channels} channel(s), {bps} bits, {total} samples declared")
    if total > 5042 * (len(data) - pos):  # a frame holds at most 65536 samples in >= 13 bytes
        raise ValueError(f"FLAC header declares {total} samples, more than {len(data)} bytes can hold")
    buf = np.frombuffer(data + bytes(_PAD), dtype=np.uint8)  # zeros: reads near the end stay in bounds
    out = np.empty(total, dtype=np.int32)
    status, done = _frames(buf, pos, len(data), total, out, _CRC8, _CRC16, _BLOCK_SIZES)
    if status == _UNSUPPORTED:
        raise UnsupportedFlac("a frame with more than one channel or a sample size other than 16 bits")
    if status != _OK:
        raise ValueError(f"damaged FLAC stream after {done} of {total} samples: {_ERRORS[status]}")
    if done != total:
        raise ValueError(f"FLAC stream ends after {done} of its {total} samples")
    if out.min() < -32768 or out.max() > 32767:  # libFLAC reports this as a frame CRC error
        raise ValueError("damaged FLAC stream: decoded samples exceed 16 bits")
    return out.astype(np.int16), rate
