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
from benchio import run_children, write_doc  # noqa: E402 - beside this file

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
    return spec[1] if spec[0] in ("bytes", "numpy") or spec[1] > 256 else 256


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



# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    sid: str
    group: str            # bytes | topology | objects | batch | pingpong | flatbuffers | fb_large | fb_read
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
        err = run_children(procs, timeout)
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


# --- FlatBuffers from Python (F1-F3) -----------------------------------------------------------
# Every contender builds the same dict in Python first, so the codec is the difference:
#   put_fb       shmq.fb: the dict walked in C++ into the ring, read lazily in place (get_fb)
#   pickle       the dict pickled through shmq.Queue or multiprocessing.Queue
#   flatbuffers  the pure-Python `flatbuffers` Builder and flatc --python classes (info only)
# F1: a tick, every field read. F2: an order with a 1 M-element int64 price_ladder from a numpy
# array, read as a numpy array and summed. F3 (one process, reads only): one field of order_7k.

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "serialize", "schemas")
LADDER = 1 << 20


def _fb_type(schema: str, name: str) -> Any:
    import shmq.fb
    return getattr(shmq.fb.load(os.path.join(SCHEMA_DIR, schema)), name)


def _tick_dict(i: int) -> Dict[str, Any]:
    return {"instrument_id": 7, "sequence": i, "exchange_ns": 1_700_000_000_000_000_000 + i,
            "receive_ns": 1_700_000_000_000_001_000 + i,
            "bid": {"price": 101.25, "size": 300, "orders": 4},
            "ask": {"price": 101.5, "size": 200, "orders": 3},
            "last_price": 101.25, "last_size": 100, "last_side": 1, "flags": 3}


def _order_7k(i: int) -> Dict[str, Any]:
    """bench/serialize/fb_bench.cpp's order_7k: 16 legs, 16 tags, 256 ladder steps, a 4 KiB note."""
    return {"order_id": i, "client_order_id": f"cl-{i}", "account": "ACC-0042", "symbol": "ESZ5",
            "side": 0, "quantity": 10, "time_in_force": 1,
            "type": ("LimitOrder", {"price": 4500.25}),
            "legs": [{"symbol": f"LEG{k}", "side": k % 2, "ratio": k + 1} for k in range(16)],
            "tags": [{"key": str(k), "value": f"LEG{k}"} for k in range(16)],
            "price_ladder": [i + k for k in range(256)], "created_ns": i, "note": "n" * 4096}


def _tick_module() -> Any:
    """shmq.schema.Tick if the package ships it, else flatc --python into a temporary dir."""
    try:
        from shmq.schema import Tick  # type: ignore
        return Tick
    except Exception:
        pass
    out = tempfile.mkdtemp(prefix="shmq-bench-fb-")
    subprocess.run(["flatc", "--python", "-o", out, os.path.join(SCHEMA_DIR, "tick.fbs")], check=True,
                   capture_output=True)
    sys.path.insert(0, out)
    from shmq.schema import Tick  # type: ignore  # noqa: F811  (namespace from the schema)
    return Tick


def _py_builder_put(q: Any) -> Callable[[Dict[str, Any]], None]:
    import importlib

    import flatbuffers
    Tick = _tick_module()
    Level = importlib.import_module(Tick.__name__.rsplit(".", 1)[0] + ".Level")

    def put(d: Dict[str, Any]) -> None:
        b = flatbuffers.Builder(256)  # flatbuffers 2.0.7's Python Builder has no Clear()
        Tick.TickStart(b)
        Tick.TickAddInstrumentId(b, d["instrument_id"])
        Tick.TickAddSequence(b, d["sequence"])
        Tick.TickAddExchangeNs(b, d["exchange_ns"])
        Tick.TickAddReceiveNs(b, d["receive_ns"])
        bid, ask = d["bid"], d["ask"]
        Tick.TickAddBid(b, Level.CreateLevel(b, bid["price"], bid["size"], bid["orders"], 0))
        Tick.TickAddAsk(b, Level.CreateLevel(b, ask["price"], ask["size"], ask["orders"], 0))
        Tick.TickAddLastPrice(b, d["last_price"])
        Tick.TickAddLastSize(b, d["last_size"])
        Tick.TickAddLastSide(b, d["last_side"])
        Tick.TickAddFlags(b, d["flags"])
        b.Finish(Tick.TickEnd(b), file_identifier=b"TICK")
        q.put_flatbuffer(b)
    return put


# Messages sent and read before the timed run, so that every contender starts warm (the queue's
# arena chunks and the allocator's large blocks touched once).
def _fb_warmup(large: bool) -> int:
    return 16 if large else 200


def _fb_producer(q: Any, n: int, mode: str, large: bool, barrier: Any, times: Any) -> None:
    if large:
        import numpy as np
        ladder = np.arange(LADDER, dtype=np.int64)
        make = lambda i: {"order_id": i, "account": "ACC-0042", "symbol": "ESZ5",  # noqa: E731
                          "price_ladder": ladder}
    else:
        make = _tick_dict
    if mode == "put_fb":
        T = _fb_type("order.fbs", "Order") if large else _fb_type("tick.fbs", "Tick")
        put_fb = q.put_fb
        put = lambda d: put_fb(T, d)  # noqa: E731
    elif mode == "flatbuffers":
        put = _py_builder_put(q)
    else:
        put = q.put
    for i in range(_fb_warmup(large)):
        put(make(i))
    barrier.wait()
    times[0] = time.perf_counter()
    for i in range(n):
        put(make(i))
    if mode == "pickle" and not hasattr(q, "get_fb"):  # multiprocessing: flush the feeder
        q.close()
        q.join_thread()


