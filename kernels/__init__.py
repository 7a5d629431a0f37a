"""Numba kernels for GGUF tensors: dequantize, embedding lookup, and x @ W.T on raw block bytes.

A weight arrives as its bytes in the file, data: uint8 [rows, row_bytes] (one row per output
feature, n_cols values) and its ggml type as an int (`ggml_types.GGMLQuantizationType`):

    dequantize(data, ggml_type, n_cols)         -> float32 [rows, n_cols]
    get_rows(data, ggml_type, n_cols, row_ids)  -> float32 [len(row_ids), n_cols]
    matmul(x, data, ggml_type, n_cols, out=None) -> float32 [n, rows] = x @ W.T
    matmul_group(x, [Weight(data, ggml_type, n_cols), ...]) -> [x @ W.T, ...]  (one parallel job)
    WeightGroup([Weight, ...]).matmul(x)        the same, laid out once for repeated calls

A Weight copies its rows into memory of its own, the legacy types' (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0) repacked 8 rows at a time for the decode kernels (interleave.py).

Threads (set_num_threads): a decode team (team.py), numba's parallel loops and a pool of
prefill workers around single-threaded BLAS.
"""

import os

# Decode and prefill run on the kernels' own thread team (team.py), not on numba's OpenMP
# regions; the few parallel loops left (dequantize(), the bandwidth probe) are long enough that a
# wake-up per region does not matter, while OpenMP's default spinning would take the cores from
# the team's workers on a 2-core machine. Set before the first parallel region, when libgomp
# reads it; a value the user set wins. Child processes running other OpenMP programs must not
# inherit it (foreign_environ).
_USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def foreign_environ() -> dict[str, str]:
    """os.environ as the user set it, without the OMP_WAIT_POLICY default above: for a child
    process that runs another OpenMP program. llama.cpp's decode passes hundreds of OpenMP
    barriers a token; under PASSIVE each one waits for a thread to wake, and its decode runs at
    half speed (2 threads, Gemma-3-270M: 40 tok/s rather than 80)."""
    env = dict(os.environ)
    if _USER_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    return env


from .footprint import lean_cache_loads  # noqa: E402
from .scope_copy import fast_scope_copies  # noqa: E402

# Before any kernel loads (the first is the GGUF reader's): a cached kernel loads without numba's
# whole lowering context, 8 MiB of a run's peak memory (footprint.py); and before any compiles:
# an inlined function's IR copies in a fraction of the time (scope_copy.py).
lean_cache_loads()
fast_scope_copies()

from .dispatch import (  # noqa: E402
    SUPPORTED_TYPES, Weight, WeightGroup, dequantize, get_rows, matmul, matmul_group, set_num_threads,
)

__all__ = ["SUPPORTED_TYPES", "Weight", "WeightGroup", "dequantize", "get_rows", "matmul", "matmul_group",
           "foreign_environ", "needs_compiling", "set_num_threads"]


def needs_compiling() -> bool:
    """True when the kernels a forward pass runs have no machine code in numba's disk cache yet
    (a fresh install, an upgrade that changed their source, or a model with weight types whose
    job code no run has compiled yet): the first pass will compile them for several seconds,
    which a front end should announce."""
    from . import dispatch, jobs, nn, norm, team

    return not (all(map(team.in_disk_cache, (dispatch._fill_weights, team.serve, norm.rms_norm_rows, nn._fill_attend)))
                and jobs.weight_code_in_disk_cache())
