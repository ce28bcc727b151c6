"""shmq.Manager and shmq.managers.BaseManager: multiprocessing's managers over shmq pipes.

Covers SyncManager's types from child processes (fork and spawn), register() with custom types
and proxies returned by methods, connect() from another process by address, a client killed
mid-call (the server and the other clients go on), and a dead server (a clear error, no hang);
the shmq-native types (shmq's own Queue, Lock, ..., Value, Array) that outlive their creator's
reference as long as the manager runs, and a lock holder killed with SIGKILL."""

import ctypes
import gc
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
import warnings

import pytest

import shmq
import shmq.managers as sm

WAIT = 30


# ---- SyncManager's types, used from a child -------------------------------------------------------

def _use_everything(d, l, ns, v, a, lock, rlock, sem, bsem, cond, ev, barrier, q, jq, out):
    d["child"] = os.getpid()
    l.append("from child")
    ns.x = ns.x + 1
    v.value = v.value * 2
    a[0] = a[0] + 100
    with lock:
        pass
    with rlock:
        with rlock:
            pass
    sem.acquire()
    sem.release()
    bsem.acquire()
    bsem.release()
    with cond:
        cond.notify_all()
    ev.set()
    barrier.wait(WAIT)
    q.put("child put")
    item = jq.get(timeout=WAIT)
    jq.task_done()
    out.put(item)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sync_manager_types_work_from_a_child(method):
    ctx = mp.get_context(method)
    with shmq.Manager(ctx=ctx) as m:
        d, l, ns = m.dict({"a": 1}), m.list([1, 2]), m.Namespace(x=1)
        v, a = m.Value("i", 21), m.Array("i", [1, 2, 3])
        lock, rlock = m.Lock(), m.RLock()
        sem, bsem = m.Semaphore(2), m.BoundedSemaphore(1)
        cond, ev, barrier = m.Condition(), m.Event(), m.Barrier(2)
        q, jq = m.Queue(), m.JoinableQueue()
        assert isinstance(q, shmq.JoinableQueue) and isinstance(jq, shmq.JoinableQueue)
        out = shmq.Queue()
        jq.put("work")
        p = ctx.Process(target=_use_everything,
                        args=(d, l, ns, v, a, lock, rlock, sem, bsem, cond, ev, barrier, q, jq,
                              out))
        p.start()
        barrier.wait(WAIT)
        assert ev.wait(WAIT)
        assert out.get(timeout=WAIT) == "work"
        assert jq.join(timeout=WAIT)
        assert q.get(timeout=WAIT) == "child put"
        p.join(WAIT)
        assert p.exitcode == 0
        assert d["child"] == p.pid and d["a"] == 1
        assert l[:] == [1, 2, "from child"]
        assert ns.x == 2
        assert v.value == 42
        assert list(a[:]) == [101, 2, 3]
        bsem.acquire()
        with pytest.raises(ValueError):  # BoundedSemaphore's error
            bsem.release() or bsem.release()
        with pytest.raises(KeyError):  # the referent's exception travels back
            d["missing"]
        out.close()
        for x in (q, jq):
            x.close()


# ---- the shmq-native types -----------------------------------------------------------------------

