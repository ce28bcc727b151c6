"""End of stream as multiprocessing gives it: each Pipe end is open while any process holds it
(created, inherited by fork, passed by pickling) and has not closed it; it ends when every holder
closed it or died, whether or not it ever sent. Then recv raises EOFError and send
BrokenPipeError where multiprocessing's would."""

import multiprocessing as mp
import os
import signal
import time

import pytest

import shmq

WAIT = 30.0
METHODS = ["fork", "spawn"]


def _raise_before_sending(conn):
    raise SystemExit(3)


def _sleep(conn, seconds):
    time.sleep(seconds)


def _send_then_exit(conn, items):
    for x in items:
        conn.send(x)


def _echo_once(conn, other):
    if other is not None:
        other.close()  # a forked child's copy of the parent's end
    conn.send(conn.recv())


@pytest.mark.parametrize("method", METHODS)
def test_a_child_that_dies_before_sending_ends_the_stream(method):
    """The issue's case: the parent's recv gets EOFError, not a wait forever."""
    ctx = mp.get_context(method)
    a, b = shmq.Pipe()
    p = ctx.Process(target=_raise_before_sending, args=(b,))
    p.start()
    b.close()
    assert a.poll(WAIT)  # the end of the stream is readable, as in multiprocessing
    with pytest.raises(EOFError):
        a.recv()
    p.join()
    assert p.exitcode == 3
    a.close()


@pytest.mark.parametrize("method", METHODS)
def test_a_parent_that_forgets_to_close_its_copy_waits(method):
    ctx = mp.get_context(method)
    a, b = shmq.Pipe()
    p = ctx.Process(target=_raise_before_sending, args=(b,))
    p.start()
    p.join()
    assert not a.poll(0.3)  # b is still open here: no end of stream, as in multiprocessing
    b.close()
    assert a.poll(WAIT)
    with pytest.raises(EOFError):
        a.recv()
    a.close()


@pytest.mark.parametrize("method", METHODS)
def test_messages_are_drained_before_the_end(method):
    ctx = mp.get_context(method)
    r, w = shmq.Pipe(duplex=False)
    p = ctx.Process(target=_send_then_exit, args=(w, list(range(100))))
    p.start()
    w.close()
    p.join()
    assert [r.recv() for _ in range(100)] == list(range(100))
    with pytest.raises(EOFError):
        r.recv()
    r.close()


@pytest.mark.parametrize("method", METHODS)
def test_send_to_an_end_every_holder_closed_is_a_broken_pipe(method):
    ctx = mp.get_context(method)
    a, b = shmq.Pipe()
    p = ctx.Process(target=_sleep, args=(b, 0.0))
    p.start()
    b.close()
    p.join()  # the child exited: its copy of b is gone too
    with pytest.raises(BrokenPipeError):
        a.send("nobody reads")
    a.close()


def test_a_killed_holder_counts_as_closed():
    ctx = mp.get_context("fork")
    a, b = shmq.Pipe()
    p = ctx.Process(target=_sleep, args=(b, 600))
    p.start()
    b.close()
    assert not a.poll(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert a.poll(WAIT)
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def test_a_forked_child_shares_the_parents_ends():
    """Fork duplicates the holds: the parent closing its copy does not end the child's stream,
    and the child's copy of the parent's end keeps that end open until the child closes it."""
    ctx = mp.get_context("fork")
    a, b = shmq.Pipe()
    p = ctx.Process(target=_echo_once, args=(b, a))
    p.start()
    b.close()  # the child still holds b
    a.send("ping")
    assert a.recv() == "ping"
    p.join()
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def _recv_connection(q, out):
    conn = q.get()
    out.put(conn.recv())


def test_a_connection_passed_by_pickling_stays_open_while_in_flight():
    """Sent through a queue and closed at once by the sender, the end stays open: the receiver
    shares the sender's hold (multiprocessing's DupFd through the resource sharer)."""
    q, out = shmq.Queue(), shmq.Queue()
    p = mp.get_context("spawn").Process(target=_recv_connection, args=(q, out))
    p.start()
    a, b = shmq.Pipe()
    q.put(b)
    b.close()  # before the child has even unpickled it
    a.send("hello")
    assert out.get(timeout=WAIT) == "hello"
    p.join()
    with pytest.raises(EOFError):
        a.recv()  # the child's copy went with the child
    for x in (a, q, out):
        x.close()


def test_a_pipe_whose_peer_never_opened_its_end_in_another_process():
    a, b = shmq.Pipe()
    b.close()  # never used anywhere
    with pytest.raises(EOFError):
        a.recv()
    with pytest.raises(BrokenPipeError):
        a.send(1)
    a.close()


def test_bytes_and_send_bytes_keep_multiprocessing_s_meaning():
    a, b = shmq.Pipe()
    a.send(b"an object")          # recv() returns it; recv_bytes() its pickle
    assert b.recv() == b"an object"
    a.send(b"an object")
    import pickle
    assert pickle.loads(b.recv_bytes()) == b"an object"
    a.send_bytes(pickle.dumps({"k": 1}))  # a pickle sent as bytes: recv() unpickles it
    assert b.recv() == {"k": 1}
    a.send_bytes(b"raw")
    assert b.recv_bytes() == b"raw"
    raw_a, raw_b = shmq.Pipe(serializer="bytes")
    raw_a.send_bytes(b"\x80never unpickled")
    assert raw_b.recv() == b"\x80never unpickled"
    for x in (a, b, raw_a, raw_b):
        x.close()
