"""Rows of a quantized weight: dequantize them, look them up, multiply by them.

A weight is raw GGUF bytes, data: uint8 [rows, row_bytes], one row per output feature holding
n_cols values in blocks (ggml_types.GGML_QUANT_SIZES: values and bytes per block). The block formats
live in floats.py, legacy.py and kquants.py; the integer kernels in simd.py and interleave.py
(decode), gemm.py (prefill) and sparse.py (2:4 weights); this file chooses between them and posts
their jobs. A Weight holds its rows in memory of its own, a legacy type's (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0) repacked 8 at a time (interleave.py): what the kernels multiply and look rows up in.

    dequantize_row  one row of any type -> float32 [n_cols] (the type switch), for dequantize();
                    get_rows() (embedding lookups) and float rows in prefill call a kernel per
                    type, compiled when first used
    WeightGroup     x @ W.T for the weights that read one x (Q, K, V; gate, up), laid out once:
                    a few x rows (decode) are one jobs.MATVEC, x quantized to 8 bits; many
                    (prefill) one jobs.GEMM, x quantized to 16 bits; float weights in prefill
                    go through dequantized tiles and single-threaded BLAS on a pool of threads
    SparseWeightGroup  the same for 2:4 weights' compact planes (jobs.SPARSE / SPARSE_GEMM)

Jobs run on the team of set_num_threads() threads (team.py): a fill function (numba) writes the
descriptor and the quantized x into the team's scratch, Team.run() runs it. A decode step runs
the same WeightGroups in the same order every token, so each learns which came after it last
time and hands that one's weights to Team.run() to prefetch while its own job ends.

Exactness: every dequantizing function says fastmath=False explicitly. Numba hands a caller's
fast-math flags down to the functions it calls unless they set their own: 'contract' would fuse
d * q + m into one FMA, one rounding where gguf has two.

The type is a runtime int, so each kernel is compiled once for all types; the Python wrappers
below pass every array in one layout (C-contiguous, read-only inputs) so that there is one
compilation per kernel. Numba caches the machine code on disk: the first run compiles for
~15 s, later runs load it in well under one.
"""

from __future__ import annotations

import functools
import mmap
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import prange

from .ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType as T
from .floats import dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32
from .jit import njit
from .kquants import (
    QK_K, dequantize_block_q4_k, dequantize_block_q5_k, dequantize_block_q6_k,
)
from . import jobs
from .atomics import array_at
from . import sparse as sparse_kernels
from .gemm import GROUP_ROWS
from .interleave import INTERLEAVED_TYPES, LAYOUTS, ROWS, ROWS_PAD, dequantize_row_x8, layout_args, repack_rows
from .matvec import f16_table, quantize_into_8, quantize_into_8k, quantize_into_16
from .norm import rms_norm, rms_norm_rows
from .team import in_dry_run, team, wait_for_serve
from .legacy import (
    QK, dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q5_0,
    dequantize_block_q5_1, dequantize_block_q8_0,
)

