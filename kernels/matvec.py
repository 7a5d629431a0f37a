"""Decode: y = W @ x for a few x rows, one pass over the quantized bytes of W.

Every type goes through its explicit-SIMD row dot in simd.py. `matvec` runs the rows of up to
three weights (Q, K and V; gate and up) in one parallel loop, so that one wake-up of the worker
threads serves them all.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import (
    dot_bf16, dot_f16, dot_f32, dot_q4_0, dot_q4_1, dot_q4_k, dot_q5_0, dot_q5_1, dot_q5_k, dot_q6_k,
    dot_q8_0,
)

# Same ints as in dispatch.py (gguf.GGMLQuantizationType).
F32, F16, BF16 = 0, 1, 30
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K = 12, 13, 14

CHUNK_ROWS = 32  # rows per parallel work item


def f16_table() -> np.ndarray:
    """float32 [65536]: the value of every f16 bit pattern (block scales are one load)."""
    table = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    table.flags.writeable = False
    return table


@njit(cache=True)
def dot_row(row, ggml_type, x, xs32, xs16, f16):
    """One row of raw blocks of ggml_type times x: float32 [n_cols]."""
    if ggml_type == Q8_0:
        return dot_q8_0(row, x, xs32, xs16, f16)
    if ggml_type == Q4_0:
        return dot_q4_0(row, x, xs32, xs16, f16)
    if ggml_type == Q4_1:
        return dot_q4_1(row, x, xs32, xs16, f16)
    if ggml_type == Q5_0:
        return dot_q5_0(row, x, xs32, xs16, f16)
    if ggml_type == Q5_1:
        return dot_q5_1(row, x, xs32, xs16, f16)
    if ggml_type == Q4_K:
        return dot_q4_k(row, x, xs32, xs16, f16)
    if ggml_type == Q5_K:
        return dot_q5_k(row, x, xs32, xs16, f16)
    if ggml_type == Q6_K:
        return dot_q6_k(row, x, xs32, xs16, f16)
    if ggml_type == F16:
        return dot_f16(row, x, xs32, xs16, f16)
    if ggml_type == BF16:
        return dot_bf16(row, x, xs32, xs16, f16)
    return dot_f32(row, x, xs32, xs16, f16)


@njit(cache=True)
def block_sums(x, size):
    """float32 [n, n_cols / size]: x [n, n_cols] summed over each block of `size` values."""
    n, n_cols = x.shape
    sums = np.zeros((n, n_cols // size), np.float32)
    for k in range(n):
        for j in range(n_cols):
            sums[k, j // size] += x[k, j]
    return sums


@njit(cache=True, parallel=True)
def matvec(weights, types, x, f16, outs):
    """outs[w][k, r] = row r of weights[w] (of type types[w]) . x[k], for every weight w.

    weights: tuple of uint8 [rows_w, row_bytes_w], all with n_cols values per row (a multiple
    of 32); x float32 [n, n_cols]; outs: tuple of float32 [n, rows_w].
    """
    xs32, xs16 = block_sums(x, 32), block_sums(x, 16)
    n_w = len(weights)
    first_chunk = np.zeros(n_w + 1, np.int64)  # weight w owns chunks first_chunk[w]..[w + 1]
    for w in range(n_w):
        first_chunk[w + 1] = first_chunk[w] + (weights[w].shape[0] + CHUNK_ROWS - 1) // CHUNK_ROWS
    for c in prange(first_chunk[n_w]):
        w = 0
        while c >= first_chunk[w + 1]:
            w += 1
        data, out, ggml_type = weights[w], outs[w], types[w]
        start = (c - first_chunk[w]) * CHUNK_ROWS
        for r in range(start, min(data.shape[0], start + CHUNK_ROWS)):
            for k in range(x.shape[0]):
                out[k, r] = dot_row(data[r], ggml_type, x[k], xs32[k], xs16[k], f16)
