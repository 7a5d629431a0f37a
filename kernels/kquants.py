"""K-quants: super-blocks of 256 values in sub-blocks with their own 6- or 8-bit scales.

Each function dequantizes one super-block, block: uint8 [type_size] -> out: float32 [256], with
the float32 operations of ggml's `dequantize_row_*` and `gguf.quants` in the same order (scale
products rounded to f32 first, then x = (d * sc) * q - (dmin * m), never fused), so the values
match bit for bit. Layouts (ggml-common.h):

    Q4_K  144 bytes: d f16 | dmin f16 | scales u8[12] | qs u8[128]
          8 sub-blocks of 32; sub-block 2i+k takes nibble k of qs[32i : 32i + 32].
    Q5_K  176 bytes: d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128]
          as Q4_K, plus bit 4 of value l of sub-block s in bit s of qh[l].
    Q6_K  210 bytes: ql u8[128] | qh u8[64] | scales i8[16] | d f16
          two halves of 128; value l + 32g of half h (l < 32, g < 4) has its low 4 bits in
          nibble g // 2 of ql[64h + 32(g % 2) + l] and bits 4-5 in bits 2g of qh[32h + l];
          16 sub-blocks of 16 values, x = (d * scales[p // 16]) * (q6 - 32).

Loops run to a slice's length, not to a literal count: see legacy.py (vectorization).
"""

from __future__ import annotations

import numpy as np

from .floats import read_f16
from .jit import njit

QK_K = 256  # values per super-block


@njit(cache=True, fastmath=False)
def scale_min_k4(scales, s):
    """The 6-bit scale and min of sub-block s (0..7), packed in scales: uint8 [12] as

     0..3  mmSSSSSS  (SSSSSS: scale s, mm: top bits of scale s + 4)
     4..7  mmMMMMMM  (MMMMMM: min s, mm: top bits of min s + 4)
     8..11 MMMMSSSS  (low bits of min and scale s + 4)
    """
    if s < 4:
        sc = np.int64(scales[s]) & 63
        m = np.int64(scales[s + 4]) & 63
    else:
        sc = (np.int64(scales[s + 4]) & 0xF) | ((np.int64(scales[s - 4]) >> 6) << 4)
        m = (np.int64(scales[s + 4]) >> 4) | ((np.int64(scales[s]) >> 6) << 4)
    return np.float32(sc), np.float32(m)


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q4_k(block, out):
    d = read_f16(block[0:2])
    dmin = read_f16(block[2:4])
    scales = block[4:16]
    for i in range(4):  # 64 values: sub-blocks 2i and 2i + 1 share 32 bytes of qs
        sc0, m0 = scale_min_k4(scales, 2 * i)
        sc1, m1 = scale_min_k4(scales, 2 * i + 1)
        d0, dm0 = d * sc0, dmin * m0
        d1, dm1 = d * sc1, dmin * m1
        qs = block[16 + 32 * i : 48 + 32 * i]
        y = out[64 * i : 64 * i + 64]
        for l in range(len(qs)):
            y[l] = d0 * np.float32(np.int32(qs[l] & 0xF)) - dm0
            y[l + 32] = d1 * np.float32(np.int32(qs[l] >> 4)) - dm1


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q5_k(block, out):
    d = read_f16(block[0:2])
    dmin = read_f16(block[2:4])
    scales = block[4:16]
    qh = block[16:48]
    for i in range(4):
        sc0, m0 = scale_min_k4(scales, 2 * i)
        sc1, m1 = scale_min_k4(scales, 2 * i + 1)
        d0, dm0 = d * sc0, dmin * m0
        d1, dm1 = d * sc1, dmin * m1
        qs = block[48 + 32 * i : 80 + 32 * i]
        y = out[64 * i : 64 * i + 64]
        for l in range(len(qs)):
            lo = (qs[l] & 0xF) | (((qh[l] >> (2 * i)) & 1) << 4)
            hi = (qs[l] >> 4) | (((qh[l] >> (2 * i + 1)) & 1) << 4)
            y[l] = d0 * np.float32(np.int32(lo)) - dm0
            y[l + 32] = d1 * np.float32(np.int32(hi)) - dm1


@njit(cache=True, fastmath=False, inline="always")
def dequantize_block_q6_k(block, out):
    d = read_f16(block[208:210])
    for h in range(2):  # halves of 128 values
        ql = block[64 * h : 64 * h + 64]
        qh = block[128 + 32 * h : 160 + 32 * h]
        scales = block[192 + 8 * h : 200 + 8 * h]
        y = out[128 * h : 128 * h + 128]
        for k in range(2):  # values l + 32g for l in [16k, 16k + 16) share scales[k + 2g]
            d0 = d * np.float32(np.int8(scales[k]))
            d1 = d * np.float32(np.int8(scales[k + 2]))
            d2 = d * np.float32(np.int8(scales[k + 4]))
            d3 = d * np.float32(np.int8(scales[k + 6]))
            lo = 16 * k
            hbits = qh[lo : lo + 16]
            for j in range(len(hbits)):
                l = lo + j
                h2 = hbits[j]
                q0 = (ql[l] & 0xF) | ((h2 & 3) << 4)
                q1 = (ql[l + 32] & 0xF) | (((h2 >> 2) & 3) << 4)
                q2 = (ql[l] >> 4) | (((h2 >> 4) & 3) << 4)
                q3 = (ql[l + 32] >> 4) | (((h2 >> 6) & 3) << 4)
                y[l] = d0 * np.float32(np.int32(q0 - 32))
                y[l + 32] = d1 * np.float32(np.int32(q1 - 32))
                y[l + 64] = d2 * np.float32(np.int32(q2 - 32))
                y[l + 96] = d3 * np.float32(np.int32(q3 - 32))
