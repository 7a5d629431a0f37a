"""GELU (tanh form) in plain float32 arithmetic, which vectorizes: for nn.gelu_mul and the
team's GELU_MUL job (jobs.py)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# tanh(v) for float32 as v * P(v^2) / Q(v^2), the minimax rational fit Eigen uses (within a few
# ulp on [-7.905, 7.905], where float32 tanh has reached +-1): plain arithmetic, so the loops
# below vectorize, where np.tanh is a scalar libm call per value (a prefill's 19M GELUs took
# 0.17 s of 1.4).
TANH_CLAMP = 7.90531110763549805
TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
          -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


@njit(cache=True, inline="always")
def _tanh(v):
    c = np.float32(TANH_CLAMP)
    v = c if v > c else (-c if v < -c else v)
    v2 = v * v
    p = np.float32(TANH_P[6]) * v2 + np.float32(TANH_P[5])
    p = p * v2 + np.float32(TANH_P[4])
    p = p * v2 + np.float32(TANH_P[3])
    p = p * v2 + np.float32(TANH_P[2])
    p = p * v2 + np.float32(TANH_P[1])
    p = p * v2 + np.float32(TANH_P[0])
    q = np.float32(TANH_Q[3]) * v2 + np.float32(TANH_Q[2])
    q = q * v2 + np.float32(TANH_Q[1])
    q = q * v2 + np.float32(TANH_Q[0])
    return v * p / q


@njit(cache=True, inline="always")
def gelu_one(v):
    c = np.float32(math.sqrt(2.0 / math.pi))
    return np.float32(0.5) * v * (np.float32(1.0) + _tanh(c * (v + np.float32(0.044715) * v * v * v)))


# error_model="numpy": no ZeroDivisionError check on p / q, which would keep the loop scalar. Not
# inlined into the team's serve (whose error model is numba's default) for the same reason.
@njit(cache=True, nogil=True, error_model="numpy")
def gelu_mul_range(g, u, out, start, stop):
    """out[i] = gelu(g[i]) * u[i] for i in [start, stop)."""
    g, u, out = g[start:stop], u[start:stop], out[start:stop]
    for i in range(g.shape[0]):  # from 0: numba knows i >= 0 (no wrap-around), LLVM vectorizes
        out[i] = gelu_one(g[i]) * u[i]
