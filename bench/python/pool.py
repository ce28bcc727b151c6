#!/usr/bin/env python3
"""shmq.Pool against multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor, in one run.

Scenarios (bench/run.py turns them into the K1-K5 rows):

  K1  map of tiny tasks, chunksize=1                     shmq.Pool, mp.Pool, cf.ProcessPoolExecutor
  K2  map of 200k tiny tasks, default chunksize          shmq.Pool, mp.Pool
  K3  imap_unordered of tiny tasks (chunksize 1)         shmq.Pool, mp.Pool
  K4  map of tasks carrying a 1 MiB numpy array each     shmq.Pool, mp.Pool
  K5  kill -9 of a worker running a task -> WorkerLost   shmq.Pool (milliseconds; mp: never)

Every pool has the same number of workers (the usable cores) and the fork start method; it is
started and warmed up (one small map) before the clock starts, so process start-up never counts.
Rates are tasks per second of wall time for the whole call (submitting, running, collecting).
Repetitions are interleaved across implementations (rep 1 of each, then rep 2, ...) so that
noise on a shared machine hits them alike. An implementation that cannot run is reported as
'not run: <reason>', never replaced by a number. Writes JSON in compare.py's shape.

    .venv/bin/python bench/python/pool.py --quick --out pool.json [--filter REGEX]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from benchio import write_doc  # noqa: E402 - beside this file

CTX = mp.get_context("fork")
WORKERS = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else (os.cpu_count() or 1))


# ---- task functions (module level: the workers find them by name) --------------------------------

def tiny(x):
    return x + 1


def array_sum(a):
    return float(a[0] + a[-1])


def report_and_wait(q, pause):
    q.put(os.getpid())
    time.sleep(pause)
    return 0


# ---- implementations ----------------------------------------------------------------------------

@dataclass
class Impl:
    name: str
    make: Callable[[], Any]
    close: Callable[[Any], None]


def _close_pool(p: Any) -> None:
    p.terminate()
    p.join()


def _close_executor(ex: Any) -> None:
    ex.shutdown(wait=True, cancel_futures=True)


def load_impls() -> Dict[str, Any]:
    impls: Dict[str, Any] = {}
    try:
        import shmq
        impls["shmq.Pool"] = Impl("shmq.Pool", lambda: shmq.Pool(WORKERS, context=CTX), _close_pool)
    except Exception as e:
        impls["shmq.Pool"] = f"shmq not importable ({type(e).__name__}: {e})"
    impls["mp.Pool"] = Impl("mp.Pool", lambda: CTX.Pool(WORKERS), _close_pool)
    impls["cf.ProcessPoolExecutor"] = Impl(
        "cf.ProcessPoolExecutor", lambda: cf.ProcessPoolExecutor(WORKERS, mp_context=CTX),
        _close_executor)
    return impls


# ---- scenarios ----------------------------------------------------------------------------------

@dataclass
class Scenario:
    sid: str
    target: str
    impl: str
    n: int
    run: Callable[[Any, int], float]   # (pool, n) -> value of one repetition
    unit: str = "tasks/s"
    reps: List[float] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"sid": self.sid, "group": "pool", "target": self.target, "impl": self.impl,
                "n": self.n, "unit": self.unit, "status": self.status, "reason": self.reason,
                "reps": self.reps, "latency": {}}


def _rate(n: int, t0: float) -> float:
    return n / (time.perf_counter() - t0)


def run_map_chunk1(pool: Any, n: int) -> float:
    items = range(n)
    t0 = time.perf_counter()
    if isinstance(pool, cf.Executor):
        out = list(pool.map(tiny, items, chunksize=1))
    else:
        out = pool.map(tiny, items, chunksize=1)
    rate = _rate(n, t0)
    assert out[-1] == n and len(out) == n
    return rate


def run_map_default(pool: Any, n: int) -> float:
    items = range(n)
    t0 = time.perf_counter()
    out = pool.map(tiny, items)
    rate = _rate(n, t0)
    assert out[-1] == n and len(out) == n
    return rate


def run_imap_unordered(pool: Any, n: int) -> float:
    t0 = time.perf_counter()
    total = 0
    for x in pool.imap_unordered(tiny, range(n)):
        total += x
    rate = _rate(n, t0)
    assert total == n * (n + 1) // 2
    return rate


_ARRAYS: List[Any] = []


def run_numpy(pool: Any, n: int) -> float:
    import numpy as np
    while len(_ARRAYS) < n:
        _ARRAYS.append(np.full(1 << 17, float(len(_ARRAYS))))   # 1 MiB of float64
    arrays = _ARRAYS[:n]
    t0 = time.perf_counter()
    out = pool.map(array_sum, arrays, chunksize=1)
    rate = _rate(n, t0)
    assert out[-1] == 2.0 * (n - 1)
    return rate


def run_kill(pool: Any, n: int) -> float:
    """Milliseconds from SIGKILL of the worker running a task to that task's WorkerLost."""
    import shmq
    q = shmq.Queue()
    try:
        r = pool.apply_async(report_and_wait, (q, 60.0))
        pid = q.get(timeout=60)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        try:
            r.get(timeout=60)
        except shmq.WorkerLost:
            return (time.perf_counter() - t0) * 1e3
        raise RuntimeError("the killed worker's task did not fail with WorkerLost")
    finally:
        q.close()


