"""The work a thread team (team.py) shares out: a job is a descriptor, an int64 array that says
what to compute and where the arrays are (raw addresses), cut into numbered work items.

    desc[KIND]      which job (MATVEC, ...)
    desc[N_ITEMS]   how many work items it has
    desc[2:]        the job's own fields (below)

`run_item(desc, i)` does item i; any thread may run any item, in any order. The functions from
run_item down to the kernels are inlined (numba inline="always") into the team's one entry,
team.serve: numba compiles each njit function with everything it calls, so every level of
calls between serve and the kernels would compile the kernels again (3-4 s each, cold); the
one exception, gelu.gelu_mul_range, is small and needs its own error model. The weights' job
code is not in serve but in C functions compiled apart (below), called by address (call_at). A
job's arrays must stay alive until the job is done: the thread that posts it holds them and
waits.

MATVEC, outs[w] = x @ W_w.T for up to GROUP weights of n_cols columns each (Q, K, V; gate, up),
a few x rows (decode): items are runs of consecutive rows of one weight.

GEMM, the same for many x rows (prefill) of quantized weights, in 16-bit integers (gemm.py):
items are runs of rows that start at multiples of gemm.GROUP_ROWS.

An item of either runs at the address in its weight's W_RUNNER field: weights_runner(type), a C
function holding the code of the types a model has (use_weight_types), so that a first run
compiles the code of those (the bundled model: 4 of the 11) and no other.

ATTEND and ATTEND_V, decode attention of a few queries over an f16 KV cache (attend.py), its
scores and then its probabilities times V: one item per (query, KV head, chunk of attend.CHUNK
cache slots), writing that chunk's partials. (A float32 cache takes attend.attend_serial: a
second copy of the kernels in serve cost 1.6 s of every first run's compile.)

SPARSE, outs[w] = x @ W_w.T for a few x rows and up to GROUP 2:4 weights in the compact planes
(sparse.py): items are runs of rows of one weight. SPARSE_GEMM, the same for many x rows in
16-bit integers: items are runs of rows that start at multiples of gemm.GROUP_ROWS. Their code
is not in serve: run_item calls it at the address in desc[SP_RUNNER], a C function compiled
apart (sparse_runner()) once a model has 2:4 weights, so that every other model's first run
does not compile it (4.8 of serve's 16 s on a Zen 1 core).

GELU_MUL, out = gelu(g) * u over a prefill's FFN activations (gelu.py): items are runs of
GELU_ITEM values.

QUANTIZE_X, a prefill's x in the GEMM's 16-bit codes (matvec.quantize_into_16), RMS-normed
first if a norm weight is given (norm.rms_norm_rows): items are runs of QX_ROWS rows of x. The
GEMM job that reads them is posted after it.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, cfunc, types

from .atomics import address_as_pointer, array_at, call_at
from .attend import attend_scores, attend_values
from .gelu import gelu_mul_range
from .gemm import GROUP_ROWS, panel_of, panel_scratch, panels_times_x
from .jit import njit
from .matvec import BF16, F16, F32, Q6_K, matvec_rows, quantize_into_16
from .norm import rms_norm_rows
from .sparse import gemm_sparse_rows, sparse_rows

KIND, N_ITEMS = 0, 1
MATVEC, ATTEND, GEMM, SPARSE, SPARSE_GEMM, GELU_MUL, ATTEND_V, QUANTIZE_X = 1, 2, 3, 4, 5, 6, 7, 8

# MATVEC and GEMM fields (GEMM does not read MV_X)
MV_N, MV_COLS, MV_X, MV_XQ, MV_XD, MV_XS32, MV_XS16, MV_F16, MV_WEIGHTS = range(2, 11)
MV_W0, MV_W_FIELDS = 16, 8  # per weight, from MV_W0 + MV_W_FIELDS * w (W_RUNNER: weights_runner(W_TYPE)):
W_DATA, W_ROWS, W_ROW_BYTES, W_TYPE, W_OUT, W_FIRST_ITEM, W_ITEM_ROWS, W_RUNNER = range(8)
GROUP = 3
# Any job: up to PF_RANGES byte ranges (address, bytes) that the job after it will read (a
# decode step's next weights: GROUP weights, 3 planes each for 2:4 ones), which a worker that ran
# out of items fetches into its cache meanwhile.
PF0 = MV_W0 + MV_W_FIELDS * GROUP
PF_RANGES = 3 * GROUP
DESC_SIZE = PF0 + 2 * PF_RANGES

# SPARSE and SPARSE_GEMM fields: as MATVEC / GEMM, up to GROUP weights, with SP_Q8 (1: int8
# values), SP_RUNNER (the address of sparse_runner()'s C function) and per weight the planes in
# place of W_DATA, W_TYPE and W_RUNNER: VALUES (W_DATA) uint8 [rows, W_ROW_BYTES], INDEX (SW_INDEX) uint8
# [rows, n_cols / 8], SCALES (SW_SCALES) uint16 [rows, n_cols / 32].
SP_Q8, SP_RUNNER = 11, 12
SW_INDEX, SW_SCALES = W_TYPE, W_RUNNER

# ATTEND and ATTEND_V fields: q [n, n_head, hd] (C order); k, v: n_kv heads of [m, hd] /
# [m, hd_v] f16 rows (uint16 bits: the f16 cache), each head K_STRIDE / V_STRIDE values after
# the previous; q_pos [n], k_pos [m] int64; SCALE: a float64's bits; CHUNK slots per item; per
# item (query, KV head, chunk), in item order, the group's g = n_head / n_kv partials: PMAX,
# PSUM, FACTOR float32 [g], PACC float32 [g, hd_v], and SCORES float32 [g, CHUNK].
(AT_N, AT_HEADS, AT_HD, AT_HD_V, AT_KV_HEADS, AT_M, AT_Q, AT_K, AT_V, AT_K_STRIDE, AT_V_STRIDE,
 AT_QPOS, AT_KPOS, AT_SCORES, AT_SCALE, AT_WINDOW, AT_CHUNK, AT_PMAX, AT_PSUM, AT_PACC,
 AT_FACTOR) = range(2, 23)

# GELU_MUL fields: N values of g, u, out (float32, contiguous); TABLE: gelu.gelu_table()
GE_N, GE_G, GE_U, GE_OUT, GE_TABLE = range(2, 7)
GELU_ITEM = 16 << 10  # values per item: 64 KB of each array

# QUANTIZE_X fields: x float32 [N, COLS]; NORM: its norm weight float32 [COLS] or 0 for none, EPS
# (a float64's bits) and XN float32 [N, COLS], where the normed x goes; the codes XQ int16
# [N, COLS] and XD, XS32 float32 [N, COLS / 32], XS16 float32 [N, COLS / 16].
QX_N, QX_COLS, QX_X, QX_NORM, QX_EPS, QX_XN, QX_XQ, QX_XD, QX_XS32, QX_XS16 = range(2, 12)
QX_ROWS = 8


@njit(cache=True, nogil=True, inline="always")
def _f32(addr, shape):
    return carray(address_as_pointer(addr, np.float32), shape)


@njit(cache=True, nogil=True, inline="always")
def _weight_fields(desc, item):
    """Where the fields of the weight that item belongs to start in desc."""
    w = 0
    while w + 1 < desc[MV_WEIGHTS] and item >= desc[MV_W0 + MV_W_FIELDS * (w + 1) + W_FIRST_ITEM]:
        w += 1
    return MV_W0 + MV_W_FIELDS * w


TYPE_SLOTS = 4  # weight types per C function (a model's own types: 2-4 as a rule)
_type_sets: list[tuple[int, ...]] = []  # the sets weights_runner takes a type's C function from


def weight_type_sets(ggml_types) -> list[tuple[int, ...]]:
    """The types, sorted, in sets of up to TYPE_SLOTS: one C function each."""
    ordered = sorted({int(t) for t in ggml_types})
    return [tuple(ordered[i : i + TYPE_SLOTS]) for i in range(0, len(ordered), TYPE_SLOTS)]


def use_weight_types(ggml_types) -> list[tuple[int, ...]]:
    """Say which weight types a model has (weight_type_sets of them), so that weights_runner
    takes each from its model's C function (the one a fresh install's compile process makes
    from the same list: compile_ahead) rather than one for the type alone. Returns the sets."""
    sets = weight_type_sets(ggml_types)
    _type_sets[:0] = [s for s in sets if s not in _type_sets]
    return sets


@functools.cache
def _weights_cfunc(type_set: tuple[int, ...]):  # cached: the C function's code lives as long as this object
    return cfunc(types.void(types.int64, types.int64), cache=True)(_weights_entry(type_set))


def _weights_entry(type_set: tuple[int, ...]):
    """The Python function that _weights_cfunc compiles for a set of types."""
    # The set's types as constants (-1: an empty slot): numba drops a branch on constants before
    # it compiles it, so that matvec_rows and panel_of keep one type's code per slot.
    t0, t1, t2, t3 = type_set + (-1,) * (TYPE_SLOTS - len(type_set))
    g0, g1, g2, g3 = (-1 if t in (F32, F16, BF16) else t for t in (t0, t1, t2, t3))  # with a GEMM
    gemm = max(g0, g1, g2, g3) >= 0  # a prefill's float weights go through BLAS (dispatch.py)

    def entry(desc_addr, item):
        desc = carray(address_as_pointer(desc_addr, np.int64), (DESC_SIZE,))
        f = _weight_fields(desc, item)
        ggml_type, n, n_cols, rows = desc[f + W_TYPE], desc[MV_N], desc[MV_COLS], desc[f + W_ROWS]
        data = carray(address_as_pointer(desc[f + W_DATA], np.uint8), (rows, desc[f + W_ROW_BYTES]))
        xd, xs32 = _f32(desc[MV_XD], (n, n_cols // 32)), _f32(desc[MV_XS32], (n, n_cols // 32))
        xs16, f16 = _f32(desc[MV_XS16], (n, n_cols // 16)), _f32(desc[MV_F16], (65536,))
        out = _f32(desc[f + W_OUT], (n, rows))
        start = (item - desc[f + W_FIRST_ITEM]) * desc[f + W_ITEM_ROWS]
        stop = min(rows, start + desc[f + W_ITEM_ROWS])
        if gemm and desc[KIND] == GEMM:  # x in 16-bit codes (matvec.quantize_x16): gemm.gemm_rows
            panels, codes, fields = panel_scratch(stop - start, n_cols)
            for p in range(panels.shape[0]):
                r0 = start + GROUP_ROWS * p
                if g0 >= 0 and ggml_type == g0:
                    panel_of(data, g0, r0, f16, codes, fields, panels[p])
                elif g1 >= 0 and ggml_type == g1:
                    panel_of(data, g1, r0, f16, codes, fields, panels[p])
                elif g2 >= 0 and ggml_type == g2:
                    panel_of(data, g2, r0, f16, codes, fields, panels[p])
                elif g3 >= 0 and ggml_type == g3:
                    panel_of(data, g3, r0, f16, codes, fields, panels[p])
            xq16 = carray(address_as_pointer(desc[MV_XQ], np.int16), (n, n_cols))
            panels_times_x(panels, start, rows, xq16, xd, xs32, xs16, out, ggml_type == Q6_K)
        else:  # x in 8-bit codes (matvec.quantize_x)
            x, xq = _f32(desc[MV_X], (n, n_cols)), carray(address_as_pointer(desc[MV_XQ], np.int8), (n, n_cols))
            if t0 >= 0 and ggml_type == t0:
                matvec_rows(data, t0, x, xq, xd, xs32, xs16, f16, out, start, stop)
            elif t1 >= 0 and ggml_type == t1:
                matvec_rows(data, t1, x, xq, xd, xs32, xs16, f16, out, start, stop)
            elif t2 >= 0 and ggml_type == t2:
                matvec_rows(data, t2, x, xq, xd, xs32, xs16, f16, out, start, stop)
            elif t3 >= 0 and ggml_type == t3:
                matvec_rows(data, t3, x, xq, xd, xs32, xs16, f16, out, start, stop)

    entry.__qualname__ = entry.__name__ = "weights_" + "_".join(map(str, type_set))  # a cache file per set
    return entry


def weights_runner(ggml_type: int) -> int:
    """The address of a C function void(desc address, item) that runs MATVEC and GEMM items of
    weights of ggml_type (and of the other types of its set: use_weight_types), compiled or
    loaded from numba's disk cache on the first call for its set. A C function costs ~2.3 s of
    compile on a Zen 1 core (the GEMM's multiply, numba's per-function work), each type in it
    ~0.5 s more, so that a model's types share one (the bundled model's four: 4.2 s, where all
    eleven types' code in serve had taken ~6 s of every first run)."""
    ggml_type = int(ggml_type)
    for type_set in _type_sets:
        if ggml_type in type_set:
            return _weights_cfunc(type_set).address
    return _weights_cfunc((ggml_type,)).address


