"""Readiness file descriptors: Connection.fileno() and Queue.fileno() are readable exactly while a
message (or a pipe's end of stream) waits, for select, selectors, multiprocessing.connection.wait
and shmq.wait over mixed objects."""

import multiprocessing as mp
import os
import select
import selectors
import signal
import socket
import time

import pytest

import shmq

WAIT = 10.0  # seconds a readiness that must come is given (never a timing assertion)
CYCLES = int(200 * float(os.environ.get("SHMQ_TEST_SCALE", "1")))


def readable(fd, timeout=0.0):
    return bool(select.select([fd], [], [], timeout)[0])


def eventually_not_readable(fd, within=WAIT):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not readable(fd):
            return True
        time.sleep(0.005)
    return False


def test_pipe_fd_is_readable_exactly_while_a_message_waits():
    a, b = shmq.Pipe()
    with a, b:
        fd = a.fileno()
        assert a.fileno() == fd  # stable
        assert not readable(fd)
        for i in range(CYCLES):
            b.send(i)
            assert readable(fd, WAIT)
            if i % 3 == 0:
                b.send_bytes(b"second")
                assert a.recv() == i
                assert readable(fd)  # one message is left
                assert a.recv_bytes() == b"second"
            else:
                assert a.recv() == i
            assert not readable(fd), f"still readable after the last message (cycle {i})"


def test_queue_fd_is_readable_exactly_while_a_message_waits():
    q = shmq.Queue()
    with q:
        fd = q.fileno()
        assert not readable(fd)
        for i in range(CYCLES):
            q.put(i)
            assert readable(fd, WAIT)
            if i % 4 == 0:
                q.put_many([i, i])
                assert q.get_many(3) == [i, i, i]
            else:
                with q.get_view() as mv:
                    assert len(mv) > 0
            assert not readable(fd), f"still readable after the last message (cycle {i})"
        q.put(b"x")
        assert readable(fd, WAIT)
        assert q.get() == b"x"
        with pytest.raises(shmq.Empty):
            q.get_nowait()
        assert not readable(fd)


def test_queue_fd_clears_when_another_reader_takes_the_message():
    q = shmq.Queue()
    other = shmq.Queue.open(q.name)
    with q, other:
        fd = q.fileno()
        q.put("taken elsewhere")
        assert readable(fd, WAIT)
        assert other.get() == "taken elsewhere"
        assert eventually_not_readable(fd)


def _send_later(conn, items, delay):
    time.sleep(delay)
    for x in items:
        conn.send(x)
    conn.close()


def test_pipe_fd_with_a_writer_process_and_end_of_stream():
    a, b = shmq.Pipe(duplex=False)
    p = mp.Process(target=_send_later, args=(b, list(range(50)), 0.05))
    p.start()
    b.close()
    got = []
    fd = a.fileno()
    while True:
        assert readable(fd, WAIT)
        try:
            got.append(a.recv())
        except EOFError:
            break
    p.join()
    assert got == list(range(50))
    assert readable(fd)  # the end of the stream stays readable, as a socket's does
    a.close()


def _sleep_forever(conn):
    time.sleep(600)


def test_pipe_fd_becomes_readable_when_the_writer_is_killed():
    a, b = shmq.Pipe()
    p = mp.Process(target=_sleep_forever, args=(b,))
    p.start()
    b.close()
    try:
        fd = a.fileno()
        assert not readable(fd, 0.1)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert readable(fd, WAIT)
        with pytest.raises(EOFError):
            a.recv()
    finally:
        a.close()


def test_selectors_and_connection_wait_mix_shmq_with_sockets():
    a, b = shmq.Pipe()
    q = shmq.Queue()
    s1, s2 = socket.socketpair()
    try:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, "pipe")
        sel.register(q, selectors.EVENT_READ, "queue")
        sel.register(s1, selectors.EVENT_READ, "socket")
        assert sel.select(0) == []
        q.put(1)
        assert [k.data for k, _ in sel.select(WAIT)] == ["queue"]
        assert q.get() == 1
        s2.send(b"x")
        b.send("y")
        deadline = time.monotonic() + WAIT
        seen = set()
        while seen != {"socket", "pipe"} and time.monotonic() < deadline:
            seen |= {k.data for k, _ in sel.select(WAIT)}
        assert seen == {"socket", "pipe"}
        sel.close()
        assert mp.connection.wait([a, q, s1], 0) == [a, s1]
        assert shmq.wait([a, q, s1], 0) == [a, s1]
        assert a.recv() == "y" and s1.recv(1) == b"x"
        assert shmq.wait([a, q, s1], 0.05) == []
        q.put(2)
        assert shmq.wait([s1, q], WAIT) == [q]
    finally:
        for c in (a, b, q, s1, s2):
            c.close()


def _child_uses_fileno(conn, q):
    fd = conn.fileno()
    ok = readable(fd, WAIT)
    q.put((ok, conn.recv()))


def test_fileno_in_a_forked_child_has_its_own_watcher():
    a, b = shmq.Pipe()
    q = shmq.Queue()
    mine = shmq.Queue()
    fd = mine.fileno()  # the parent's watcher runs; the child must start its own
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_child_uses_fileno, args=(a, q))
    p.start()
    b.send("for the child")
    assert q.get(timeout=WAIT) == (True, "for the child")
    p.join()
    assert p.exitcode == 0
    mine.put("for the parent")
    assert readable(fd, WAIT)
    assert mine.get() == "for the parent"
    assert not readable(fd)
    for c in (a, b, q, mine):
        c.close()


def test_a_closed_handle_has_no_fd():
    q = shmq.Queue()
    q.fileno()
    q.close()
    with pytest.raises(ValueError):
        q.fileno()
    a, b = shmq.Pipe()
    a.close()
    b.close()
    with pytest.raises(OSError):
        a.fileno()
