"""Pipe, Connection and wait(): multiprocessing.Pipe semantics."""

import multiprocessing as mp
import os
import signal
import threading

import pytest

import shmq


def echo_until_eof(conn, other=None):
    if other is not None:
        other.close()  # a forked child's copy of the parent's end (multiprocessing's idiom)
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        conn.close()


def send_chunked_forever(conn, size):
    i = 0
    while True:
        conn.send_bytes(bytes([i % 251]) * size)
        i += 1


def send_later(conn, obj):
    conn.send(obj)
    conn.close()


def test_duplex_send_recv_and_eof():
    a, b = shmq.Pipe()
    a.send([42, None, "hello"])
    assert b.recv() == [42, None, "hello"]
    b.send_bytes(b"0123456789", 2, 3)
    assert a.recv_bytes() == b"234"
    a.send(bytearray(b"raw"))
    assert b.recv() == b"raw"
    a.close()
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(BrokenPipeError):
        b.send(1)
    b.close()
    with pytest.raises(OSError):
        b.recv()


def test_one_way_pipe_roles():
    r, w = shmq.Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    with pytest.raises(OSError):
        r.send(1)
    with pytest.raises(OSError):
        w.recv()
    w.send("x")
    assert r.recv() == "x"
    r.close()
    w.close()


def test_poll_and_timeouts():
    a, b = shmq.Pipe()
    assert not b.poll()
    assert not b.poll(0.01)
    a.send(1)
    assert b.poll(None) and b.poll(0)
    assert b.recv() == 1
    t = threading.Timer(0.05, a.send, args=(2,))
    t.start()
    assert b.poll(30)
    t.join()
    assert b.recv() == 2
    a.close()
    assert b.poll(30)  # a closed peer counts as readable (recv raises EOFError)
    b.close()


def test_recv_bytes_into_and_buffer_too_short():
    a, b = shmq.Pipe()
    a.send_bytes(b"abcdef")
    buf = bytearray(10)
    assert b.recv_bytes_into(buf, 2) == 6 and buf[2:8] == b"abcdef"
    a.send_bytes(b"x" * 20)
    with pytest.raises(shmq.BufferTooShort) as e:
        b.recv_bytes_into(bytearray(5))
    assert e.value.args[0] == b"x" * 20
    a.send_bytes(b"y" * 20)
    with pytest.raises(OSError):
        b.recv_bytes(maxlength=10)
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 4)
    a.close()
    b.close()


def test_context_manager_closes():
    a, b = shmq.Pipe()
    with a, b:
        a.send(1)
        assert b.recv() == 1
    assert a.closed and b.closed


def test_large_message_streams_through_small_ring():
    a, b = shmq.Pipe(capacity=1 << 16)
    big = os.urandom(3 << 20)
    t = threading.Thread(target=a.send_bytes, args=(big,))
    t.start()
    assert b.recv_bytes() == big
    t.join()
    a.close()
    b.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_echo_process(method):
    ctx = mp.get_context(method)
    a, b = shmq.Pipe()
    p = ctx.Process(target=echo_until_eof, args=(b, a))
    p.start()
    b.close()
    for obj in (1, b"two", {"three": [3]}, None):
        a.send(obj)
        assert a.recv() == obj
    a.close()
    p.join(60)
    assert p.exitcode == 0


def test_writer_killed_mid_stream_never_delivers_partial():
    ctx = mp.get_context("fork")
    r, w = shmq.Pipe(duplex=False, capacity=1 << 16)
    size = 1 << 20  # 16 ring-fuls: the kill lands mid-stream
    p = ctx.Process(target=send_chunked_forever, args=(w, size))
    p.start()
    w.close()  # as with multiprocessing: the end of stream comes when every holder is gone
    for _ in range(3):
        m = r.recv_bytes()
        assert len(m) == size and m == m[:1] * size
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    with pytest.raises(EOFError):
        while True:
            m = r.recv_bytes()
            assert len(m) == size and m == m[:1] * size
    r.close()


def test_wait_over_connections_and_queues():
    a, b = shmq.Pipe()
    c, d = shmq.Pipe()
    q = shmq.Queue()
    assert shmq.wait([b, d, q], timeout=0.01) == []
    c.send(1)
    assert shmq.wait([b, d, q], timeout=30) == [d]
    q.put(2)
    assert shmq.wait([b, d, q], timeout=30) == [d, q]
    t = threading.Timer(0.05, a.send, args=(3,))
    t.start()
    assert d.recv() == 1 and q.get() == 2
    assert shmq.wait([b, d, q]) == [b]
    t.join()
    for x in (a, b, c, d, q):
        x.close()


def test_wait_mixes_with_multiprocessing_objects():
    a, b = shmq.Pipe()
    m1, m2 = mp.Pipe()
    m2.send("mp")
    assert shmq.wait([b, m1], timeout=30) == [m1]
    a.send("shmq")
    assert set(map(id, shmq.wait([b, m1], timeout=30))) == {id(b), id(m1)}
    a.close()
    b.close()
    m1.close()
    m2.close()


def test_connection_travels_through_a_pipe():
    a, b = shmq.Pipe()
    c, d = shmq.Pipe()
    a.send(d)  # the receiving end of another pipe, by name
    d2 = b.recv()
    d.close()  # only its roles go: d2 maps the segment too
    c.send("via")
    assert d2.recv() == "via"
    for x in (a, b, c, d2):
        x.close()