def _fb_consumer(q: Any, n: int, mode: str, large: bool, barrier: Any, times: Any) -> None:
    total = 0
    if mode == "put_fb":
        T = _fb_type("order.fbs", "Order") if large else _fb_type("tick.fbs", "Tick")
        get_fb = q.get_fb
    elif mode == "flatbuffers":
        Tick = _tick_module().Tick
    get = q.get

    def read() -> int:
        if large:
            if mode == "put_fb":
                with get_fb(T) as o:
                    return int(o.price_ladder.sum())
            return int(get()["price_ladder"].sum())
        if mode == "put_fb":
            with get_fb(T) as t:
                b, a = t.bid, t.ask
                return (t.instrument_id + t.sequence + t.exchange_ns + t.receive_ns + b.price + b.size
                        + b.orders + a.price + a.size + a.orders + t.last_price + t.last_size
                        + t.last_side + t.flags)
        if mode == "flatbuffers":
            with q.get_view() as mv:
                t = Tick.GetRootAs(mv, 0)
                b, a = t.Bid(), t.Ask()
                v = (t.InstrumentId() + t.Sequence() + t.ExchangeNs() + t.ReceiveNs() + b.Price()
                     + b.Size() + b.Orders() + a.Price() + a.Size() + a.Orders() + t.LastPrice()
                     + t.LastSize() + t.LastSide() + t.Flags())
                del t, b, a
                return v
        d = get()
        b, a = d["bid"], d["ask"]
        return (d["instrument_id"] + d["sequence"] + d["exchange_ns"] + d["receive_ns"]
                + b["price"] + b["size"] + b["orders"] + a["price"] + a["size"] + a["orders"]
                + d["last_price"] + d["last_size"] + d["last_side"] + d["flags"])

    for _ in range(_fb_warmup(large)):
        read()
    barrier.wait()
    for _ in range(n):
        total += read()
    times[1] = time.perf_counter()


def run_flatbuffers(s: Scenario, n: int, timeout: float) -> Tuple[Optional[float], Optional[str]]:
    mode, large = s.spec[0], s.group == "fb_large"
    if large and s.impl == "shmq.Queue":
        # 8 MB messages: arena chunks that hold one (16 MiB) for every shmq contender, as a user
        # sending such messages would configure; with the default 2 MiB chunks each message goes
        # through a shared-memory file of its own and page faults dominate both codecs.
        import shmq
        q = shmq.Queue(arena_chunk_bytes=16 << 20)
    else:
        q = IMPLS[s.impl].make(0)
    barrier = CTX.Barrier(2)
    times = CTX.Array("d", 2, lock=False)
    procs = [CTX.Process(target=_fb_producer, args=(q, n, mode, large, barrier, times)),
             CTX.Process(target=_fb_consumer, args=(q, n, mode, large, barrier, times))]
    err = run_children(procs, timeout)
    IMPLS[s.impl].close(q)
    if err:
        return None, err
    return n / (times[1] - times[0]), None


def _fb_reader(n: int, mode: str, times: Any) -> None:
    """F3: fills a queue with order_7k messages (untimed), then times reading them back."""
    import shmq
    T = _fb_type("order.fbs", "Order")
    q = shmq.Queue(slots=256, slot_size=16384)
    msgs = [_order_7k(i) for i in range(256)]
    spent, done = 0.0, 0
    try:
        while done < n:
            k = min(256, n - done)
            for i in range(k):
                q.put_fb(T, msgs[i]) if mode == "get_fb" else q.put(msgs[i])
            t0 = time.perf_counter()
            if mode == "get_fb":
                get_fb = q.get_fb
                for _ in range(k):
                    with get_fb(T) as o:
                        o.symbol
            else:
                get = q.get
                for _ in range(k):
                    get()["symbol"]
            spent += time.perf_counter() - t0
            done += k
    finally:
        q.close()
    times[0] = spent


def run_fb_read(s: Scenario, n: int, timeout: float) -> Tuple[Optional[float], Optional[str]]:
    times = CTX.Array("d", 1, lock=False)
    err = run_children([CTX.Process(target=_fb_reader, args=(n, s.spec[0], times))], timeout)
    if err:
        return None, err
    return n / times[0], None


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
    for impl, kind in (("shmq.Queue", "put_fb"), ("shmq.Queue", "pickle"), ("mp.Queue", "pickle"),
                       ("shmq.Queue", "flatbuffers")):
        out.append(Scenario(f"flatbuffers/{impl}/{kind}", "flatbuffers", impl, spec=(kind, 0)))
    # Locks and shared values (sync_compare.py; fixed counts, no calibration).
    for sid in sync_compare.SCENARIOS:
        out.append(Scenario(sid, "sync", sid.split("/")[1]))
    for impl, kind in (("shmq.Queue", "put_fb"), ("shmq.Queue", "pickle"), ("mp.Queue", "pickle")):
        out.append(Scenario(f"fb_large/{impl}/{kind}", "fb_large", impl, spec=(kind, 8 * LADDER)))
    for kind in ("get_fb", "pickle"):
        out.append(Scenario(f"fb_read/shmq.Queue/{kind}", "fb_read", "shmq.Queue", spec=(kind, 7 << 10)))
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
                    runner = {"flatbuffers": run_flatbuffers, "fb_large": run_flatbuffers,
                              "fb_read": run_fb_read}.get(s.group, run_throughput)
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
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
