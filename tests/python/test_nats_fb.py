"""FlatBuffers through shmq.nats: Queue.put_fb / get_fb (and their *_async twins) against a private
nats-server, hostile payloads published by hand, and put_fb messages crossing the bridges in both
directions."""

import asyncio
import os
import queue
import random
import subprocess
import sys
import time

import pytest

import shmq
import shmq.fb as fb
from shmq.nats import Bridge, Queue, _client, _wire

from nats_server import NatsServer

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(TESTS))
SCHEMAS = os.path.join(ROOT, "serialize", "schemas")
TICKS = fb.load(os.path.join(SCHEMAS, "tick.fbs"))
ORDERS = fb.load(os.path.join(SCHEMAS, "order.fbs"))
# No file_identifier: the type identity in the record's prefix is a hash of the name.
JOBS = fb.load("namespace jobs; table Job { id: int; name: string; tags: [string]; "
               "weights: [float]; }")


@pytest.fixture
def server():
    with NatsServer() as s:
        yield s


def order(i):
    return {"order_id": 1_000_000 + i, "client_order_id": f"cl-{i}", "account": "ACC-0042",
            "symbol": "ESZ5" if i % 2 == 0 else "NQZ5", "side": "Buy", "quantity": 1 + i % 50,
            "type": ("LimitOrder", {"price": 4500.25 + i, "post_only": i % 2 == 1}),
            "legs": [{"symbol": f"LEG{k}", "side": "Sell", "ratio": k + 1} for k in range(i % 4)]}


def check_order(o, i):
    assert (o.order_id, o.client_order_id, o.symbol, o.quantity) == \
        (1_000_000 + i, f"cl-{i}", "ESZ5" if i % 2 == 0 else "NQZ5", 1 + i % 50)
    assert o.type_type == "LimitOrder" and o.type.price == 4500.25 + i
    assert [leg.ratio for leg in (o.legs or [])] == [k + 1 for k in range(i % 4)]


def publish_raw(q, payload, headers):
    """Publishes a JetStream message as any NATS client could (nothing checks it on the way)."""
    _client.run(q._conn.js.publish(q.subject, payload, headers=headers))


def wait_stream_empty(q, timeout=10.0):
    """The stream's message count once it reaches 0 (acks and terms are sent asynchronously)."""
    deadline = time.monotonic() + timeout
    n = q.qsize()
    while n and time.monotonic() < deadline:
        time.sleep(0.05)
        n = q.qsize()
    return n


def test_put_fb_and_get_fb_across_two_processes(server):
    n = 200
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import test_nats_fb as t\n"
            "from shmq.nats import Queue\n"
            "q = Queue('FBX', servers=%r)\n"
            "for i in range(%d): q.put_fb(t.ORDERS.Order, t.order(i))\n"
            "q.put_fb(t.JOBS.Job, id=7, name='last', tags=['a', 'b'], weights=[0.5])\n"
            "q.close()\n" % (TESTS, server.url, n))
    q = Queue("FBX", servers=server.url)
    try:
        producer = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
        for i in range(n):
            with q.get_fb(ORDERS.Order, timeout=30) as o:
                check_order(o, i)
        job = q.get_fb(JOBS.Job, timeout=30)  # kept past the call: the View owns its copy
        assert producer.wait(60) == 0, producer.stderr.read().decode()
        producer.stderr.close()
        assert job.to_dict() == {"id": 7, "name": "last", "tags": ["a", "b"], "weights": [0.5]}
        with pytest.raises(queue.Empty):
            q.get_fb(ORDERS.Order, timeout=0.2)
        assert wait_stream_empty(q) == 0
    finally:
        q.close()


def test_get_returns_the_buffer_and_get_fb_drops_a_pickle_with_verify_error(server):
    q = Queue("FBG", servers=server.url, ack_wait=1.0)
    try:
        q.put_fb(TICKS.Tick, {"sequence": 5}, flags=3)
        buf = q.get(timeout=5)  # as shmq.Queue.get: the FlatBuffers buffer, without the prefix
        assert buf == TICKS.Tick.build(sequence=5, flags=3)
        assert TICKS.Tick.from_bytes(buf).flags == 3
        q.put({"a": "pickle"})
        q.put(b"raw bytes")
        q.put_fb(TICKS.Tick, sequence=6)
        with pytest.raises(fb.VerifyError, match="kind 1 .pickle.*dropped"):
            q.get_fb(TICKS.Tick, timeout=5)
        with pytest.raises(fb.VerifyError, match="kind 0"):
            q.get_fb(TICKS.Tick, timeout=5)
        with pytest.raises(fb.VerifyError, match="type"):
            q.get_fb(ORDERS.Order, timeout=5)  # a Tick read as an Order
        # Dropped means terminated in JetStream: gone from the stream, never redelivered (ack_wait
        # is 1 s; the get below waits past it).
        assert wait_stream_empty(q) == 0
        with pytest.raises(queue.Empty):
            q.get(timeout=2.5)
        q.put_fb(TICKS.Tick, sequence=7)
        assert q.get_fb(TICKS.Tick, timeout=5).sequence == 7
        with pytest.raises(TypeError, match="shmq.fb Type"):
            q.get_fb("Tick", timeout=0)
    finally:
        q.close()


