"""shmq.Manager and shmq.managers.BaseManager: multiprocessing's managers over shmq pipes.

Covers SyncManager's types from child processes (fork and spawn), register() with custom types
and proxies returned by methods, connect() from another process by address, a client killed
mid-call (the server and the other clients go on), and a dead server (a clear error, no hang)."""

import multiprocessing as mp
import os
import signal
import threading
import time

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
        with pytest.raises(ValueError):  # BoundedSemaphore's error, raised in the server
            bsem.release() or bsem.release()
        with pytest.raises(KeyError):  # the referent's exception travels back
            d["missing"]
        out.close()
        for x in (q, jq):
            x.close()


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
