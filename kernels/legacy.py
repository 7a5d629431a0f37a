"""The original ggml quantizations: blocks of 32 values with one f16 scale (and an f16 min).

Each function dequantizes one block, block: uint8 [type_size] -> out: float32 [32], with the
same float32 operations, in the same order, as ggml's `dequantize_row_*` and `gguf.quants` (so
the values match bit for bit: d * q is rounded to f32 before + m is added, never fused).
Layouts (ggml-common.h); qs holds value j in its low nibble and value j + 16 in its high one:

    Q4_0  18 bytes: d f16 | qs u8[16]                  x = d * (q4 - 8)
    Q4_1  20 bytes: d f16 | m f16 | qs u8[16]          x = d * q4 + m
    Q5_0  22 bytes: d f16 | qh u32 | qs u8[16]         x = d * (q5 - 16), q5 bit 4 in qh bit j
    Q5_1  24 bytes: d f16 | m f16 | qh u32 | qs u8[16] x = d * q5 + m
    Q8_0  34 bytes: d f16 | qs i8[32]                  x = d * q8

Loops run to a slice's length (`len(qs)`), not to a literal 16 or 32: numba turns LLVM's SLP
vectorizer off, so a loop with a constant trip count gets unrolled into scalar code, while one
whose count LLVM cannot see gets vectorized (8 to 16 values per instruction). Numba does
integer arithmetic in int64; the np.int32(...) before each float conversion lets the vectorizer
narrow it to 32-bit lanes.
"""

from __future__ import annotations

import numpy as np

from .floats import read_f16
from .jit import njit

QK = 32  # values per block


@njit(cache=True, fastmath=False)
def read_u32(field):
    """The little-endian uint32 in field: uint8 [4]."""
    return (np.int64(field[0]) | (np.int64(field[1]) << 8)
            | (np.int64(field[2]) << 16) | (np.int64(field[3]) << 24))


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q4_0(block, out):
    d = read_f16(block[0:2])
    qs = block[2:18]
    for j in range(len(qs)):
        out[j] = d * np.float32(np.int32((qs[j] & 0xF) - 8))
        out[j + 16] = d * np.float32(np.int32((qs[j] >> 4) - 8))


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q4_1(block, out):
    d = read_f16(block[0:2])
    m = read_f16(block[2:4])
    qs = block[4:20]
    for j in range(len(qs)):
        out[j] = d * np.float32(np.int32(qs[j] & 0xF)) + m
        out[j + 16] = d * np.float32(np.int32(qs[j] >> 4)) + m


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q5_0(block, out):
    d = read_f16(block[0:2])
    qh = read_u32(block[2:6])
    qs = block[6:22]
    for j in range(len(qs)):
        lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4)
        hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
        out[j] = d * np.float32(np.int32(lo - 16))
        out[j + 16] = d * np.float32(np.int32(hi - 16))


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q5_1(block, out):
    d = read_f16(block[0:2])
    m = read_f16(block[2:4])
    qh = read_u32(block[4:8])
    qs = block[8:24]
    for j in range(len(qs)):
        lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4)
        hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
        out[j] = d * np.float32(np.int32(lo)) + m
        out[j + 16] = d * np.float32(np.int32(hi)) + m


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q8_0(block, out):
    d = read_f16(block[0:2])
    qs = block[2:34]
    for j in range(len(qs)):
        out[j] = d * np.float32(np.int8(qs[j]))
