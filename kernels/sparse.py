"""2:4 sparse weights in edgellm's compact layout (docs/sparse-format.md): y = x @ W.T reading
only the kept values, their positions and the block scales.

A row of n_cols weights is three planes; h counts pairs of 4-column groups (8 columns):

    values  Q4: uint16 [n_cols / 8]  four 4-bit values per h: group 2h's two kept, then 2h+1's
            Q8: int8   [n_cols / 2]  the same four values, one byte each
    index   uint8  [n_cols / 8]      four 2-bit positions per h (a0 | b0 << 2 | a1 << 4 | b1 << 6)
    scales  uint16 [n_cols / 32]     f16 bits of the block scale d, one per 32 columns

so that W[8h + a0] = d * (q0 - 8) for Q4 (d * q0 for Q8), W[8h + b0] = d * q1, W[8h + 4 + a1] =
d * q2, W[8h + 4 + b1] = d * q3, and every other column is zero. These are the values and scales
of the Q4_0 / Q8_0 twin with the zeros in place, so both give the same products up to rounding.

    matvec_q4 / matvec_q8   out[k, r] = W[r] . x[k] for a few x rows (decode): one pass over each
                            row's planes; the four kept x values of an 8-column pair are read at
                            their positions (LLVM turns these into vector gathers)
    dequantize_q4 / _q8     rows [start, start + len(out)) as float32 with the zeros in place,
                            for prefill tiles that BLAS multiplies

The hot loop runs over the n_cols / 8 pairs of a row in int32 arithmetic; the row's scales are
converted to float32 into a small per-thread buffer first, so the loop needs no f16 decoding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .floats import half_to_float

FAST = {"reassoc", "nsz", "contract"}
CHUNK_ROWS = 32  # rows per parallel work item


@njit(cache=True, fastmath=False, inline="always")
def _scales_to_f32(scales, buf):
    for b in range(scales.shape[0]):
        buf[b] = half_to_float(np.int32(scales[b]))


@njit(cache=True, fastmath=FAST, inline="always")
def _dot_q4(values, index, d, x):
    acc = np.float32(0.0)
    for h in range(values.shape[0]):
        v = np.int32(values[h])
        p = np.int32(index[h])
        o = 8 * h
        t = (x[o + (p & 3)] * np.float32((v & 15) - 8)
             + x[o + ((p >> 2) & 3)] * np.float32(((v >> 4) & 15) - 8)
             + x[o + 4 + ((p >> 4) & 3)] * np.float32(((v >> 8) & 15) - 8)
             + x[o + 4 + (p >> 6)] * np.float32((v >> 12) - 8))
        acc += d[h >> 2] * t
    return acc


@njit(cache=True, fastmath=FAST, inline="always")
def _dot_q8(values, index, d, x):
    acc = np.float32(0.0)
    for h in range(index.shape[0]):
        p = np.int32(index[h])
        o = 8 * h
        t = (x[o + (p & 3)] * np.float32(values[4 * h])
             + x[o + ((p >> 2) & 3)] * np.float32(values[4 * h + 1])
             + x[o + 4 + ((p >> 4) & 3)] * np.float32(values[4 * h + 2])
             + x[o + 4 + (p >> 6)] * np.float32(values[4 * h + 3]))
        acc += d[h >> 2] * t
    return acc


@njit(cache=True, parallel=True, fastmath=FAST)
def matvec_q4(values, index, scales, x, out):
    """values uint16 [rows, n_cols/8], index uint8 [rows, n_cols/8], scales uint16 [rows, n_cols/32],
    x float32 [n, n_cols] -> out float32 [n, rows]."""
    rows = values.shape[0]
    for c in prange((rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
        d = np.empty(scales.shape[1], np.float32)
        for r in range(c * CHUNK_ROWS, min(rows, (c + 1) * CHUNK_ROWS)):
            _scales_to_f32(scales[r], d)
            for k in range(x.shape[0]):
                out[k, r] = _dot_q4(values[r], index[r], d, x[k])


@njit(cache=True, parallel=True, fastmath=FAST)
def matvec_q8(values, index, scales, x, out):
    """As matvec_q4 with values int8 [rows, n_cols/2]."""
    rows = values.shape[0]
    for c in prange((rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
        d = np.empty(scales.shape[1], np.float32)
        for r in range(c * CHUNK_ROWS, min(rows, (c + 1) * CHUNK_ROWS)):
            _scales_to_f32(scales[r], d)
            for k in range(x.shape[0]):
                out[k, r] = _dot_q8(values[r], index[r], d, x[k])


@njit(cache=True, parallel=True, fastmath=False)
def dequantize_q4(values, index, scales, start, out):
    """Rows [start, start + len(out)) -> out float32 [m, n_cols], the same values as the Q4_0 twin."""
    for i in prange(out.shape[0]):
        r = start + i
        row = out[i]
        row[:] = 0.0
        for h in range(values.shape[1]):
            d = half_to_float(np.int32(scales[r, h >> 2]))
            v = np.int32(values[r, h])
            p = np.int32(index[r, h])
            row[8 * h + (p & 3)] = d * np.float32((v & 15) - 8)
            row[8 * h + ((p >> 2) & 3)] = d * np.float32(((v >> 4) & 15) - 8)
            row[8 * h + 4 + ((p >> 4) & 3)] = d * np.float32(((v >> 8) & 15) - 8)
            row[8 * h + 4 + (p >> 6)] = d * np.float32((v >> 12) - 8)


@njit(cache=True, parallel=True, fastmath=False)
def dequantize_q8(values, index, scales, start, out):
    """As dequantize_q4 for int8 values (the Q8_0 twin)."""
    for i in prange(out.shape[0]):
        r = start + i
        row = out[i]
        row[:] = 0.0
        for h in range(index.shape[1]):
            d = half_to_float(np.int32(scales[r, h >> 2]))
            p = np.int32(index[r, h])
            row[8 * h + (p & 3)] = d * np.float32(values[r, 4 * h])
            row[8 * h + ((p >> 2) & 3)] = d * np.float32(values[r, 4 * h + 1])
            row[8 * h + 4 + ((p >> 4) & 3)] = d * np.float32(values[r, 4 * h + 2])
            row[8 * h + 4 + (p >> 6)] = d * np.float32(values[r, 4 * h + 3])
