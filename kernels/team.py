"""A team of threads for the decode kernels: workers that spin between jobs, then sleep.

A decoded token is ~100 small jobs (a mat-vec takes 20-500 us). Numba's OpenMP regions either
sleep between them (PASSIVE: each region then waits for the kernel to wake a thread, on a VM
~150 us per region, 2-thread decode slower than 1 thread) or spin forever (ACTIVE: on a busy
machine a spinning thread that lost its core stalls every region for a scheduler tick). The team
does what llama.cpp's thread pool does instead: a worker spins while jobs keep coming and goes to
sleep after IDLE_S without one; and work items are claimed one at a time from a shared counter,
so a thread that lost its core holds up at most the item it is on, never a fixed share.

Protocol (ctl, an int64 array; each field on its own cache line):
    ctl[LEFT]    work items of the current job not yet claimed; a thread claims one by
                 compare-and-swap LEFT -> LEFT - 1 and then runs item N_ITEMS - LEFT
    ctl[DONE]    items finished (each thread adds its count when it finds none left); the
                 posting thread waits until it equals N_ITEMS
    ctl[ASLEEP]  workers that went to sleep; the next post wakes them (Team.run)
    ctl[STOP]    1: workers return for good
    ctl[REST]    1: workers go to sleep rather than spin (Team.resting: the caller's threads need
                 the cores for work of their own meanwhile)
A post writes the descriptor, DONE = 0, then LEFT = N_ITEMS (sequentially consistent): a thread
that claims an item has seen the whole descriptor. A worker that ran items of a job and finds
none left fetches desc[PF0:] (jobs.py: the byte ranges the next decode mat-vec will read) into
its cache, a page at a time until the next post: a layer's small matrices otherwise come from
DRAM at a third of the rate of one long stream, the start of each a cold miss. The posting
thread works on its own job too, so a team of n threads has n - 1 workers. Python posts a job
in two calls: a kernel's fill function writes the descriptor, then Team.run() runs it (both
under Team.lock).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time

import numpy as np
from numba import types

from .atomics import atomic_add, atomic_cas, atomic_load, atomic_store, cpu_relax, prefetch
from .jit import njit
from . import jobs
from .jobs import DESC_SIZE, N_ITEMS, PF0, PF_RANGES, run_item

LEFT, DONE, ASLEEP, STOP, REST = 0, 8, 16, 24, 32  # int64 offsets, 64 bytes apart
CTL_SIZE = 40
IDLE_S = 0.004  # a worker spins this long without a job before it sleeps
RETURN_STOP, RETURN_IDLE = 1, 0


@njit(cache=True, nogil=True, inline="always")
def _claim_and_run(ctl, desc):
    """Run items of the posted job until none is left unclaimed, then count them in DONE (once:
    the DONE line then moves between cores once per thread and job, not once per item).
    Returns how many this thread ran."""
    ran = 0
    while True:
        left = atomic_load(ctl, LEFT)
        if left <= 0:
            break
        if atomic_cas(ctl, LEFT, left, left - 1):
            run_item(desc, desc[N_ITEMS] - left)
            ran += 1
    if ran:
        atomic_add(ctl, DONE, ran)
    return ran


@njit(cache=True, nogil=True, inline="always")
def _prefetch_next(ctl, desc):
    """Fetch the byte ranges in desc[PF0:] (what the next job will read) into this core's cache,
    a page at a time, until a new job is posted: idle time only."""
    for r in range(PF_RANGES):
        addr, nbytes = desc[PF0 + 2 * r], desc[PF0 + 2 * r + 1]
        for page in range(0, nbytes, 4096):
            if atomic_load(ctl, LEFT) > 0 or atomic_load(ctl, REST):
                return
            for line in range(page, min(nbytes, page + 4096), 64):
                prefetch(addr + line)


@njit(cache=True, nogil=True)
def serve(ctl, desc, post, idle_spins):
    """The team's one compiled entry, so that the code of every job compiles into one function
    (each njit caller of the job code would compile it again: ~3 s apiece on a first run).

    post=True: post desc (filled in by the caller), work on it, return once every item is done,
    returning how many workers are asleep (the caller wakes them for the next job).
    post=False: a worker's life between two sleeps: run items while there are any, spin while
    there are none, return RETURN_IDLE after idle_spins spins without work or once told to rest
    (counted in ASLEEP), or RETURN_STOP."""
    if post:
        atomic_store(ctl, DONE, 0)
        atomic_store(ctl, LEFT, desc[N_ITEMS])
    spins = 0
    while True:
        ran = _claim_and_run(ctl, desc)  # the one call site: the job code is inlined here only
        if post:
            while atomic_load(ctl, DONE) < desc[N_ITEMS]:
                cpu_relax()
            return atomic_load(ctl, ASLEEP)
        if ran > 0:
            _prefetch_next(ctl, desc)
            spins = 0
            continue
        if atomic_load(ctl, STOP):
            return RETURN_STOP
        cpu_relax()
        spins += 1
        if spins > idle_spins or atomic_load(ctl, REST):
            atomic_add(ctl, ASLEEP, 1)
            return RETURN_IDLE


@njit(cache=True, nogil=True)
def woke(ctl):
    atomic_add(ctl, ASLEEP, -1)


@njit(cache=True, nogil=True)
def _spin(n):
    for _ in range(n):
        cpu_relax()


# A fresh install compiles serve (every job's code but the weights') in a second process while
# this one goes on loading the model and compiling the other kernels (numba compiles one function
# at a time per process); the first call of serve then loads its machine code from numba's disk
# cache. That process then compiles what this one runs only after its warm-up too (woke, the
# model's weight types' job code: compile_weight_code, the repacking kernels:
# dispatch.load_repack_code), so that the two finish together. It is edgellm.compile_ahead's (a
# front end may have started it before numba was imported). _compiler: that process while it runs.
_compiler: list = []
_compiler_lock = threading.Lock()
SERVE_TYPES = (types.int64[::1], types.int64[::1], types.boolean, types.int64)  # ctl, desc, post, idle_spins


class _DryRun(threading.local):
    on = False


_dry_run = _DryRun()


def in_disk_cache(kernel) -> bool:
    """Whether a cache=True njit function has machine code in numba's disk cache (if numba's
    cache internals moved: taken as cached, so that nothing is announced or started)."""
    try:
        return bool(kernel._cache._cache_file._load_index())
    except (AttributeError, OSError):
        return True


def start_compiling_serve() -> bool:
    """If serve has no machine code in the disk cache, start compiling it in a second process
    (or take over the one a front end started: compile_ahead.start_early). Returns whether a
    compile is under way (in that process)."""
    from edgellm import compile_ahead  # process plumbing, not models: imported where used

    with _compiler_lock:
        early = compile_ahead.take_early()
        if early is not None:
            _compiler.append(early)
        if _compiler or serve.signatures or in_disk_cache(serve):
            return bool(_compiler)
        process = compile_ahead.spawn()
        if process is None:  # no second process: serve compiles here when first called
            return False
        _compiler.append(process)
        return True


def compile_weight_code(ggml_types) -> None:
    """The weight types a model multiplies by: their job code comes from one C function for the
    set (jobs.use_weight_types), which the compiling process, if one runs, compiles next."""
    from edgellm import compile_ahead

    jobs.use_weight_types(ggml_types)
    with _compiler_lock:
        for process in _compiler:
            compile_ahead.send_types(process, ggml_types)


def wait_for_serve(types_sent: bool = True) -> None:
    """Wait for the compiling process, if any (whatever its outcome: if it failed, serve and
    the weights' job code compile here when first called). types_sent: no weight types come
    after this (compile_weight_code), the process need not wait for them; a team's worker,
    which waits from its start, before the model is read, leaves that to the loading thread."""
    from edgellm import compile_ahead

    with _compiler_lock:
        running = list(_compiler)
    for process in running:  # waited on outside the lock, which start_compiling_serve takes
        if types_sent:
            compile_ahead.send_types(process, ())
        process.wait()
    with _compiler_lock:
        if _compiler == running:
            _compiler.clear()


def load_team_code() -> None:
    """serve's, woke's and the named weight types' job code (compile_weight_code) in this
    process now (from the disk cache, or compiled here), rather than on a first job or a
    worker's first wake-up: before a caller gives the compiler's pages back
    (LLM._compile_if_needed)."""
    wait_for_serve()
    serve.compile(SERVE_TYPES)
    woke.compile(SERVE_TYPES[:1])
    jobs.load_weight_code()


def in_dry_run() -> bool:
    """Whether this thread is inside dry_run()."""
    return _dry_run.on


@contextlib.contextmanager
def dry_run():
    """Team.run() on this thread posts nothing: a forward pass inside compiles every kernel but
    serve (for a warm-up while serve compiles elsewhere), its job outputs left as they were."""
    _dry_run.on = True
    try:
        yield
    finally:
        _dry_run.on = False


def _spins_per_second() -> float:
    _spin(1000)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        _spin(200_000)
        best = min(best, time.perf_counter() - t)
    return 200_000 / max(best, 1e-6)


class Team:
    """n threads: the caller of run() plus n - 1 workers (daemon threads, started at once)."""

    def __init__(self, n_threads: int):
        self.n_threads = n_threads
        self.ctl = np.zeros(CTL_SIZE, np.int64)
        self.desc = np.zeros(DESC_SIZE, np.int64)
        self.lock = threading.Lock()  # one job at a time, whichever Python thread posts it
        self._scratch = np.empty(0, np.uint8)
        self.idle_spins = int(IDLE_S * _spins_per_second())
        self.wakeups = [threading.Event() for _ in range(n_threads - 1)]
        self.workers = [threading.Thread(target=self._serve, args=(ev,), daemon=True,
                                         name=f"edgellm-team-{k + 1}") for k, ev in enumerate(self.wakeups)]
        for w in self.workers:
            w.start()

    def _serve(self, wakeup: threading.Event) -> None:
        wait_for_serve(types_sent=False)
        while serve(self.ctl, self.desc, False, self.idle_spins) == RETURN_IDLE:
            wakeup.wait()
            wakeup.clear()
            woke(self.ctl)

    def run(self, prefetch: np.ndarray | None = None) -> None:
        """Run the job in desc (the caller holds self.lock and has just filled it in).
        prefetch: int64 [2 * jobs.PF_RANGES], (address, bytes) ranges the next job reads, or None."""
        if prefetch is not None:  # kept for the jobs after it that bring none (attention)
            self.desc[PF0:] = prefetch
        if _dry_run.on:
            return
        if _compiler:
            wait_for_serve()
        if self.ctl[ASLEEP] > 0:  # they join this job part way rather than wait for the next
            self.wake()
        if serve(self.ctl, self.desc, True, 0):  # any that fell asleep meanwhile: for the next
            self.wake()

    @contextlib.contextmanager
    def resting(self):
        """The workers sleep inside this block instead of spinning out IDLE_S: for work that
        runs on other threads (prefill attention's BLAS calls on Python threads), which spinning
        workers would share the cores with (a 128-query Gemma-3 attention right after a job:
        5.0 ms, 2.7 with the team asleep). Leaving it wakes them, so that they are spinning
        again by the next job rather than woken by it."""
        self.ctl[REST] = 1
        try:
            yield
        finally:
            self.ctl[REST] = 0
            if self.ctl[ASLEEP] > 0:
                self.wake()

    def scratch(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least nbytes that jobs may fill with their temporaries (the
        quantized x): owned here, so it outlives the job; grown to the size asked for (not
        doubled: the largest ask, a prefill's down projection, comes in the first passes and
        stays the size), never shrunk."""
        if self._scratch.size < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        return self._scratch

    def wake(self) -> None:
        for ev in self.wakeups:
            ev.set()

    def close(self) -> None:
        self.ctl[STOP] = 1
        self.wake()
        for w in self.workers:
            w.join()


_teams: dict[int, Team] = {}


def team(n_threads: int) -> Team:
    """The process's team of n_threads threads (created on first use)."""
    t = _teams.get(n_threads)
    if t is None:
        t = _teams[n_threads] = Team(n_threads)
    return t


@atexit.register
def _close_all() -> None:
    for t in _teams.values():
        t.close()
