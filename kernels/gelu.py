"""GELU (tanh form) as ggml's CPU code computes it: for nn.gelu_mul and the team's GELU_MUL job
(jobs.py). ggml rounds the input to f16 and looks its GELU up in a table of f16 values
(GGML_GELU_FP16, on by default), 0 at or below -10 and the input itself at or above 10; doing
the same keeps edgellm's activations on llama.cpp's (with the exact function and llama.cpp's
other roundings, two of the four greedy reference continuations left llama.cpp's at near-ties:
benchmarks/llama_cpp_numerics.py).
"""

from __future__ import annotations

import math

import numpy as np

from .jit import njit
from .simd import f16_bits

LIMIT = 10.0  # beyond +-LIMIT: 0 below, the identity above (ggml_vec_geglu_f32)


def gelu_table() -> np.ndarray:
    """float32 [65536]: the GELU of each f16 bit pattern's value, in float32 arithmetic
    (ggml_gelu_f32), rounded to f16 (ggml_table_gelu_f16)."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    c, a, half, one = (np.float32(v) for v in (math.sqrt(2.0 / math.pi), 0.044715, 0.5, 1.0))
    with np.errstate(all="ignore"):  # inf and NaN patterns: never looked up
        y = half * x * (one + np.tanh(c * x * (one + a * x * x)))
    table = y.astype(np.float16).astype(np.float32)
    table.flags.writeable = False
    return table


# error_model="numpy" and not inlined into the team's serve, whose error model is numba's default.
@njit(cache=True, nogil=True, error_model="numpy")
def gelu_mul_range(g, u, table, out, start, stop):
    """out[i] = gelu(g[i]) * u[i] for i in [start, stop); table: gelu_table()."""
    g, u, out = g[start:stop], u[start:stop], out[start:stop]
    for i in range(g.shape[0]):  # from 0: numba knows i >= 0 (no wrap-around), LLVM vectorizes
        v = g[i]
        y = np.float32(0.0) if v <= -LIMIT else (v if v >= LIMIT else table[f16_bits(v)])
        out[i] = y * u[i]