def weight_code_in_disk_cache() -> bool:
    """Whether the C function of every set use_weight_types was told of is in numba's disk
    cache, looked up without compiling it (if numba's cache internals moved: taken as cached,
    as team.in_disk_cache does)."""
    from numba.core.caching import FunctionCache

    for type_set in _type_sets:
        try:
            if not FunctionCache(_weights_entry(type_set))._cache_file._load_index():
                return False
        except (AttributeError, OSError):
            pass
    return True


def load_weight_code() -> None:
    """The C functions of every set use_weight_types was told of, in this process now."""
    for type_set in _type_sets:
        _weights_cfunc(type_set)


@njit(cache=True, nogil=True, inline="always")
def attend_item(desc, item):
    """One ATTEND or ATTEND_V item over an f16 cache (K and V as uint16 bits)."""
    n_head, hd, hd_v, m = desc[AT_HEADS], desc[AT_HD], desc[AT_HD_V], desc[AT_M]
    n_kv, chunk = desc[AT_KV_HEADS], desc[AT_CHUNK]
    g, n_chunks = n_head // n_kv, -(-m // chunk)
    i, kv, c = item // (n_kv * n_chunks), (item // n_chunks) % n_kv, item % n_chunks
    s0, s1 = c * chunk, min(m, (c + 1) * chunk)
    scores = _f32(desc[AT_SCORES] + 4 * item * g * chunk, (g, chunk))
    if desc[KIND] == ATTEND:
        q = _f32(desc[AT_Q] + 4 * (i * n_head + kv * g) * hd, (g, hd))
        keys = carray(address_as_pointer(desc[AT_K] + 2 * kv * desc[AT_K_STRIDE], np.uint16), (m, hd))
        q_pos = carray(address_as_pointer(desc[AT_QPOS], np.int64), (desc[AT_N],))
        k_pos = carray(address_as_pointer(desc[AT_KPOS], np.int64), (m,))
        scale = array_at(desc.ctypes.data + 8 * AT_SCALE, np.float64, (1,))[0]
        attend_scores(q, keys, q_pos[i], k_pos, np.float32(scale), desc[AT_WINDOW], s0, s1, scores,
                      _f32(desc[AT_PMAX] + 4 * item * g, (g,)), _f32(desc[AT_PSUM] + 4 * item * g, (g,)))
    else:
        values = carray(address_as_pointer(desc[AT_V] + 2 * kv * desc[AT_V_STRIDE], np.uint16), (m, hd_v))
        attend_values(values, s0, s1, scores, _f32(desc[AT_FACTOR] + 4 * item * g, (g,)),
                      _f32(desc[AT_PACC] + 4 * item * g * hd_v, (g, hd_v)), True)