def build(full: bool) -> List[Scenario]:
    n1 = 20000
    cf_n1 = 20000 if full else 4000   # concurrent.futures runs ~3k tasks/s: a rate, not a count
    n2 = 200000
    n4 = 400 if full else 100
    out = [
        Scenario("pool/K1/shmq.Pool", "K1", "shmq.Pool", n1, run_map_chunk1),
        Scenario("pool/K1/mp.Pool", "K1", "mp.Pool", n1, run_map_chunk1),
        Scenario("pool/K1/cf.ProcessPoolExecutor", "K1", "cf.ProcessPoolExecutor", cf_n1,
                 run_map_chunk1),
        Scenario("pool/K2/shmq.Pool", "K2", "shmq.Pool", n2, run_map_default),
        Scenario("pool/K2/mp.Pool", "K2", "mp.Pool", n2, run_map_default),
        Scenario("pool/K3/shmq.Pool", "K3", "shmq.Pool", n1, run_imap_unordered),
        Scenario("pool/K3/mp.Pool", "K3", "mp.Pool", n1, run_imap_unordered),
        Scenario("pool/K4/shmq.Pool", "K4", "shmq.Pool", n4, run_numpy),
        Scenario("pool/K4/mp.Pool", "K4", "mp.Pool", n4, run_numpy),
        Scenario("pool/K5/shmq.Pool", "K5", "shmq.Pool", 1, run_kill, unit="ms"),
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 repetitions (default)")
    mode.add_argument("--full", action="store_true", help="7 repetitions, larger counts")
    ap.add_argument("--filter", default="", help="only scenarios whose id matches this regex")
    ap.add_argument("--out", default="-", help="JSON output path ('-' = stdout)")
    ap.add_argument("--reps", type=int, default=0, help="override the repetition count")
    args = ap.parse_args()
    reps = args.reps or (7 if args.full else 3)
    impls = load_impls()
    scenarios = [s for s in build(args.full) if re.search(args.filter, s.sid)]
    try:
        import numpy  # noqa: F401
    except ImportError as e:
        for s in scenarios:
            if s.target == "K4":
                s.status, s.reason = "not run", f"numpy not importable ({e})"
    for s in scenarios:
        if not isinstance(impls[s.impl], Impl):
            s.status, s.reason = "not run", impls[s.impl]
    runnable = [s for s in scenarios if s.status == "ok"]
    by_impl: Dict[str, List[Scenario]] = {}
    for s in runnable:
        by_impl.setdefault(s.impl, []).append(s)
    for rep in range(reps):
        # One pool per implementation and repetition, warmed up, then its scenarios in turn.
        for name, group in by_impl.items():
            impl = impls[name]
            pool = None
            try:
                pool = impl.make()
                if isinstance(pool, cf.Executor):
                    list(pool.map(tiny, range(200), chunksize=1))
                else:
                    pool.map(tiny, range(200), chunksize=1)
                for s in group:
                    if s.status != "ok":
                        continue
                    try:
                        s.reps.append(s.run(pool, s.n))
                    except Exception as e:
                        s.status, s.reason = "failed", f"{type(e).__name__}: {e}"
                        traceback.print_exc(file=sys.stderr)
            except Exception as e:
                for s in group:
                    s.status, s.reason = "failed", f"{type(e).__name__}: {e}"
                traceback.print_exc(file=sys.stderr)
            finally:
                if pool is not None:
                    impl.close(pool)
    doc = {"reps": reps, "workers": WORKERS, "scenarios": [s.to_json() for s in scenarios]}
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
