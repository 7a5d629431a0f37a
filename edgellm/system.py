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


MADV_PAGEOUT = 21  # Linux 5.4: reclaim these pages now (file pages come back from the file if touched)


def release_library_pages(prefix: str) -> int:
    """Ask Linux to reclaim this process's resident pages of the read-only mappings of the
    shared libraries whose file names start with prefix (code and constants: clean pages, read
    back from the file if touched again; writable ones are left alone). Returns the bytes of
    the mappings advised; 0 where the system cannot (not Linux, before 5.4)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps:
        fields = line.split()  # start-end perms offset dev inode [path]
        if len(fields) < 6 or "w" in fields[1] or not os.path.basename(fields[5]).startswith(prefix):
            continue
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) != 0:
            return advised  # EINVAL: a kernel without MADV_PAGEOUT
        advised += end - start
    return advised


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
