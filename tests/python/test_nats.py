"""shmq.nats.Queue against a private nats-server (JetStream, file storage, loopback only):
round trips, competing consumers, redelivery after a consumer dies, a server restart, auth."""

import asyncio
import os
import pickle
import queue
import subprocess
import sys
import threading
import time

import pytest

import shmq
from shmq.nats import Queue

from nats_server import NatsServer

TESTS = os.path.dirname(__file__)


@pytest.fixture
def server():
    with NatsServer() as s:
        yield s


class Thing:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Thing) and other.x == self.x


VALUES = [b"raw", b"", bytearray(b"ba"), memoryview(b"mv"), "text", 42, 3.5, None, True,
          {"a": [1, 2, {"b": (3, 4)}]}, (1, "two"), [None], Thing(7), b"x" * 300_000]


def _expected(v):
    return bytes(v) if isinstance(v, (bytearray, memoryview)) else v


def test_every_type_round_trips_through_put_get_and_the_batches(server):
    q = Queue("RT", servers=server.url)
    try:
        for v in VALUES:
            q.put(v)
        assert [q.get(timeout=5) for _ in VALUES] == [_expected(v) for v in VALUES]
        assert q.put_many(VALUES) == len(VALUES)
        got = []
        while len(got) < len(VALUES):
            got += q.get_many(100, timeout=5)
        assert got == [_expected(v) for v in VALUES]
        with pytest.raises(queue.Empty):
            q.get(timeout=0.3)
        with pytest.raises(queue.Empty):
            q.get_nowait()
        assert q.empty()
    finally:
        q.close()
    with pytest.raises(ValueError):
        q.put(b"closed")


def test_async_methods_and_a_pickled_queue_handle(server):
    q = Queue("AS", servers=server.url)

    async def main():
        await q.put_async({"n": 1})
        await q.put_many_async([b"a", b"b"])
        return [await q.get_async(timeout=5), await q.get_many_async(10, timeout=5)]

    try:
        assert asyncio.run(main()) == [{"n": 1}, [b"a", b"b"]]
        clone = pickle.loads(pickle.dumps(q))  # reconnects with the same settings
        try:
            clone.put(b"via clone")
            assert q.get(timeout=5) == b"via clone"
        finally:
            clone.close()
    finally:
        q.close()


def test_competing_consumers_on_two_connections_share_the_messages(server):
    producer = Queue("CC", servers=server.url)
    a = Queue("CC", servers=server.url)
    b = Queue("CC", servers=server.url)
    n = 400
    got = {"a": [], "b": []}

    def consume(q, key):
        while len(got["a"]) + len(got["b"]) < n:
            try:
                got[key] += q.get_many(8, timeout=0.5)
            except queue.Empty:
                pass

    try:
        threads = [threading.Thread(target=consume, args=(a, "a")),
                   threading.Thread(target=consume, args=(b, "b"))]
        for t in threads:
            t.start()
        for i in range(0, n, 50):
            producer.put_many(range(i, i + 50))
        for t in threads:
            t.join(60)
        assert sorted(got["a"] + got["b"]) == list(range(n))
        assert got["a"] and got["b"], "both consumers should have had a share"
    finally:
        for q in (producer, a, b):
            q.close()


def test_a_consumer_killed_before_its_ack_has_the_message_redelivered_once(server):
    q = Queue("KC", servers=server.url, ack_wait=1.0)
    try:
        q.put(b"precious")
        q.put(b"second")
        # A consumer process takes one message (delivered to it, not acknowledged) and is killed.
        code = (
            "import sys, os, signal; sys.path.insert(0, %r)\n"
            "from shmq.nats import Queue, _client\n"
            "q = Queue('KC', servers=%r, ack_wait=1.0)\n"
            "d = _client.run(q._pull(1, None))\n"
            "print(len(d), d[0].msg.data.decode(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n" % (TESTS, server.url))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert out.returncode == -9
        assert out.stdout.split() == [b"1", b"precious"]
        # The other message is there at once; the dead consumer's comes back after ack_wait.
        assert q.get(timeout=5) == b"second"
        assert q.get(timeout=10) == b"precious"
        with pytest.raises(queue.Empty):
            q.get(timeout=2.0)  # once: acknowledged now, never again
    finally:
        q.close()


