"""Decode attention over a KV cache, split by keys (flash-decoding): a work item (jobs.ATTEND)
takes one query, one KV head and one chunk of cache slots, and computes the chunk's partial
softmax for every query head of that KV head's group, so each K and V row is read once per
group and a long cache spreads over all threads. combine_parts merges the chunks."""

from __future__ import annotations

import numpy as np
from numba import njit

from .simd import exp_inplace

# A chunk whose max is this far below the overall max weighs less than float32 resolution: it
# is skipped (exp_inplace makes such scores 0 within a chunk).
NEGLIGIBLE = -80.0
CHUNK = 256  # cache slots per work item: 2 items for a 512-slot sliding window


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def attend_part(q, k, v, p, k_pos, scale, window, s0, s1, scores, part_max, part_sum, part_acc):
    """Slots s0..s1 of one KV head against its group's queries q [g, hd], all at position p.

    k [m, hd], v [m, hd_v]; k_pos int64 [m] (-1: empty slot). A slot is visible if
    0 <= its position <= p and, with a window, p - position < window. For each query r:
    part_max[r] = its largest visible scaled score (-inf if none), part_sum[r] = the sum of
    e = exp(score - part_max[r]) and part_acc[r] [hd_v] = the sum of e * v over the chunk's
    visible slots. scores: float32 [g, >= s1 - s0] scratch."""
    g, hd = q.shape
    n = s1 - s0
    part_max[:] = -np.inf
    for s in range(s0, s1):
        ps = k_pos[s]
        if ps < 0 or ps > p or (window > 0 and p - ps >= window):
            for r in range(g):
                scores[r, s - s0] = -np.inf
            continue
        key = k[s]
        for r in range(g):
            acc = np.float32(0.0)
            for j in range(hd):
                acc += q[r, j] * key[j]
            scores[r, s - s0] = acc * scale
            part_max[r] = max(part_max[r], acc * scale)
    for r in range(g):  # e = exp(score - max), 16 at a time; hidden slots and negligible ones 0
        row = scores[r, :n]
        if part_max[r] == -np.inf:
            row[:] = 0.0
        else:
            row -= part_max[r]
            exp_inplace(row)
        part_sum[r] = row.sum()
    part_acc[:, :] = 0.0
    for s in range(s0, s1):
        value = v[s]
        for r in range(g):
            e = scores[r, s - s0]
            if e != 0.0:
                for j in range(part_acc.shape[1]):
                    part_acc[r, j] += e * value[j]


@njit(cache=True, nogil=True)
def combine_parts(part_max, part_sum, part_acc, out):
    """out [n, n_kv * g, hd_v] = softmax(scores) @ v from attend_part's chunk partials
    part_max, part_sum [n, n_kv, chunks, g] and part_acc [n, n_kv, chunks, g, hd_v]: each
    chunk weighed by exp(its max - the overall max). A query that sees no slot gets zeros."""
    n, n_kv, chunks, g = part_max.shape
    for i in range(n):
        for kv in range(n_kv):
            for r in range(g):
                row = out[i, kv * g + r]
                row[:] = 0.0
                best = -np.inf
                for c in range(chunks):
                    best = max(best, part_max[i, kv, c, r])
                if best == -np.inf:
                    continue
                total = np.float32(0.0)
                for c in range(chunks):
                    if part_max[i, kv, c, r] - best > NEGLIGIBLE:
                        w = np.float32(np.exp(part_max[i, kv, c, r] - best))
                        total += w * part_sum[i, kv, c, r]
                        row += w * part_acc[i, kv, c, r]
                row /= total
