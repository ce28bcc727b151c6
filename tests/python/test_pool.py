"""shmq.Pool and shmq.ProcessPoolExecutor beyond CPython's own tests (test_pool_cpython.py):
worker deaths (the kill gauntlet), Ctrl-C, bad input, start methods, the executor, asyncio.

SHMQ_TEST_SCALE scales the gauntlet's cycle count (the default runs the 100+ the issue asks).
"""

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shmq
from shmq.futures import BrokenProcessPool

SCALE = float(os.environ.get("SHMQ_TEST_SCALE", "1"))
HANG = 120.0  # seconds: a call that takes this long has hung (never a timing assertion)


# ---- task functions (module level: workers unpickle them by name) -------------------------------

def square(x):
    return x * x


def add(x, y):
    return x + y


def tagged(x, pause=0.0):
    """Returns (x, pid): which worker ran it."""
    if pause:
        time.sleep(pause)
    return x, os.getpid()


def tagged_item(item):
    """tagged(*item), for map and imap."""
    return tagged(*item)


def raises_value_error(x):
    raise ValueError(f"bad {x}")


def die(code):
    os._exit(code)


def kill_self(sig):
    import faulthandler
    faulthandler.disable()  # pytest's handler would print the "crash"
    os.kill(os.getpid(), sig)
    time.sleep(5)


def sleep_then(x, pause):
    time.sleep(pause)
    return x


def report_pid(q, pause):
    q.put(os.getpid())
    time.sleep(pause)
    return "finished"


def pid_and_env(name):
    return os.getpid(), os.environ.get(name)


_init_value = None


def set_init_value(v):
    global _init_value
    _init_value = v


def get_init_value(_=None):
    return _init_value


def failing_initializer():
    raise RuntimeError("initializer failed")


def current_pid(_=None):
    return os.getpid()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


# ---- basics -------------------------------------------------------------------------------------

def test_pool_results_match_builtins():
    with shmq.Pool(2) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.starmap(add, [(i, i) for i in range(30)], chunksize=4) == \
            [2 * i for i in range(30)]
        assert pool.apply(add, (2,), {"y": 3}) == 5
        assert list(pool.imap(square, range(25), chunksize=3)) == [x * x for x in range(25)]
        assert sorted(pool.imap_unordered(square, range(25))) == [x * x for x in range(25)]
        r = pool.map_async(square, range(10))
        assert r.get(timeout=HANG) == [x * x for x in range(10)] and r.ready() and r.successful()


def test_callbacks_run_without_a_waiting_caller():
    got = []
    done = threading.Event()

    def cb(v):
        got.append(v)
        if len(got) == 20:
            done.set()

    with shmq.Pool(2) as pool:
        for i in range(20):
            pool.apply_async(square, (i,), callback=cb)
        # Nobody calls get(): the pool's helper thread reads the results and runs the callbacks.
        assert done.wait(HANG)
        assert sorted(got) == sorted(i * i for i in range(20))


def test_one_slow_task_does_not_hold_back_the_tasks_queued_behind_it():
    # One task that blocks until the test lets it go, and many quick ones, on 2 workers: the quick
    # ones queued behind the blocked one are taken back and run by the other worker, so all of
    # them finish while it still blocks.
    release = shmq.Queue()
    with shmq.Pool(2) as pool:
        pool.map(square, range(200))  # the workers learn that tasks are quick
        items = [("slow", release)] + [(i, None) for i in range(300)]
        it = pool.imap_unordered(_quick_or_blocked, items)
        first = [it.next(timeout=HANG) for _ in range(300)]
        assert sorted(first) == list(range(300))
        release.put("go")
        assert it.next(timeout=HANG) == "slow"
    release.close()


def _quick_or_blocked(item):
    x, release = item
    if release is not None:
        release.get(timeout=HANG)
    else:
        time.sleep(0.001)
    return x


def test_task_error_reraised_with_remote_traceback():
    with shmq.Pool(1) as pool:
        with pytest.raises(ValueError, match="bad 3") as info:
            pool.apply(raises_value_error, (3,))
        assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
        assert "raises_value_error" in str(info.value.__cause__)
        with pytest.raises(ValueError, match="bad"):
            pool.map(raises_value_error, range(5))
        assert pool.map(square, [3]) == [9]  # still usable


# ---- worker death -------------------------------------------------------------------------------

