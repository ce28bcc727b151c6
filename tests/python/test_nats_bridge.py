"""shmq.nats bridges: local shmq.Queue -> bridge out -> JetStream -> bridge in -> local shmq.Queue,
in-process and as `python -m shmq.nats bridge` processes killed with SIGKILL again and again."""

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import shmq
from shmq.nats import Bridge, Queue, _wire

from nats_server import NatsServer

SCALE = float(os.environ.get("SHMQ_TEST_SCALE", "1") or 1)


@pytest.fixture
def server():
    with NatsServer() as s:
        yield s


def _unlink(*names):
    for n in names:
        try:
            shmq.unlink(n)
        except OSError:
            pass


def _drain(q, n, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got += q.get_many(1024, timeout=0.2)
        except queue.Empty:
            pass
    return got


def test_bridges_carry_every_kind_between_two_local_queues(server, qname):
    src = shmq.Queue(name=qname + "-a")
    dst = shmq.Queue(name=qname + "-b")
    out = Bridge(src, "BR", "out", servers=server.url, batch=7, max_bytes=4096).start()
    inn = Bridge(dst, "BR", "in", servers=server.url).start()
    try:
        values = [b"raw", {"obj": [1, 2]}, b"y" * 10_000, "text", (1, None), b"", 2 ** 70]
        src.put_many(values * 10)
        got = _drain(dst, len(values) * 10, 30)
        assert got == values * 10  # in order: one out bridge, one in bridge
        # A remote shmq.nats.Queue reads the same stream (bridge batches unpacked item by item).
        inn.stop(10)
        src.put_many([b"r1", {"r": 2}])
        remote = Queue("BR", servers=server.url)
        try:
            assert [remote.get(timeout=10), remote.get(timeout=10)] == [b"r1", {"r": 2}]
        finally:
            remote.close()
        assert out.stats.messages >= len(values) * 10 + 2
        assert inn.stats.messages == len(values) * 10
    finally:
        out.close()
        inn.close()
        src.close()
        dst.close()
        _unlink(qname + "-a", qname + "-b")


def test_a_pickle_with_out_of_band_buffers_crosses_the_bridge(server, qname):
    # shmq.Queue pickles a large numpy array with its data out of band (codec.hpp's kind-1 form
    # with a buffer table); a remote shmq.nats.Queue decodes the record as shmq.Queue.get does.
    src = shmq.Queue(name=qname)
    out = None
    remote = Queue("OOB", servers=server.url)
    try:
        a = np.arange(50_000, dtype=np.int64)
        src.put(a)
        lease = src._h.get_lease(1, True, 5)  # as the out bridge takes it (_LocalSource)
        (payload, n, _), = lease.batches(1 << 20)
        (data, kind), = _wire.unpack(payload, n)
        assert (kind, data[0]) == (_wire.KIND_PICKLE, 1)  # the out-of-band form, not a plain pickle
        lease.release()
        out = Bridge(src, "OOB", "out", servers=server.url).start()
        got = remote.get(timeout=30)
        assert isinstance(got, np.ndarray) and np.array_equal(got, a)
    finally:
        if out is not None:
            out.close()
        remote.close()
        src.close()


def test_bridge_command_exits_cleanly_on_sigterm_with_counters(server, qname):
    q = shmq.Queue(name=qname)
    try:
        p = subprocess.Popen([sys.executable, "-m", "shmq.nats", "bridge", qname, "--stream", "CLI",
                              "--direction", "out", "--servers", server.url, "--verbose"],
                             stderr=subprocess.PIPE)
        q.put_many([b"m%d" % i for i in range(100)])
        remote = Queue("CLI", servers=server.url)
        try:
            got = _drain(remote, 100, 30)
        finally:
            remote.close()
        assert sorted(got) == sorted(b"m%d" % i for i in range(100))
        time.sleep(1.2)  # one progress line
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0
        assert b"shmq.nats bridge out out.CLI: 100 messages" in err
        assert b"(stopped)" in err
    finally:
        q.close()


def _spawn_bridge(name, stream, direction, url, kill_point=None):
    # kill_point "name:skip": the bridge stops itself (SIGSTOP) there, in the C++ queue code, so
    # the SIGKILL that follows lands exactly in that window (shm's SHMQ_KILL_POINT).
    env = dict(os.environ)
    env.pop("SHMQ_KILL_POINT", None)
    if kill_point:
        env["SHMQ_KILL_POINT"] = kill_point
    return subprocess.Popen([sys.executable, "-m", "shmq.nats", "bridge", name, "--stream", stream,
                             "--direction", direction, "--servers", url, "--ack-wait", "2",
                             "--batch", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _stopped(p):
    try:
        with open(f"/proc/{p.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


# Where the out bridge (a lease reader) and the in bridge (a journaled writer) are stopped and
# killed, in turn with kills at random moments.
_OUT_POINTS = ["holding_lease", "acking_lease", "adopting", None]
_IN_POINTS = ["sealed", "mid_write", "after_commit_before_wake", None]


def test_both_bridges_killed_repeatedly_lose_nothing_and_double_nothing(server, qname):
    # 20k messages through out and in bridges, each bridge killed with SIGKILL at random moments
    # and restarted (at least 20 kills); the local consumer must get every message exactly once.
    total = max(2000, int(20_000 * min(SCALE, 1.0)))
    kills_wanted = 20
    src = shmq.Queue(name=qname + "-src", slots=1024)
    dst = shmq.Queue(name=qname + "-dst", slots=1024)
    procs = {"out": _spawn_bridge(qname + "-src", "KILL", "out", server.url),
             "in": _spawn_bridge(qname + "-dst", "KILL", "in", server.url)}
    got = []
    done = threading.Event()

    def produce():  # spread over the kills (~7 s), so that they land mid-stream
        for i in range(0, total, 100):
            src.put_many([i + k for k in range(100)])
            time.sleep(0.035 * 20_000 / total)

    def consume():
        while not done.is_set():
            try:
                got.extend(dst.get_many(1024, timeout=0.2))
            except queue.Empty:
                pass

    producer = threading.Thread(target=produce)
    consumer = threading.Thread(target=consume)
    producer.start()
    consumer.start()
    rng = random.Random(16)
    kills = stopped_at_point = 0
    try:
        deadline = time.monotonic() + 240
        while (kills < kills_wanted or len(got) < total) and time.monotonic() < deadline:
            if kills < kills_wanted:
                which = "out" if kills % 2 == 0 else "in"
                wait_until = time.monotonic() + rng.uniform(0.15, 0.6)
                while time.monotonic() < wait_until and not _stopped(procs[which]):
                    time.sleep(0.01)
                stopped_at_point += _stopped(procs[which])
                procs[which].kill()  # SIGKILL
                procs[which].wait()
                kills += 1
                points = _OUT_POINTS if which == "out" else _IN_POINTS
                point = points[(kills // 2) % len(points)]
                procs[which] = _spawn_bridge(
                    qname + ("-src" if which == "out" else "-dst"), "KILL", which, server.url,
                    f"{point}:{rng.randrange(3)}" if point and kills < kills_wanted else None)
            else:
                for which, p in list(procs.items()):
                    if _stopped(p):  # stopped at its kill point after the last kill: replace it
                        p.kill()
                        p.wait()
                        procs[which] = _spawn_bridge(
                            qname + ("-src" if which == "out" else "-dst"), "KILL", which, server.url)
                time.sleep(0.2)
        producer.join(60)
        # Let everything in flight arrive, then look for late doubles.
        end = time.monotonic() + 60
        while len(got) < total and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(3.0)  # past the in bridge's ack_wait: a redelivery would be put by now
    finally:
        done.set()
        consumer.join(10)
        for p in procs.values():
            p.kill() if _stopped(p) else p.terminate()
            p.wait(30)
        src.close()
        dst.close()
        _unlink(qname + "-src", qname + "-dst")
    print(f"{kills} kills, {stopped_at_point} at a kill point, {len(got)} received")
    assert kills >= kills_wanted
    assert stopped_at_point >= 3  # some kills landed exactly in the windows that matter
    assert len(got) == total, f"{len(got)} received of {total}"
    assert sorted(got) == list(range(total))  # each exactly once
