"""numba.njit as the kernels use it: without the C-callable wrapper numba compiles beside every
function by default (for passing it around as a first-class function value, which no kernel
is; the one C function edgellm calls by address, jobs.sparse_runner, is a numba.cfunc of its
own). 15-20 ms of compile per function on a Zen 1 core, ~1.2 s of a first run's."""

from __future__ import annotations

import functools

import numba

njit = functools.partial(numba.njit, no_cfunc_wrapper=True)
