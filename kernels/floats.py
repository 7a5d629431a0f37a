"""Unquantized GGUF types: F32, F16, BF16, and the f16 reader every quantized block uses.

Rows arrive as raw little-endian bytes (uint8 [row_bytes]); each function writes float32 values
into `out`. Conversions are exact, bit for bit what numpy does (f16 -> f32 and bf16 -> f32 are
widenings: every value, including subnormals, infinities and NaN payloads, has an exact f32).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import njit


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


@njit(cache=True, fastmath=False)
def half_to_float(h):
    """The f16 with bit pattern h (0..65535) as float32, as numpy's float16 -> float32.

    Written with selects, not branches, so that loops over f16 values vectorize.
    """
    magnitude = h & 0x7FFF
    # Normal: move exponent and mantissa into place and rebias the exponent (15 -> 127, +112);
    # inf/NaN (exponent 31) rebias to 255, keeping the NaN payload.
    bits = (magnitude << 13) + (112 << 23) + ((112 << 23) if magnitude >= 0x7C00 else 0)
    # Zero and subnormals are mantissa * 2^-24, exact in float32.
    if magnitude < 0x400:
        value = np.float32(magnitude) * np.float32(2.0**-24)
    else:
        value = bits_to_float32(bits)
    return -value if h & 0x8000 else value


@njit(cache=True, fastmath=False)
def read_f16(field):
    """The little-endian f16 in field: uint8 [2] as float32 (the scales of every block)."""
    return half_to_float(np.int64(field[0]) | (np.int64(field[1]) << 8))


@njit(cache=True, fastmath=False)
def dequantize_row_f32(row, out):
    """row: 4 * n bytes -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = bits_to_float32(np.int64(row[4 * j]) | (np.int64(row[4 * j + 1]) << 8)
                                 | (np.int64(row[4 * j + 2]) << 16)
                                 | (np.int64(row[4 * j + 3]) << 24))


@njit(cache=True, fastmath=False)
def dequantize_row_f16(row, out):
    """row: 2 * n bytes of f16 -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = half_to_float(np.int64(row[2 * j]) | (np.int64(row[2 * j + 1]) << 8))


@njit(cache=True, fastmath=False)
def dequantize_row_bf16(row, out):
    """row: 2 * n bytes of bf16 (the top half of an f32) -> out[:n]."""
    for j in range(out.shape[0]):
        out[j] = bits_to_float32((np.int64(row[2 * j]) << 16) | (np.int64(row[2 * j + 1]) << 24))
