"""Attention for one query and one head over a KV cache: the work item of decode attention
(jobs.ATTEND, one item per query x head)."""

from __future__ import annotations

import numpy as np
from numba import njit

# A score this far below the row's max weighs less than float32 resolution (and its exp() would
# be a slow denormal): it is skipped.
NEGLIGIBLE = -80.0


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def attend_one(q, k, v, p, k_pos, scale, window, scores, out):
    """out [hd_v] = softmax(scale * k @ q over the slots visible from position p) @ v.

    q float32 [hd]; k [m, hd], v [m, hd_v] (one KV head); k_pos int64 [m] (-1: empty slot). A
    slot is visible if 0 <= its position <= p and, with a window, p - position < window.
    scores: float32 [m] scratch."""
    m, hd = k.shape
    best = -np.inf
    for s in range(m):
        ps = k_pos[s]
        if ps < 0 or ps > p or (window > 0 and p - ps >= window):
            scores[s] = -np.inf
            continue
        acc = np.float32(0.0)
        for j in range(hd):
            acc += q[j] * k[s, j]
        scores[s] = acc * scale
        best = max(best, scores[s])
    total = np.float32(0.0)
    for s in range(m):
        e = np.float32(np.exp(scores[s] - best)) if scores[s] - best > NEGLIGIBLE else np.float32(0.0)
        scores[s] = e
        total += e
    out[:] = 0.0
    for s in range(m):
        if scores[s] != 0.0:
            w = scores[s] / total
            for j in range(out.shape[0]):
                out[j] += w * v[s, j]
