"""What the machine offers: physical cores, peak memory, memory read bandwidth."""

from __future__ import annotations

import os
import resource
import sys
import time

import numba
import numpy as np
from numba import prange

from edgellm.kernels.jit import njit


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


MADV_DONTNEED = 4  # drop these pages from this process (a file's come back from the page cache)
MADV_PAGEOUT = 21  # Linux 5.4: reclaim these pages now (file pages come back from the file if touched)


def release_library_pages(prefix: str = "") -> int:
    """Drop this process's resident pages of the read-only mappings of the shared libraries
    (".so" files) whose file names start with prefix: code and constants, read back if touched
    again. Start-up leaves many such pages resident that a run never touches again (LLVM's, the
    importers', OpenSSL's for hashlib); those a run does use fault back on first touch. A
    mapping holding only the file's pages is dropped from this process alone (MADV_DONTNEED: the
    page cache keeps them, so a fault back or the next run's start reads no disk); one that
    holds pages the loader wrote (relocated constants: dropping them would read the file's
    unrelocated bytes back) is paged out instead (MADV_PAGEOUT keeps what was written). Writable
    mappings are left alone. Returns the bytes of the mappings advised; 0 where the system
    cannot (not Linux)."""
    import ctypes

    try:
        with open("/proc/self/smaps") as f:
            smaps = f.read().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for start, end, anonymous_kib in _library_mappings(smaps, prefix):
        advice = MADV_DONTNEED if anonymous_kib == 0 else MADV_PAGEOUT
        if madvise(start, end - start, advice) == 0:
            advised += end - start
    return advised


def _library_mappings(smaps: list[str], prefix: str):
    """(start, end, Anonymous KiB) of each read-only mapping of a shared library named prefix*."""
    mapping = None
    for line in smaps:
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # start-end perms offset dev inode [path]
            name = os.path.basename(fields[5]) if len(fields) > 5 else ""
            library = "w" not in fields[1] and name.startswith(prefix) and ".so" in name
            mapping = [int(v, 16) for v in fields[0].split("-")] if library else None
        elif mapping is not None and fields[0] == "Anonymous:":
            yield mapping[0], mapping[1], int(fields[1])
            mapping = None


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim): what start-up
    freed inside the heap (LLVM's and the warm-up's temporaries) otherwise stays resident.
    Returns False where there is no glibc."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> bool:
    """Every thread allocates from the main heap from now on (glibc's M_ARENA_MAX = 1, what
    MALLOC_ARENA_MAX=1 sets): by default a thread that allocates gets an arena of its own, and
    what it frees stays resident there, out of the other threads' reach; the team's worker and
    the prefill pool's threads held 1.2-2.3 MiB of a run's peak that way. They allocate little
    (a job's buffers come from its caller): sharing one heap measured no slower. For a process
    edgellm owns (the CLI), before its threads start; False where there is no glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_ARENA_MAX, 1) == 1


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
