"""Transformer arithmetic on float32 activations: norms, RoPE, attention, activations.

Everything here works on whole arrays; nothing knows which model it serves. Long batches
(prefill) use numpy and BLAS; the few-token calls of decode go to small Numba loops, because a
token runs ~20 of these per layer and numpy's per-call overhead (~10-20 us each) would add up to
more than the arithmetic. Shapes: n = tokens in the batch, d = model width, hd = head dim.
"""

from __future__ import annotations

import numpy as np

from . import jobs
from .atomics import array_at
from .attend import CHUNK, attend_serial, combine_parts, normalize_parts
from .dispatch import _readonly, _readonly_as_is, current_team, parallel_map
from .floats import half_to_float
from .gelu import gelu_mul_range, gelu_table
from .jit import njit
from .norm import add_rms_norm_rows, rms_norm, rms_norm_rows  # noqa: F401  (rms_norm: nn's, for the models)
from .simd import exp_inplace, f16_bits, round_f16

ROPE_NORM = 0  # rotate adjacent pairs (x[2i], x[2i+1]): llama, whose converter permutes Q/K rows
ROPE_NEOX = 2  # rotate halves (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3


def add_rms_norm(x: np.ndarray, a: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x + rms_norm(a, weight, eps) (Gemma's norms after attention and FFN), bit for bit, in one
    call. x, a float32 [n, d]."""
    out = np.empty(a.shape, np.float32)
    add_rms_norm_rows(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(a, dtype=np.float32),
                      weight, np.float32(eps), out)
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """silu(gate) * up: the llama FFN's gated activation (into out if given: gate may be it)."""
    return np.multiply(silu(gate), up, out=out)


def gelu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """gelu_tanh(gate) * up in one pass (Gemma's GEGLU, ggml_geglu), through ggml's f16 table
    (gelu.py); into out if given (C-contiguous float32 of gate's shape: gate itself may be it,
    each value is read before its own is written)."""
    g = np.ascontiguousarray(gate, dtype=np.float32).reshape(-1)
    u = np.ascontiguousarray(up, dtype=np.float32).reshape(-1)
    if out is None:
        out = np.empty_like(g)
    elif out.dtype != np.float32 or out.size != g.size or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"gelu_mul: out must be a writable C-contiguous float32 array of {g.size} values")
    result, out = out, out.reshape(-1)
    if g.size <= SERIAL_ELEMENTS:
        _gelu_mul(g, u, _GELU, out)
    else:  # a team job: numba's OpenMP threads would share the cores with the team's spinning ones
        t = current_team()
        with t.lock:
            _fill_gelu_mul(t.desc, g, u, _GELU, out)
            t.run()
    return result.reshape(gate.shape)


SERIAL_ELEMENTS = 1 << 16  # up to this many values (a decode step), on this thread
_GELU = gelu_table()


@njit(cache=True, nogil=True, error_model="numpy")
def _gelu_mul(g, u, table, out):
    gelu_mul_range(g, u, table, out, 0, g.shape[0])


@njit(cache=True, nogil=True)
def _fill_gelu_mul(desc, g, u, table, out):
    n = g.shape[0]
    desc[jobs.KIND], desc[jobs.N_ITEMS] = jobs.GELU_MUL, -(-n // jobs.GELU_ITEM)
    desc[jobs.GE_N], desc[jobs.GE_G], desc[jobs.GE_U], desc[jobs.GE_OUT] = n, g.ctypes.data, u.ctypes.data, out.ctypes.data
    desc[jobs.GE_TABLE] = table.ctypes.data


def rope_tables(
    positions: np.ndarray, n_rot: int, base: float, freq_scale: float = 1.0,
    freq_factors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [n, n_rot/2] for each position: theta_i = pos * freq_scale * base^(-2i/n_rot) / ff_i."""
    return rope_tables_for(positions, rope_inv_freq(n_rot, base, freq_factors), freq_scale)


def rope_inv_freq(n_rot: int, base: float, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """float64 [n_rot/2]: base^(-2i/n_rot) / ff_i, RoPE's angle per position for pair i."""
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    return inv_freq


def rope_tables_for(positions: np.ndarray, inv_freq: np.ndarray, freq_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """rope_tables from a precomputed rope_inv_freq (one numba call, where numpy took ~10 for a
    decode step's one position)."""
    n = positions.shape[0]
    cos, sin = np.empty((n, inv_freq.shape[0]), np.float32), np.empty((n, inv_freq.shape[0]), np.float32)
    _rope_tables(np.ascontiguousarray(positions, dtype=np.int64), inv_freq, float(freq_scale), cos, sin)
    return cos, sin


@njit(cache=True, nogil=True)
def _rope_tables(positions, inv_freq, freq_scale, cos, sin):
    for i in range(positions.shape[0]):
        p = np.float64(positions[i]) * freq_scale
        for j in range(inv_freq.shape[0]):
            theta = p * inv_freq[j]
            cos[i, j], sin[i, j] = np.float32(np.cos(theta)), np.float32(np.sin(theta))


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: int) -> np.ndarray:
    """Rotate x [n, n_heads, hd] in place by per-position angles: cos/sin [n, n_rot/2] (or [1,
    n_rot/2]: the same angles for every row)."""
    work = x if x.flags.c_contiguous and x.dtype == np.float32 else np.ascontiguousarray(x, dtype=np.float32)
    _rope(work, np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32),
          mode == ROPE_NEOX)
    if work is not x:
        x[...] = work
    return x


@njit(cache=True, nogil=True)
def _rope(x, cos, sin, neox):
    n, heads, _ = x.shape
    half = cos.shape[1]
    for i in range(n):
        c, s = cos[i if cos.shape[0] > 1 else 0], sin[i if cos.shape[0] > 1 else 0]
        for h in range(heads):
            v = x[i, h]
            if neox:  # pairs (j, j + half)
                for j in range(half):
                    a, b = v[j], v[j + half]
                    v[j], v[j + half] = a * c[j] - b * s[j], b * c[j] + a * s[j]
            else:  # pairs (2j, 2j + 1)
                for j in range(half):
                    a, b = v[2 * j], v[2 * j + 1]
                    v[2 * j], v[2 * j + 1] = a * c[j] - b * s[j], b * c[j] + a * s[j]


def norm_rope(q: np.ndarray, k: np.ndarray, q_norm: np.ndarray | None, k_norm: np.ndarray | None, eps: float,
              cos: np.ndarray, sin: np.ndarray, mode: int) -> None:
    """In place on q [n, n_head, hd] and k [n, n_kv, hd], C-contiguous float32 (a matmul's
    outputs): each head's RMS norm (by q_norm / k_norm [hd]; None: no norm), then RoPE as
    apply_rope; one call for what rms_norm and apply_rope take four, with their bits."""
    for a in (q, k):
        if not (a.flags.c_contiguous and a.dtype == np.float32):
            raise ValueError("norm_rope works in place on C-contiguous float32 arrays")
    _norm_rope(q, k, _NO_WEIGHT if q_norm is None else _readonly_as_is(q_norm),
               _NO_WEIGHT if k_norm is None else _readonly_as_is(k_norm), np.float32(eps),
               np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32),
               mode == ROPE_NEOX)


_NO_WEIGHT = _readonly(np.empty(0, np.float32))


@njit(cache=True, nogil=True)
def _norm_rope(q, k, q_norm, k_norm, eps, cos, sin, neox):
    for x, weight in ((q, q_norm), (k, k_norm)):
        if weight.shape[0]:
            rows = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
            rms_norm_rows(rows, weight, eps, rows)
        _rope(x, cos, sin, neox)


def to_f16(x: np.ndarray) -> np.ndarray:
    """x as a new float16 array (to nearest, ties to even), through the CPU's converter: numpy's
    own cast is scalar code, ~8x slower (a 512-token prompt's K and V, 18 layers: ~7 ms)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    _store_f16(x.reshape(1, -1), out.reshape(1, -1).view(np.uint16))
    return out


def store_f16(x: np.ndarray, out: np.ndarray) -> None:
    """out[...] = x rounded to f16, in one call: x float32 [a, b], out a float16 [a, b] view (a
    KV cache's slot across its heads, strided), as to_f16 rounds."""
    _store_f16(x, out.view(np.uint16))


def from_f16(x: np.ndarray) -> np.ndarray:
    """A float16 array [a, b, c] (a view of the KV cache: strided over a and b) as a new float32
    one, the same values: numpy's own cast is scalar code, ~17x slower (a 512-token prompt's
    attention widens K and V 72 times: ~30 ms)."""
    out = np.empty(x.shape, np.float32)
    _from_f16(x.view(np.uint16), out)
    return out


def f16_rounded(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """x rounded to f16, as a new float32 array (in_place: x itself, if a C-contiguous float32
    one)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = x if in_place and x.flags.writeable else np.empty_like(x)
    _round_f16(x.reshape(-1), out.reshape(-1))
    return out


@njit(cache=True, nogil=True)
def _store_f16(x, out):
    for a in range(x.shape[0]):
        for b in range(x.shape[1]):
            out[a, b] = f16_bits(x[a, b])


@njit(cache=True, nogil=True)
def _from_f16(bits, out):  # 16-bit loads: floats.dequantize_row_f16 joins bytes, 3.5x slower here
    for a in range(bits.shape[0]):
        for b in range(bits.shape[1]):
            for c in range(bits.shape[2]):
                out[a, b, c] = half_to_float(bits[a, b, c])


@njit(cache=True, nogil=True)
def _round_f16(x, out):
    for i in range(x.shape[0]):
        out[i] = round_f16(x[i])


FEW_QUERIES = 8  # up to this many queries (decode), attention runs as a Numba loop


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
    scale: float, window: int = 0, q_block: int = 64, overwrite_q: bool = False,
) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads; returns [n, n_head * hd_v].

    q [n, n_head, hd]; k [n_kv, m, hd]; v [n_kv, m, hd_v]; q_pos [n] and k_pos [m] are absolute
    positions (k_pos < 0 marks an empty cache slot). overwrite_q: q may be rounded in place (a
    caller done with it; its copy is the largest of a prefill's temporaries here after K and
    V's). A query at p sees keys at p' <= p, and with a
    sliding window only those with p - p' < window (llama.cpp's standard SWA). Queries are taken
    in blocks so that the score matrix stays small for long prompts; blocks of 64 rather than
    128 skip more of the causal triangle and balance 2 threads better (one Gemma-3 layer, 512
    tokens: 4.7 ms instead of 5.3).

    k and v are float32 or float16 (the f16 cache as stored). With float16 ones the arithmetic
    is llama.cpp's without flash attention: q rounded to f16 before the dot with the keys, the
    probabilities rounded to f16 before they multiply V, everything else in float32.
    """
    half = k.dtype == np.float16 and v.dtype == np.float16
    if not half:
        k, v = k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)
    if q.shape[0] <= FEW_QUERIES:
        return _attention_few(q, k, v, q_pos, k_pos, scale, window, half)
    n, n_head, hd = q.shape
    n_kv, m, hd_v = v.shape
    group = n_head // n_kv
    out = np.empty((n, n_head, hd_v), dtype=np.float32)
    if half:  # q rounded as llama.cpp rounds it; K and V widened once for BLAS
        q = f16_rounded(q, in_place=overwrite_q)
        k, v = from_f16(k), from_f16(v)

    # Keys in position order (a prompt, a full layer's cache): a query block reads only the keys
    # it can see, half of them on average for a causal prompt, not all m.
    in_order = m < 2 or bool(np.all(k_pos[1:] >= k_pos[:-1]))

    def one_block(item: tuple[int, int]) -> None:
        q0, h = item
        q1 = min(n, q0 + q_block)
        lo, hi = 0, m
        if in_order:
            hi = int(np.searchsorted(k_pos, q_pos[q0:q1].max(), side="right"))
            if window > 0:
                lo = int(np.searchsorted(k_pos, q_pos[q0:q1].min() - window, side="right"))
            lo = min(max(lo, int(np.searchsorted(k_pos, 0))), hi)  # empty slots (-1) first
        heads = slice(h * group, (h + 1) * group)
        if hi == lo:  # nothing visible (an empty cache slot range): attention gives zeros
            out[q0:q1, heads, :] = 0.0
            return
        # one 2-D product per KV head: [(nq * group), hd] @ [hd, hi - lo]
        qh = np.ascontiguousarray(q[q0:q1, heads, :]).reshape(-1, hd)
        scores = qh @ k[h, lo:hi].T
        _softmax_rows(scores, q_pos[q0:q1], k_pos[lo:hi], np.float32(scale), window, group, half)
        dest = out[q0:q1, heads, :]
        if dest.flags.c_contiguous:  # one KV head: straight into out, no temporary
            np.matmul(scores, v[h, lo:hi], out=dest.reshape(-1, hd_v))
        else:
            dest[...] = (scores @ v[h, lo:hi]).reshape(q1 - q0, group, hd_v)

    # blocks of queries x KV heads, spread over the kernels' threads (numpy drops the GIL)
    parallel_map(one_block, [(q0, h) for q0 in range(0, n, q_block) for h in range(n_kv)])
    return out.reshape(n, n_head * hd_v)


SOFTMAX_ROWS = 8  # rows whose maxima and sums run side by side (b0..b7, t0..t7 below)


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_rows(scores, q_pos, k_pos, scale, window, group, half):
    """In place: each row of scores [len(q_pos) * group, m] (row i: query i // group against the
    keys at k_pos) becomes softmax(scale * row) over the keys that query sees, rounded to f16
    if half.

    A row's sum runs in key order (float32, as it always has: the same bits), a chain of
    dependent adds, 3-4 cycles apiece, and its max is such a chain too; so SOFTMAX_ROWS rows at
    a time keep their maxima and sums in that many scalars and take one key of each in turn,
    their chains overlapping (a 256 x 512 block's sums 0.095 -> 0.019 ms; accumulators in an
    array stay at 0.093: each add waits on the store of the last). The element-wise steps
    vectorize per row."""
    n_rows, m = scores.shape
    i0 = 0
    while i0 + SOFTMAX_ROWS <= n_rows:
        for r in range(SOFTMAX_ROWS):
            _mask_and_scale(scores[i0 + r], q_pos[(i0 + r) // group], k_pos, scale, window)
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = np.float32(-np.inf)
        for s in range(m):
            b0 = max(b0, scores[i0, s])
            b1 = max(b1, scores[i0 + 1, s])
            b2 = max(b2, scores[i0 + 2, s])
            b3 = max(b3, scores[i0 + 3, s])
            b4 = max(b4, scores[i0 + 4, s])
            b5 = max(b5, scores[i0 + 5, s])
            b6 = max(b6, scores[i0 + 6, s])
            b7 = max(b7, scores[i0 + 7, s])
        for r, best in enumerate((b0, b1, b2, b3, b4, b5, b6, b7)):
            _exp_below(scores[i0 + r], best)
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = np.float32(0.0)
        for s in range(m):
            t0 += scores[i0, s]
            t1 += scores[i0 + 1, s]
            t2 += scores[i0 + 2, s]
            t3 += scores[i0 + 3, s]
            t4 += scores[i0 + 4, s]
            t5 += scores[i0 + 5, s]
            t6 += scores[i0 + 6, s]
            t7 += scores[i0 + 7, s]
        for r, total in enumerate((t0, t1, t2, t3, t4, t5, t6, t7)):
            _divide(scores[i0 + r], total, half)
        i0 += SOFTMAX_ROWS
    for i in range(i0, n_rows):  # the last rows, one at a time
        row = scores[i]
        _mask_and_scale(row, q_pos[i // group], k_pos, scale, window)
        best = np.float32(-np.inf)
        for s in range(m):
            best = max(best, row[s])
        _exp_below(row, best)
        total = np.float32(0.0)
        for s in range(m):
            total += row[s]
        _divide(row, total, half)


@njit(cache=True, nogil=True, inline="always")
def _mask_and_scale(row, p, k_pos, scale, window):
    """row[s] = scale * row[s] where the query at p sees the key at k_pos[s], else -inf."""
    for s in range(row.shape[0]):
        ps = k_pos[s]
        seen = ps >= 0 and ps <= p and (window <= 0 or p - ps < window)
        row[s] = row[s] * scale if seen else -np.inf


@njit(cache=True, nogil=True, inline="always")
def _exp_below(row, best):
    """row[s] = e^(row[s] - best)."""
    for s in range(row.shape[0]):
        row[s] -= best
    exp_inplace(row)  # e^-inf and anything far below the max: 0


@njit(cache=True, nogil=True, inline="always")
def _divide(row, total, half):
    """row /= total (as row * (1 / total)), rounded to f16 if half."""
    inv = np.float32(1.0) / total
    if half:
        for s in range(row.shape[0]):
            row[s] = round_f16(row[s] * inv)
    else:
        for s in range(row.shape[0]):
            row[s] *= inv


def _attention_few(q, k, v, q_pos, k_pos, scale, window, half) -> np.ndarray:
    """attention() for a few queries (decode): over items per (query, KV head, chunk of cache
    slots), scores then probabilities times V (attend.py), the chunks' partials then added up.
    An f16 k, v (half) are two team jobs on their bits; float32 ones attend_serial."""
    q = f16_rounded(q) if half else np.ascontiguousarray(q, dtype=np.float32)
    n, n_head, _ = q.shape
    n_kv, m, hd_v = v.shape
    out = np.empty((n, n_head, hd_v), np.float32)
    if k.strides[1:] != (k.itemsize * k.shape[2], k.itemsize):
        k = np.ascontiguousarray(k)
    if v.strides[1:] != (v.itemsize * v.shape[2], v.itemsize):
        v = np.ascontiguousarray(v)
    chunk = min(CHUNK, m)
    parts = (n, n_kv, -(-m // chunk), n_head // n_kv)
    part_max, part_sum, factor = np.empty(parts, np.float32), np.empty(parts, np.float32), np.empty(parts, np.float32)
    part_acc = np.empty(parts + (hd_v,), np.float32)
    scores = np.empty(parts + (chunk,), np.float32)
    q_pos, k_pos = np.ascontiguousarray(q_pos, dtype=np.int64), np.ascontiguousarray(k_pos, dtype=np.int64)
    if half:
        t = current_team()
        with t.lock:
            _fill_attend(t.desc, q, k.view(np.uint16), v.view(np.uint16), q_pos, k_pos, scale, window, chunk,
                         scores, part_max, part_sum, factor, part_acc)
            t.run()
            normalize_parts(part_max, part_sum, factor)
            t.desc[jobs.KIND] = jobs.ATTEND_V
            t.run()
    else:
        attend_serial(q, k, v, q_pos, k_pos, np.float32(scale), window, chunk, scores, part_max, part_sum,
                      factor, part_acc)
    combine_parts(part_acc, out)
    return out.reshape(n, -1)


@njit(cache=True, nogil=True)
def _fill_attend(desc, q, k, v, q_pos, k_pos, scale, window, chunk, scores, part_max, part_sum, factor,
                 part_acc):
    n, n_head, hd = q.shape
    desc[jobs.KIND], desc[jobs.N_ITEMS] = jobs.ATTEND, part_max.size // part_max.shape[3]
    desc[jobs.AT_N], desc[jobs.AT_HEADS], desc[jobs.AT_HD], desc[jobs.AT_HD_V] = n, n_head, hd, v.shape[2]
    desc[jobs.AT_KV_HEADS], desc[jobs.AT_M] = k.shape[0], k.shape[1]
    desc[jobs.AT_Q], desc[jobs.AT_K], desc[jobs.AT_V] = q.ctypes.data, k.ctypes.data, v.ctypes.data
    desc[jobs.AT_K_STRIDE], desc[jobs.AT_V_STRIDE] = k.strides[0] // 2, v.strides[0] // 2
    desc[jobs.AT_QPOS], desc[jobs.AT_KPOS] = q_pos.ctypes.data, k_pos.ctypes.data
    desc[jobs.AT_SCORES], desc[jobs.AT_WINDOW], desc[jobs.AT_CHUNK] = scores.ctypes.data, window, chunk
    desc[jobs.AT_PMAX], desc[jobs.AT_PSUM], desc[jobs.AT_PACC] = part_max.ctypes.data, part_sum.ctypes.data, part_acc.ctypes.data
    desc[jobs.AT_FACTOR] = factor.ctypes.data
    array_at(desc.ctypes.data + 8 * jobs.AT_SCALE, np.float64, (1,))[0] = scale
