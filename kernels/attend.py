"""Decode attention over a KV cache, split by keys (flash-decoding).

A work item takes one query, one KV head and one chunk of cache slots, for every query head of
that KV head's group, so each K and V row is read once per group and a long cache spreads over
all threads. attend_scores runs on each item (the chunk's scores, its max and its sum of
exponentials); normalize_parts then gives each chunk the factor that turns its exponentials into
probabilities; attend_values runs on each item (probabilities times V, per chunk); combine_parts
adds the chunks up. For the f16 cache (the default; K and V as uint16 bit patterns, read as
stored; the q8_0 cache dequantized to f16) the two passes are the team jobs ATTEND and
ATTEND_V; float32 K and V (the f32 cache) take attend_serial, the same passes on the calling
thread.

With f16 K and V the arithmetic is llama.cpp's (no flash attention): the query is rounded to f16
before its dot with the keys (by the caller), and the probabilities are rounded to f16 before
they multiply V, which is why they are normalized before that product rather than after it.
"""

from __future__ import annotations

import numpy as np

from .jit import njit
from .simd import exp_inplace, pv_accumulate, qk_dots, round_f16

# A chunk whose max is this far below the overall max weighs less than float32 resolution: it
# is skipped (exp_inplace makes such scores 0 within a chunk).
NEGLIGIBLE = -80.0
CHUNK = 256  # cache slots per work item: 2 items for a 512-slot sliding window


@njit(cache=True, nogil=True)
def sum_in_order(row):
    """The float32 sum of row, first to last (strict IEEE: no fastmath here, so that LLVM does
    not reorder it). Not row.sum(): numba's array methods live in numba.np.arraymath, and a
    cached kernel that links one imports that module at load, and with it scipy.linalg where
    scipy is installed (12.6 MiB of a bench's peak RSS)."""
    total = np.float32(0.0)
    for x in row:
        total += x
    return total


KEYS_AT_ONCE = 4  # slots per simd.qk_dots call (a block of them that no query sees is skipped)
VALUES_AT_ONCE = 8  # slots per simd.pv_accumulate call


@njit(cache=True, nogil=True)
def _visible(ps, p, window):
    return ps >= 0 and ps <= p and not (window > 0 and p - ps >= window)


@njit(cache=True, nogil=True)
def _put_score(scores, part_max, r, col, acc, scale, seen):
    if seen:
        scores[r, col] = acc * scale
        part_max[r] = max(part_max[r], acc * scale)
    else:
        scores[r, col] = -np.inf


@njit(cache=True, nogil=True)
def attend_scores(q, k, p, k_pos, scale, window, s0, s1, scores, part_max, part_sum):
    """Slots s0..s1 of one KV head against its group's queries q [g, hd], all at position p.

    k [m, hd] (float32, or uint16 f16 bits); k_pos int64 [m] (-1: empty slot). A slot is
    visible if 0 <= its position <= p and, with a window, p - position < window. For each query
    r: part_max[r] = its largest visible scaled score (-inf if none), scores[r, s - s0] = e =
    exp(score - part_max[r]) (0 for a hidden slot) and part_sum[r] = the sum of the e.
    scores: float32 [g, >= s1 - s0].

    Keys go KEYS_AT_ONCE at a time, every query's dots with them in one pass (simd.qk_dots: the
    keys widened as read, once for four queries, each dot in the same order on every CPU). A
    hidden slot among them is computed and dropped; a block with no visible slot is skipped."""
    g, hd = q.shape
    n = s1 - s0
    part_max[:] = -np.inf
    for b0 in range(s0, s1, KEYS_AT_ONCE):
        b1 = min(s1, b0 + KEYS_AT_ONCE)
        any_seen = False
        for s in range(b0, b1):
            any_seen |= _visible(k_pos[s], p, window)
        if not any_seen:
            for r in range(g):
                for s in range(b0, b1):
                    scores[r, s - s0] = -np.inf
            continue
        qk_dots(q, k[b0:b1], scores, b0 - s0)
        for r in range(g):
            for s in range(b0, b1):
                _put_score(scores, part_max, r, s - s0, scores[r, s - s0], scale, _visible(k_pos[s], p, window))
    for r in range(g):  # e = exp(score - max), 16 at a time; hidden slots and negligible ones 0
        row = scores[r, :n]
        if part_max[r] == -np.inf:
            row[:] = 0.0
        else:
            row -= part_max[r]
            exp_inplace(row)
        part_sum[r] = sum_in_order(row)