def test_a_server_restart_mid_stream_loses_nothing(tmp_path):
    store = str(tmp_path / "js")
    srv = NatsServer(store=store).start()
    try:
        q = Queue("RS", servers=srv.url, ack_wait=2.0)
        total = 600
        sent = []

        def produce():
            for i in range(0, total, 20):
                q.put_many(range(i, i + 20), timeout=60)
                sent.append(i)

        t = threading.Thread(target=produce)
        t.start()
        got = []
        restarted = False
        deadline = time.monotonic() + 90
        while len(set(got)) < total and time.monotonic() < deadline:
            if not restarted and len(sent) > 5:
                srv.stop()  # mid-stream: the producer's publishes wait for their PubAcks
                time.sleep(0.5)
                srv.start()
                restarted = True
            try:
                got += q.get_many(50, timeout=1)
            except (queue.Empty, OSError):
                pass
        t.join(60)
        assert restarted
        assert sorted(set(got)) == list(range(total))  # at-least-once: nothing lost
        q.close()
    finally:
        srv.close()


def test_wrong_credentials_are_refused_with_permission_error():
    with NatsServer(token="s3cret") as srv:
        with pytest.raises(PermissionError, match="credentials"):
            Queue("AU", servers=srv.url, token="wrong", connect_timeout=5)
        with pytest.raises(PermissionError):
            Queue("AU", servers=srv.url, connect_timeout=5)
        q = Queue("AU", servers=srv.url, token="s3cret")
        try:
            q.put(b"ok")
            assert q.get(timeout=5) == b"ok"
        finally:
            q.close()
        out = subprocess.run([sys.executable, "-m", "shmq.nats", "bridge", "nosuchqueue-x",
                              "--stream", "AU", "--direction", "in", "--servers", srv.url,
                              "--token", "wrong"], capture_output=True, timeout=60)
        assert out.returncode == 1
        assert b"shmq.nats bridge:" in out.stderr


def test_serializer_bytes_refuses_objects_and_never_unpickles(server):
    raw = Queue("SB", servers=server.url, serializer="bytes")
    peer = Queue("SB", servers=server.url)
    try:
        with pytest.raises(TypeError):
            raw.put({"not": "bytes"})
        with pytest.raises(TypeError):
            raw.put_many([b"ok", 5])
        raw.put(b"fine")
        peer.put(Thing(1))  # a pickle: the bytes reader gets the pickle, runs nothing
        assert raw.get(timeout=5) == b"fine"
        got = raw.get(timeout=5)
        assert isinstance(got, bytes) and pickle.loads(got) == Thing(1)
        with pytest.raises(ValueError):
            Queue("SB", servers=server.url, serializer="json")
    finally:
        raw.close()
        peer.close()


def test_maxsize_bounds_the_stream_and_put_times_out_full(server):
    q = Queue("MX", servers=server.url, maxsize=3)
    try:
        q.put_many([1, 2, 3])
        assert q.full()
        with pytest.raises(queue.Full):
            q.put(4, timeout=0.3)
        with pytest.raises(queue.Full):
            q.put_nowait(4)
        assert q.get(timeout=5) == 1
        q.put(4, timeout=5)
        assert q.get_many(10, timeout=5) == [2, 3, 4]
    finally:
        q.close()


def test_create_false_needs_an_existing_stream(server):
    with pytest.raises(FileNotFoundError):
        Queue("NOPE", servers=server.url, create=False)
    with pytest.raises(ValueError):
        Queue("bad.name", servers=server.url)


def test_an_unreachable_server_is_a_connection_error():
    with NatsServer() as srv:
        url = srv.url
    with pytest.raises(ConnectionError):
        Queue("UR", servers=url, connect_timeout=1)


def test_shmq_queue_leases_survive_their_holder(qname):
    # The reader mode the out-bridge rests on, from Python: a holder killed with a lease has it
    # redelivered to the next get_lease; plain gets never see it.
    q = shmq.Queue(name=qname)
    try:
        q.put_many([b"a", {"b": 1}, b"c"])
        code = ("import os, signal, shmq\n"
                "q = shmq.Queue.open(%r)\n"
                "l = q.get_lease(2)\n"
                "print(l.ids, flush=True)\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n" % qname)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert out.returncode == -9 and out.stdout.strip() == b"[0, 1]"
        assert q.get(timeout=1) == b"c"
        with q.get_lease(10, timeout=5) as lease:
            assert lease.redelivered and lease.ids == [0, 1]
            assert lease.items() == [b"a", {"b": 1}]
        with pytest.raises(queue.Empty):
            q.get_lease(10, timeout=0.2)
        lease = None
        q.put(b"d")
        lease = q.get_lease(5)
        lease.release()
        again = q.get_lease(5)
        assert again.redelivered and again.items() == [b"d"]
        again.ack()
        with pytest.raises(ValueError):
            again.ack()
    finally:
        q.close()
