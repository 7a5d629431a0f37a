"""Transformer arithmetic on float32 activations: norms, RoPE, attention, activations.

Everything here works on whole arrays; nothing knows which model it serves. Long batches
(prefill) use numpy and BLAS; the few-token calls of decode go to small Numba loops, because a
token runs ~20 of these per layer and numpy's per-call overhead (~10-20 us each) would add up to
more than the arithmetic. Shapes: n = tokens in the batch, d = model width, hd = head dim.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .dispatch import parallel_map

ROPE_NORM = 0  # rotate adjacent pairs (x[2i], x[2i+1]): llama, whose converter permutes Q/K rows
ROPE_NEOX = 2  # rotate halves (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., d] / rms(x) * weight [d], as ggml_rms_norm (sum of squares in double) followed by a
    multiply."""
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    _rms_norm_rows(rows, weight, np.float32(eps), out)
    return out.reshape(x.shape)


@njit(cache=True)
def _rms_norm_rows(x, weight, eps, out):
    d = x.shape[1]
    for i in range(x.shape[0]):
        sum_sq = 0.0
        for j in range(d):
            sum_sq += np.float64(x[i, j]) * np.float64(x[i, j])
        scale = np.float32(1.0) / np.sqrt(np.float32(sum_sq / d) + eps)
        for j in range(d):
            out[i, j] = (x[i, j] * scale) * weight[j]


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation (ggml_gelu, PyTorch's gelu(approximate="tanh"))."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    _gelu_tanh(flat, out)
    return out.reshape(x.shape)


@njit(cache=True, parallel=True)
def _gelu_tanh(x, out):
    c = np.float32(math.sqrt(2.0 / math.pi))
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = np.float32(0.5) * v * (np.float32(1.0) + np.tanh(c * (v + np.float32(0.044715) * v * v * v)))


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


FEW_QUERIES = 8  # up to this many queries (decode), attention runs as a Numba loop


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
    scale: float, window: int = 0, q_block: int = 128,
) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads; returns [n, n_head * hd_v].

    q [n, n_head, hd]; k [n_kv, m, hd]; v [n_kv, m, hd_v]; q_pos [n] and k_pos [m] are absolute
    positions (k_pos < 0 marks an empty cache slot). A query at p sees keys at p' <= p, and with a
    sliding window only those with p - p' < window (llama.cpp's standard SWA). Queries are taken
    in blocks so that the score matrix stays small for long prompts.
    """
    if q.shape[0] <= FEW_QUERIES:
        out = np.empty((q.shape[0], q.shape[1], v.shape[2]), np.float32)
        _attention_few(np.ascontiguousarray(q, dtype=np.float32), k, v, q_pos, k_pos,
                       np.float32(scale), window, out)
        return out.reshape(q.shape[0], -1)
    n, n_head, hd = q.shape
    n_kv, m, hd_v = v.shape
    group = n_head // n_kv
    out = np.empty((n, n_head, hd_v), dtype=np.float32)

    def one_block(item: tuple[int, int]) -> None:
        q0, h = item
        q1 = min(n, q0 + q_block)
        qp = q_pos[q0:q1, None]
        visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= qp)
        if window > 0:
            visible &= qp - k_pos[None, :] < window
        heads = slice(h * group, (h + 1) * group)
        # one 2-D product per KV head: [(nq * group), hd] @ [hd, m]
        qh = np.ascontiguousarray(q[q0:q1, heads, :]).reshape(-1, hd)
        scores = (qh @ k[h].T).reshape(q1 - q0, group, m)
        scores *= np.float32(scale)
        scores += np.where(visible, np.float32(0), np.float32(-np.inf))[:, None, :]
        scores -= scores.max(axis=-1, keepdims=True)
        # exp() of a score this far below the max would be a denormal, which the FPU
        # handles ~100x slower; its weight is below float32 resolution anyway.
        scores[scores < -80.0] = -np.inf
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[q0:q1, heads, :] = (scores.reshape(-1, m) @ v[h]).reshape(q1 - q0, group, hd_v)

    # blocks of queries x KV heads, spread over the kernels' threads (numpy drops the GIL)
    parallel_map(one_block, [(q0, h) for q0 in range(0, n, q_block) for h in range(n_kv)])
    return out.reshape(n, n_head * hd_v)


@njit(cache=True, parallel=True, fastmath={"reassoc", "nsz", "contract"})
def _attention_few(q, k, v, q_pos, k_pos, scale, window, out):
    """attention() for a few queries, one (query, head) pair per parallel item: scores over the
    visible slots, softmax, weighted sum of the values. out float32 [n, n_head, hd_v]."""
    n, n_head, hd = q.shape
    n_kv, m, hd_v = v.shape
    group = n_head // n_kv
    for item in prange(n * n_head):
        i, h = item // n_head, item % n_head
        kv = h // group
        p = q_pos[i]
        scores = np.empty(m, np.float32)
        best = -np.inf
        for s in range(m):
            ps = k_pos[s]
            if ps < 0 or ps > p or (window > 0 and p - ps >= window):
                scores[s] = -np.inf
                continue
            acc = np.float32(0.0)
            for j in range(hd):
                acc += q[i, h, j] * k[kv, s, j]
            scores[s] = acc * scale
            best = max(best, scores[s])
        total = np.float32(0.0)
        for s in range(m):
            # below the max by more than 80 the weight is under float32 resolution (and exp()
            # would be a slow denormal)
            e = np.float32(np.exp(scores[s] - best)) if scores[s] - best > -80.0 else np.float32(0.0)
            scores[s] = e
            total += e
        o = out[i, h]
        o[:] = 0.0
        for s in range(m):
            if scores[s] != 0.0:
                w = scores[s] / total
                for j in range(hd_v):
                    o[j] += w * v[kv, s, j]
