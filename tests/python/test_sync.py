"""shmq's Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier, Value, Array,
RawValue and RawArray: multiprocessing's semantics, pickling by name, owner death (kill -9),
Ctrl-C, fork, many objects, corrupt words, and the CLI's view of an arena.

CPython's own tests for these classes run in test_mp_sync.py. No test asserts a duration.
"""

import ctypes
import gc
import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

import shmq
from shmq import _shmq

METHODS = ["fork", "spawn", "forkserver"]
REPO = Path(__file__).resolve().parents[2]


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


# ---- helpers run in children (module level: spawn and forkserver import them) -------------------

def _bump(v, arr, lock, n):
    for _ in range(n):
        with lock:
            v.value += 1
            arr[0] += 1


def _bump_value(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def _hold_forever(objs, ready):
    lock, rlock, value, sem = objs
    lock.acquire()
    rlock.acquire()
    rlock.acquire()
    value.get_lock().acquire()
    sem.acquire()
    ready.set()
    time.sleep(600)


def _party_then_hang(barrier):
    barrier.wait()
    time.sleep(600)


def _report(q, objs):
    q.put([type(o).__name__ for o in objs])
    lock, value, arr, raw, point = objs
    with lock:
        value.value += 1.5
        arr[2] = 42
        raw.value = 77
        point.x = 9


def _interrupt_parent_later(pid):
    time.sleep(0.3)
    os.kill(pid, signal.SIGINT)


def _child_view(lock, q):
    q.put((lock._is_mine(), lock.acquire(False)))


def _wait_for(ev):
    ev.wait(60)


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)


# ---- semantics in one process -------------------------------------------------------------------

def test_lock_and_rlock_follow_multiprocessing():
    lock = shmq.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.01) is False
    assert lock.acquire(timeout=-1) is False  # negative: no wait, like multiprocessing
    assert "MainProcess" in repr(lock)
    lock.release()
    assert repr(lock) == "<Lock(owner=None)>"
    with pytest.raises(ValueError):
        lock.release()
    with lock:
        assert lock._is_mine()
    assert not lock._is_mine()

    r = shmq.RLock()
    assert r.acquire() and r.acquire()
    assert r._count() == 2
    out = []
    t = threading.Thread(target=lambda: out.append((r.acquire(False), r._is_mine())))
    t.start()
    t.join()
    assert out == [(False, False)]
    r.release()
    r.release()
    with pytest.raises(AssertionError):
        r.release()
    with pytest.raises(TypeError):
        lock.acquire(nope=1)


def test_a_lock_may_be_released_by_another_thread():
    lock = shmq.Lock()
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert lock.acquire(False)
    lock.release()


def test_semaphores_count_and_bound():
    s = shmq.Semaphore(2)
    assert s.acquire() and s.acquire()
    assert s.acquire(False) is False
    assert s.acquire(timeout=0.01) is False
    assert s.get_value() == 0
    s.release()
    s.release()
    s.release()
    assert s.get_value() == 3
    assert repr(s) == "<Semaphore(value=3)>"
    with s:
        assert s.get_value() == 2
    b = shmq.BoundedSemaphore(1)
    with b:
        pass
    with pytest.raises(ValueError):
        b.release()
    assert repr(b) == "<BoundedSemaphore(value=1, maxvalue=1)>"
    with pytest.raises(ValueError):
        shmq.Semaphore(-1)


def test_event_condition_barrier_in_threads():
    ev = shmq.Event()
    assert not ev.is_set() and ev.wait(0.01) is False
    t = threading.Timer(0.05, ev.set)
    t.start()
    assert ev.wait(30) is True
    t.join()
    ev.clear()
    assert not ev.is_set()

    cond = shmq.Condition(shmq.Lock())
    with pytest.raises(AssertionError):
        cond.wait(0)
    with pytest.raises(AssertionError):
        cond.notify()
    state = []

    def consumer():
        with cond:
            assert cond.wait_for(lambda: state, timeout=30)
            state.append("seen")

    c = threading.Thread(target=consumer)
    c.start()
    while cond._core.waiting() == 0:
        time.sleep(0.001)
    with cond:
        state.append(1)
        cond.notify()
    c.join()
    assert state == [1, "seen"]
    with cond:
        assert cond.wait(0.01) is False

    with pytest.raises(TypeError):
        shmq.Condition(threading.Lock())

    hits = []
    bar = shmq.Barrier(3, action=lambda: hits.append(1), timeout=30)
    idx = []
    ts = [threading.Thread(target=lambda: idx.append(bar.wait())) for _ in range(2)]
    for t in ts:
        t.start()
    idx.append(bar.wait())
    for t in ts:
        t.join()
    assert sorted(idx) == [0, 1, 2] and hits == [1]
    assert bar.parties == 3 and bar.n_waiting == 0 and not bar.broken
    with pytest.raises(shmq.BrokenBarrierError):
        bar.wait(0.05)  # a timeout breaks it
    assert bar.broken
    bar.reset()
    assert not bar.broken
    with pytest.raises(ValueError):
        shmq.Barrier(0)


