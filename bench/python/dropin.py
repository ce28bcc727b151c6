#!/usr/bin/env python3
"""The drop-in's extras against what multiprocessing users do today, in one run:

  A1  asyncio get: a coroutine awaiting ``shmq.Queue.get_async()`` for messages a producer
      process puts, against the thread-pool wrapping of multiprocessing.Queue that aioprocessing
      and friends use (``await loop.run_in_executor(None, q.get)``), messages per second.
  A1 overhead (info): ``await q.get_async()`` against ``q.get()`` with the message already
      there, one process, ns per call.
  M2  Manager: a proxy dict's ``d[k] = v`` then ``d[k]`` (two round trips to the server
      process), shmq.Manager against multiprocessing.Manager, pairs per second.

Repetitions are interleaved across implementations (rep 1 of each, then rep 2, ...) so that noise
on a shared machine hits them alike; each run's count is calibrated on the first repetition to
last about --run-seconds. Writes JSON in compare.py's shape (bench/run.py computes A1 and M2).

    .venv/bin/python bench/python/dropin.py --quick --out dropin.json [--filter REGEX]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from benchio import write_doc  # noqa: E402 - beside this file

CTX = mp.get_context("fork")
PAYLOAD = b"x" * 64


def _produce(q: Any, n: int, barrier: Any) -> None:
    barrier.wait()
    for _ in range(n):
        q.put(PAYLOAD)
    if hasattr(q, "join_thread"):  # multiprocessing.Queue: let the feeder thread flush
        q.close()
        q.join_thread()


def _async_consume(q: Any, n: int, barrier: Any, via_executor: bool) -> float:
    """Receives n messages in a coroutine; returns the seconds from the start barrier to the
    last one."""

    async def consume() -> float:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, barrier.wait)
        t0 = time.perf_counter()
        if via_executor:
            for _ in range(n):
                x = await loop.run_in_executor(None, q.get)
        else:
            for _ in range(n):
                x = await q.get_async()
        assert x == PAYLOAD
        return time.perf_counter() - t0

    return asyncio.run(consume())


def run_async_get(impl: str, n: int) -> float:
    if impl == "shmq.Queue":
        import shmq
        q: Any = shmq.Queue()
    else:
        q = CTX.Queue()
    barrier = CTX.Barrier(2)
    p = CTX.Process(target=_produce, args=(q, n, barrier))
    p.start()
    try:
        took = _async_consume(q, n, barrier, via_executor=impl != "shmq.Queue")
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()
        q.close()
    return n / took


def run_async_overhead(impl: str, n: int) -> float:
    """ns per get with the message already there: get_async (impl 'async') or get ('sync'). The
    queue is refilled between timed rounds (the fill is not timed)."""
    import shmq
    q = shmq.Queue()
    batch = 2048

    async def rounds() -> float:
        get = q.get
        took = 0.0
        left = n
        while left > 0:
            k = min(batch, left)
            q.put_many([PAYLOAD] * k)
            t0 = time.perf_counter()
            if impl == "async":
                for _ in range(k):
                    await q.get_async()
            else:  # the same loop in a coroutine, so only the call differs
                for _ in range(k):
                    get()
            took += time.perf_counter() - t0
            left -= k
        return took

    took = asyncio.run(rounds())
    q.close()
    return took / n * 1e9


def run_manager_dict(impl: str, n: int) -> float:
    if impl == "shmq.Manager":
        import shmq
        m: Any = shmq.Manager()
    else:
        m = CTX.Manager()
    with m:
        d = m.dict()
        d["k"] = 0
        t0 = time.perf_counter()
        for i in range(n):
            d["k"] = i
            d["k"]
        took = time.perf_counter() - t0
        assert d["k"] == n - 1
    return n / took


class Scenario:
    def __init__(self, sid: str, fn: Callable[[str, int], float], impl: str, start_n: int,
                 unit: str, lower_is_better: bool = False) -> None:
        self.sid, self.fn, self.impl, self.n, self.unit = sid, fn, impl, start_n, unit
        self.lower_is_better = lower_is_better
        self.reps: List[float] = []
        self.status, self.reason = "ok", ""
        self.calibrated = False

    def to_json(self) -> Dict[str, Any]:
        return {"sid": self.sid, "impl": self.impl, "status": self.status,
                "reason": self.reason, "reps": self.reps, "n": self.n, "unit": self.unit,
                "latency": {}}


def scenarios() -> List[Scenario]:
    return [
        Scenario("asyncio/shmq.Queue/get_async", run_async_get, "shmq.Queue", 20000, "msg/s"),
        Scenario("asyncio/mp.Queue/run_in_executor", run_async_get, "mp.Queue", 1000, "msg/s"),
        Scenario("asyncio/shmq.Queue/overhead_async", run_async_overhead, "async", 20000, "ns",
                 lower_is_better=True),
        Scenario("asyncio/shmq.Queue/overhead_sync", run_async_overhead, "sync", 20000, "ns",
                 lower_is_better=True),
        Scenario("manager/shmq.Manager/dict_setget", run_manager_dict, "shmq.Manager", 2000,
                 "pairs/s"),
        Scenario("manager/mp.Manager/dict_setget", run_manager_dict, "mp.Manager", 300,
                 "pairs/s"),
    ]


def run_once(s: Scenario, run_s: float) -> None:
    if not s.calibrated:
        while True:
            t0 = time.perf_counter()
            s.fn(s.impl, s.n)
            took = time.perf_counter() - t0
            if took >= run_s or s.n >= 10_000_000:
                break
            s.n = int(s.n * min(10.0, max(2.0, 1.5 * run_s / max(took, 1e-6))))
        s.calibrated = True
    s.reps.append(s.fn(s.impl, s.n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 repetitions, short runs (default)")
    mode.add_argument("--full", action="store_true", help="more repetitions, longer runs")
    ap.add_argument("--filter", default="", help="only scenarios whose id matches this regex")
    ap.add_argument("--out", default="-", help="JSON output path ('-' = stdout)")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--run-seconds", type=float, default=0.0)
    args = ap.parse_args()
    reps = args.reps or (7 if args.full else 3)
    run_s = args.run_seconds or (0.5 if args.full else 0.15)
    chosen = [s for s in scenarios() if re.search(args.filter, s.sid)]
    for _ in range(reps):
        for s in chosen:
            if s.status != "ok":
                continue
            try:
                run_once(s, run_s)
            except Exception as e:  # reported, never replaced by a number
                s.status, s.reason = "error", f"{type(e).__name__}: {e}"
                traceback.print_exc(file=sys.stderr)
    doc = {"reps": reps, "run_seconds": run_s, "scenarios": [s.to_json() for s in chosen]}
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
