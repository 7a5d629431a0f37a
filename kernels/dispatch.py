"""Rows of a quantized weight: dequantize them, look them up, multiply by them.

A weight is raw GGUF bytes, data: uint8 [rows, row_bytes], one row per output feature holding
n_cols values in blocks (`gguf.GGML_QUANT_SIZES`: values and bytes per block). The block formats
live in floats.py, legacy.py and kquants.py; this file holds the loops they share:

    dequantize_row  one row of any type -> float32 [n_cols] (the only type switch)
    for_rows        the parallel loop over rows: dequantize each (dequantize, get_rows, prefill
                    tiles) or dot it with a few x rows (decode)
    matmul          few x rows: for_rows dots; many: dequantize a bounded tile of rows, then
                    BLAS (x @ tile.T) into out[:, tile], tile after tile

Exactness: every dequantizing function says fastmath=False explicitly. Numba hands a caller's
fast-math flags down to the functions it calls unless they set their own, and for_rows (fast
math for its dot products) calls dequantize_row: 'contract' would fuse d * q + m into one FMA,
one rounding where gguf has two.

The type is a runtime int, so each kernel is compiled once for all types; the Python wrappers
below pass every array in one layout (C-contiguous, read-only inputs) so that there is one
compilation per kernel. Numba caches the machine code on disk: the first run compiles for
several seconds, later runs load it in well under one.
"""

from __future__ import annotations

import functools

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from numba import njit, prange

from .floats import dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32
from .kquants import (
    QK_K, dequantize_block_q4_k, dequantize_block_q5_k, dequantize_block_q6_k,
)
from .legacy import (
    QK, dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q5_0,
    dequantize_block_q5_1, dequantize_block_q8_0,
)

