"""RMS norm rows, as ggml_rms_norm computes them (the sum of squares in double, then a multiply):
one definition for the norm on its own (rms_norm), the norm fused into a matmul's quantization
of x (dispatch) and the Q/K norms fused with RoPE (nn.norm_rope), so that all give the same bits."""

from __future__ import annotations

import numpy as np

from .jit import njit


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., d] / rms(x) * weight [d], as ggml_rms_norm (sum of squares in double) followed by a
    multiply."""
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    rms_norm_rows(rows, weight, np.float32(eps), out)
    return out.reshape(x.shape)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def sum_squares(row):
    """sum of row^2 in double (fast-math: the double lanes may add in any order)."""
    total = 0.0
    for j in range(row.shape[0]):
        total += np.float64(row[j]) * np.float64(row[j])
    return total


@njit(cache=True, nogil=True)
def rms_norm_rows(x, weight, eps, out):
    """out[i] = x[i] / rms(x[i]) * weight; out may be x."""
    d = x.shape[1]
    for i in range(x.shape[0]):
        scale = np.float32(1.0) / np.sqrt(np.float32(sum_squares(x[i]) / d) + eps)
        for j in range(d):
            out[i, j] = (x[i, j] * scale) * weight[j]


@njit(cache=True, nogil=True)
def add_rms_norm_rows(x, a, weight, eps, out):
    """out[i] = x[i] + a[i] / rms(a[i]) * weight: a residual add after a norm, in one pass
    (no fast-math: the multiply and the add round apart, as the two steps alone would)."""
    d = a.shape[1]
    for i in range(a.shape[0]):
        scale = np.float32(1.0) / np.sqrt(np.float32(sum_squares(a[i]) / d) + eps)
        for j in range(d):
            out[i, j] = x[i, j] + (a[i, j] * scale) * weight[j]