def test_a_bad_field_publishes_nothing(server):
    q = Queue("FBE", servers=server.url)
    try:
        with pytest.raises(TypeError, match="no field 'nope'"):
            q.put_fb(TICKS.Tick, nope=1)
        with pytest.raises((TypeError, ValueError), match="sequence"):
            q.put_fb(TICKS.Tick, {"sequence": "not a number"})
        with pytest.raises(ValueError, match="instrument_id"):
            q.put_fb(TICKS.Tick, instrument_id=-1)  # out of range for uint32
        with pytest.raises(TypeError, match="struct"):
            q.put_fb(TICKS.Level, price=1.0)  # a struct cannot be a message
        with pytest.raises(fb.VerifyError):
            q.put_fb(ORDERS.Order, ORDERS.Order.build(order(1))[:-20])  # truncated finished buffer
        with pytest.raises(TypeError, match="shmq.fb Type"):
            q.put_fb({"sequence": 1})
        assert q.qsize() == 0
        with pytest.raises(queue.Empty):
            q.get(timeout=0.3)
        q.put_fb(ORDERS.Order, ORDERS.Order.build(order(2)))  # a good finished buffer goes as is
        with q.get_fb(ORDERS.Order, timeout=5) as o:
            check_order(o, 2)
    finally:
        q.close()


def _record(fb_type, fields):
    return fb_type.build_record(fields)


def test_hostile_payloads_raise_verify_error_once_and_the_queue_stays_usable(server):
    q = Queue("FBH", servers=server.url, ack_wait=1.0)
    kind2 = {_wire.HDR_KIND: "2"}
    good = _record(ORDERS.Order, order(3))
    assert good[8:] == ORDERS.Order.build(order(3))  # the record: 8-byte prefix, then the buffer
    far = bytearray(good)
    far[8:12] = (0x7FFFFFF0).to_bytes(4, "little")  # the root offset points far outside
    bad_start = bytearray(good)
    bad_start[4:8] = (len(good) + 100).to_bytes(4, "little")  # the prefix's start is outside
    rng = random.Random(16)
    mutated = []
    for _ in range(30):
        m = bytearray(good)
        for _ in range(4):
            m[rng.randrange(8, len(m))] = rng.randrange(256)
        mutated.append(bytes(m))
    hostile = [b"", b"abc", bytes(far), bytes(bad_start), good[:-30], b"\xff" * 64]
    try:
        for payload in hostile:
            publish_raw(q, payload, kind2)
        # A hostile record inside a bridge's batch, between two good ones.
        batch = _wire.pack([(good, 2), (bytes(far), 2), (_record(ORDERS.Order, order(4)), 2)])
        publish_raw(q, batch, {_wire.HDR_BATCH: "3"})
        for payload in mutated:
            publish_raw(q, payload, kind2)
        q.put_fb(ORDERS.Order, order(5))

        for _ in hostile:
            with pytest.raises(fb.VerifyError):
                q.get_fb(ORDERS.Order, timeout=5)
        with q.get_fb(ORDERS.Order, timeout=5) as o:
            check_order(o, 3)
        with pytest.raises(fb.VerifyError):
            q.get_fb(ORDERS.Order, timeout=5)
        with q.get_fb(ORDERS.Order, timeout=5) as o:
            check_order(o, 4)
        outcomes = set()
        for _ in mutated:  # each is refused, or verified and read without leaving its buffer
            try:
                with q.get_fb(ORDERS.Order, timeout=5) as o:
                    try:
                        o.to_dict()
                        outcomes.add("read")
                    except UnicodeDecodeError:  # a verified structure whose string is not UTF-8
                        outcomes.add("read")
            except fb.VerifyError:
                outcomes.add("refused")
        assert "refused" in outcomes
        with q.get_fb(ORDERS.Order, timeout=5) as o:
            check_order(o, 5)
        # Nothing comes back: not after ack_wait (1 s), not ever (the stream is empty).
        with pytest.raises(queue.Empty):
            q.get(timeout=2.5)
        assert wait_stream_empty(q) == 0
    finally:
        q.close()