def test_worker_killed_fails_only_its_task_and_is_replaced():
    q = shmq.Queue()
    with shmq.Pool(2) as pool:
        before = sorted(p.pid for p in pool._pool)
        victim_result = pool.apply_async(report_pid, (q, 60))
        others = [pool.apply_async(sleep_then, (i, 0.05)) for i in range(10)]
        victim = q.get(timeout=HANG)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(shmq.WorkerLost) as info:
            victim_result.get(timeout=HANG)
        e = info.value
        assert isinstance(e, RuntimeError)
        assert e.pid == victim and e.signal == signal.SIGKILL and e.exitcode == -signal.SIGKILL
        assert "report_pid" in e.task and str(victim) in str(e) and "SIGKILL" in str(e)
        assert pickle.loads(pickle.dumps(e)).pid == victim
        assert [r.get(timeout=HANG) for r in others] == list(range(10))
        after = sorted(p.pid for p in pool._pool)
        assert len(after) == 2 and victim not in after and after != before
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
    q.close()


@pytest.mark.parametrize("how", ["exit", "sigterm", "sigsegv"])
def test_worker_dying_by_itself_fails_its_task(how):
    with shmq.Pool(2) as pool:
        if how == "exit":
            r = pool.apply_async(die, (7,))
        else:
            sig = signal.SIGTERM if how == "sigterm" else signal.SIGSEGV
            r = pool.apply_async(kill_self, (sig,))
        with pytest.raises(shmq.WorkerLost) as info:
            r.get(timeout=HANG)
        if how == "exit":
            assert info.value.exitcode == 7 and info.value.signal is None
        else:
            assert info.value.signal == sig
        assert pool.apply(square, (4,)) == 16


def test_map_raises_worker_lost_only_after_the_rest_finished():
    with shmq.Pool(2) as pool:
        r = pool.map_async(_die_on_five, range(40), chunksize=1)
        with pytest.raises(shmq.WorkerLost, match="item 5"):
            r.get(timeout=HANG)
        assert r.ready() and not r.successful()


def _die_on_five(x):
    if x == 5:
        os._exit(3)
    time.sleep(0.002)
    return x


_attempts_dir = None


def _die_first_time(x):
    # A marker file per item says it ran before: the first run of item 3 dies, the retry succeeds.
    marker = os.path.join(os.environ["SHMQ_POOL_TEST_DIR"], f"ran-{x}")
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * 10


def test_retries_rerun_a_lost_task(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMQ_POOL_TEST_DIR", str(tmp_path))
    with shmq.Pool(2, retries=1) as pool:
        assert pool.map(_die_first_time, range(8), chunksize=1) == [x * 10 for x in range(8)]
    with shmq.Pool(2, retries=1) as pool:
        # always dies: two attempts, then WorkerLost naming the attempt
        with pytest.raises(shmq.WorkerLost) as info:
            pool.apply(die, (2,))
        assert info.value.attempts == 2


def _kill_cycle_map(pool, rng, n):
    """map on a pool with retries: a worker is killed mid-map; every result must still be right."""
    r = pool.map_async(tagged_item, [(i, 0.0005) for i in range(n)], chunksize=1)
    time.sleep(rng.uniform(0, 0.004))
    victim = rng.choice(pool._pool).pid
    os.kill(victim, signal.SIGKILL)
    out = r.get(timeout=HANG)
    assert [x for x, _ in out] == list(range(n))
    return victim, 0


def _kill_cycle_imap_unordered(pool, rng, n):
    """imap_unordered without retries: each item comes back once, or is lost with WorkerLost."""
    it = pool.imap_unordered(tagged_item, [(i, 0.0005) for i in range(n)])
    kill_after = rng.randrange(n // 2)
    seen, lost, victim = [], 0, None
    for k in range(n):
        if k == kill_after:
            victim = rng.choice(pool._pool).pid
            os.kill(victim, signal.SIGKILL)
        try:
            x, _ = it.next(timeout=HANG)
            seen.append(x)
        except shmq.WorkerLost as e:
            assert e.pid == victim
            lost += 1
    with pytest.raises(StopIteration):
        it.next(timeout=HANG)
    assert len(set(seen)) == len(seen), "a result came back twice"
    assert len(seen) + lost == n and lost <= 1
    return victim, lost


def _kill_cycle_apply(pool, rng, n):
    """apply_async without retries: each result is its value or WorkerLost, none both."""
    rs = [pool.apply_async(tagged, (i, 0.0005)) for i in range(n)]
    time.sleep(rng.uniform(0, 0.004))
    victim = rng.choice(pool._pool).pid
    os.kill(victim, signal.SIGKILL)
    lost = 0
    for i, r in enumerate(rs):
        try:
            x, _ = r.get(timeout=HANG)
            assert x == i
        except shmq.WorkerLost as e:
            assert e.pid == victim
            lost += 1
    assert lost <= 1
    return victim, lost


def test_kill_gauntlet():
    """A random worker is killed with SIGKILL during map, imap_unordered and apply_async, over and
    over: results are checked item by item, a lost item is retried (map) or reported once with
    WorkerLost (the others), nothing is duplicated, nothing hangs, the pool keeps its size."""
    cycles = max(3, int(120 * SCALE))
    rng = random.Random(12)
    kinds = [_kill_cycle_map, _kill_cycle_imap_unordered, _kill_cycle_apply]
    total_lost = 0
    with shmq.Pool(3, retries=2) as retrying, shmq.Pool(3) as plain:
        for c in range(cycles):
            kind = kinds[c % 3]
            pool = retrying if kind is _kill_cycle_map else plain
            victim, lost = kind(pool, rng, 24)
            total_lost += lost
            _wait_replaced(pool, victim)
        for pool in (retrying, plain):
            assert len(pool._pool) == 3
            assert pool.map(square, range(30)) == [x * x for x in range(30)]
    # Most kills hit a worker in the middle of a task.
    assert total_lost > 0


def _wait_replaced(pool, victim):
    deadline = time.monotonic() + HANG
    while victim in [p.pid for p in pool._pool] or len(pool._pool) != pool._processes:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.001)


# ---- Ctrl-C -------------------------------------------------------------------------------------

_CTRL_C_SCRIPT = """
import os, sys, time
import shmq

def slow(x):
    time.sleep(1)
    return x

if __name__ == "__main__":
    pool = shmq.Pool(2)
    pids = [p.pid for p in pool._pool]
    print(" ".join(map(str, pids)), flush=True)
    {body}
"""


@pytest.mark.parametrize("body", [
    "with pool:\n        pool.map(slow, range(100))",
    "pool.map(slow, range(100))",   # no context manager: the exit hook ends the workers
    # caught: the pool goes on (the interrupted map's undispatched tasks are dropped)
    "try:\n        pool.map(slow, range(100))\n    except KeyboardInterrupt:\n"
    "        print(pool.map(abs, [-1, -2]), flush=True)\n        raise",
])
def test_ctrl_c_during_map_leaves_no_worker(body):
    script = textwrap.dedent(_CTRL_C_SCRIPT).format(body=body)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.3)  # map is running
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the script hung after Ctrl-C")
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    if "except" in body:
        assert out.strip() == "[1, 2]"
    for pid in pids:
        assert not _alive(pid), f"worker {pid} left behind"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---- bad input ----------------------------------------------------------------------------------

