"""numba.njit as the kernels use it: without the C-callable wrapper numba compiles beside every
function by default (for passing it around as a first-class function value, which no kernel
is; the C functions edgellm calls by address, jobs.weights_runner and jobs.sparse_runner, are
numba.cfuncs of their own). 15-20 ms of compile per function on a Zen 1 core, ~1.2 s of a first
run's."""

from __future__ import annotations

import functools

import numba

njit = functools.partial(numba.njit, no_cfunc_wrapper=True)
