"""Queue, SimpleQueue and JoinableQueue: multiprocessing semantics and shmq's extensions."""

import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from pathlib import Path

import pytest

import shmq

METHODS = ["fork", "spawn", "forkserver"]


# ---- helpers run in child processes (module level so that spawn can import them)
def echo_doubled(q_in, q_out):
    q_out.put(q_in.get() * 2)


def put_range(q, n):
    for i in range(n):
        q.put(i)


def open_by_name_and_put(name, item):
    q = shmq.Queue.open(name)
    q.put(item)
    q.close()


def block_in_get(q, report):
    try:
        report.put("blocking")
        q.get()
        report.put("returned")
    except KeyboardInterrupt:
        report.put("KeyboardInterrupt")


def put_big_forever(q, size):
    i = 0
    while True:
        q.put(bytes([i % 251]) * size)
        i += 1


def take_and_done(q, n):
    for _ in range(n):
        q.get()
        q.task_done()


# ---- basic semantics
def test_put_get_fifo_and_types():
    q = shmq.Queue()
    items = [b"raw", bytearray(b"ba"), memoryview(b"mv"), 1, "s", None, (1, [2]), {"k": 3.5}]
    for it in items:
        q.put(it)
    assert q.qsize() == len(items)
    got = [q.get() for _ in items]
    assert got[:3] == [b"raw", b"ba", b"mv"] and all(type(g) is bytes for g in got[:3])
    assert got[3:] == items[3:]
    assert q.empty()
    q.close()


def test_empty_and_full_raise_queue_exceptions():
    q = shmq.Queue(maxsize=2)
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.put(1)
    q.put(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.01)
    assert q.get() == 1 and q.get() == 2
    q.close()


def test_timeout_returns_item_that_arrives_meanwhile():
    q = shmq.Queue()
    t = threading.Timer(0.05, q.put, args=("late",))
    t.start()
    assert q.get(timeout=30) == "late"
    t.join()
    q.close()


def test_closed_handle_raises_value_error():
    q = shmq.Queue()
    q.close()
    q.close()  # idempotent
    for call in (lambda: q.put(1), lambda: q.get(), lambda: q.get_nowait(), lambda: q.qsize()):
        with pytest.raises(ValueError):
            call()
    q.join_thread()
    q.cancel_join_thread()


def test_join_thread_requires_close():
    q = shmq.Queue()
    with pytest.raises(ValueError):
        q.join_thread()
    q.close()


def test_serializer_bytes_refuses_objects():
    q = shmq.Queue(serializer="bytes")
    with pytest.raises(TypeError):
        q.put({"no": "pickle"})
    q.put(b"ok")
    assert q.get() == b"ok"
    q.close()
    with pytest.raises(ValueError):
        shmq.Queue(serializer="json")


def test_unpicklable_object_raises_at_put():
    q = shmq.Queue()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: None)
    assert q.empty()
    q.close()


def test_put_many_get_many():
    q = shmq.Queue()
    items = [b"a" * i for i in range(100)] + list(range(50)) + [b"x" * 5000]
    assert q.put_many(items) == len(items)
    got = []
    while len(got) < len(items):
        got += q.get_many(37)
    assert got == items
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)
    q.close()


def test_get_view_is_zero_copy_and_released():
    q = shmq.Queue(slots=8)
    q.put(b"hello view")
    v = q.get_view()
    with v as mv:
        assert isinstance(mv, memoryview) and mv.readonly
        assert bytes(mv) == b"hello view"
        assert v.kind == 0
    with pytest.raises(ValueError):
        mv.tobytes()  # released with the block
    q.put({"a": 1})
    with q.get_view() as mv:
        assert pickle.loads(mv) == {"a": 1}
    q.close()


def test_numpy_roundtrip_out_of_band():
    np = pytest.importorskip("numpy")
    q = shmq.Queue()
    a = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    q.put(a)
    b = q.get()
    assert (a == b).all() and b.flags.writeable
    q.close()


def test_hundred_megabyte_message():
    q = shmq.Queue()
    big = os.urandom(1 << 20) * 100
    q.put(big)
    got = q.get()
    assert len(got) == len(big) and got == big
    q.close()


def test_large_messages_use_the_arena_and_spill_beyond_it(qname):
    def spills():
        return sorted(p.name for p in Path("/dev/shm").glob(f"shmq.{qname}.x*"))

    q = shmq.Queue(name=qname, create=True, slot_size=256, arena_chunks=2, arena_chunk_bytes=1 << 16)
    msgs = [os.urandom(50_000), os.urandom(60_000), os.urandom(40_000), os.urandom(70_000)]
    for m in msgs:
        q.put(m)
    # Two fit the two chunks; the third finds both taken and the fourth is larger than a chunk.
    assert len(spills()) == 2
    assert [q.get() for _ in msgs] == msgs
    assert spills() == []
    q.close()
    shmq.unlink(qname)
    off = shmq.Queue(slot_size=256, arena_chunks=0)  # no arena: every large message is a file
    off.put(b"z" * 1000)
    assert off.get() == b"z" * 1000
    off.close()
    with pytest.raises(ValueError, match="4096"):
        shmq.Queue(arena_chunk_bytes=1000)