@njit(cache=True, nogil=True)
def attend_values(v, s0, s1, scores, factor, part_acc, half):
    """part_acc[r] [hd_v] = the sum over slots s0..s1 of probability * v[s], the probability
    being attend_scores's e times factor[r] (normalize_parts), rounded to f16 if half.
    v [m, hd_v] float32 or uint16 f16 bits.

    Slots go VALUES_AT_ONCE at a time (simd.pv_accumulate): each 8 of their values widened once
    into float32 for every query (a slot no query weighs, hidden or past s1, as zeros), each
    output row taking their eight products in one pass, rather than being read and written once
    per slot."""
    g, hd_v = part_acc.shape
    part_acc[:, :] = 0.0
    probs = np.empty((g, VALUES_AT_ONCE), np.float32)
    for b0 in range(s0, s1, VALUES_AT_ONCE):
        used = 0
        for t in range(VALUES_AT_ONCE):
            weighs = False
            for r in range(g):
                e = scores[r, b0 + t - s0] if b0 + t < s1 else np.float32(0.0)
                prob = e * factor[r]
                if half:
                    prob = round_f16(prob)
                probs[r, t] = prob
                weighs |= e != 0.0
            if weighs:
                used |= 1 << t
        if used:
            pv_accumulate(probs, v, b0, used, part_acc)


@njit(cache=True, nogil=True)
def normalize_parts(part_max, part_sum, factor):
    """factor [n, n_kv, chunks, g] := exp(the chunk's max - the overall max) / the overall sum
    of exponentials, from attend_scores's part_max and part_sum (same shape); 0 for a chunk
    that is negligible or sees nothing."""
    n, n_kv, chunks, g = part_max.shape
    for i in range(n):
        for kv in range(n_kv):
            for r in range(g):
                best = -np.inf
                for c in range(chunks):
                    best = max(best, part_max[i, kv, c, r])
                total = np.float32(0.0)
                for c in range(chunks):
                    w = np.float32(0.0)
                    if best != -np.inf and part_max[i, kv, c, r] - best > NEGLIGIBLE:
                        w = np.float32(np.exp(part_max[i, kv, c, r] - best))
                    factor[i, kv, c, r] = w
                    total += w * part_sum[i, kv, c, r]
                for c in range(chunks):
                    factor[i, kv, c, r] = factor[i, kv, c, r] / total if total > 0 else 0.0


@njit(cache=True, nogil=True)
def combine_parts(part_acc, out):
    """out [n, n_kv * g, hd_v] = the sum over chunks of attend_values's part_acc [n, n_kv,
    chunks, g, hd_v]. A query that sees no slot gets zeros."""
    n, n_kv, chunks, g, _ = part_acc.shape
    for i in range(n):
        for kv in range(n_kv):
            for r in range(g):
                row = out[i, kv * g + r]
                row[:] = 0.0
                for c in range(chunks):
                    row += part_acc[i, kv, c, r]


@njit(cache=True, nogil=True)
def attend_serial(q, k, v, q_pos, k_pos, scale, window, chunk, scores, part_max, part_sum, factor, part_acc):
    """Both passes and the normalization for float32 k [n_kv, m, hd], v [n_kv, m, hd_v] on this
    thread; the arrays as the team jobs take them (nn._attention_few)."""
    n, n_kv, n_chunks, g = part_max.shape
    m = k.shape[1]
    for i in range(n):
        for kv in range(n_kv):
            for c in range(n_chunks):
                s0, s1 = c * chunk, min(m, (c + 1) * chunk)
                attend_scores(q[i, kv * g : (kv + 1) * g], k[kv], q_pos[i], k_pos, scale, window, s0, s1,
                              scores[i, kv, c], part_max[i, kv, c], part_sum[i, kv, c])
    normalize_parts(part_max, part_sum, factor)
    for i in range(n):
        for kv in range(n_kv):
            for c in range(n_chunks):
                attend_values(v[kv], c * chunk, min(m, (c + 1) * chunk), scores[i, kv, c], factor[i, kv, c],
                              part_acc[i, kv, c], False)