# Plain ints: numba folds them into the type switch as constants.
F32, F16, BF16 = int(T.F32), int(T.F16), int(T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(T.Q4_0), int(T.Q4_1), int(T.Q5_0), int(T.Q5_1), int(T.Q8_0)
Q4_K, Q5_K, Q6_K = int(T.Q4_K), int(T.Q5_K), int(T.Q6_K)

SUPPORTED_TYPES = frozenset({F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K})

# At most this many x rows go through the for_rows dots; more go through BLAS.
MATVEC_MAX_ROWS = 8
# Dequantized rows per BLAS call are capped at this many bytes of float32 scratch.
TILE_BYTES = 4 << 20
# Rows per parallel work item in for_rows: one buffer allocation per chunk.
CHUNK_ROWS = 16


@njit(cache=True, fastmath=False)
def dequantize_row(row, ggml_type, out):
    """row: uint8 [row_bytes] of type ggml_type -> out: float32 [n_cols]."""
    n_cols = out.shape[0]
    if ggml_type == Q8_0:
        for b in range(n_cols // QK):
            dequantize_block_q8_0(row[34 * b : 34 * b + 34], out[QK * b : QK * b + QK])
    elif ggml_type == Q4_0:
        for b in range(n_cols // QK):
            dequantize_block_q4_0(row[18 * b : 18 * b + 18], out[QK * b : QK * b + QK])
    elif ggml_type == Q4_1:
        for b in range(n_cols // QK):
            dequantize_block_q4_1(row[20 * b : 20 * b + 20], out[QK * b : QK * b + QK])
    elif ggml_type == Q5_0:
        for b in range(n_cols // QK):
            dequantize_block_q5_0(row[22 * b : 22 * b + 22], out[QK * b : QK * b + QK])
    elif ggml_type == Q5_1:
        for b in range(n_cols // QK):
            dequantize_block_q5_1(row[24 * b : 24 * b + 24], out[QK * b : QK * b + QK])
    elif ggml_type == Q4_K:
        for b in range(n_cols // QK_K):
            dequantize_block_q4_k(row[144 * b : 144 * b + 144], out[QK_K * b : QK_K * b + QK_K])
    elif ggml_type == Q5_K:
        for b in range(n_cols // QK_K):
            dequantize_block_q5_k(row[176 * b : 176 * b + 176], out[QK_K * b : QK_K * b + QK_K])
    elif ggml_type == Q6_K:
        for b in range(n_cols // QK_K):
            dequantize_block_q6_k(row[210 * b : 210 * b + 210], out[QK_K * b : QK_K * b + QK_K])
    elif ggml_type == F32:
        dequantize_row_f32(row, out)
    elif ggml_type == F16:
        dequantize_row_f16(row, out)
    elif ggml_type == BF16:
        dequantize_row_bf16(row, out)


@njit(cache=True, parallel=True, fastmath={"reassoc", "nsz", "contract"})
def for_rows(data, ggml_type, row_ids, x, out, dot):
    """The one parallel loop. For each i, dequantize row row_ids[i] of data, then
        dot=False: out[i] = row       out: float32 [len(row_ids), n_cols]
        dot=True:  out[:, i] = x @ row    x: float32 [n, n_cols], out: float32 [n, len(row_ids)]

    For the dot a row goes to a per-thread buffer that stays in L1 while the n x rows pass over
    it. The fastmath flags let the dot products vectorize; dequantize_row, called (not inlined)
    and compiled with fastmath=False, stays exact.
    """
    n_cols = x.shape[1] if dot else out.shape[1]
    n_ids = row_ids.shape[0]
    for chunk in prange((n_ids + CHUNK_ROWS - 1) // CHUNK_ROWS):
        buffer = np.empty(n_cols, np.float32)
        for i in range(chunk * CHUNK_ROWS, min(n_ids, (chunk + 1) * CHUNK_ROWS)):
            w = buffer if dot else out[i]
            dequantize_row(data[row_ids[i]], ggml_type, w)
            if dot:
                for k in range(x.shape[0]):
                    acc = np.float32(0.0)
                    for j in range(n_cols):
                        acc += x[k, j] * w[j]
                    out[k, i] = acc


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: every array the kernels read has one numba type, so one compilation."""
    a = a.view()
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=64)
def _all_rows(rows: int) -> np.ndarray:
    return _readonly(np.arange(rows, dtype=np.int64))


_NO_X = _readonly(np.empty((0, 0), np.float32))


def _check(data: np.ndarray, ggml_type: int, n_cols: int) -> tuple[np.ndarray, int]:
    """data and type as the kernels take them; the type as a plain int (an IntEnum would be a
    second numba specialization)."""
    ggml_type = int(ggml_type)
    if ggml_type not in SUPPORTED_TYPES:
        raise NotImplementedError(f"ggml type {ggml_type} is not supported by the kernels")
    block_size, type_size = GGML_QUANT_SIZES[T(ggml_type)]
    row_bytes = n_cols // block_size * type_size
    if n_cols % block_size or data.ndim != 2 or data.shape[1] != row_bytes:
        raise ValueError(f"{T(ggml_type).name} rows of {n_cols} values take {row_bytes} bytes "
                         f"(and n_cols must be a multiple of {block_size}); got data {data.shape}")
    return _readonly(np.ascontiguousarray(data, dtype=np.uint8)), ggml_type


def _dequantize_rows(data, ggml_type, row_ids, out):
    for_rows(data, ggml_type, row_ids, _NO_X, out, False)
    return out


def dequantize(data: np.ndarray, ggml_type: int, n_cols: int) -> np.ndarray:
    """All rows: float32 [rows, n_cols], bit for bit `gguf.quants.dequantize(data, type)`."""
    data, ggml_type = _check(data, ggml_type, n_cols)
    rows = data.shape[0]
    return _dequantize_rows(data, ggml_type, _all_rows(rows), np.empty((rows, n_cols), np.float32))


def get_rows(data: np.ndarray, ggml_type: int, n_cols: int, row_ids) -> np.ndarray:
    """Rows row_ids (an embedding lookup): float32 [len(row_ids), n_cols], only those rows
    dequantized. Negative ids count from the end, as in numpy."""
    data, ggml_type = _check(data, ggml_type, n_cols)
    rows = data.shape[0]
    ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < -rows or ids.max() >= rows):
        raise IndexError(f"row ids must lie in [-{rows}, {rows}), got {ids.min()}..{ids.max()}")
    ids = _readonly(np.where(ids < 0, ids + rows, ids))
    return _dequantize_rows(data, ggml_type, ids, np.empty((ids.size, n_cols), np.float32))


def matmul(x: np.ndarray, data: np.ndarray, ggml_type: int, n_cols: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """x @ W.T for W = dequantize(data): x float32 [n, n_cols] -> float32 [n, rows].

    `out`, if given, must be a C-contiguous float32 [n, rows] array; it is returned.
    """
    data, ggml_type = _check(data, ggml_type, n_cols)
    x = _readonly(np.ascontiguousarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != n_cols:
        raise ValueError(f"x must be [n, {n_cols}], got {x.shape}")
    n, rows = x.shape[0], data.shape[0]
    if out is None:
        out = np.empty((n, rows), np.float32)
    elif out.shape != (n, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 [{n}, {rows}]")

    if n == 0:
        pass
    elif ggml_type == F32:  # float32 already: BLAS straight on the mapped bytes
        np.matmul(x, data.view(np.float32).T, out=out)
    elif n <= MATVEC_MAX_ROWS:
        for_rows(data, ggml_type, _all_rows(rows), x, out, True)
    else:
        tile_rows = max(1, min(rows, TILE_BYTES // (4 * n_cols)))
        tile = np.empty((tile_rows, n_cols), np.float32)
        for start in range(0, rows, tile_rows):
            stop = min(rows, start + tile_rows)
            ids = _readonly(np.arange(start, stop, dtype=np.int64))
            _dequantize_rows(data, ggml_type, ids, tile[: stop - start])
            np.matmul(x, tile[: stop - start].T, out=out[:, start:stop])
    return out
