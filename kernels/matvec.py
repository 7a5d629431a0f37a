"""Decode: y = W @ x for a few x rows, one pass over the quantized bytes of W.

Every type goes through explicit SIMD code, the quantized ones against x quantized to 8 bits
once per mat-vec (quantize_x): the legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) repacked 8 rows
at a time (interleave.py), the K-quants and float types row by row (simd.py). `matvec_rows` runs
a range of rows, the work item that the thread team (team.py) hands out, several weights' rows
(Q, K and V; gate and up) in one job.
"""

from __future__ import annotations

import numpy as np

from .interleave import rows_x8_q4_0, rows_x8_q4_1, rows_x8_q5_0, rows_x8_q5_1, rows_x8_q8_0
from .jit import njit
from .simd import (
    quantize_row_8, quantize_row_8k, quantize_row_16, rows_bf16, rows_f16, rows_f32, rows_q4_k, rows_q5_k, rows_q6_k,
)

# Same ints as in dispatch.py (gguf.GGMLQuantizationType).
F32, F16, BF16 = 0, 1, 30
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K = 12, 13, 14


def f16_table() -> np.ndarray:
    """float32 [65536]: the value of every f16 bit pattern (block scales are one load)."""
    table = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    table.flags.writeable = False
    return table


@njit(cache=True, nogil=True)
def quantize_into_8(x, xq, xd, xs32, xs16):
    """x float32 [n, n_cols] (n_cols a multiple of 32) -> xq int8 [n, n_cols], xd float32
    [n, n_cols / 32], xs32 float32 [n, n_cols / 32], xs16 float32 [n, n_cols / 16]: per block
    of 32, xq = round(x * 127 / max |x|) and xd = max |x| / 127 rounded to f16 (llama.cpp's
    Q8_0 blocks), so xq * xd is x to about half a step; xs32 and xs16 are the sums of xq * xd
    over each 32 and 16 values (the quantized types' offsets)."""
    for k in range(x.shape[0]):
        quantize_row_8(x[k], xq[k], xd[k], xs32[k], xs16[k])


@njit(cache=True, nogil=True)
def quantize_into_8k(x, xq, xd, xs32, xs16):
    """quantize_into_8 with llama.cpp's Q8_K blocks (n_cols a multiple of 256), the x it gives
    K-quant weights: one float32 scale per 256 values, repeated in each of its 8 xd slots."""
    for k in range(x.shape[0]):
        quantize_row_8k(x[k], xq[k], xd[k], xs32[k], xs16[k])


@njit(cache=True, nogil=True)
def quantize_into_16(x, xq, xd, xs32, xs16):
    """quantize_into_8 with 16-bit codes (xd = max |x| / 32767): the prefill GEMM's x."""
    for k in range(x.shape[0]):
        quantize_row_16(x[k], xq[k], xd[k], xs32[k], xs16[k])


def quantize_x(x: np.ndarray, bits: int = 8, k_blocks: bool = False):
    """(xq, xd, xs32, xs16) as new arrays (quantize_into_8, _8k with k_blocks, or _16)."""
    n, n_cols = x.shape
    xq = np.empty((n, n_cols), np.int8 if bits == 8 else np.int16)
    xd, xs32 = np.empty((n, n_cols // 32), np.float32), np.empty((n, n_cols // 32), np.float32)
    xs16 = np.empty((n, n_cols // 16), np.float32)
    quantize = quantize_into_16 if bits == 16 else quantize_into_8k if k_blocks else quantize_into_8
    quantize(np.ascontiguousarray(x, np.float32), xq, xd, xs32, xs16)
    return xq, xd, xs32, xs16


def quantize_x16(x: np.ndarray):
    return quantize_x(x, 16)


@njit(cache=True, nogil=True, inline="always")
def matvec_rows(data, ggml_type, x, xq, xd, xs32, xs16, f16, out, start, stop):
    """out[k, r] = row r of data (of ggml_type) . x[k] for rows start..stop: one work item of a
    team job (jobs.py). data uint8 [rows, row_bytes] (the legacy types repacked: interleave.py,
    start a multiple of its ROWS); x float32 [n, n_cols] and its quantized form
    (quantize_into_8); out float32 [n, rows]."""
    if ggml_type == Q8_0:
        rows_x8_q8_0(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q4_0:
        rows_x8_q4_0(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q4_1:
        rows_x8_q4_1(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q5_0:
        rows_x8_q5_0(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q5_1:
        rows_x8_q5_1(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q4_K:
        rows_q4_k(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q5_K:
        rows_q5_k(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == Q6_K:
        rows_q6_k(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == F16:
        rows_f16(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    elif ggml_type == BF16:
        rows_bf16(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
    else:
        rows_f32(data, x, xq, xd, xs32, xs16, f16, out, start, stop)