def test_unpicklable_function_or_argument_raises_at_the_call_site():
    with shmq.Pool(2) as pool:
        with pytest.raises(Exception):
            pool.apply_async(lambda: 1)
        with pytest.raises(TypeError, match="refuses"):
            pool.apply_async(square, (Unpicklable(),))
        with pytest.raises(TypeError, match="refuses"):
            pool.map_async(square, [1, 2, Unpicklable()])
        with pytest.raises(TypeError, match="refuses"):
            pool.starmap(add, [(1, 2), (Unpicklable(), 1)])
        # imap reads its input lazily: the error comes at that item's place
        it = pool.imap(square, [1, Unpicklable(), 3])
        assert next(it) == 1
        with pytest.raises(TypeError, match="refuses"):
            next(it)
        assert next(it) == 9
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_closed_or_terminated_pool_raises_value_error():
    pool = shmq.Pool(1)
    pool.close()
    for call in (lambda: pool.apply(square, (1,)), lambda: pool.map(square, [1]),
                 lambda: pool.imap(square, [1]), lambda: pool.apply_async(square, (1,))):
        with pytest.raises(ValueError):
            call()
    pool.join()
    pool = shmq.Pool(1)
    pool.terminate()
    with pytest.raises(ValueError):
        pool.map(square, [1])
    pool.join()
    with pytest.raises(ValueError):
        shmq.Pool(1).join()  # still running
    with pytest.raises(ValueError):
        shmq.Pool(2, retries=-1)
    with pytest.raises(TypeError):
        shmq.Pool(2, initializer=3)
    with shmq.Pool(1) as pool:
        with pytest.raises(ValueError):
            pool.imap(square, [1], chunksize=0)
        with pytest.raises(ValueError):
            pool.map(square, [1], chunksize=0)


def test_terminate_fails_pending_results_instead_of_hanging():
    pool = shmq.Pool(1)
    r = pool.apply_async(sleep_then, (1, 60))
    pool.terminate()
    with pytest.raises(RuntimeError, match="terminated"):
        r.get(timeout=HANG)
    pool.join()


def test_failing_initializer_breaks_the_pool_instead_of_looping():
    pool = shmq.Pool(2, initializer=failing_initializer)
    try:
        # Raised by get(), or by apply_async() itself once the pool knows it is broken.
        with pytest.raises(RuntimeError, match="initializer") as info:
            pool.apply_async(square, (2,)).get(timeout=HANG)
        assert "initializer failed" in str(info.value.__cause__)
        with pytest.raises(RuntimeError, match="initializer"):
            pool.apply_async(square, (3,)).get(timeout=HANG)
    finally:
        pool.terminate()
        pool.join()


