"""What start-up leaves behind is handed back, and nothing that still runs loses anything."""

import ctypes
import os
import subprocess
import sys

import numpy as np
from numba import njit

from edgellm.kernels import footprint
from edgellm.kernels.norm import sum_squares
from edgellm.system import trim_heap


@njit(cache=True)
def _kernel(row):  # stands for a kernel: cached, so numba keeps its LLVM module for linking
    return sum_squares(row) + 1


def test_a_released_kernel_still_links_into_a_new_compile():
    """A kernel's LLVM module released, a function compiled afterwards that calls the kernel
    links it in from the kept bitcode and computes the same. (This module's kernel, not one of
    edgellm's: an LLM loaded earlier in the session has released those already.)"""
    row = np.linspace(-1, 1, 640, dtype=np.float32)
    expected = _kernel(row)
    library = next(iter(_kernel.overloads.values())).library
    assert library._shared_module is not None
    assert footprint.release_linking_modules(__name__) >= 1  # sum_squares too, if compiled here
    assert library._shared_module is None
    assert footprint.release_linking_modules(__name__) == 0  # nothing left to release

    @njit
    def twice(x):
        return 2 * _kernel(x)

    assert twice(row) == 2 * expected
    assert library._shared_module is not None  # parsed back for that link
    assert _kernel(row) == expected


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_trim_heap_gives_back_the_free_pages_inside_the_heap():
    """64 MiB of 1 KiB blocks freed below one that stays (so the heap's top cannot shrink by
    itself): resident until trimmed."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(64 << 10)]
    for b in blocks:
        ctypes.memset(b, 1, 1024)
    keep = libc.malloc(1024)
    for b in blocks:
        libc.free(b)
    before = _rss_kib()
    assert trim_heap()
    assert _rss_kib() < before - (32 << 10), (before, _rss_kib())
    libc.free(keep)


_CACHED_MODULE = '''
import numpy as np
from numba import njit

@njit(cache=True)
def scaled_sum(a, k):
    return np.sum(a) * k

@njit(cache=True)
def padded(a, n):  # numba's np.empty and reshape (numba.np.arrayobj), and an exception
    if n < a.size:
        raise ValueError("n is smaller than a")
    out = np.empty(n, a.dtype)
    out[: a.size] = a
    out[a.size :] = 0
    return out.reshape(1, n)
'''

_LOAD_THEN_COMPILE = '''
import sys
import numpy as np
import edgellm.kernels  # installs the lean cache loads
import cached_module
from numba import njit

a = np.arange(10, dtype=np.float64)
assert cached_module.scaled_sum(a, 3.0) == 135.0
assert sum(cached_module.scaled_sum.stats.cache_hits.values()) == 1, "not loaded from the cache"
assert "numba.np.npyimpl" not in sys.modules, "the cache load refreshed numba's lowering context"
assert cached_module.padded(a, 12).tolist() == [list(range(10)) + [0, 0]]
assert sum(cached_module.padded.stats.cache_hits.values()) == 1, "not loaded from the cache"
try:
    cached_module.padded(a, 5)
except ValueError as e:
    assert str(e) == "n is smaller than a", e
else:
    raise AssertionError("no ValueError")
for module in ("numba.np.arrayobj", "numba.np.arraymath"):
    assert module not in sys.modules, f"the cache load imported {module} for its environments"

@njit
def fresh(a):  # a compile after the lean load: numba's compiler refreshes the context itself
    return np.sqrt(np.sum(a * a)) + cached_module.scaled_sum(a, 1.0)

assert abs(fresh(a) - (np.sqrt(285.0) + 45.0)) < 1e-12
print("ok")
'''


def test_a_lean_cache_load_skips_the_lowering_context_and_a_later_compile_still_works(tmp_path):
    """A kernel loaded from numba's disk cache in a fresh process: right result, from the cache,
    without numba's lowering context or the modules of the numba functions it links (their
    environments' globals); its exceptions still raise; a function compiled afterwards in that
    process, calling numpy and the loaded kernel, is right too."""
    (tmp_path / "cached_module.py").write_text(_CACHED_MODULE)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    fill = "import numpy as np, cached_module; cached_module.scaled_sum(np.ones(10), 1.0); cached_module.padded(np.ones(10), 12)"
    subprocess.run([sys.executable, "-c", fill], env=env, cwd=tmp_path, check=True, timeout=300)
    result = subprocess.run([sys.executable, "-c", _LOAD_THEN_COMPILE], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


_THREAD_ALLOCATES = '''
import ctypes, sys, threading
from edgellm.system import one_malloc_arena

if sys.argv[1] == "one":
    assert one_malloc_arena()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
thread = threading.Thread(target=lambda: libc.free(libc.malloc(1024)))
thread.start()
thread.join()
libc.malloc_stats()  # to stderr, one "Arena N:" per arena
'''


def test_with_one_malloc_arena_a_thread_allocates_from_the_main_heap():
    """glibc gives a thread that allocates an arena of its own, unless told one is the most."""
    def arenas(mode):
        err = subprocess.run([sys.executable, "-c", _THREAD_ALLOCATES, mode], capture_output=True,
                             text=True, check=True, timeout=120).stderr
        return sum(line.startswith("Arena ") for line in err.splitlines())

    assert arenas("default") == 2
    assert arenas("one") == 1
