#!/usr/bin/env python3
"""shmq's Python API against multiprocessing's queues and pipes and faster-fifo, in one run.

Every scenario runs producers and consumers as forked processes that meet at a barrier; time is
taken by the workers themselves (first producer start to last consumer finish, on the shared
CLOCK_MONOTONIC behind time.perf_counter), so process start-up never counts. Repetitions are
interleaved across implementations (rep 1 of every implementation, then rep 2, ...) so that noise
on a shared machine hits them alike. A message count per scenario is calibrated on the first
repetition so that each run lasts about --run-seconds.

An implementation that cannot be imported is reported as 'not run: <reason>', never replaced by
a number. Writes JSON (see bench/run.py, which computes the targets Y1-Y6 from it).

    .venv/bin/python bench/python/compare.py --quick --out results.json [--filter REGEX]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import sync_compare  # noqa: E402 - beside this file

CTX = mp.get_context("fork")
SIZES = [8, 64, 1024, 64 * 1024, 1 << 20]

# ---------------------------------------------------------------------------------------------
# Implementations: each gives the same verbs over its own channel object.


@dataclass
class Impl:
    name: str
    kind: str                      # "queue" or "pipe"
    make: Callable[[int], Any]     # max message bytes -> channel (a pipe gives (reader, writer))
    put: Callable[[Any], Callable[[Any], None]]
    get: Callable[[Any], Callable[[], Any]]
    put_bytes: Optional[Callable[[Any], Callable[[bytes], None]]] = None
    get_bytes: Optional[Callable[[Any], Callable[[], Any]]] = None
    put_many: Optional[Callable[[Any], Callable[[list], None]]] = None
    get_many: Optional[Callable[[Any], Callable[[int], list]]] = None
    producer_done: Callable[[Any], None] = lambda ch: None
    close: Callable[[Any], None] = lambda ch: None


def _mp_queue_done(q: Any) -> None:
    # multiprocessing.Queue sends through a feeder thread: make sure it has flushed.
    q.close()
    q.join_thread()


def _mp_queue_close(q: Any) -> None:
    q.close()
    q.join_thread()


def _pipe_close(ch: Any) -> None:
    for c in ch:
        c.close()


def load_impls() -> Tuple[Dict[str, Impl], Dict[str, str]]:
    impls: Dict[str, Impl] = {}
    missing: Dict[str, str] = {}
    try:
        import shmq  # noqa: F401

        impls["shmq.Queue"] = Impl(
            "shmq.Queue", "queue", lambda size: shmq.Queue(),
            put=lambda q: q.put, get=lambda q: q.get,
            put_many=lambda q: q.put_many,
            get_many=lambda q: (lambda k: q.get_many(max_items=k)),
            close=lambda q: q.close())
        impls["shmq.SimpleQueue"] = Impl(
            "shmq.SimpleQueue", "queue", lambda size: shmq.SimpleQueue(),
            put=lambda q: q.put, get=lambda q: q.get, close=lambda q: q.close())
        impls["shmq.Pipe"] = Impl(
            "shmq.Pipe", "pipe", lambda size: shmq.Pipe(duplex=False),
            put=lambda ch: ch[1].send, get=lambda ch: ch[0].recv,
            put_bytes=lambda ch: ch[1].send_bytes, get_bytes=lambda ch: ch[0].recv_bytes,
            close=_pipe_close)
    except Exception as e:  # ImportError, or a broken build
        why = f"shmq not importable ({type(e).__name__}: {e})"
        for n in ("shmq.Queue", "shmq.SimpleQueue", "shmq.Pipe"):
            missing[n] = why

    impls["mp.Queue"] = Impl(
        "mp.Queue", "queue", lambda size: CTX.Queue(),
        put=lambda q: q.put, get=lambda q: q.get,
        producer_done=_mp_queue_done, close=_mp_queue_close)
    impls["mp.SimpleQueue"] = Impl(
        "mp.SimpleQueue", "queue", lambda size: CTX.SimpleQueue(),
        put=lambda q: q.put, get=lambda q: q.get, close=lambda q: q.close())
    impls["mp.Pipe"] = Impl(
        "mp.Pipe", "pipe", lambda size: CTX.Pipe(duplex=False),
        put=lambda ch: ch[1].send, get=lambda ch: ch[0].recv,
        put_bytes=lambda ch: ch[1].send_bytes, get_bytes=lambda ch: ch[0].recv_bytes,
        close=_pipe_close)
    try:
        import faster_fifo

        def ff_make(size: int) -> Any:
            # The buffer must hold a few of the largest messages.
            return faster_fifo.Queue(max_size_bytes=max(4 << 20, 8 * (size + 64)))

        impls["faster_fifo"] = Impl(
            "faster_fifo", "queue", ff_make,
            put=lambda q: (lambda o: q.put(o, timeout=60.0)),
            get=lambda q: (lambda: q.get(timeout=60.0)),
            put_many=lambda q: (lambda xs: q.put_many(xs, timeout=60.0)),
            get_many=lambda q: (lambda k: q.get_many(timeout=60.0, max_messages_to_get=k)),
            close=lambda q: q.close())
    except Exception as e:
        missing["faster_fifo"] = f"faster_fifo not importable ({type(e).__name__}: {e})"
    return impls, missing


IMPLS, MISSING = load_impls()
QUEUES = ["shmq.Queue", "shmq.SimpleQueue", "mp.Queue", "mp.SimpleQueue", "faster_fifo"]
PIPES = ["shmq.Pipe", "mp.Pipe"]

# ---------------------------------------------------------------------------------------------
# Payloads


def make_payload(spec: Tuple[str, int]) -> Any:
    kind, size = spec
    if kind == "bytes":
        return b"x" * size
    if kind == "dict":
        return {"id": 12345, "symbol": "ABCD", "price": 101.25, "qty": 300, "side": "buy"}
    if kind == "tuple":
        return tuple(range(16))
    if kind == "numpy":
        import numpy as np
        return np.arange(size // 8, dtype=np.float64)
    raise ValueError(kind)


def payload_size(spec: Tuple[str, int]) -> int:
    return spec[1] if spec[0] in ("bytes", "numpy") else 256


# ---------------------------------------------------------------------------------------------
# Workers (module-level functions: forked children run them)


def _producer(impl_name: str, ch: Any, n: int, spec: Tuple[str, int], batch: int,
              barrier: Any, times: Any, idx: int) -> None:
    impl = IMPLS[impl_name]
    obj = make_payload(spec)
    raw = spec[0] == "bytes" and impl.put_bytes is not None
    put = impl.put_bytes(ch) if raw else impl.put(ch)
    barrier.wait()
    times[idx] = time.perf_counter()
    if batch:
        put_many = impl.put_many(ch)
        items = [obj] * batch
        left = n
        while left >= batch:
            put_many(items)
            left -= batch
        if left:
            put_many(items[:left])
    else:
        for _ in range(n):
            put(obj)
    impl.producer_done(ch)


def _consumer(impl_name: str, ch: Any, n: int, spec: Tuple[str, int], batch: int,
              barrier: Any, times: Any, idx: int) -> None:
    impl = IMPLS[impl_name]
    raw = spec[0] == "bytes" and impl.get_bytes is not None
    get = impl.get_bytes(ch) if raw else impl.get(ch)
    barrier.wait()
    first = None
    if batch:
        get_many = impl.get_many(ch)
        got = 0
        while got < n:
            xs = get_many(min(batch, n - got))
            if first is None and xs:
                first = xs[0]
            got += len(xs)
    else:
        for i in range(n):
            x = get()
            if i == 0:
                first = x
    times[idx] = time.perf_counter()
    if n and spec[0] == "bytes" and len(first) != spec[1]:
        sys.exit(3)  # a wrong message: the run is reported failed


def _ponger(impl_name: str, chans: Any, n: int) -> None:
    impl = IMPLS[impl_name]
    if impl.kind == "pipe":
        conn = chans[1]
        for _ in range(n):
            conn.send_bytes(conn.recv_bytes())
    else:
        req, resp = chans
        get, put = impl.get(req), impl.put(resp)
        for _ in range(n):
            put(get())
        impl.producer_done(resp)  # multiprocessing.Queue: flush the feeder thread
    os._exit(0)


def _run_children(procs: List[Any], timeout: float) -> Optional[str]:
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung:
        return f"timeout after {timeout:.0f} s"
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    return f"worker exit codes {bad}" if bad else None


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    sid: str
    group: str            # bytes | topology | objects | batch | pingpong | flatbuffers
    impl: str
    producers: int = 1
    consumers: int = 1
    spec: Tuple[str, int] = ("bytes", 64)
    batch: int = 0
    reps: List[float] = field(default_factory=list)   # messages/s (throughput) or p50 ns
    n: int = 0
    status: str = "ok"
    reason: str = ""
    latency: Dict[str, List[float]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in ("sid", "group", "impl", "producers", "consumers",
                                            "batch", "n", "status", "reason", "reps", "latency")}
        d["payload"] = self.spec[0]
        d["size"] = self.spec[1]
        return d


def initial_count(spec: Tuple[str, int]) -> int:
    size = payload_size(spec)
    if size >= 1 << 20:
        return 20
    if size >= 64 * 1024:
        return 200
    return 2000


def max_count(spec: Tuple[str, int]) -> int:
    size = payload_size(spec)
    return max(20, min(2_000_000, (1 << 31) // max(size, 1)))


def run_throughput(s: Scenario, n_total: int, timeout: float) -> Tuple[Optional[float], Optional[str]]:
    impl = IMPLS[s.impl]
    ch = impl.make(payload_size(s.spec))
    P, C = s.producers, s.consumers
    per_p = max(1, n_total // P)
    total = per_p * P
    shares = [total // C + (1 if i < total % C else 0) for i in range(C)]
    barrier = CTX.Barrier(P + C)
    times = CTX.Array("d", P + C, lock=False)
    procs = [CTX.Process(target=_producer, args=(s.impl, ch, per_p, s.spec, s.batch, barrier, times, i))
             for i in range(P)]
    procs += [CTX.Process(target=_consumer, args=(s.impl, ch, shares[i], s.spec, s.batch, barrier, times, P + i))
              for i in range(C)]
    try:
        err = _run_children(procs, timeout)
    finally:
        try:
            impl.close(ch)
        except Exception:
            pass
    if err:
        return None, err
    start = min(times[:P])
    end = max(times[P:])
    if end <= start:
        return None, "no time elapsed"
    return total / (end - start), None


def run_pingpong(s: Scenario, n: int, timeout: float) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    impl = IMPLS[s.impl]
    warm = max(50, n // 10)
    if impl.kind == "pipe":
        mod = CTX if s.impl.startswith("mp.") else __import__("shmq")
        a, b = mod.Pipe(duplex=True)
        chans: Any = (a, b)
        send, recv = a.send_bytes, a.recv_bytes
    else:
        req, resp = impl.make(64), impl.make(64)
        chans = (req, resp)
        send, recv = impl.put(req), impl.get(resp)
    child = CTX.Process(target=_ponger, args=(s.impl, chans, warm + n))
    child.start()
    msg = b"12345678"
    samples = []
    err = None
    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no reply within {timeout:.0f} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        for _ in range(warm):
            send(msg)
            recv()
        pc = time.perf_counter_ns
        for _ in range(n):
            t0 = pc()
            send(msg)
            recv()
            samples.append(pc() - t0)
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
    child.join(5.0 if err else timeout)
    if child.is_alive():
        child.kill()
        child.join()
        err = err or "ponger hung"
    for c in chans:
        try:
            if impl.kind == "pipe":
                c.close()
            else:
                impl.close(c)
        except Exception:
            pass
    if err:
        return None, err
    samples.sort()

    def pct(q: float) -> float:
        return float(samples[min(len(samples) - 1, int(q * (len(samples) - 1)))])

    return {"p50_ns": pct(0.50), "p99_ns": pct(0.99), "p999_ns": pct(0.999),
            "mean_ns": float(sum(samples) / len(samples))}, None


# --- FlatBuffers vs pickle: a market-data tick through shmq.Queue ----------------------------

def _tick_module() -> Any:
    """shmq.schema.Tick if the package ships it, else flatc --python into a temporary dir."""
    try:
        from shmq.schema import Tick  # type: ignore
        return Tick
    except Exception:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    schema = os.path.join(root, "serialize", "schemas", "tick.fbs")
    out = tempfile.mkdtemp(prefix="shmq-bench-fb-")
    subprocess.run(["flatc", "--python", "-o", out, schema], check=True, capture_output=True)
    sys.path.insert(0, out)
    from shmq.schema import Tick  # type: ignore  # noqa: F811  (namespace from the schema)
    return Tick


def _build_tick(Tick: Any, level_mod: Any, seq: int) -> Any:
    import flatbuffers
    builder = flatbuffers.Builder(256)  # flatbuffers 2.0.7's Python Builder has no Clear()
    Tick.TickStart(builder)
    Tick.TickAddInstrumentId(builder, 7)
    Tick.TickAddSequence(builder, seq)
    Tick.TickAddExchangeNs(builder, 1)
    Tick.TickAddReceiveNs(builder, 2)
    Tick.TickAddBid(builder, level_mod.CreateLevel(builder, 101.25, 300, 4, 0))
    Tick.TickAddAsk(builder, level_mod.CreateLevel(builder, 101.5, 200, 3, 0))
    Tick.TickAddLastPrice(builder, 101.25)
    Tick.TickAddLastSize(builder, 100)
    builder.Finish(Tick.TickEnd(builder), file_identifier=b"TICK")
    return builder


def _fb_producer(q: Any, n: int, use_fb: bool, barrier: Any, times: Any) -> None:
    if use_fb:
        import importlib
        Tick = _tick_module()
        level_mod = importlib.import_module(Tick.__name__.rsplit(".", 1)[0] + ".Level")
    barrier.wait()
    times[0] = time.perf_counter()
    for i in range(n):
        if use_fb:  # a FlatBuffers record, copied once from the builder into shared memory
            q.put_flatbuffer(_build_tick(Tick, level_mod, i))
        else:
            q.put({"instrument_id": 7, "sequence": i, "exchange_ns": 1, "receive_ns": 2,
                   "bid": (101.25, 300, 4), "ask": (101.5, 200, 3), "last_price": 101.25,
                   "last_size": 100})


def _fb_consumer(q: Any, n: int, use_fb: bool, barrier: Any, times: Any) -> None:
    if use_fb:
        Tick = _tick_module()
    barrier.wait()
    total = 0
    for _ in range(n):
        if use_fb:
            with q.get_view() as mv:
                t = Tick.Tick.GetRootAs(mv, 0)
                total += t.Sequence() + int(t.Bid().Price())
        else:
            d = q.get()
            total += d["sequence"] + int(d["bid"][0])
    times[1] = time.perf_counter()


def run_flatbuffers(s: Scenario, n: int, timeout: float) -> Tuple[Optional[float], Optional[str]]:
    q = IMPLS[s.impl].make(0)
    barrier = CTX.Barrier(2)
    times = CTX.Array("d", 2, lock=False)
    use_fb = s.spec[0] == "flatbuffers"
    procs = [CTX.Process(target=_fb_producer, args=(q, n, use_fb, barrier, times)),
             CTX.Process(target=_fb_consumer, args=(q, n, use_fb, barrier, times))]
    err = _run_children(procs, timeout)
    q.close()
    if err:
        return None, err
    return n / (times[1] - times[0]), None


# ---------------------------------------------------------------------------------------------

def build_scenarios(full: bool) -> List[Scenario]:
    out: List[Scenario] = []
    for size in SIZES:
        for impl in QUEUES + PIPES:
            out.append(Scenario(f"bytes/{impl}/{size}/1p1c", "bytes", impl, spec=("bytes", size)))
    topo_sizes = [8, 64, 1024] if full else [64]
    for size in topo_sizes:
        for p, c in ((1, 4), (4, 1), (4, 4)):
            for impl in QUEUES:
                out.append(Scenario(f"topology/{impl}/{size}/{p}p{c}c", "topology", impl, p, c,
                                    spec=("bytes", size)))
    for spec in (("dict", 0), ("tuple", 0), ("numpy", 64 * 1024)):
        for impl in QUEUES + PIPES:
            out.append(Scenario(f"objects/{impl}/{spec[0]}", "objects", impl, spec=spec))
    for size in ([8, 64, 1024] if full else [64]):
        for impl in ("shmq.Queue", "faster_fifo"):
            out.append(Scenario(f"batch/{impl}/{size}/1p1c", "batch", impl, spec=("bytes", size),
                                batch=256))
    for impl in QUEUES + PIPES:
        out.append(Scenario(f"pingpong/{impl}", "pingpong", impl, spec=("bytes", 8)))
    for impl, kind in (("shmq.Queue", "flatbuffers"), ("shmq.Queue", "pickle"),
                       ("mp.Queue", "pickle")):
        out.append(Scenario(f"flatbuffers/{impl}/{kind}", "flatbuffers", impl, spec=(kind, 0)))
    # Locks and shared values (sync_compare.py; fixed counts, no calibration).
    for sid in sync_compare.SCENARIOS:
        out.append(Scenario(sid, "sync", sid.split("/")[1]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 repetitions, short runs (default)")
    mode.add_argument("--full", action="store_true", help="more repetitions, longer runs, more sizes")
    ap.add_argument("--filter", default="", help="only scenarios whose id matches this regex")
    ap.add_argument("--out", default="-", help="JSON output path ('-' = stdout)")
    ap.add_argument("--reps", type=int, default=0, help="override the repetition count")
    ap.add_argument("--run-seconds", type=float, default=0.0, help="target length of one run")
    ap.add_argument("--progress", action="store_true", help="show a tqdm progress bar on stderr")
    args = ap.parse_args()

    reps = args.reps or (7 if args.full else 3)
    run_s = args.run_seconds or (0.4 if args.full else 0.08)
    timeout = 120.0 if args.full else 60.0
    pingpong_n = 20000 if args.full else 3000
    scenarios = [s for s in build_scenarios(args.full) if re.search(args.filter, s.sid)]

    runnable = []
    for s in scenarios:
        if s.group == "sync":
            runnable.append(s)  # sync_compare reports its own missing implementations
        elif s.impl in MISSING:
            s.status, s.reason = "not run", MISSING[s.impl]
        elif s.batch and IMPLS[s.impl].put_many is None:
            s.status, s.reason = "not run", f"{s.impl} has no put_many"
        else:
            runnable.append(s)

    bar = None
    if args.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=reps * len(runnable), desc="python", unit="run", file=sys.stderr,
                       leave=False)
        except ImportError:
            bar = None

    for rep in range(reps):
        for s in runnable:
            if s.status != "ok":
                if bar:
                    bar.update(1)
                continue
            try:
                if s.group == "sync":
                    rate, err = sync_compare.run_sync(s.sid, timeout)
                    if rate:
                        s.reps.append(rate)
                elif s.group == "pingpong":
                    res, err = run_pingpong(s, pingpong_n, timeout)
                    if res:
                        for k, v in res.items():
                            s.latency.setdefault(k, []).append(v)
                        s.reps.append(res["p50_ns"])
                        s.n = pingpong_n
                else:
                    runner = run_flatbuffers if s.group == "flatbuffers" else run_throughput
                    if s.n == 0:
                        # Calibrate: grow the count until one run lasts about run_s.
                        n = initial_count(s.spec) * max(1, s.producers)
                        while True:
                            t0 = time.perf_counter()
                            rate, err = runner(s, n, timeout)
                            if err or rate is None:
                                break
                            took = n / rate
                            if took >= run_s * 0.5 or n >= max_count(s.spec):
                                break
                            n = min(max_count(s.spec), int(n * run_s / max(took, 1e-6)) + 1)
                        s.n = n
                    else:
                        rate, err = runner(s, s.n, timeout)
                    if rate:
                        s.reps.append(rate)
                if err:
                    s.status, s.reason = "failed", err
            except Exception as e:
                s.status = "failed"
                s.reason = f"{type(e).__name__}: {e}"
                traceback.print_exc(file=sys.stderr)
            if bar:
                bar.update(1)
    if bar:
        bar.close()

    doc = {"reps": reps, "run_seconds": run_s, "scenarios": [s.to_json() for s in scenarios],
           "missing": MISSING}
    text = json.dumps(doc, indent=1)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