# ---- start methods, initializer, maxtasksperchild -----------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(method):
    with shmq.Pool(2, initializer=set_init_value, initargs=(method,), maxtasksperchild=3,
                   context=method) as pool:
        assert pool.map(get_init_value, range(4)) == [method] * 4
        pids = {pool.apply(current_pid) for _ in range(12)}
        assert len(pids) >= 4  # each worker retires after 3 tasks
        q = shmq.Queue()
        r = pool.apply_async(report_pid, (q, 60))
        os.kill(q.get(timeout=HANG), signal.SIGKILL)
        with pytest.raises(shmq.WorkerLost):
            r.get(timeout=HANG)
        assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]
    q.close()


def test_large_numpy_arguments_and_results():
    np = pytest.importorskip("numpy")
    arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(12)]   # 1 MiB each
    with shmq.Pool(2) as pool:
        sums = pool.map(np.sum, arrays, chunksize=1)
        assert sums == [float(i * (1 << 17)) for i in range(12)]
        doubled = pool.map(_double, arrays[:4])
        for i, a in enumerate(doubled):
            assert a.shape == (1 << 17,) and a[0] == 2 * i and a.flags.writeable


def _double(a):
    return a * 2


# ---- ProcessPoolExecutor ------------------------------------------------------------------------

def test_executor_submit_map_and_errors():
    with shmq.ProcessPoolExecutor(2) as ex:
        assert isinstance(ex, cf.Executor)
        f = ex.submit(add, 1, y=2)
        assert f.result(timeout=HANG) == 3
        assert list(ex.map(square, range(20), chunksize=3)) == [x * x for x in range(20)]
        assert list(ex.map(add, range(5), range(5))) == [0, 2, 4, 6, 8]
        bad = ex.submit(raises_value_error, 1)
        with pytest.raises(ValueError):
            bad.result(timeout=HANG)
        assert isinstance(bad.exception(), ValueError)
        fs = [ex.submit(square, i) for i in range(30)]
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=HANG)) == \
            sorted(i * i for i in range(30))
        with pytest.raises(TypeError, match="refuses"):
            ex.submit(square, Unpicklable())
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_executor_map_timeout():
    with shmq.ProcessPoolExecutor(1) as ex:
        it = ex.map(sleep_then, [1], [1.0], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            list(it)


def test_executor_worker_death_fails_one_future_and_keeps_going():
    q = shmq.Queue()
    ex = shmq.ProcessPoolExecutor(2)
    try:
        victim = ex.submit(report_pid, q, 60)
        others = [ex.submit(sleep_then, i, 0.02) for i in range(10)]
        os.kill(q.get(timeout=HANG), signal.SIGKILL)
        with pytest.raises(shmq.WorkerLost):
            victim.result(timeout=HANG)
        assert [f.result(timeout=HANG) for f in others] == list(range(10))
        assert ex.submit(square, 9).result(timeout=HANG) == 81
    finally:
        ex.shutdown(wait=True)
    q.close()


def test_executor_shutdown_cancel_futures():
    ex = shmq.ProcessPoolExecutor(1)
    first = ex.submit(sleep_then, 0, 0.3)
    rest = [ex.submit(sleep_then, i, 0.3) for i in range(1, 40)]
    deadline = time.monotonic() + HANG
    while not first.running() and not first.done():  # handed to the worker
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == 0
    cancelled = [f for f in rest if f.cancelled()]
    finished = [f for f in rest if not f.cancelled()]
    assert cancelled, "nothing was cancelled"
    assert all(f.done() for f in rest)
    assert [f.result() for f in finished] == [rest.index(f) + 1 for f in finished]


def test_executor_shutdown_without_wait_still_finishes_the_work():
    ex = shmq.ProcessPoolExecutor(2)
    fs = [ex.submit(sleep_then, i, 0.01) for i in range(20)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=HANG) for f in fs] == list(range(20))


def test_executor_initializer_failure_is_broken_process_pool():
    ex = shmq.ProcessPoolExecutor(2, initializer=failing_initializer)
    try:
        # Raised by result(), or by submit() itself once the executor knows it is broken.
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2).result(timeout=HANG)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 3).result(timeout=HANG)
    finally:
        ex.shutdown(wait=True)


def test_asyncio_run_in_executor():
    async def main(ex):
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(40)))
        with pytest.raises(ValueError):
            await loop.run_in_executor(ex, raises_value_error, 0)
        return results

    with shmq.ProcessPoolExecutor(2) as ex:
        assert asyncio.run(main(ex)) == [i * i for i in range(40)]
