"""Two bit operations for the FLAC decoder's bit reader, as single machine instructions when the
installed numba allows it, else as plain numba code.

- `clz64(x)`: leading zero bits of a uint64 (64 for zero): one `lzcnt`/`bsr` through LLVM's ctlz.
- `load_be64(array, index)`: the 8 bytes `array[index:index + 8]` as a big-endian uint64: one
  unaligned load and a byte swap, without numba's per-byte index checks (the caller keeps
  `index + 8` within the array).

The fast forms use numba's extension API (`numba.extending.intrinsic`) and llvmlite's IR builder,
which are the parts of numba most likely to change between releases; `pyproject.toml` pins the
tested range. If they cannot be built, or `W2V_PLAIN_NUMBA=1` is set, the plain forms are used:
the same results, somewhat slower decoding. `INTRINSICS` says which is in use.
"""

from __future__ import annotations

import os

import numba
import numpy as np


@numba.njit(cache=True)
def _clz64_plain(x):
    if x == np.uint64(0):
        return np.uint64(64)
    n = np.uint64(0)  # a binary search for the highest set bit
    if x >> np.uint64(32) == np.uint64(0):
        n += np.uint64(32)
        x <<= np.uint64(32)
    if x >> np.uint64(48) == np.uint64(0):
        n += np.uint64(16)
        x <<= np.uint64(16)
    if x >> np.uint64(56) == np.uint64(0):
        n += np.uint64(8)
        x <<= np.uint64(8)
    if x >> np.uint64(60) == np.uint64(0):
        n += np.uint64(4)
        x <<= np.uint64(4)
    if x >> np.uint64(62) == np.uint64(0):
        n += np.uint64(2)
        x <<= np.uint64(2)
    if x >> np.uint64(63) == np.uint64(0):
        n += np.uint64(1)
    return n


@numba.njit(cache=True)
def _load_be64_plain(array, index):
    i = np.uintp(index)  # unsigned: numba then skips its negative-index wraparound per byte
    value = np.uint64(0)
    for k in range(8):
        value = (value << np.uint64(8)) | np.uint64(array[i + np.uintp(k)])
    return value


def _intrinsics():
    """(clz64, load_be64) as LLVM intrinsics; raises if this numba/llvmlite cannot build them."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def clz64(typingctx, x):
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):
            return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

        return sig, codegen

    @intrinsic
    def load_be64(typingctx, array, index):
        sig = types.uint64(array, index)

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
            return builder.bswap(builder.load(address, align=1))

        return sig, codegen

    return clz64, load_be64


INTRINSICS = False
clz64, load_be64 = _clz64_plain, _load_be64_plain
if os.environ.get("W2V_PLAIN_NUMBA") != "1":
    try:
        clz64, load_be64 = _intrinsics()
        INTRINSICS = True
    except Exception:  # noqa: BLE001 (any failure of the extension API: the plain forms work everywhere)
        pass


@numba.njit(cache=True)
def _probe(data):
    return clz64(np.uint64(1)), clz64(np.uint64(0)), load_be64(data, 1)


if INTRINSICS:  # compile (or load from the cache) once here: an API change shows now, not mid-epoch
    try:
        ok = _probe(np.arange(9, dtype=np.uint8)) == (63, 64, 0x0102030405060708)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        clz64, load_be64, INTRINSICS = _clz64_plain, _load_be64_plain, False