def test_native_types_are_shmq_objects():
    with shmq.Manager() as m:
        made = {
            shmq.JoinableQueue: [m.Queue(), m.JoinableQueue(3)],
            shmq.Lock: [m.Lock()], shmq.RLock: [m.RLock()],
            shmq.Semaphore: [m.Semaphore(2)], shmq.BoundedSemaphore: [m.BoundedSemaphore()],
            shmq.Condition: [m.Condition(), m.Condition(m.Lock())],
            shmq.Event: [m.Event()], shmq.Barrier: [m.Barrier(2)],
            sm.ManagedValue: [m.Value("i", 7), m.Value(ctypes.c_double, 0.5)],
            shmq.sharedctypes.SynchronizedArray: [m.Array("i", [1, 2, 3]), m.Array("d", 4)],
        }
        for cls, objs in made.items():
            for obj in objs:
                assert type(obj) is cls, (cls, obj)
        assert type(made[shmq.RLock][0]) is not shmq.Lock
        assert made[shmq.Semaphore][0].get_value() == 2
        assert made[shmq.Barrier][0].parties == 2
        v, a = made[sm.ManagedValue][0], made[shmq.sharedctypes.SynchronizedArray][0]
        assert isinstance(v, shmq.sharedctypes.Synchronized)  # a shmq Value
        assert v.value == 7 and isinstance(v.get_lock(), shmq.RLock)
        v.set(8)  # and ValueProxy's get/set
        assert v.get() == 8 == v.value
        assert type(pickle.loads(pickle.dumps(v))) is sm.ManagedValue
        assert a[:] == [1, 2, 3] and len(made[shmq.sharedctypes.SynchronizedArray][1]) == 4
        bounded = made[shmq.JoinableQueue][1]
        for i in range(3):
            bounded.put(i)
        with pytest.raises(queue.Full):
            bounded.put(3, block=False)  # maxsize reached the server
        assert type(m.Value("i", 1, lock=False)) is ctypes.c_int  # lock=False: the raw value
        cond_lock = m.Lock()
        assert m.Condition(cond_lock)._lock._block.handle == cond_lock._block.handle
        # No shared-memory form (a pointer, or not a ctypes type): multiprocessing's ValueProxy.
        for typecode, value in ((ctypes.c_char_p, "hello"), ("x", [1, 2])):
            proxy = m.Value(typecode, value)
            assert isinstance(proxy, sm._mpm.ValueProxy) and proxy.value == value
        # Bad arguments raise their own error, not a RemoteError.
        with pytest.raises(ValueError):
            m.Semaphore(-1)
        with pytest.raises(ValueError):
            m.Barrier(0)
        with pytest.raises(TypeError):
            m.Condition(threading.Lock())
        with pytest.raises(TypeError):
            m.Value("i", "not a number")
        with pytest.raises(AttributeError):
            m.Value("i", 5, lock="no acquire")
        for q in made[shmq.JoinableQueue]:
            q.close()
    with pytest.raises(mp.ProcessError):
        m.Lock()  # the manager is shut down


def _use_dropped(d, pickled, out):
    objs = [d["lock"], d["event"], d["value"]] + list(pickle.loads(pickled))
    for lock in (objs[0], objs[3]):
        assert lock.acquire(timeout=WAIT)
        lock.release()
    objs[1].set()
    objs[4].set()
    objs[2].value += 1
    objs[5].value += 10
    objs[6].put("through the dropped queue")
    out.put("ok")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_native_objects_live_as_long_as_the_manager(method):
    """Made in one client, passed on (through a proxied dict, or pickled to bytes, which no
    process holds) and dropped by their creator: they still open in a child."""
    ctx = mp.get_context(method)
    with shmq.Manager(ctx=ctx) as m:
        d, out = m.dict(), shmq.Queue()
        d["lock"], d["event"], d["value"] = m.Lock(), m.Event(), m.Value("i", 1)
        pickled = pickle.dumps((m.Lock(), m.Event(), m.Value("i", 2), m.Queue()))
        gc.collect()  # every handle of this process is gone: only the server holds them now
        p = ctx.Process(target=_use_dropped, args=(d, pickled, out))
        p.start()
        assert out.get(timeout=WAIT) == "ok"
        p.join(WAIT)
        assert p.exitcode == 0
        lock, event, value = d["lock"], d["event"], d["value"]
        assert event.is_set() and value.value == 2
        assert lock.acquire(timeout=WAIT)
        lock.release()
        _, event, value, q = pickle.loads(pickled)
        assert event.is_set() and value.value == 12
        assert q.get(timeout=WAIT) == "through the dropped queue"
        q.close()
        out.close()


