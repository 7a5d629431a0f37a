"""Numba kernels for GGUF tensors: dequantize, embedding lookup, and x @ W.T on raw block bytes.

A weight arrives as its bytes in the file, data: uint8 [rows, row_bytes] (one row per output
feature, n_cols values) and its ggml type as an int (`gguf.GGMLQuantizationType`):

    dequantize(data, ggml_type, n_cols)         -> float32 [rows, n_cols]
    get_rows(data, ggml_type, n_cols, row_ids)  -> float32 [len(row_ids), n_cols]
    matmul(x, data, ggml_type, n_cols, out=None) -> float32 [n, rows] = x @ W.T
    matmul_group(x, [Weight(data, ggml_type, n_cols), ...]) -> [x @ W.T, ...]  (one parallel job)
    WeightGroup([Weight, ...]).matmul(x)        the same, laid out once for repeated calls

Threads (set_num_threads): a decode team (team.py), numba's parallel loops and a pool of
prefill workers around single-threaded BLAS.
"""

import os

# numba's OpenMP threads spin after each parallel region by default. Our regions are short (a
# decode matmul takes ~0.1-1 ms) and a token runs ~100 of them: on a busy machine the spinning
# threads lose their cores and each region then waits a scheduler tick (measured on a shared
# 2-core box: 12 ms per matmul instead of 0.6). Sleeping threads cost a wake-up of a few
# microseconds instead. Set before the first parallel region, when libgomp reads it; a value
# the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .dispatch import (  # noqa: E402
    SUPPORTED_TYPES, Weight, WeightGroup, dequantize, get_rows, matmul, matmul_group, set_num_threads,
)

__all__ = ["SUPPORTED_TYPES", "Weight", "WeightGroup", "dequantize", "get_rows", "matmul", "matmul_group",
           "needs_compiling", "set_num_threads"]


def needs_compiling() -> bool:
    """True when the kernels a forward pass runs have no machine code in numba's disk cache yet
    (a fresh install, or an upgrade changed their source): the first pass will compile them for
    several seconds, which a front end should announce."""
    from . import dispatch, nn, team

    try:
        return any(not kernel._cache._cache_file._load_index()
                   for kernel in (dispatch.dequantize_rows_serial, dispatch._fill_weights, team.serve,
                                  nn._rms_norm_rows, nn._fill_attend))
    except (AttributeError, OSError):  # numba's cache internals moved: say nothing
        return False