# Plain ints: numba folds them into the type switch as constants.
F32, F16, BF16 = int(T.F32), int(T.F16), int(T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(T.Q4_0), int(T.Q4_1), int(T.Q5_0), int(T.Q5_1), int(T.Q8_0)
Q4_K, Q5_K, Q6_K = int(T.Q4_K), int(T.Q5_K), int(T.Q6_K)

SUPPORTED_TYPES = frozenset({F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K})
FLOAT_TYPES = frozenset({F32, F16, BF16})
K_QUANTS = frozenset({Q4_K, Q5_K, Q6_K})

# At most this many x rows are a decode mat-vec (8-bit x); more a prefill GEMM (16-bit x).
MATVEC_MAX_ROWS = 8
# Dequantized rows per BLAS call are capped at this many bytes of float32 scratch.
TILE_BYTES = 4 << 20
# Rows per parallel work item of dequantize_rows.
CHUNK_ROWS = 16
# The first bytes of a decode mat-vec's weights prefetched during the job before it (a layer's
# small matrices came from DRAM at a third of the rate of one long stream).
PREFETCH_MAX = 2 << 20


@njit(fastmath=False, inline="always")
def _blocks(row, out, dequantize_block, block_bytes, block_values):
    """A row of a block type: each block of block_bytes through dequantize_block (inlined, so
    that the function is a constant of the caller and its machine code can be cached)."""
    for b in range(out.shape[0] // block_values):
        dequantize_block(row[block_bytes * b : block_bytes * (b + 1)],
                         out[block_values * b : block_values * (b + 1)])


@njit(cache=True, fastmath=False, inline="always")
def dequantize_row(row, ggml_type, out):
    """row: uint8 [row_bytes] of type ggml_type -> out: float32 [n_cols]."""
    if ggml_type == Q8_0:
        _blocks(row, out, dequantize_block_q8_0, 34, QK)
    elif ggml_type == Q4_0:
        _blocks(row, out, dequantize_block_q4_0, 18, QK)
    elif ggml_type == Q4_1:
        _blocks(row, out, dequantize_block_q4_1, 20, QK)
    elif ggml_type == Q5_0:
        _blocks(row, out, dequantize_block_q5_0, 22, QK)
    elif ggml_type == Q5_1:
        _blocks(row, out, dequantize_block_q5_1, 24, QK)
    elif ggml_type == Q4_K:
        _blocks(row, out, dequantize_block_q4_k, 144, QK_K)
    elif ggml_type == Q5_K:
        _blocks(row, out, dequantize_block_q5_k, 176, QK_K)
    elif ggml_type == Q6_K:
        _blocks(row, out, dequantize_block_q6_k, 210, QK_K)
    elif ggml_type == F32:
        dequantize_row_f32(row, out)
    elif ggml_type == F16:
        dequantize_row_f16(row, out)
    elif ggml_type == BF16:
        dequantize_row_bf16(row, out)


@njit(cache=True, parallel=True, fastmath=False)
def dequantize_rows(data, ggml_type, row_ids, out):
    """out[i] = row row_ids[i] of data, dequantized: out float32 [len(row_ids), n_cols]."""
    n_ids = row_ids.shape[0]
    for chunk in prange((n_ids + CHUNK_ROWS - 1) // CHUNK_ROWS):
        for i in range(chunk * CHUNK_ROWS, min(n_ids, (chunk + 1) * CHUNK_ROWS)):
            dequantize_row(data[row_ids[i]], ggml_type, out[i])


# dequantize_rows_serial's kernels, one per block type: a lookup needs one type (the embedding's),
# and a kernel with the type switch compiles all eleven (3 s of a first run's ~18 s, for Q8_0).
@njit(cache=True, nogil=True, fastmath=False)
def _rows_q8_0(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q8_0, 34, QK)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q4_0(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q4_0, 18, QK)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q4_1(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q4_1, 20, QK)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q5_0(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q5_0, 22, QK)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q5_1(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q5_1, 24, QK)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q4_k(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q4_k, 144, QK_K)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q5_k(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q5_k, 176, QK_K)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_q6_k(data, row_ids, out):
    for i in range(row_ids.shape[0]):
        _blocks(data[row_ids[i]], out[i], dequantize_block_q6_k, 210, QK_K)


@njit(cache=True, nogil=True, fastmath=False)
def _rows_float(data, ggml_type, row_ids, out):  # F32, F16, BF16: three small loops
    for i in range(row_ids.shape[0]):
        if ggml_type == F32:
            dequantize_row_f32(data[row_ids[i]], out[i])
        elif ggml_type == F16:
            dequantize_row_f16(data[row_ids[i]], out[i])
        else:
            dequantize_row_bf16(data[row_ids[i]], out[i])


_ROWS_SERIAL = {Q8_0: _rows_q8_0, Q4_0: _rows_q4_0, Q4_1: _rows_q4_1, Q5_0: _rows_q5_0, Q5_1: _rows_q5_1,
                Q4_K: _rows_q4_k, Q5_K: _rows_q5_k, Q6_K: _rows_q6_k}


@njit(cache=True, nogil=True, fastmath=False)
def _rows_x8(data, row_ids, lay, out):  # a repacked weight's rows (interleave.py)
    for i in range(row_ids.shape[0]):
        dequantize_row_x8(data, row_ids[i], lay, out[i])


def dequantize_rows_serial(data, ggml_type, row_ids, out):
    """dequantize_rows on the calling thread, without the GIL: for a few rows (embedding
    lookups) or for one worker's prefill tile."""
    if ggml_type in FLOAT_TYPES:
        _rows_float(data, ggml_type, row_ids, out)
    else:
        _ROWS_SERIAL[ggml_type](data, row_ids, out)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: every array the kernels read has one numba type, so one compilation."""
    a = a.view()
    a.flags.writeable = False
    return a


_F16 = f16_table()
GROUP = jobs.GROUP  # weights per matvec job (Q, K, V)
_NO_ROWS = _readonly(np.empty((0, 34), np.uint8))  # the padding weight
_NO_NORM = _readonly(np.empty(0, np.float32))  # a matmul without a norm before it
_NO_EPS = np.float32(0)
# A matvec work item reads at least MIN_ITEM_BYTES of weights, and a weight is cut into at most
# ITEMS_PER_THREAD items per thread: claiming an item moves a cache line between cores (~0.3 us on
# a VM), so a 178 MB output projection in 32 KB items lost 4 ms to claims.
MIN_ITEM_BYTES = 16 << 10
ITEMS_PER_THREAD = 8


def _check(data: np.ndarray, ggml_type: int, n_cols: int) -> tuple[np.ndarray, int]:
    """data and type as the kernels take them; the type as a plain int (an IntEnum would be a
    second numba specialization)."""
    ggml_type = int(ggml_type)
    if ggml_type not in SUPPORTED_TYPES:
        raise NotImplementedError(f"ggml type {ggml_type} is not supported by the kernels")
    block_size, type_size = GGML_QUANT_SIZES[T(ggml_type)]
    row_bytes = n_cols // block_size * type_size
    if n_cols % block_size or data.ndim != 2 or data.shape[1] != row_bytes:
        raise ValueError(f"{T(ggml_type).name} rows of {n_cols} values take {row_bytes} bytes "
                         f"(and n_cols must be a multiple of {block_size}); got data {data.shape}")
    return _readonly(np.ascontiguousarray(data, dtype=np.uint8)), ggml_type


def dequantize(data: np.ndarray, ggml_type: int, n_cols: int) -> np.ndarray:
    """All rows: float32 [rows, n_cols], bit for bit `gguf.quants.dequantize(data, type)`."""
    data, ggml_type = _check(data, ggml_type, n_cols)
    rows = data.shape[0]
    out = np.empty((rows, n_cols), np.float32)
    parallel_loops()
    dequantize_rows(data, ggml_type, _readonly(np.arange(rows, dtype=np.int64)), out)
    return out


def get_rows(data: np.ndarray, ggml_type: int, n_cols: int, row_ids) -> np.ndarray:
    """Rows row_ids (an embedding lookup): float32 [len(row_ids), n_cols], only those rows
    dequantized. Negative ids count from the end, as in numpy."""
    data, ggml_type = _check(data, ggml_type, n_cols)
    ids = _row_ids(row_ids, data.shape[0])
    out = np.empty((ids.size, n_cols), np.float32)
    dequantize_rows_serial(data, ggml_type, ids, out)  # a few rows: no thread start-up
    return out


def _row_ids(row_ids, rows: int) -> np.ndarray:
    """row_ids as int64 within [0, rows) (negative ones from the end, as in numpy)."""
    ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < -rows or ids.max() >= rows):
        raise IndexError(f"row ids must lie in [-{rows}, {rows}), got {ids.min()}..{ids.max()}")
    return _readonly(np.where(ids < 0, ids + rows, ids))


class Weight:
    """A quantized matrix W [rows, n_cols] as the kernels take it, checked once: data uint8
    [rows, row_bytes] (read-only) and its ggml type, in memory of its own (2 MiB pages): the
    legacy types repacked (interleave.py), the others copied as they are. The bytes given go in
    steps of REPACK_BYTES, each step's source rows then handed to release (if given: a mapped
    file's pages dropped, so that a model's weights are not resident twice; and since the copy
    is read instead, a decode step no longer maps the file's 2 MiB pages around a small tensor,
    neighbours included). defer: not yet; repack() does it, or the first job that multiplies by
    the weight (a model repacks once the kernels are loaded and the compiler's pages given back,
    so that the two are never resident together; a dry run's jobs take the bytes as given)."""

    __slots__ = ("data", "ggml_type", "n_cols", "rows", "padded", "repacked", "_release")

    def __init__(self, data: np.ndarray, ggml_type: int, n_cols: int, release=None, defer: bool = False):
        data, self.ggml_type = _check(data, ggml_type, n_cols)
        self.n_cols, self.rows = n_cols, data.shape[0]
        # padded: the repacked rows with the last group's padding (what numba code that reads
        # whole groups must be given: a slice of data stops at its end)
        self.data = self.padded = data
        self.repacked = False
        self._release = release
        if not defer:
            self.repack()

    def repack(self) -> None:
        """The rows in memory of their own, the legacy types' repacked (once)."""
        if self.repacked:
            return
        self.padded = _repacked(self.data, self.ggml_type, self._release)
        self.data, self.repacked = self.padded[: self.rows], True
        _repacks[0] += 1

    def get_rows(self, row_ids) -> np.ndarray:
        """Rows row_ids (an embedding lookup in a tied output matrix), as get_rows() on the
        bytes given. A legacy type's are looked up in its repacked rows (repacked first if
        deferred, as a job does; in a dry run, which leaves the weight as it is, they are zeros:
        the lookup of the bytes as given would compile a kernel that no real pass runs)."""
        if self.ggml_type not in INTERLEAVED_TYPES:
            return get_rows(self.data, self.ggml_type, self.n_cols, row_ids)
        ids = _row_ids(row_ids, self.rows)
        out = np.zeros((ids.size, self.n_cols), np.float32)
        if in_dry_run():
            return out
        self.repack()
        self.rows_into(ids, out)
        return out

    def rows_into(self, row_ids: np.ndarray, out: np.ndarray) -> None:
        """Rows row_ids (int64, read-only, each in range) into out, float32 [len(row_ids),
        n_cols], from the bytes as they are now: repacked or as given."""
        if self.repacked and self.ggml_type in INTERLEAVED_TYPES:
            _rows_x8(self.padded, row_ids, layout_args(self.ggml_type), out)
        else:
            dequantize_rows_serial(self.data, self.ggml_type, row_ids, out)


def load_repack_code() -> None:
    """The repacking and repacked-lookup kernels' machine code in this process now (from the
    disk cache, or compiled here), as team.load_team_code() for the team's: before a caller
    gives the compiler's pages back and then repacks a model (Transformer.repack_weights)."""
    none = _readonly(np.zeros((0, LAYOUTS[Q8_0].block_bytes), np.uint8))
    repack_rows(none, np.zeros(none.shape, np.uint8), 0, 0, layout_args(Q8_0))
    _rows_x8(none, _readonly(np.zeros(0, np.int64)), layout_args(Q8_0), np.zeros((0, 32), np.float32))


_repacks = [0]  # Weight.repack() calls so far: a WeightGroup laid out before one lays out again
REPACK_BYTES = 4 << 20  # source bytes repacked between two releases


def _repacked(src: np.ndarray, ggml_type: int, release) -> np.ndarray:
    """src's rows in zeroed memory of their own (read-only): a legacy type's repacked
    (interleave.py), rows rounded up to ROWS_PAD; another type's copied."""
    rows, row_bytes = src.shape
    interleaved = ggml_type in INTERLEAVED_TYPES
    padded = -(-max(rows, 1) // ROWS_PAD) * ROWS_PAD if interleaved else rows
    dst = _zeroed_pages(padded * row_bytes).reshape(padded, row_bytes)
    step = max(ROWS, REPACK_BYTES // max(row_bytes, 1) // ROWS * ROWS)
    lay = layout_args(ggml_type) if interleaved else None

    def rows_from(r0: int) -> None:  # on the pool's threads: the page faults and copies of two at once
        r1 = min(rows, r0 + step)
        if interleaved:
            repack_rows(src, dst, r0, r1, lay)
        else:
            np.copyto(dst[r0:r1], src[r0:r1])
        if release is not None:
            release(src[r0:r1])

    parallel_map(rows_from, range(0, rows, step))
    return _readonly(dst)


def _zeroed_pages(nbytes: int) -> np.ndarray:
    """uint8 [nbytes] of zeroed anonymous memory, in 2 MiB pages where Linux gives them (as the
    mapped file's: every decode step streams the weights, and 4 KiB pages cost a page walk each,
    dear in a VM)."""
    if nbytes < 2 << 20 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(nbytes, np.uint8)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        pages.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without THP
        pass
    return np.frombuffer(pages, np.uint8)


def _readonly_as_is(a: np.ndarray) -> np.ndarray:
    """a if it is read-only already (a model's norm weights), else a read-only view of it."""
    return a if not a.flags.writeable else _readonly(a)


def _x_rows(x: np.ndarray, n_cols: int) -> np.ndarray:
    x = _readonly(np.ascontiguousarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != n_cols:
        raise ValueError(f"x must be [n, {n_cols}], got {x.shape}")
    return x


class WeightGroup:
    """Weights multiplied by the same x (Q, K and V; gate and up), checked and laid out for the
    kernels once: `matmul(x)` -> [x @ W.T for each W]. For a few x rows (decode) all their rows
    are one team job."""

    def __init__(self, weights: list[Weight]):
        self.weights = list(weights)
        self.n_cols = n_cols = self.weights[0].n_cols
        if any(w.n_cols != n_cols for w in self.weights):
            raise ValueError("matmul_group: the weights must have the same number of columns")
        # More than GROUP weights: several jobs. Fewer: padded with empty weights, so that one
        # compiled job serves every count.
        self.parts = [self.weights[i : i + GROUP] for i in range(0, len(self.weights), GROUP)]
        self._laid_out = None  # _repacks[0] when jobs were made, None: not yet or a weight to repack
        # The row dots take 32 values at a time: float rows of other widths go through BLAS.
        self.matvec = n_cols % 32 == 0
        # Many x rows: quantized weights go through the 8-bit GEMM (gemm.py), float ones BLAS.
        self.quantized = all(w.ggml_type not in FLOAT_TYPES for w in self.weights)
        # A decode mat-vec quantizes x as llama.cpp does for these weights: Q8_K blocks of 256
        # for K-quants, Q8_0 blocks of 32 otherwise (a group mixing the two takes Q8_0).
        self.k_blocks = n_cols % 256 == 0 and all(w.ggml_type in K_QUANTS for w in self.weights)
        self.next_ranges = None  # the ranges of the group whose mat-vec came after this one's last time
        self._per_n = {}  # prefill: (rows of x, normed) -> (scratch bytes, an empty output for the padding)
        self._decode = {}  # decode: rows of x -> what _matvec needs (_prepare_matvec)

    def _lay_out(self) -> None:
        """jobs: per part (data per weight; their type ids over the addresses of their job code,
        jobs.weights_runner; padding) as _fill_weights takes them, and ranges: what a worker
        prefetches for the part's decode mat-vec (_ranges), from the weights' bytes as they are
        now. Outside a dry run a weight not yet repacked is first; inside one (no job runs) the
        addresses are 0 and the next call lays the weights out again."""
        dry = in_dry_run()
        if not dry:
            for w in self.weights:
                w.repack()
            wait_for_serve()  # a compile process makes the job code weights_runner loads
        self.jobs = []
        for part in self.parts:
            pad = GROUP - len(part)
            types = [w.ggml_type for w in part] + [Q8_0] * pad  # a padding weight has no rows: no items
            runners = [0 if dry or k >= len(part) else jobs.weights_runner(t) for k, t in enumerate(types)]
            self.jobs.append((tuple(w.data for w in part) + (_NO_ROWS,) * pad,
                              np.array([types, runners], np.int64), pad))
        self.ranges = _ranges([(w.data,) for w in self.weights])
        self._decode = {}
        self._laid_out = _repacks[0] if not dry and all(w.repacked for w in self.weights) else None

    def matmul(self, x: np.ndarray, outs: list[np.ndarray] | None = None, norm=None) -> list[np.ndarray]:
        """outs: C-contiguous float32 [n, rows_W] arrays to write into (else new ones). norm:
        (weight float32 [n_cols], eps): the product of rms_norm(x, weight, eps) instead, the norm
        made where x is quantized for the kernels (the same bits as the two steps apart)."""
        if (self._laid_out == _repacks[0] and self.matvec and x.__class__ is np.ndarray and x.ndim == 2
                and 0 < x.shape[0] <= MATVEC_MAX_ROWS):  # a decode step: the lean path first
            return self._matvec(x, norm, outs)
        x = _x_rows(x, self.n_cols)
        n = x.shape[0]
        if self._laid_out != _repacks[0]:
            self._lay_out()
        if outs is None:
            outs = [np.empty((n, w.rows), np.float32) for w in self.weights]
        if n == 0 or not self.matvec or (n > MATVEC_MAX_ROWS and not self.quantized):
            if norm is not None:
                x = _readonly(rms_norm(x, *norm))
            return [_matmul_many_rows(x, w, out) for w, out in zip(self.weights, outs)]
        if n <= MATVEC_MAX_ROWS:
            return self._matvec(x, norm, outs)
        # many rows of x (prefill): quantized by the team in a job of its own, then the GEMM
        norm_w, eps = (_NO_NORM, _NO_EPS) if norm is None else (_readonly_as_is(norm[0]), np.float32(norm[1]))
        t = current_team()
        key = (n, norm is not None)
        if key not in self._per_n:  # what a call with n rows of x takes that does not change
            self._per_n[key] = (_scratch_bytes(jobs.GEMM, n, self.n_cols, norm is not None), np.empty((n, 0), np.float32))
        scratch_bytes, no_out = self._per_n[key]
        ys = []
        with t.lock:
            scratch = t.scratch(scratch_bytes)
            _fill_quantize_x(t.desc, x, norm_w, eps, scratch)
            t.run(_NO_RANGES)
            for i, (part, (data, type_ids, pad)) in enumerate(zip(self.parts, self.jobs)):
                outs_part = tuple(outs[GROUP * i : GROUP * i + len(part)]) + (no_out,) * pad
                _fill_weights(t.desc, jobs.GEMM, data, type_ids, x, _F16, outs_part, t.n_threads, scratch,
                              self.k_blocks, norm_w, eps, True)
                t.run(_NO_RANGES)
                ys += outs_part[: len(part)]
        return ys

    def _matvec(self, x: np.ndarray, norm, outs: list[np.ndarray] | None) -> list[np.ndarray]:
        """matmul() of a few x rows (a decode step; laid out): one MATVEC job per part, what its
        fill takes but x and the outputs made once per row count and norm, and kept (this runs
        ~75 times a token, and its Python had cost more than the fill and the job's posting
        together: 25 against 8 us a call on a Zen 1 core)."""
        n = x.shape[0]
        prep = self._decode.get(n)
        if prep is None or prep[0] is not (None if norm is None else norm[0]) or (norm is not None and prep[1] != norm[1]):
            prep = self._decode[n] = self._prepare_matvec(n, norm)
        _, _, norm_w, eps, scratch_bytes, parts = prep
        if x.dtype != np.float32 or not x.flags.c_contiguous or x.shape[1] != self.n_cols:
            x = _x_rows(x, self.n_cols)
        elif x.flags.writeable:
            x = _readonly(x)
        t = current_team()
        hint = _decode_hint(self)
        ys = []
        with t.lock:
            scratch = t.scratch(scratch_bytes)
            for i, (data, type_ids, shapes, padding) in enumerate(parts):
                part = [np.empty(shape, np.float32) for shape in shapes] if outs is None else \
                    outs[GROUP * i : GROUP * i + len(shapes)]
                _fill_weights(t.desc, jobs.MATVEC, data, type_ids, x, _F16, tuple(part) + padding, t.n_threads,
                              scratch, self.k_blocks, norm_w, eps, False)
                t.run(hint)
                ys += part
        return ys

    def _prepare_matvec(self, n: int, norm) -> tuple:
        """(norm weight given, eps given, norm weight and eps as the fill takes them, scratch bytes,
        per part (data, type ids, output shapes, padding outputs)) for _matvec."""
        norm_w, eps = (_NO_NORM, _NO_EPS) if norm is None else (_readonly_as_is(norm[0]), np.float32(norm[1]))
        no_out = np.empty((n, 0), np.float32)
        parts = [(data, type_ids, [(n, w.rows) for w in part], (no_out,) * pad)
                 for part, (data, type_ids, pad) in zip(self.parts, self.jobs)]
        return (None if norm is None else norm[0], None if norm is None else norm[1], norm_w, eps,
                _scratch_bytes(jobs.MATVEC, n, self.n_cols, norm is not None), parts)


_last_matvec: list = []  # [a weak reference to the weight group whose decode mat-vec ran last]
# False: no prefetch hints (a benchmark that times one kernel on a matrix kept in cache: the
# next call's weights fetched meanwhile would evict it).
prefetch_next = True
_NO_RANGES = np.zeros(2 * jobs.PF_RANGES, np.int64)  # nothing to prefetch (a prefill's jobs)


def _ranges(weights) -> np.ndarray:
    """int64 [2 * PF_RANGES]: (address, bytes) ranges of the first PREFETCH_MAX bytes the job of
    these weights reads, what a worker prefetches while the job before it ends (of a long stream
    only the start: the hardware prefetcher has it from there). weights: per weight, its planes,
    read side by side row by row (one for a dense weight); the weights one after another."""
    out = _NO_RANGES.copy()
    budget, i = PREFETCH_MAX, 0
    for planes in weights:
        share = min(1.0, budget / max(1, sum(p.nbytes for p in planes)))
        for p in planes:
            if i < jobs.PF_RANGES and budget > 0:
                nbytes = min(budget, int(p.nbytes * share))
                out[2 * i : 2 * i + 2] = p.ctypes.data, nbytes
                budget -= nbytes
                i += 1
    return out


def _decode_hint(group) -> np.ndarray:
    """Note that group's decode mat-vec follows the last one (a decode step runs the same groups
    in the same order every token); return the ranges of the group that followed it last time."""
    if not prefetch_next:
        return _NO_RANGES
    before = _last_matvec[0]() if _last_matvec else None
    if before is not None and before is not group:
        before.next_ranges = group.ranges
    _last_matvec[:] = [weakref.ref(group)]
    return group.next_ranges if group.next_ranges is not None else _NO_RANGES


def matmul_group(x: np.ndarray, weights: list[Weight]) -> list[np.ndarray]:
    """[x @ W.T for W in weights], x float32 [n, n_cols]: each float32 [n, rows_W] (WeightGroup
    once, for weights multiplied again and again)."""
    return WeightGroup(weights).matmul(x)


_current: list = []  # [the team for the thread count set last]


def set_num_threads(n: int) -> None:
    """Threads for every kernel: the decode team, the prefill pool and numba's parallel loops.
    numba's own count is set when one of its parallel loops is about to run (parallel_loops):
    setting it starts numba's threading layer (OpenMP and its threads, ~1 MiB), which a run
    never uses otherwise (decode and prefill run on the team and the pool)."""
    _current[:] = [team(n)]


def num_threads() -> int:
    """The count set last (set_num_threads), else numba's default (NUMBA_NUM_THREADS)."""
    return current_team().n_threads


def current_team():
    if not _current:
        _current.append(team(numba.config.NUMBA_NUM_THREADS))
    return _current[0]


def parallel_loops() -> None:
    """Before a numba parallel loop (prange): numba's threads set to num_threads()."""
    n = min(num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


@njit(cache=True, nogil=True, inline="always")
def _scratch_layout(kind, n, n_cols):
    """Where _quantize_into_scratch puts the quantized x: the codes (16-bit for jobs.GEMM, else
    8-bit) from 0, then xd, xs32 and xs16 `floats` bytes apart, each on a 64-byte boundary.
    Returns (codes, floats) in bytes; the whole takes codes + 3 * floats."""
    codes = -(-n * n_cols * (2 if kind == jobs.GEMM else 1) // 64) * 64
    floats = -(-4 * n * (n_cols // 16) // 64) * 64
    return codes, floats


@njit(cache=True, nogil=True, inline="always")
def _normed_at(kind, n, n_cols):
    """Where in scratch the normalized x goes: right after the quantized x's parts."""
    codes, floats = _scratch_layout(kind, n, n_cols)
    return codes + 3 * floats


def _scratch_bytes(kind: int, n: int, n_cols: int, normed: bool = False) -> int:
    """Bytes _fill_weights and _fill_sparse need for the quantized x (and normed: the normalized
    x, after it). In Python (py_func): a call of the numba function would compile it."""
    codes, floats = _scratch_layout.py_func(kind, n, n_cols)
    return codes + 3 * floats + (4 * n * n_cols if normed else 0)


@njit(cache=True, nogil=True, inline="always")
def _x_scales(scratch, kind, n, n_cols):
    """The quantized x's float parts in scratch (_scratch_layout): xd, xs32, xs16."""
    codes, floats = _scratch_layout(kind, n, n_cols)
    at = scratch.ctypes.data + codes
    xd = array_at(at, np.float32, (n, n_cols // 32))
    xs32 = array_at(at + floats, np.float32, (n, n_cols // 32))
    xs16 = array_at(at + 2 * floats, np.float32, (n, n_cols // 16))
    return xd, xs32, xs16


@njit(cache=True, nogil=True, inline="always")
def _quantize_into_scratch(desc, x, scratch, kind, k_blocks, norm, eps, quantized):
    """x quantized into scratch (16-bit codes for jobs.GEMM, else 8-bit: Q8_K blocks with
    k_blocks, Q8_0 ones without), rms-normed first if norm (its weight) is not empty, the normed
    x made into scratch after the quantized x's parts (where the kernels read x from); the
    addresses of x, codes, xd, xs32, xs16 in desc's MV_ fields. quantized: scratch holds x's
    codes already (the QUANTIZE_X job: _fill_quantize_x), only the addresses are written.

    x is taken as a writable array at its address: the kernels below see one array type
    whether x or the normed x goes in, and compile once (a numba function compiles once per
    argument type; a read-only array is a type of its own). Inlined into each fill (one call
    site apiece): as a function of its own, the quantizers' code it links would be optimized
    once more in its module (0.4 s of a first run on a Zen 1 core)."""
    n, n_cols = x.shape
    xd, xs32, xs16 = _x_scales(scratch, kind, n, n_cols)
    src = array_at(x.ctypes.data, np.float32, (n, n_cols))
    if norm.shape[0] and not quantized:
        src = array_at(scratch.ctypes.data + _normed_at(kind, n, n_cols), np.float32, (n, n_cols))
        rms_norm_rows(array_at(x.ctypes.data, np.float32, (n, n_cols)), norm, eps, src)
    if quantized:
        pass
    elif kind == jobs.GEMM:
        quantize_into_16(src, array_at(scratch.ctypes.data, np.int16, (n, n_cols)), xd, xs32, xs16)
    elif k_blocks:
        quantize_into_8k(src, array_at(scratch.ctypes.data, np.int8, (n, n_cols)), xd, xs32, xs16)
    else:
        quantize_into_8(src, array_at(scratch.ctypes.data, np.int8, (n, n_cols)), xd, xs32, xs16)
    desc[jobs.MV_X], desc[jobs.MV_XQ], desc[jobs.MV_XD] = src.ctypes.data, scratch.ctypes.data, xd.ctypes.data
    desc[jobs.MV_XS32], desc[jobs.MV_XS16] = xs32.ctypes.data, xs16.ctypes.data


@njit(cache=True, nogil=True)
def _fill_quantize_x(desc, x, norm, eps, scratch):
    """desc := the jobs.QUANTIZE_X job that puts x (rms-normed first if norm, its weight, is not
    empty) into scratch as _quantize_into_scratch does for jobs.GEMM, rows shared by the team."""
    n, n_cols = x.shape
    xd, xs32, xs16 = _x_scales(scratch, jobs.GEMM, n, n_cols)
    desc[jobs.KIND], desc[jobs.N_ITEMS] = jobs.QUANTIZE_X, -(-n // jobs.QX_ROWS)
    desc[jobs.QX_N], desc[jobs.QX_COLS], desc[jobs.QX_X] = n, n_cols, x.ctypes.data
    desc[jobs.QX_NORM] = norm.ctypes.data if norm.shape[0] else 0
    array_at(desc.ctypes.data + 8 * jobs.QX_EPS, np.float64, (1,))[0] = eps
    desc[jobs.QX_XN] = scratch.ctypes.data + _normed_at(jobs.GEMM, n, n_cols)
    desc[jobs.QX_XQ], desc[jobs.QX_XD] = scratch.ctypes.data, xd.ctypes.data
    desc[jobs.QX_XS32], desc[jobs.QX_XS16] = xs32.ctypes.data, xs16.ctypes.data


@njit(cache=True, nogil=True, inline="always")
def _item_rows(gemm, rows, row_bytes, n_threads):
    """Rows per work item of a weight: for the GEMM whole panels, several per item if there are
    many; for a mat-vec at least MIN_ITEM_BYTES of weights, ITEMS_PER_THREAD items a thread, in
    whole groups of a repacked weight's ROWS rows."""
    if gemm:
        return GROUP_ROWS * max(1, -(-rows // (ITEMS_PER_THREAD * n_threads * GROUP_ROWS)))
    item_rows = max(-(-MIN_ITEM_BYTES // max(row_bytes, 1)), -(-rows // (ITEMS_PER_THREAD * n_threads)))
    return -(-item_rows // ROWS) * ROWS


@njit(cache=True, nogil=True)
def _fill_weights(desc, kind, weights, types, x, f16, outs, n_threads, scratch, k_blocks, norm, eps, quantized):
    """desc := outs[w] = x @ weights[w].T, types [2, len(weights)]: their ggml types and the
    addresses of their job code (jobs.weights_runner); x quantized into scratch: jobs.MATVEC for
    a few x rows (8-bit codes; Q8_K blocks with k_blocks), jobs.GEMM for many (16-bit codes); x
    rms-normed first if norm (its weight) is not empty. quantized: scratch holds x's codes
    already (the QUANTIZE_X job: _fill_quantize_x)."""
    n, n_cols = x.shape
    _quantize_into_scratch(desc, x, scratch, kind, k_blocks, norm, eps, quantized)
    desc[jobs.KIND] = kind
    desc[jobs.MV_N], desc[jobs.MV_COLS] = n, n_cols
    desc[jobs.MV_F16] = f16.ctypes.data
    desc[jobs.MV_WEIGHTS] = len(weights)
    items = 0
    for w in range(len(weights)):
        data = weights[w]
        rows, row_bytes = data.shape
        item_rows = _item_rows(kind == jobs.GEMM, rows, row_bytes, n_threads)
        f = jobs.MV_W0 + jobs.MV_W_FIELDS * w
        desc[f + jobs.W_DATA], desc[f + jobs.W_ROWS], desc[f + jobs.W_ROW_BYTES] = data.ctypes.data, rows, row_bytes
        desc[f + jobs.W_TYPE], desc[f + jobs.W_RUNNER] = types[0, w], types[1, w]
        desc[f + jobs.W_OUT] = outs[w].ctypes.data
        desc[f + jobs.W_FIRST_ITEM], desc[f + jobs.W_ITEM_ROWS] = items, item_rows
        items += -(-rows // item_rows)
    desc[jobs.N_ITEMS] = items


class SparseWeightGroup:
    """2:4 weights in the compact planes multiplied by the same x (Q, K, V; gate, up), laid out
    for the kernels once, as WeightGroup does for dense ones: weights [(values uint8 [rows, ...]:
    Q4 nibbles or Q8 int8 bytes, index uint8 [rows, n_cols / 8], scales uint16 [rows, n_cols /
    32])], all of one value type (q8: int8 values). `matmul(x, outs)`: outs[w] = x @ W_w.T, up to
    GROUP weights in one team job, x in 8-bit codes for a few x rows (decode), in 16-bit codes
    through the GEMM for many."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]], q8: bool):
        self.q8 = q8
        self.parts = []
        for i in range(0, len(weights), GROUP):
            part = weights[i : i + GROUP]
            pad = GROUP - len(part)
            planes = tuple(tuple(_readonly(w[k].view(_NO_PLANES[k].dtype)) for w in part) + (_NO_PLANES[k],) * pad
                           for k in range(3))
            self.parts.append((planes, len(part), pad))
        self.weights = weights
        self.next_ranges = None  # as WeightGroup's
        self._per_n = {}  # as WeightGroup's

    @functools.cached_property
    def ranges(self) -> np.ndarray:
        return _ranges(self.weights)

    def matmul(self, x: np.ndarray, outs: list[np.ndarray]) -> list[np.ndarray]:
        """x float32 [n, n_cols] (C order); outs float32 [n, rows_w] to write into."""
        n, n_cols = x.shape
        if n == 0:
            return outs
        kind = jobs.SPARSE if n <= MATVEC_MAX_ROWS else jobs.SPARSE_GEMM
        scratch_kind = jobs.GEMM if kind == jobs.SPARSE_GEMM else jobs.MATVEC
        t = current_team()
        hint = _decode_hint(self) if kind == jobs.SPARSE else _NO_RANGES
        if n not in self._per_n:
            self._per_n[n] = (_scratch_bytes(scratch_kind, n, n_cols), np.empty((n, 0), np.float32))
        scratch_bytes, no_out = self._per_n[n]
        done = 0
        for (values, index, scales), used, pad in self.parts:
            outs_part = tuple(outs[done : done + used]) + (no_out,) * pad
            done += used
            with t.lock:
                _fill_sparse(t.desc, kind, values, index, scales, self.q8, x, _F16, outs_part,
                             t.n_threads, t.scratch(scratch_bytes), jobs.sparse_runner())
                t.run(hint)
        return outs


_NO_PLANES = tuple(_readonly(np.empty((0, 1), dtype)) for dtype in (np.uint8, np.uint8, np.uint16))


@njit(cache=True, nogil=True)
def _fill_sparse(desc, kind, values, index, scales, q8, x, f16, outs, n_threads, scratch, runner):
    n, n_cols = x.shape
    desc[jobs.SP_RUNNER] = runner
    gemm = kind == jobs.SPARSE_GEMM
    _quantize_into_scratch(desc, x, scratch, jobs.GEMM if gemm else jobs.MATVEC, False, _NO_NORM, _NO_EPS, False)
    desc[jobs.KIND] = kind
    desc[jobs.MV_N], desc[jobs.MV_COLS], desc[jobs.MV_F16] = n, n_cols, f16.ctypes.data
    desc[jobs.MV_WEIGHTS], desc[jobs.SP_Q8] = len(values), 1 if q8 else 0
    items = 0
    for w in range(len(values)):
        rows = values[w].shape[0]
        item_rows = _item_rows(gemm, rows, values[w].shape[1] + index[w].shape[1] + 2 * scales[w].shape[1], n_threads)
        f = jobs.MV_W0 + jobs.MV_W_FIELDS * w
        desc[f + jobs.W_DATA], desc[f + jobs.W_ROWS], desc[f + jobs.W_ROW_BYTES] = values[w].ctypes.data, rows, values[w].shape[1]
        desc[f + jobs.SW_INDEX], desc[f + jobs.SW_SCALES] = index[w].ctypes.data, scales[w].ctypes.data
        desc[f + jobs.W_OUT], desc[f + jobs.W_FIRST_ITEM], desc[f + jobs.W_ITEM_ROWS] = outs[w].ctypes.data, items, item_rows
        items += -(-rows // item_rows)
    desc[jobs.N_ITEMS] = items


def _matmul_many_rows(x: np.ndarray, w: Weight, out: np.ndarray) -> np.ndarray:
    """Prefill: dequantize a tile of W's rows, let single-threaded BLAS multiply it into
    out[:, tile]; the tiles go to a pool of num_threads() workers that each take the
    next tile when done. A core slowed by another program then does fewer tiles, where BLAS's
    own threads split each product evenly and wait for the slowest (on a busy 2-core machine,
    two BLAS threads ran at half the speed of one)."""
    data, ggml_type, n_cols, rows = w.data, w.ggml_type, w.n_cols, w.rows
    if x.shape[0] == 0:
        return out
    if ggml_type == F32:  # float32 already: BLAS straight on the mapped bytes
        return np.matmul(x, data.view(np.float32).T, out=out)
    workers = num_threads()
    # at least 4 tiles per worker to balance, at most TILE_BYTES of float32 each
    tile_rows = max(16, min(TILE_BYTES // (4 * n_cols), -(-rows // (4 * workers))))

    def one_tile(start: int) -> None:
        stop = min(rows, start + tile_rows)
        tile = _scratch(tile_rows * n_cols)[: (stop - start) * n_cols].reshape(stop - start, n_cols)
        w.rows_into(_readonly(np.arange(start, stop, dtype=np.int64)), tile)  # a repacked weight's too
        np.matmul(x, tile.T, out=out[:, start:stop])

    parallel_map(one_tile, range(0, rows, tile_rows))
    return out


def parallel_map(fn, items) -> None:
    """fn(item) for every item, spread over num_threads() Python threads (fn must
    spend its time in code that drops the GIL: BLAS, nogil Numba), each under the caller's numpy
    error settings (they are per thread: a dry warm-up's np.errstate would not reach them)."""
    workers = num_threads()
    if workers == 1 or len(items) == 1:
        for item in items:
            fn(item)
        return
    errors = np.geterr()

    def under_callers_errstate(item):
        with np.errstate(**errors):
            fn(item)

    with current_team().resting():  # its spinning workers would take the cores these threads need
        list(_pool(workers).map(under_callers_errstate, items))


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """This thread's float32 scratch of at least size values, kept between calls."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(size, np.float32)
    return buf


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgellm-prefill")


def matmul(x: np.ndarray, data: np.ndarray, ggml_type: int, n_cols: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """x @ W.T for W = dequantize(data): x float32 [n, n_cols] -> float32 [n, rows].

    `out`, if given, must be a C-contiguous float32 [n, rows] array; it is returned.
    """
    w = Weight(data, ggml_type, n_cols)
    x = _x_rows(x, n_cols)
    n = x.shape[0]
    if out is not None and (out.shape != (n, w.rows) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be C-contiguous float32 [{n}, {w.rows}]")
    return WeightGroup([w]).matmul(x, None if out is None else [out])[0]
