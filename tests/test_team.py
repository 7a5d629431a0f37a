"""The decode thread team (kernels/team.py): every work item of a job runs exactly once whichever
thread takes it, workers sleep when no job comes and the next job wakes them, they rest while the
caller's own threads work, and a closed team's threads end."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from edgellm.kernels import dispatch, jobs, team
from edgellm.kernels.matvec import quantize_x


def _weights(rows=300, n_cols=256, seed=0):
    w = np.random.default_rng(seed).standard_normal((rows, n_cols)).astype(np.float32)
    return quants.quantize(w, T.Q8_0).view(np.uint8).reshape(rows, -1), quants.dequantize(
        quants.quantize(w, T.Q8_0), T.Q8_0).reshape(rows, n_cols)


def _run_matvec(t: team.Team, data: np.ndarray, x: np.ndarray, prefetch=None) -> np.ndarray:
    """x @ W.T as one MATVEC job on team t (many items per thread); data: Q8_0 rows as a file
    holds them (the job takes them repacked, as a Weight holds them)."""
    out = np.full((x.shape[0], data.shape[0]), np.nan, np.float32)
    empty = dispatch._NO_ROWS
    repacked = dispatch.Weight(data, T.Q8_0, x.shape[1]).data
    with t.lock:
        types = np.array([[int(T.Q8_0)] * 3, [jobs.weights_runner(T.Q8_0), 0, 0]])  # type ids, job code
        dispatch._fill_weights(t.desc, jobs.MATVEC, (repacked, empty, empty), types, dispatch._readonly(x),
                               dispatch._F16, (out, np.empty((x.shape[0], 0), np.float32),
                                               np.empty((x.shape[0], 0), np.float32)),
                               t.n_threads, t.scratch(dispatch._scratch_bytes(jobs.MATVEC, *x.shape)), False,
                               dispatch._NO_NORM, np.float32(0), False)
        t.run(prefetch)
    return out


def _expected(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    xq, xd = quantize_x(x)[:2]
    return (xq.reshape(x.shape[0], -1, 32) * xd[..., None]).reshape(x.shape) @ w.T.astype(np.float64)


def test_every_item_runs_once_on_any_number_of_threads():
    data, w = _weights()
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    for n_threads in (1, 2, 3):
        t = team.Team(n_threads)
        try:
            for _ in range(20):  # back-to-back jobs: a worker may still be leaving the last one
                np.testing.assert_allclose(_run_matvec(t, data, x), _expected(w, x), rtol=1e-5, atol=1e-4)
        finally:
            t.close()


def test_idle_workers_sleep_and_the_next_job_wakes_them():
    data, w = _weights()
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    t = team.Team(2)
    try:
        _run_matvec(t, data, x)
        deadline = time.monotonic() + 5
        while t.ctl[team.ASLEEP] != 1:  # no job for IDLE_S: the worker goes to sleep
            assert time.monotonic() < deadline, "the worker never went to sleep"
            time.sleep(0.01)
        t.idle_spins = 1 << 60  # once woken, it stays awake (so that the test can see it)
        np.testing.assert_allclose(_run_matvec(t, data, x), _expected(w, x), rtol=1e-5, atol=1e-4)
        deadline = time.monotonic() + 5
        while t.ctl[team.ASLEEP] != 0:  # the job found it asleep and woke it
            assert time.monotonic() < deadline, "the worker was not woken"
            time.sleep(0.01)
    finally:
        t.close()


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_workers_rest_while_the_caller_works_on_other_threads_and_are_awake_after():
    """Team.resting: the workers sleep at once, not after IDLE_S (here they would spin for
    ever), and leaving the block wakes them before any job does."""
    data, w = _weights()
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    t = team.Team(3)
    try:
        _wait_for(lambda: t.ctl[team.ASLEEP] == 2, "the workers never went to sleep")  # after IDLE_S
        t.idle_spins = 1 << 60  # once woken by the job below, no worker sleeps of its own accord
        _run_matvec(t, data, x)
        _wait_for(lambda: t.ctl[team.ASLEEP] == 0, "the job did not wake the workers")
        with t.resting():
            _wait_for(lambda: t.ctl[team.ASLEEP] == 2, "the workers kept spinning")
        _wait_for(lambda: t.ctl[team.ASLEEP] == 0, "leaving the block did not wake the workers")
        np.testing.assert_allclose(_run_matvec(t, data, x), _expected(w, x), rtol=1e-5, atol=1e-4)
    finally:
        t.close()


def test_the_prefill_pool_runs_while_the_team_rests():
    """parallel_map's threads (BLAS attention) get the cores: the team's workers sleep meanwhile."""
    threads = dispatch.num_threads()
    dispatch.set_num_threads(2)
    t = dispatch.current_team()
    spins = t.idle_spins
    try:
        _wait_for(lambda: t.ctl[team.ASLEEP] == 1, "the worker never went to sleep")  # after IDLE_S
        t.idle_spins = 1 << 60  # once woken by the job below, it sleeps only when told to
        _run_matvec(t, *_weights()[:1], np.ones((1, 256), np.float32))
        _wait_for(lambda: t.ctl[team.ASLEEP] == 0, "the job did not wake the worker")
        seen = []
        dispatch.parallel_map(lambda i: seen.append(_wait_for(lambda: t.ctl[team.ASLEEP] == 1,
                                                              "the worker spun beside the pool")), range(2))
        assert len(seen) == 2
    finally:
        t.idle_spins = spins  # woken at the end of parallel_map, it sleeps after IDLE_S again
        _run_matvec(t, *_weights()[:1], np.ones((1, 256), np.float32))
        dispatch.set_num_threads(threads)


def test_a_closed_team_ends_its_threads():
    t = team.Team(3)
    t.close()
    assert not any(w.is_alive() for w in t.workers)


def test_workers_prefetch_the_hinted_ranges_without_changing_results():
    """A worker done with its items fetches the next job's ranges; a stale hint (memory that is
    gone) is harmless: prefetches never fault."""
    data, w = _weights()
    other, _ = _weights(seed=3)
    x = np.random.default_rng(4).standard_normal((1, 256)).astype(np.float32)
    gone = np.empty(1 << 20, np.uint8)
    stale = gone.ctypes.data
    del gone
    t = team.Team(2)
    try:
        for hint in ([other.ctypes.data, other.nbytes, data.ctypes.data, data.nbytes], [stale, 1 << 20]):
            for _ in range(20):
                got = _run_matvec(t, data, x, np.array(hint + [0] * (2 * jobs.PF_RANGES - len(hint)), np.int64))
                np.testing.assert_allclose(got, _expected(w, x), rtol=1e-5, atol=1e-4)
    finally:
        t.close()


def test_a_decode_mat_vec_hints_the_weights_that_came_next_last_time():
    (a, _), (b, _) = _weights(seed=5), _weights(seed=6)
    first = dispatch.WeightGroup([dispatch.Weight(a, T.Q8_0, 256)])
    second = dispatch.WeightGroup([dispatch.Weight(b, T.Q8_0, 256)])
    a, b = first.weights[0].data, second.weights[0].data  # the bytes the jobs read: repacked
    x = np.ones((1, 256), np.float32)
    for _ in range(2):  # one decode step learns the order, the next one uses it
        first.matmul(x)
        second.matmul(x)
    assert first.next_ranges[:4].tolist() == [b.ctypes.data, b.nbytes, 0, 0]
    assert second.next_ranges[:4].tolist() == [a.ctypes.data, a.nbytes, 0, 0]
    first.matmul(x)
    assert dispatch.current_team().desc[jobs.PF0:].tolist() == second.ranges.tolist()


def test_the_prefetch_takes_the_first_bytes_each_job_reads():
    """Up to PREFETCH_MAX bytes in reading order: whole small weights, then the start of the next;
    a 2:4 weight's planes, read side by side, each in proportion."""
    budget = dispatch.PREFETCH_MAX
    small, big = np.empty(budget // 4, np.uint8), np.empty(4 * budget, np.uint8)
    ranges = dispatch._ranges([(small,), (big,), (small,)]).reshape(-1, 2)
    assert ranges[:3].tolist() == [[small.ctypes.data, budget // 4], [big.ctypes.data, budget - budget // 4], [0, 0]]
    values, index = np.empty(2 * budget, np.uint8), np.empty(budget, np.uint8)
    ranges = dispatch._ranges([(values, index)]).reshape(-1, 2)
    assert ranges[:2, 1].tolist() == [2 * budget // 3, budget // 3]


def test_the_prefill_pool_keeps_the_callers_numpy_error_settings():
    """numpy's error settings are per thread: the dry warm-up's np.errstate(all="ignore") must
    reach the pool's threads too (its garbage printed RuntimeWarnings from there)."""
    threads = dispatch.num_threads()
    dispatch.set_num_threads(2)
    try:
        with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
            dispatch.parallel_map(lambda i: np.ones(1) / np.zeros(1), range(4))
    finally:
        dispatch.set_num_threads(threads)


def test_numbas_parallel_loops_run_on_the_thread_count_set():
    """numba's own count is set only as one of its parallel loops (dequantize) is about to run,
    and then to set_num_threads' count."""
    threads = dispatch.num_threads()
    dispatch.set_num_threads(1)
    try:
        x = np.arange(64, dtype=np.float32).reshape(2, 32)
        np.testing.assert_array_equal(dispatch.dequantize(x.view(np.uint8), int(dispatch.F32), 32), x)
        assert dispatch.numba.get_num_threads() == 1
    finally:
        dispatch.set_num_threads(threads)