def test_a_dropped_shmq_object_without_a_manager_is_gone():
    """The control of the test above: what no process holds is freed, so the manager's hold is
    what kept those objects."""
    pickled = pickle.dumps(shmq.Event())
    gc.collect()
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        pickle.loads(pickled)


def _hold(lock, started):
    with lock:
        started.set()
        time.sleep(600)


def _acquire_and_report(lock, out):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lock.acquire(timeout=WAIT)
    if got:
        lock.release()
    out.put((got, [w.category.__name__ for w in caught]))


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_a_holder_killed_inside_with_lock_does_not_wedge_the_others(kind):
    with shmq.Manager() as m:
        lock, started, out = getattr(m, kind)(), m.Event(), shmq.Queue()
        holder = mp.Process(target=_hold, args=(lock, started))
        holder.start()
        assert started.wait(WAIT)
        assert lock.acquire(timeout=0.05) is False  # held by a live process
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(WAIT)
        other = mp.Process(target=_acquire_and_report, args=(lock, out))
        other.start()
        # Another process takes it over, told that its holder died.
        assert out.get(timeout=WAIT) == (True, ["OwnerDiedWarning"])
        other.join(WAIT)
        assert other.exitcode == 0
        assert lock.acquire(timeout=WAIT) is True  # and so does this one, after it
        lock.release()
        out.close()


def _square(x):
    return x * x


def test_pool_proxy():
    with shmq.Manager() as m:
        with m.Pool(2) as pool:
            assert pool.map(_square, range(10)) == [x * x for x in range(10)]
            r = pool.apply_async(_square, (7,))
            assert r.get(WAIT) == 49
            assert sorted(pool.imap_unordered(_square, range(5))) == [0, 1, 4, 9, 16]


# ---- the seeds' example, unchanged but for the import ---------------------------------------------

def _f(d, l):
    d[1] = '1'
    d['2'] = 2
    d[0.25] = None
    l.reverse()


def test_the_documentation_example():
    from multiprocessing import Process
    from shmq import Manager
    with Manager() as manager:
        d = manager.dict()
        l = manager.list(range(10))

        p = Process(target=_f, args=(d, l))
        p.start()
        p.join()

        assert str(d) == "{1: '1', '2': 2, 0.25: None}"
        assert str(l) == "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]"


# ---- register() ------------------------------------------------------------------------------------

class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def value(self):
        return self.n

    def child(self):
        return Counter(self.n * 10)

    def slow(self, seconds, size=0):
        time.sleep(seconds)
        return b"r" * size

    def _hidden(self):
        return "hidden"


class MyManager(sm.BaseManager):
    pass


MyManager.register("Counter", Counter, method_to_typeid={"child": "ChildCounter"})
# No callable: a proxy to what child() returned (multiprocessing's way for method results).
MyManager.register("ChildCounter", create_method=False)


def _bump(c, n):
    for _ in range(n):
        c.add()