def test_a_failing_barrier_action_breaks_the_barrier_and_propagates():
    def boom():
        raise KeyError("action")

    bar = shmq.Barrier(1, action=boom)
    with pytest.raises(KeyError):
        bar.wait()
    assert bar.broken


def test_values_and_arrays_are_ctypes_over_shared_memory():
    v = shmq.Value("i", 5)
    assert v.value == 5 and isinstance(v.get_obj(), ctypes.c_int)
    assert isinstance(v.get_lock(), shmq.RLock)
    v.value += 2
    assert v.get_obj().value == 7
    assert repr(v) == "<Synchronized wrapper for c_int(7)>"
    with v:
        v.value = 8
    assert v.acquire() and v.get_lock()._is_mine()
    v.release()
    lock = shmq.Lock()
    assert shmq.Value("d", 1.5, lock=lock).get_lock() is lock
    raw = shmq.Value("h", 3, lock=False)
    assert isinstance(raw, ctypes.c_short) and not hasattr(raw, "get_lock")
    with pytest.raises(AttributeError):
        shmq.Value("i", 1, lock="no")

    a = shmq.Array("i", range(10))
    assert len(a) == 10 and a[3] == 3 and a[-1] == 9
    assert a[2:5] == [2, 3, 4]
    a[0:3] = [7, 8, 9]
    assert list(a[:4]) == [7, 8, 9, 3] and list(a)[:4] == [7, 8, 9, 3]
    z = shmq.Array("d", 4)
    assert list(z) == [0.0] * 4
    s = shmq.Array("c", b"hello")
    assert s.value == b"hello"
    s.value = b"hi"
    assert s.raw[:3] == b"hi\x00"
    p = shmq.Value(Point, 2, 3.5)
    assert (p.x, p.y) == (2, 3.5)
    p.x += 1
    assert p.get_obj().x == 3
    rv = shmq.RawValue(Point, 4, 1.0)
    assert isinstance(rv, Point) and rv.x == 4
    ra = shmq.RawArray(ctypes.c_uint8, 5)
    assert bytes(ra) == b"\0" * 5
    assert shmq.sharedctypes.copy(rv).x == 4
    big = shmq.Array("d", 10**6)
    big[10**6 - 1] = 2.0
    assert big[-1] == 2.0 and len(big[:]) == 10**6


def test_objects_pickle_by_name_and_share_state():
    lock = shmq.Lock()
    v = shmq.Value("d", 0.0)
    arr = shmq.RawArray("i", 4)
    lock2 = pickle.loads(pickle.dumps(lock))
    v2 = pickle.loads(pickle.dumps(v))
    arr2 = pickle.loads(pickle.dumps(arr))
    lock.acquire()
    assert lock2.acquire(False) is False  # the same lock
    lock.release()
    v2.value = 2.5
    arr2[1] = 6
    assert v.value == 2.5 and arr[1] == 6
    # An ordinary ctypes object of a shared type still pickles by value.
    plain = ctypes.c_int(3)
    assert pickle.loads(pickle.dumps(plain)).value == 3