def test_an_undecodable_record_after_good_ones_is_raised_by_the_next_get(server):
    q = Queue("FBU", servers=server.url)
    try:
        batch = _wire.pack([(b"ok1", 0), (b"\x80\x05not a pickle", 1), (b"ok2", 0)])
        publish_raw(q, batch, {_wire.HDR_BATCH: "3"})
        assert q.get_many(10, timeout=5) == [b"ok1"]
        with pytest.raises(Exception) as e:
            q.get_many(10, timeout=5)
        assert not isinstance(e.value, queue.Empty)
        assert q.get_many(10, timeout=5) == [b"ok2"]
        assert wait_stream_empty(q) == 0
    finally:
        q.close()


def test_put_fb_and_get_fb_async_twins(server):
    q = Queue("FBA", servers=server.url)

    async def main():
        await q.put_fb_async(TICKS.Tick, {"sequence": 1}, bid={"price": 1.5, "size": 2})
        await q.put_fb_async(JOBS.Job, id=2, name="j", timeout=5)
        await q.put_async({"pickled": True})
        t = await q.get_fb_async(TICKS.Tick, timeout=5)
        j = await q.get_fb_async(JOBS.Job, timeout=5, verify=False)
        with pytest.raises(fb.VerifyError):
            await q.get_fb_async(TICKS.Tick, timeout=5)
        with pytest.raises(TypeError):
            await q.put_fb_async(JOBS.Job, nope=1)
        with pytest.raises(queue.Empty):
            await q.get_fb_async(TICKS.Tick, timeout=0.2)
        return t, j

    try:
        t, j = asyncio.run(main())
        assert (t.sequence, t.bid.price, t.bid.size) == (1, 1.5, 2)
        assert (j.id, j.name) == (2, "j")
    finally:
        q.close()


def test_serializer_bytes_queues_move_flatbuffers(server):
    q = Queue("FBB", servers=server.url, serializer="bytes")
    try:
        q.put_fb(JOBS.Job, id=3, tags=["x"])
        with q.get_fb(JOBS.Job, timeout=5) as j:
            assert (j.id, list(j.tags)) == (3, ["x"])
    finally:
        q.close()


def _drain_fb(q, fb_type, n, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            with q.get_fb(fb_type, timeout=0.2) as m:
                got.append(m.to_dict())
        except queue.Empty:
            pass
    return got


def test_flatbuffers_cross_the_bridges_both_ways(server, qname):
    src = shmq.Queue(name=qname + "-a")
    dst = shmq.Queue(name=qname + "-b")
    out = Bridge(src, "FBR", "out", servers=server.url, batch=5).start()
    remote = Queue("FBR", servers=server.url)
    inn = None
    try:
        # shmq.Queue.put_fb -> bridge out -> JetStream -> shmq.nats.Queue.get_fb (in batches)
        for i in range(12):
            src.put_fb(ORDERS.Order, order(i))
        src.put_fb(JOBS.Job, id=1, name="job")
        src.put({"not": "fb"})
        for i in range(12):
            with remote.get_fb(ORDERS.Order, timeout=30) as o:
                check_order(o, i)
        assert remote.get_fb(JOBS.Job, timeout=30).name == "job"
        with pytest.raises(fb.VerifyError, match="pickle"):
            remote.get_fb(JOBS.Job, timeout=30)
        # shmq.nats.Queue.put_fb -> JetStream -> bridge in -> shmq.Queue.get_fb
        out.stop(10)
        inn = Bridge(dst, "FBR", "in", servers=server.url).start()
        for i in range(12, 20):
            remote.put_fb(ORDERS.Order, order(i))
        remote.put_fb(JOBS.Job, id=2, name="back")
        got = _drain_fb(dst, ORDERS.Order, 8, 30)
        assert [d["order_id"] for d in got] == [1_000_000 + i for i in range(12, 20)]
        with dst.get_fb(JOBS.Job, timeout=30) as j:
            assert (j.id, j.name) == (2, "back")
    finally:
        out.close()
        if inn is not None:
            inn.close()
        remote.close()
        src.close()
        dst.close()
        for n in (qname + "-a", qname + "-b"):
            try:
                shmq.unlink(n)
            except OSError:
                pass
