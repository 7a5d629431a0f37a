"""What the machine offers: physical cores, peak memory, memory read bandwidth."""

from __future__ import annotations

import os
import resource
import sys
import time

import numba
import numpy as np
from numba import njit, prange


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's SIMD units)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = phys = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value.strip()
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, value.strip()))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores), len(allowed)) if cores else len(allowed))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def read_bandwidth_gb_s(threads: int, nbytes: int = 512 << 20) -> float:
    """Parallel read speed of main memory with `threads` threads: the best of a few sums over a
    buffer far larger than the caches."""
    numba.set_num_threads(threads)
    buf = np.ones(nbytes // 8, np.int64)
    _parallel_sum(buf)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        _parallel_sum(buf)
        best = min(best, time.perf_counter() - t)
    return buf.nbytes / best / 1e9


@njit(cache=True, parallel=True)
def _parallel_sum(a):
    total = 0
    for i in prange(a.shape[0]):
        total += a[i]
    return total
