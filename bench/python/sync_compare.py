"""Locks and shared values from Python: shmq against multiprocessing (S3-S5 of bench/run.py).

Scenarios (group "sync"; each runs in forked processes and reports operations per second, timed
by the workers themselves):
  sync/<impl>.Lock/with        one process, `with lock: pass`, uncontended              (S3)
  sync/<impl>.Value/2proc      two processes, each kSharedRounds times
                               `with v.get_lock(): v.value += 1` (the count is checked) (S4)
  sync/<impl>.Array/slice      one process, `a[:]` of Array('d', 10**6)                  (S5)
compare.py imports this module and runs these scenarios with fixed counts (no calibration).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any, Dict, Optional, Tuple

from benchio import run_children  # noqa: E402 - beside this file

CTX = mp.get_context("fork")
kWithRounds = 200_000
kSharedRounds = 100_000  # per process, as the issue states S4
kSlices = 10
kArrayLength = 10**6


def _impls() -> Tuple[Dict[str, Any], Dict[str, str]]:
    impls: Dict[str, Any] = {"mp": CTX}
    missing: Dict[str, str] = {}
    try:
        import shmq
        impls["shmq"] = shmq
    except Exception as e:  # ImportError, or a broken build
        missing["shmq"] = f"shmq not importable ({type(e).__name__}: {e})"
    return impls, missing


IMPLS, MISSING = _impls()
SCENARIOS = [f"sync/{impl}.{what}" for what in ("Lock/with", "Value/2proc", "Array/slice")
             for impl in ("shmq", "mp")]


# Objects are made by the parent, which holds them until its workers are done: a worker leaves
# through os._exit, which skips the clean-up that unlinks the segments of the last user, and
# Process.start() drops the parent's references to its arguments.

def _with_lock(lock: Any, times: Any, index: int, barrier: Any) -> None:
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(kWithRounds):
        with lock:
            pass
    times[index] = time.perf_counter() - t0
    os._exit(0)


def _bump(v: Any, times: Any, index: int, barrier: Any) -> None:
    get_lock = v.get_lock
    barrier.wait()
    times[2 * index] = time.perf_counter()
    for _ in range(kSharedRounds):
        with get_lock():
            v.value += 1
    times[2 * index + 1] = time.perf_counter()
    os._exit(0)


def _slice(a: Any, times: Any, index: int, barrier: Any) -> None:
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(kSlices):
        copy = a[:]
    times[index] = time.perf_counter() - t0
    if len(copy) != kArrayLength:
        os._exit(3)
    os._exit(0)



def run_sync(sid: str, timeout: float) -> Tuple[Optional[float], Optional[str]]:
    """Operations per second of scenario `sid`, or (None, why)."""
    _, name, what = sid.split("/")
    impl = name.split(".")[0]
    if impl in MISSING:
        return None, MISSING[impl]
    lib = IMPLS[impl]
    times = CTX.Array("d", 4, lock=False)
    if what == "with":
        barrier = CTX.Barrier(1)
        lock = lib.Lock()
        err = run_children([CTX.Process(target=_with_lock, args=(lock, times, 0, barrier))], timeout)
        return (None, err) if err else (kWithRounds / times[0], None)
    if what == "slice":
        barrier = CTX.Barrier(1)
        array = lib.Array("d", kArrayLength)
        err = run_children([CTX.Process(target=_slice, args=(array, times, 0, barrier))], timeout)
        return (None, err) if err else (kSlices / times[0], None)
    v = lib.Value("i", 0)
    barrier = CTX.Barrier(2)
    err = run_children([CTX.Process(target=_bump, args=(v, times, i, barrier)) for i in range(2)],
                       timeout)
    if err:
        return None, err
    if v.value != 2 * kSharedRounds:
        return None, f"the counter reads {v.value}, not {2 * kSharedRounds}: an increment was lost"
    return 2 * kSharedRounds / (max(times[1], times[3]) - min(times[0], times[2])), None