@njit(cache=True, nogil=True, inline="always")
def sparse_item(desc, item):
    f = _weight_fields(desc, item)
    n, n_cols, rows = desc[MV_N], desc[MV_COLS], desc[f + W_ROWS]
    values = carray(address_as_pointer(desc[f + W_DATA], np.uint8), (rows, desc[f + W_ROW_BYTES]))
    index = carray(address_as_pointer(desc[f + SW_INDEX], np.uint8), (rows, n_cols // 8))
    scales = carray(address_as_pointer(desc[f + SW_SCALES], np.uint16), (rows, n_cols // 32))
    xd = _f32(desc[MV_XD], (n, n_cols // 32))
    xs32, xs16 = _f32(desc[MV_XS32], (n, n_cols // 32)), _f32(desc[MV_XS16], (n, n_cols // 16))
    f16, out = _f32(desc[MV_F16], (65536,)), _f32(desc[f + W_OUT], (n, rows))
    start = (item - desc[f + W_FIRST_ITEM]) * desc[f + W_ITEM_ROWS]
    stop = min(rows, start + desc[f + W_ITEM_ROWS])
    q8 = desc[SP_Q8] == 1
    if desc[KIND] == SPARSE_GEMM:  # x in 16-bit codes
        xq16 = carray(address_as_pointer(desc[MV_XQ], np.int16), (n, n_cols))
        gemm_sparse_rows(values, index, scales, xq16, xd, xs32, xs16, f16, out, start, stop, q8)
    else:  # x in 8-bit codes
        xq = carray(address_as_pointer(desc[MV_XQ], np.int8), (n, n_cols))
        sparse_rows(values, index, scales, xq, xd, f16, out, start, stop, q8)


def _sparse_entry(desc_addr, item):
    sparse_item(carray(address_as_pointer(desc_addr, np.int64), (DESC_SIZE,)), item)


@functools.cache
def _sparse_cfunc():  # cached: the C function's code lives as long as this object
    return cfunc(types.void(types.int64, types.int64), cache=True)(_sparse_entry)


def sparse_runner() -> int:
    """The address of the C function void(desc address, item) that runs a SPARSE or
    SPARSE_GEMM item, compiled (or loaded from numba's disk cache) on the first call."""
    return _sparse_cfunc().address


@njit(cache=True, nogil=True, inline="always")
def gelu_item(desc, item):
    n = desc[GE_N]
    gelu_mul_range(_f32(desc[GE_G], (n,)), _f32(desc[GE_U], (n,)), _f32(desc[GE_TABLE], (1 << 16,)),
                   _f32(desc[GE_OUT], (n,)), item * GELU_ITEM, min(n, (item + 1) * GELU_ITEM))


@njit(cache=True, nogil=True, inline="always")
def quantize_item(desc, item):
    n, n_cols = desc[QX_N], desc[QX_COLS]
    r0, r1 = item * QX_ROWS, min(n, (item + 1) * QX_ROWS)
    x = _f32(desc[QX_X], (n, n_cols))[r0:r1]
    if desc[QX_NORM]:
        xn = _f32(desc[QX_XN], (n, n_cols))[r0:r1]
        eps = np.float32(array_at(desc.ctypes.data + 8 * QX_EPS, np.float64, (1,))[0])
        rms_norm_rows(x, _f32(desc[QX_NORM], (n_cols,)), eps, xn)
        x = xn
    quantize_into_16(x, carray(address_as_pointer(desc[QX_XQ], np.int16), (n, n_cols))[r0:r1],
                     _f32(desc[QX_XD], (n, n_cols // 32))[r0:r1], _f32(desc[QX_XS32], (n, n_cols // 32))[r0:r1],
                     _f32(desc[QX_XS16], (n, n_cols // 16))[r0:r1])


@njit(cache=True, nogil=True, inline="always")
def run_item(desc, item):
    if desc[KIND] == MATVEC or desc[KIND] == GEMM:
        call_at(desc[_weight_fields(desc, item) + W_RUNNER], desc.ctypes.data, item)
    elif desc[KIND] == ATTEND or desc[KIND] == ATTEND_V:
        attend_item(desc, item)
    elif desc[KIND] == SPARSE or desc[KIND] == SPARSE_GEMM:
        call_at(desc[SP_RUNNER], desc.ctypes.data, item)
    elif desc[KIND] == GELU_MUL:
        gelu_item(desc, item)
    elif desc[KIND] == QUANTIZE_X:
        quantize_item(desc, item)
