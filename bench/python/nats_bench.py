"""Across hosts (DESIGN.md N1-N3), on loopback, with a private nats-server (JetStream, file
storage) started and stopped here, and the seeds' peer, multiprocessing's BaseManager serving a
queue.Queue over TCP, measured in the same run:

  nats/basemanager/putget   BaseManager queue: put then get, 64 B, one client (msg/s)
  nats/queue/batch          shmq.nats.Queue put_many then get_many, 64 B (msg/s)           N1
  nats/queue/batch_packed   the same with put_many(pack=True): batch messages (msg/s)      N1 packed
  nats/queue/putget         shmq.nats.Queue put then get, 64 B (msg/s)                     N1b
  nats/js/publish           nats-py's own pipelined publish, 64 B, no shmq code (msg/s)    N2 beside
  nats/bridge/64            shmq.Queue -> bridge out -> JetStream -> bridge in -> shmq.Queue,
                            64 B, the bridges as `python -m shmq.nats bridge` processes (msg/s)  N2
  nats/latency              one message at a time through the same path (p50/p99 µs)        N3

Writes {"scenarios": [{"sid", "status", "reason", "reps", "latency"}]}, the shape of compare.py's
output, so bench/run.py reads both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.managers import BaseManager
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from nats_server import NatsServer  # noqa: E402

import shmq  # noqa: E402
from shmq.nats import Queue as NatsQueue  # noqa: E402

PAYLOAD = b"x" * 64


class _QueueManager(BaseManager):
    pass


_served: "queue.Queue[Any]" = queue.Queue()


def _get_queue() -> "queue.Queue[Any]":
    return _served


def _serve_manager(port: int, ready: Any) -> None:
    _QueueManager.register("get_queue", callable=_get_queue)
    m = _QueueManager(address=("127.0.0.1", port), authkey=b"bench")
    server = m.get_server()
    ready.set()
    server.serve_forever()


def bench_basemanager(n: int) -> float:
    import multiprocessing as mp
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = mp.Event()
    proc = mp.Process(target=_serve_manager, args=(port, ready), daemon=True)
    proc.start()
    try:
        ready.wait(10)
        _QueueManager.register("get_queue")
        m = _QueueManager(address=("127.0.0.1", port), authkey=b"bench")
        for _ in range(50):
            try:
                m.connect()
                break
            except OSError:
                time.sleep(0.05)
        q = m.get_queue()
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD)
            q.get()
        return n / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.join(5)


def bench_queue_batch(url: str, stream: str, n: int, batch: int = 1000, pack: bool = False) -> float:
    q = NatsQueue(stream, servers=url, storage="file")
    try:
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            q.put_many([PAYLOAD] * min(batch, n - i), pack=pack)
            got = 0
            while got < min(batch, n - i):
                got += len(q.get_many(batch, timeout=10))
        return n / (time.perf_counter() - t0)
    finally:
        q.close()


def bench_queue_putget(url: str, stream: str, n: int) -> float:
    q = NatsQueue(stream, servers=url)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD)
            q.get(timeout=10)
        return n / (time.perf_counter() - t0)
    finally:
        q.close()


def bench_js_publish(url: str, stream: str, n: int) -> float:
    import nats

    async def main() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"raw.{stream}"])
        t0 = time.perf_counter()
        futs = [await js.publish_async(f"raw.{stream}", PAYLOAD) for _ in range(n)]
        await asyncio.gather(*futs)
        rate = n / (time.perf_counter() - t0)
        await js.delete_stream(stream)
        await nc.close()
        return rate

    return asyncio.run(main())


class BridgePair:
    """Two local queues joined by an out and an in bridge (as processes) through `stream`."""

    def __init__(self, url: str, stream: str, tag: str) -> None:
        self.names = (f"bench-nats-{os.getpid()}-{tag}-a", f"bench-nats-{os.getpid()}-{tag}-b")
        self.src = shmq.Queue(name=self.names[0], slots=1 << 16)
        self.dst = shmq.Queue(name=self.names[1], slots=1 << 16)
        env = dict(os.environ)
        env.pop("SHMQ_KILL_POINT", None)
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "shmq.nats", "bridge", self.names[0], "--stream",
                              stream, "--direction", "out", "--servers", url, "--batch", "4096"],
                             env=env),
            subprocess.Popen([sys.executable, "-m", "shmq.nats", "bridge", self.names[1], "--stream",
                              stream, "--direction", "in", "--servers", url], env=env)]

    def warm(self) -> None:
        self.src.put(b"warm")
        self.dst.get(timeout=60)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for q, name in zip((self.src, self.dst), self.names):
            q.close()
            try:
                shmq.unlink(name)
            except OSError:
                pass


def bench_bridge(pair: BridgePair, n: int) -> float:
    got = [0]

    def consume() -> None:
        while got[0] < n:
            try:
                got[0] += len(pair.dst.get_many(4096, timeout=30))
            except queue.Empty:
                return

    t = threading.Thread(target=consume)
    t0 = time.perf_counter()
    t.start()
    for i in range(0, n, 4096):
        pair.src.put_many([PAYLOAD] * min(4096, n - i))
    t.join()
    if got[0] < n:
        raise RuntimeError(f"only {got[0]} of {n} messages crossed the bridges")
    return n / (time.perf_counter() - t0)


def bench_latency(pair: BridgePair, n: int) -> List[float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        pair.src.put(PAYLOAD)
        pair.dst.get(timeout=30)
        lat.append((time.perf_counter() - t0) * 1e6)
        time.sleep(0.002)  # low load: one message in flight
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    reps = 5 if args.full else 3
    k = 3 if args.full else 1
    scenarios: List[Dict[str, Any]] = []

    def run(sid: str, fn: Callable[[int], Any], latency: bool = False) -> None:
        if args.filter and not __import__("re").search(args.filter, sid):
            return
        entry: Dict[str, Any] = {"sid": sid, "status": "ok", "reason": "", "reps": [], "latency": {}}
        try:
            if latency:
                samples = fn(0)
                samples.sort()
                entry["latency"] = {"p50_us": [samples[len(samples) // 2]],
                                    "p99_us": [samples[int(len(samples) * 0.99) - 1]]}
                entry["reps"] = [statistics.median(samples)]
            else:
                entry["reps"] = [float(fn(r)) for r in range(reps)]
            print(f"  {sid}: {entry['reps'] if not latency else entry['latency']}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - reported as a row that did not run
            traceback.print_exc()
            entry.update(status="error", reason=f"{type(e).__name__}: {e}")
        scenarios.append(entry)

    with NatsServer() as srv:
        url = srv.url
        run("nats/basemanager/putget", lambda r: bench_basemanager(1500 * k))
        run("nats/queue/batch", lambda r: bench_queue_batch(url, f"NB{r}", 6000 * k))
        run("nats/queue/batch_packed", lambda r: bench_queue_batch(url, f"NK{r}", 50000 * k, pack=True))
        run("nats/queue/putget", lambda r: bench_queue_putget(url, f"NP{r}", 300 * k))
        run("nats/js/publish", lambda r: bench_js_publish(url, f"JP{r}", 20000 * k))
        pair = None
        try:
            pair = BridgePair(url, "NBR", "t")
            pair.warm()
            run("nats/bridge/64", lambda r: bench_bridge(pair, 200_000 * k))
            run("nats/latency", lambda r: bench_latency(pair, 200 * k), latency=True)
        except Exception as e:  # noqa: BLE001
            for sid in ("nats/bridge/64", "nats/latency"):
                if not any(s["sid"] == sid for s in scenarios):
                    scenarios.append({"sid": sid, "status": "error", "reason": f"{type(e).__name__}: {e}",
                                      "reps": [], "latency": {}})
        finally:
            if pair is not None:
                pair.close()
    with open(args.out, "w") as f:
        json.dump({"scenarios": scenarios}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