def test_register_custom_types_with_multiprocessing_semantics():
    with MyManager() as m:
        c = m.Counter(5)
        assert c.add(2) == 7
        assert c.value() == 7
        with pytest.raises(AttributeError):
            c._hidden  # AutoProxy exposes public methods only
        child = c.child()  # method_to_typeid: a proxy to a new object in the server
        assert child.value() == 70
        ps = [mp.Process(target=_bump, args=(c, 50)) for _ in range(3)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(WAIT)
        assert c.value() == 7 + 150
        assert m._number_of_objects() == 2


def _connect_and_use(address, authkey, out):
    m = MyManager(address=address, authkey=authkey)
    m.connect()
    c = m.Counter(1)
    out.put(c.add(41))


def test_connect_to_a_running_manager_by_address():
    with MyManager(authkey=b"secret") as m:
        out = shmq.Queue()
        p = mp.get_context("spawn").Process(target=_connect_and_use,
                                            args=(m.address, b"secret", out))
        p.start()
        assert out.get(timeout=WAIT) == 42
        p.join(WAIT)
        with pytest.raises(mp.AuthenticationError):
            bad = MyManager(address=m.address, authkey=b"wrong")
            bad.connect()
        out.close()


# ---- crashes ---------------------------------------------------------------------------------------

def _call_forever(c, started):
    started.set()
    while True:
        c.add()


def _call_slow(c, started, size):
    started.set()
    c.slow(0.3, size)


@pytest.mark.parametrize("reply_size", [0, 1 << 20])  # a reply that fits, one that streams
def test_a_client_killed_mid_call_wedges_neither_the_server_nor_other_clients(reply_size):
    with MyManager() as m:
        c = m.Counter()
        for target, args in ((_call_forever, ()), (_call_slow, (reply_size,))):
            started = mp.Event()
            p = mp.Process(target=target, args=(c, started) + args)
            p.start()
            assert started.wait(WAIT)
            time.sleep(0.05)  # inside a call (or between two)
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            assert c.add(0) >= 0  # the server still answers this client
        others = [mp.Process(target=_bump, args=(c, 20)) for _ in range(2)]
        for p in others:
            p.start()
        for p in others:
            p.join(WAIT)
            assert p.exitcode == 0
        before = c.value()
        c.add(5)
        assert c.value() == before + 5
    assert not m._process.is_alive() if m._process is not None else True


class Forker:
    def fork(self):
        pid = os.fork()
        if pid == 0:  # a child of the server, forked while a server thread serves this call
            time.sleep(600)
            os._exit(0)
        return pid


class ForkingManager(sm.SyncManager):
    pass


ForkingManager.register("Forker", Forker)


def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_child_the_server_forks_holds_none_of_its_connections():
    """A child forked by the server (as a Pool's workers are) and killed after everyone else
    closed must leave neither a connection's pipe, nor the accept queue, nor a queue the server
    kept behind: it dropped its copies of the server's at the fork."""
    with ForkingManager() as m:
        q = m.Queue()  # one the server keeps
        q.put("kept")
        f = m.Forker()
        pid = f.fork()
        name = f._tls.connection._h.name  # the connection this proxy's calls went through
        assert os.path.exists("/dev/shm/shmq." + name)
        assert m._number_of_objects() == 1  # the server still accepts connections
        del f
        gc.collect()  # the last proxy goes: its connection closes
        address, queue_name = m.address, q._h.name
        assert q.get(timeout=WAIT) == "kept"
        q.close()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _dead(pid)
    assert not os.path.exists("/dev/shm/shmq." + name)
    assert not os.path.exists("/dev/shm/shmq." + address)  # nor the accept queue
    assert not os.path.exists("/dev/shm/shmq." + queue_name)  # nor a queue the server kept


def test_a_dead_server_gives_a_clear_error():
    m = shmq.Manager()
    d = m.dict()
    d["x"] = 1
    address = m.address
    m._process.kill()
    m._process.join()
    with pytest.raises(sm.ManagerGone):
        d["x"]  # a call on an open connection: the end of its stream
    with pytest.raises(EOFError):  # ManagerGone is also what multiprocessing raises there
        d["y"] = 2
    with pytest.raises(sm.ManagerGone):
        sm.Client(address, authkey=bytes(m._authkey))  # a new connection
    m.shutdown()


def test_a_manager_address_must_be_a_name():
    with pytest.raises(ValueError):
        sm.BaseManager(address=("localhost", 50000))
    with pytest.raises(ValueError):
        sm.BaseManager(serializer="xmlrpclib")


def test_listener_and_client_by_hand():
    with sm.Listener(authkey=b"k") as listener:
        got = []

        def serve():
            conn = listener.accept()
            got.append(conn.recv())
            conn.send("pong")
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = sm.Client(listener.address, authkey=b"k")
        c.send("ping")
        assert c.recv() == "pong"
        t.join(WAIT)
        assert got == ["ping"]
        with pytest.raises(sm.ManagerGone):
            c.recv()  # the server's end closed
        c.close()