# ---- names and pickling
def test_open_by_name(qname):
    q = shmq.Queue(name=qname, create=True)
    with pytest.raises(FileExistsError):
        shmq.Queue(name=qname, create=True)
    p = mp.get_context("spawn").Process(target=open_by_name_and_put, args=(qname, "hi"))
    p.start()
    assert q.get(timeout=60) == "hi"
    p.join()
    other = shmq.Queue(name=qname)  # create-or-open
    other.put(1)
    assert q.get() == 1
    other.close()
    q.close()
    shmq.unlink(qname)
    with pytest.raises(FileNotFoundError):
        shmq.Queue.open(qname)


def test_handle_travels_through_another_queue():
    carrier = shmq.Queue()
    inner = shmq.Queue()
    carrier.put(inner)
    received = carrier.get()
    received.put("through")
    assert inner.get() == "through"
    assert received.name == inner.name
    for q in (received, inner, carrier):
        q.close()


@pytest.mark.parametrize("method", METHODS)
def test_process_start_methods(method):
    ctx = mp.get_context(method)
    q_in, q_out = shmq.Queue(), shmq.Queue()
    p = ctx.Process(target=echo_doubled, args=(q_in, q_out))
    p.start()
    q_in.put(21)
    assert q_out.get(timeout=60) == 42
    p.join(60)
    assert p.exitcode == 0
    q_in.close()
    q_out.close()


@pytest.mark.parametrize("method", METHODS)
def test_many_producers(method):
    ctx = mp.get_context(method)
    q = shmq.Queue()
    procs = [ctx.Process(target=put_range, args=(q, 200)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in range(600)]
    for p in procs:
        p.join(60)
    assert sorted(got) == sorted(list(range(200)) * 3)
    q.close()


def test_fork_child_does_not_reuse_parent_roles():
    ctx = mp.get_context("fork")
    q_in, q_out = shmq.Queue(), shmq.Queue()
    q_in.put(1)
    assert q_in.get() == 1  # the parent holds a reader and a writer before forking
    p = ctx.Process(target=echo_doubled, args=(q_in, q_out))
    p.start()
    q_in.put(5)
    assert q_out.get(timeout=60) == 10
    p.join(60)
    q_in.put(7)
    assert q_in.get() == 7  # the parent's roles still work
    q_in.close()
    q_out.close()


# ---- JoinableQueue and SimpleQueue
def test_joinable_queue():
    ctx = mp.get_context("fork")
    q = shmq.JoinableQueue()
    for i in range(10):
        q.put(i)
    assert q.join(timeout=0.01) is False
    p = ctx.Process(target=take_and_done, args=(q, 10))
    p.start()
    assert q.join() in (True, None)
    p.join(60)
    with pytest.raises(ValueError):
        q.task_done()
    q.close()


def test_simple_queue():
    q = shmq.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    q.close()
    with pytest.raises(OSError):
        q.get()


# ---- signals and crashes
def test_ctrl_c_interrupts_blocked_get():
    ctx = mp.get_context("fork")
    q, report = shmq.Queue(), shmq.Queue()
    p = ctx.Process(target=block_in_get, args=(q, report))
    p.start()
    assert report.get(timeout=60) == "blocking"
    time.sleep(0.2)  # most likely asleep in get() by now; the loop below copes if not
    outcome = None
    for _ in range(600):
        os.kill(p.pid, signal.SIGINT)
        try:
            outcome = report.get(timeout=0.1)
            break
        except queue.Empty:
            pass
    p.join(60)
    assert outcome == "KeyboardInterrupt"
    q.close()
    report.close()


def test_producer_killed_mid_put_leaves_no_partial_message():
    ctx = mp.get_context("fork")
    q = shmq.Queue(slots=8)
    size = 1 << 20  # spills: the kill lands inside a large copy more often than not
    p = ctx.Process(target=put_big_forever, args=(q, size))
    p.start()
    seen = 0
    for _ in range(5):
        m = q.get(timeout=60)
        assert len(m) == size and m == m[:1] * size
        seen += 1
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    while True:
        try:
            m = q.get(timeout=0.5)
        except queue.Empty:
            break
        assert len(m) == size and m == m[:1] * size
    q.close()
