"""Segments of unnamed queues and pipes go away with their last user, even a killed one; named
ones stay until unlinked, whatever shmq.gc() is asked."""

import gc
import multiprocessing as mp
import os
import signal
import threading

import shmq


def _anon():
    return {f for f in os.listdir("/dev/shm") if f.startswith("shmq.anon-")}


def make_and_report(report, close):
    q = shmq.Queue()
    a, b = shmq.Pipe()
    report.put((q.name, a.name))
    if close:
        q.close()
        a.close()
        b.close()
    # else: leave through multiprocessing's exit path without closing


def make_and_hang(report):
    q = shmq.Queue()
    report.put(q.name)
    threading.Event().wait()


def test_close_removes_unnamed_segments():
    q = shmq.Queue()
    a, b = shmq.Pipe()
    names = {"shmq." + q.name, "shmq." + a.name}
    assert names <= _anon()
    q.close()
    a.close()
    b.close()
    assert not names & _anon()


def test_child_exit_removes_its_segments():
    ctx = mp.get_context("fork")
    report = shmq.SimpleQueue()
    for close in (True, False):
        p = ctx.Process(target=make_and_report, args=(report, close))
        p.start()
        qn, pn = report.get()
        p.join(60)
        assert p.exitcode == 0
        assert not {"shmq." + qn, "shmq." + pn} & _anon()
    report.close()


def test_killed_creator_is_collected():
    ctx = mp.get_context("fork")
    report = shmq.SimpleQueue()
    p = ctx.Process(target=make_and_hang, args=(report,))
    p.start()
    name = report.get()
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    assert "shmq." + name in _anon()  # nobody could unlink it ...
    assert shmq.gc([name], grace=3600) == []         # (not while it might be in creation)
    assert shmq.gc([name], grace=0) == [name]  # ... until the next scan
    assert "shmq." + name not in _anon()
    report.close()


def put_job(name):
    q = shmq.Queue(name=name)
    q.put("job")
    q.close()


def test_gc_keeps_a_named_queue_holding_a_job_until_it_is_read(qname):
    # A producer puts a job and exits; the consumer has not started yet; someone runs gc.
    ctx = mp.get_context("fork")
    p = ctx.Process(target=put_job, args=(qname,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert os.path.exists("/dev/shm/shmq." + qname)
    assert shmq.gc([qname], grace=0) == []                      # named: never on its own
    assert shmq.gc([qname], include_named=True, grace=0) == []  # holds a job: not without force
    q = shmq.Queue.open(qname)
    assert q.get(timeout=30) == "job"
    q.close()
    del q
    gc.collect()
    # Empty and idle now: include_named may take it, and says so.
    assert shmq.gc([qname], include_named=True, dry_run=True, grace=0) == [qname]
    assert os.path.exists("/dev/shm/shmq." + qname)
    assert shmq.gc([qname], include_named=True, grace=0) == [qname]
    assert not os.path.exists("/dev/shm/shmq." + qname)


def test_gc_force_removes_a_named_queue_holding_messages(qname):
    ctx = mp.get_context("fork")
    p = ctx.Process(target=put_job, args=(qname,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert shmq.gc([qname], force=True, grace=0) == []  # force alone never reaches named ones
    assert shmq.gc([qname], include_named=True, force=True, grace=0) == [qname]
    assert not os.path.exists("/dev/shm/shmq." + qname)


def test_threads_share_one_handle():
    q = shmq.Queue(maxsize=16)
    n, per = 4, 500
    got = []
    lock = threading.Lock()

    def produce(k):
        for i in range(per):
            q.put((k, i))

    def consume():
        for _ in range(per):
            item = q.get(timeout=60)
            with lock:
                got.append(item)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(n)]
    threads += [threading.Thread(target=consume) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted((k, i) for k in range(n) for i in range(per))
    q.close()
