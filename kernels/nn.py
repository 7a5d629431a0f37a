"""Transformer arithmetic on float32 activations: norms, RoPE, attention, activations.

Everything here works on whole arrays (numpy, BLAS for the matrix products); nothing knows which
model it serves. Shapes: n = tokens in the batch, d = model width, hd = head dim.
"""

from __future__ import annotations

import math

import numpy as np

ROPE_NORM = 0  # rotate adjacent pairs (x[2i], x[2i+1]): llama, whose converter permutes Q/K rows
ROPE_NEOX = 2  # rotate halves (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., d] / rms(x) * weight [d], as ggml_rms_norm followed by a multiply."""
    mean_sq = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True, dtype=np.float32)
    return (x * (1.0 / np.sqrt(mean_sq + np.float32(eps)))).astype(np.float32) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation (ggml_gelu, PyTorch's gelu(approximate="tanh"))."""
    c = np.float32(math.sqrt(2.0 / math.pi))
    return np.float32(0.5) * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def rope_tables(
    positions: np.ndarray, n_rot: int, base: float, freq_scale: float = 1.0,
    freq_factors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [n, n_rot/2] for each position: theta_i = pos * freq_scale * base^(-2i/n_rot) / ff_i."""
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    theta = np.outer(positions.astype(np.float64) * freq_scale, inv_freq)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: int) -> np.ndarray:
    """Rotate x [n, n_heads, hd] in place by per-position angles (cos/sin [n, n_rot/2])."""
    half = cos.shape[1]
    c, s = cos[:, None, :], sin[:, None, :]
    if mode == ROPE_NEOX:
        a, b = x[..., :half].copy(), x[..., half : 2 * half].copy()
        x[..., :half] = a * c - b * s
        x[..., half : 2 * half] = b * c + a * s
    else:
        a, b = x[..., 0 : 2 * half : 2].copy(), x[..., 1 : 2 * half : 2].copy()
        x[..., 0 : 2 * half : 2] = a * c - b * s
        x[..., 1 : 2 * half : 2] = b * c + a * s
    return x


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
    scale: float, window: int = 0, q_block: int = 256,
) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads; returns [n, n_head * hd_v].

    q [n, n_head, hd]; k [n_kv, m, hd]; v [n_kv, m, hd_v]; q_pos [n] and k_pos [m] are absolute
    positions (k_pos < 0 marks an empty cache slot). A query at p sees keys at p' <= p, and with a
    sliding window only those with p - p' < window (llama.cpp's standard SWA). Queries are taken
    in blocks so that the score matrix stays small for long prompts.
    """
    n, n_head, hd = q.shape
    n_kv, m, hd_v = v.shape
    group = n_head // n_kv
    out = np.empty((n, n_head, hd_v), dtype=np.float32)
    for q0 in range(0, n, q_block):
        q1 = min(n, q0 + q_block)
        qp = q_pos[q0:q1, None]
        visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= qp)
        if window > 0:
            visible &= qp - k_pos[None, :] < window
        bias = np.where(visible, np.float32(0), np.float32(-np.inf))  # [nq, m]
        for h in range(n_kv):
            heads = slice(h * group, (h + 1) * group)
            # one 2-D product per KV head: [(nq * group), hd] @ [hd, m]
            qh = np.ascontiguousarray(q[q0:q1, heads, :]).reshape(-1, hd)
            scores = (qh @ k[h].T).reshape(q1 - q0, group, m)
            scores *= np.float32(scale)
            scores += bias[:, None, :]
            scores -= scores.max(axis=-1, keepdims=True)
            # exp() of a score this far below the max would be a denormal, which the FPU
            # handles ~100x slower; its weight is below float32 resolution anyway.
            scores[scores < -80.0] = -np.inf
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[q0:q1, heads, :] = (scores.reshape(-1, m) @ v[h]).reshape(q1 - q0, group, hd_v)
    return out.reshape(n, n_head * hd_v)
