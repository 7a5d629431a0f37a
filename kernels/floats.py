"""Unquantized GGUF types: F32, F16, BF16, and the f16 reader every quantized block uses.

Rows arrive as raw little-endian bytes (uint8 [row_bytes]); each function writes float32 values
into `out`. Conversions are exact, bit for bit what numpy does (f16 -> f32 and bf16 -> f32 are
widenings: every value, including subnormals, infinities and NaN payloads, has an exact f32).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def bits_to_float32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (C: memcpy from a uint32_t)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        width = signature.args[0].bitwidth
        if width > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif width < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(cache=True)
def half_to_float(h):
    """The f16 with bit pattern h (0..65535) as float32, as numpy's float16 -> float32."""
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:
        # Zero or subnormal: mantissa * 2^-24, exact in float32 (no flush-to-zero tricks).
        value = np.float32(mantissa) * np.float32(2.0**-24)
        return -value if sign else value
    if exponent == 0x1F:  # inf / NaN keep their payload
        return bits_to_float32(sign | 0x7F800000 | (mantissa << 13))
    return bits_to_float32(sign | ((exponent + 112) << 23) | (mantissa << 13))


@njit(cache=True)
def read_f16(row, i):
    """The little-endian f16 at row[i : i + 2] as float32: the scale fields of every block."""
    return half_to_float(np.int64(row[i]) | (np.int64(row[i + 1]) << 8))


@njit(cache=True)
def dequantize_row_f32(row, out):
    """row: 4 * n bytes -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = bits_to_float32(np.int64(row[4 * j]) | (np.int64(row[4 * j + 1]) << 8)
                                 | (np.int64(row[4 * j + 2]) << 16) | (np.int64(row[4 * j + 3]) << 24))


@njit(cache=True)
def dequantize_row_f16(row, out):
    """row: 2 * n bytes of f16 -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = read_f16(row, 2 * j)


@njit(cache=True)
def dequantize_row_bf16(row, out):
    """row: 2 * n bytes of bf16 (the top half of an f32) -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = bits_to_float32((np.int64(row[2 * j]) << 16) | (np.int64(row[2 * j + 1]) << 24))