@pytest.mark.parametrize("method", METHODS)
def test_objects_reach_processes_of_every_start_method_and_travel_through_queues(method):
    ctx = mp.get_context(method)
    lock = shmq.Lock()
    value = shmq.Value("d", 1.0)
    arr = shmq.Array("i", 5)
    raw = shmq.RawValue("i", 0)
    point = shmq.Value(Point, 0, 0.0)
    q = shmq.Queue()
    q.put((lock, value, arr, raw, point))  # through a shmq queue too
    objs = q.get(timeout=30)
    p = ctx.Process(target=_report, args=(q, objs))
    p.start()
    names = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert names[0] == "Lock" and names[3] == "c_int"
    assert value.value == 2.5 and arr[2] == 42 and raw.value == 77 and point.x == 9
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_incrementing_under_a_lock_lose_nothing(method):
    ctx = mp.get_context(method)
    v = shmq.RawValue("q", 0)
    arr = shmq.RawArray("q", 1)
    lock = shmq.Lock()
    w = shmq.Value("i", 0)
    n = 2000
    ps = [ctx.Process(target=_bump, args=(v, arr, lock, n)) for _ in range(2)]
    ps += [ctx.Process(target=_bump_value, args=(w, n)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    assert v.value == 2 * n and arr[0] == 2 * n and w.value == 2 * n


# ---- owner death, fork, signals -----------------------------------------------------------------

def test_a_holder_killed_with_sigkill_never_wedges_the_others():
    ctx = mp.get_context("fork")
    lock, rlock, value, sem = shmq.Lock(), shmq.RLock(), shmq.Value("i", 0), shmq.BoundedSemaphore(1)
    ready = shmq.Event()
    p = ctx.Process(target=_hold_forever, args=((lock, rlock, value, sem), ready))
    p.start()
    assert ready.wait(60)
    assert lock.acquire(timeout=0.05) is False  # alive: never robbed
    assert repr(lock) == "<Lock(owner=SomeOtherProcess)>"
    _kill(p)
    for obj in (lock, rlock, value.get_lock()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert obj.acquire(timeout=30) is True
        assert [w.category for w in caught] == [shmq.OwnerDiedWarning]
        assert str(p.pid) in str(caught[0].message)
        assert issubclass(shmq.OwnerDiedWarning, RuntimeWarning)
        obj.release()
    assert sem.acquire(timeout=30) is True  # its unit came back
    sem.release()
    with pytest.raises(ValueError):
        sem.release()  # and only one


def test_an_owner_died_warning_made_an_error_leaves_the_lock_free():
    ctx = mp.get_context("fork")
    objs = (shmq.Lock(), shmq.RLock(), shmq.Value("i", 0), shmq.Semaphore(1))
    ready = shmq.Event()
    p = ctx.Process(target=_hold_forever, args=(objs, ready))
    p.start()
    assert ready.wait(60)
    _kill(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", shmq.OwnerDiedWarning)
        with pytest.raises(shmq.OwnerDiedWarning):
            objs[0].acquire(timeout=30)
    assert objs[0].acquire(False) is True  # given back, not held by a caller that failed
    objs[0].release()


def test_a_barrier_breaks_when_a_party_is_killed():
    ctx = mp.get_context("fork")
    bar = shmq.Barrier(2)
    p = ctx.Process(target=_party_then_hang, args=(bar,))
    p.start()
    assert bar.wait(60) in (0, 1)
    _kill(p)
    with pytest.raises(shmq.BrokenBarrierError):
        bar.wait(60)
    assert bar.broken


def test_a_forked_child_is_not_its_parent():
    ctx = mp.get_context("fork")
    lock = shmq.Lock()
    lock.acquire()
    q = shmq.SimpleQueue()
    p = ctx.Process(target=_child_view, args=(lock, q))
    p.start()
    assert q.get() == (False, False)
    p.join(30)
    assert lock._is_mine()
    lock.release()
    q.close()


@pytest.mark.parametrize("what", ["lock", "semaphore", "event", "condition", "barrier"])
def test_ctrl_c_interrupts_a_blocking_call(what):
    lock = shmq.Lock()
    lock.acquire()
    sem = shmq.Semaphore(0)
    ev = shmq.Event()
    cond = shmq.Condition()
    bar = shmq.Barrier(2)
    calls = {
        "lock": lambda: lock.acquire(timeout=60),
        "semaphore": lambda: sem.acquire(timeout=60),
        "event": lambda: ev.wait(60),
        "condition": lambda: cond.__enter__() and cond.wait(60),
        "barrier": lambda: bar.wait(60),
    }
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_interrupt_parent_later, args=(os.getpid(),))
    p.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            calls[what]()
    finally:
        p.join(30)
    if what == "condition":
        assert cond._lock._is_mine()  # wait() took the lock back before raising
        cond.__exit__(None, None, None)
    if what == "barrier":
        assert bar.broken  # the party left: the others must not wait for it


def test_blocking_calls_release_the_gil():
    lock = shmq.Lock()
    lock.acquire()
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    assert lock.acquire(timeout=0.3) is False
    stop.set()
    t.join()
    assert len(ticks) > 5  # the ticker ran while acquire slept


# ---- many objects, reuse, corrupt words, the CLI ------------------------------------------------

def _arena_files():
    out = set()
    for f in os.listdir("/dev/shm"):
        if not f.startswith("shmq.anon-"):
            continue
        try:
            with open("/dev/shm/" + f, "rb") as fh:
                fh.seek(12)
                if int.from_bytes(fh.read(4), "little") == 3:  # SegmentKind::arena
                    out.add(f)
        except OSError:
            pass
    return out


def test_ten_thousand_values_and_locks_live_in_a_few_segments():
    before = _arena_files()
    values = [shmq.Value("i", i) for i in range(10_000)]
    locks = [shmq.Lock() for _ in range(10_000)]
    assert sum(v.value for v in values) == sum(range(10_000))
    assert all(lk.acquire(False) for lk in locks)
    new = _arena_files() - before
    assert len(new) <= 30
    del values, locks
    # Dropped handles free their blocks: a second round reuses them instead of growing.
    again = [shmq.Value("i", 0) for _ in range(10_000)]
    assert len(_arena_files() - before) <= len(new)
    del again


def test_a_corrupt_lock_word_is_an_error_not_a_crash():
    lock = shmq.Lock()
    mv = memoryview(lock._block).cast("I")
    mv[0] = (7 << 9) | (100 << 2) | 1  # held by participant 100 of 64
    with pytest.raises(OSError, match="corrupt"):
        lock.acquire(timeout=1)
    mv[0] = 0
    mv.release()
    assert lock.acquire(False)
    lock.release()


def _cli():
    p = os.environ.get("SHMQ_CLI")
    path = Path(p) if p else REPO / "build" / "tools" / "shmq"
    return path if path.is_absolute() else REPO / path


def _arena_participants(arena):
    listed = json.loads(subprocess.run([str(_cli()), "ls", "--json", arena], capture_output=True,
                                       check=True, timeout=60).stdout)
    return listed[0]["participants"]["alive"]


def test_a_forked_child_joins_an_arena_only_when_it_uses_it():
    ctx = mp.get_context("fork")
    lock = shmq.Lock()
    arena = lock._block.handle[0]
    go = ctx.Event()
    p = ctx.Process(target=_wait_for, args=(go,))
    p.start()
    idle = _arena_participants(arena)
    go.set()
    p.join(30)
    q = shmq.SimpleQueue()
    user = ctx.Process(target=_child_view, args=(lock, q))
    user.start()
    assert q.get() == (False, True)
    user.join(30)
    q.close()
    assert idle == 1  # only this process: the idle child took no participant slot
    with pytest.warns(shmq.OwnerDiedWarning):  # the child that used it exited holding it
        assert lock.acquire(False) is True
    lock.release()


def test_the_cli_lists_an_arena_and_names_a_lock_holder():
    cli = _cli()
    if not cli.exists():
        pytest.fail(f"the shmq binary is missing at {cli}: build it first (or set SHMQ_CLI)")
    lock = shmq.Lock()
    lock.acquire()
    arena = lock._block.handle[0]
    listed = json.loads(subprocess.run([str(cli), "ls", "--json", arena], capture_output=True,
                                       check=True, timeout=60).stdout)
    assert listed[0]["kind"] == "arena" and listed[0]["state"] == "ready"
    assert listed[0]["objects"] >= 1 and listed[0]["problems"] == []
    st = json.loads(subprocess.run([str(cli), "stat", "--json", arena], capture_output=True,
                                   check=True, timeout=60).stdout)
    mine = [o for o in st["arena"]["objects"] if o["block"] == lock._block.handle[1]]
    assert mine and mine[0]["type"] == "mutex"
    assert mine[0]["lock"] == {"locked": True, "holder_pid": os.getpid(), "holder_alive": True}
    lock.release()


def test_an_object_sent_and_received_through_a_queue_lets_go_of_its_block():
    # The native module does not print nanobind's leak report at exit (module.cpp); this checks
    # the reference counts that report is about.
    v = shmq.Value("d", 1.0)
    before = sys.getrefcount(v)
    q = shmq.Queue()
    q.put(v)
    assert sys.getrefcount(v) == before  # the sender's pickler keeps nothing
    o = q.get(timeout=30)
    block = o.get_lock()._block
    assert sys.getrefcount(block) > 2  # held by the received Value too
    del o
    gc.collect()
    assert sys.getrefcount(block) == 2  # `block` and the call's argument
    q.close()
