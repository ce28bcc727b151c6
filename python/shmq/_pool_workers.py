"""The supervision half of the pool engine (PoolCore): starting workers, seeing them exit,
replacing them, and the process-wide hooks that keep a pool's channels its own.

A monitor thread per pool waits on the workers' pidfds (a pidfd reports the exit of the process
itself; a process sentinel, the fallback, stays open while a child the worker forked keeps it).
When one is ready the monitor reaps the worker (its exit code says which signal killed it), puts
a death notice on the pool's result queue, and, if the worker had been serving, starts its
replacement once a leader has read the notice. The notice is how the dead worker's tasks are
settled exactly (see _pool_core).

This class is a part of PoolCore: the state it uses is set up in PoolCore.__init__.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from multiprocessing import connection as _mp_connection
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import _pool_worker as _w
from ._common import unlink as _unlink
from ._queues import Queue

if TYPE_CHECKING:
    from ._pool_core import PoolCore

__all__ = ["Supervision", "Worker", "cores", "close_and_unlink", "reap", "START_TIMEOUT",
           "RUN", "CLOSE", "TERMINATE", "STOPPED"]

# A worker that has not reported itself ready after this long (seconds) is killed and replaced.
START_TIMEOUT = 60.0
# The monitor waits up to this long (seconds) for a death notice to be read before it forks the
# replacement.
_NOTICE_FIRST = 0.05

RUN, CLOSE, TERMINATE, STOPPED = "RUN", "CLOSE", "TERMINATE", "STOPPED"

# Every live pool of this process, for the fork hook below.
cores: "weakref.WeakSet[PoolCore]" = weakref.WeakSet()


def _drop_inherited_pools() -> None:
    """In a child made by fork: lets go of every pool's channels and workers inherited from the
    parent. A forked child shares its parent's open file descriptions, so its copies would hold the
    segments' liveness locks and keep them from being removed when the parent closes them
    (workers open their own handles by name)."""
    for core in list(cores):
        core._forget_after_fork()


def _end_pools_at_exit() -> None:
    """Ends every pool at interpreter exit, before shmq's own exit hook closes the channels (atexit
    runs hooks in reverse order of registration, and this module registers after _common): the
    workers must be gone first, or the channels they hold would stay in /dev/shm."""
    for core in list(cores):
        try:
            core.at_exit()
        except Exception:  # noqa: BLE001 - exit-time clean-up must never raise
            pass


os.register_at_fork(after_in_child=_drop_inherited_pools)
atexit.register(_end_pools_at_exit)


class Worker:
    __slots__ = ("wid", "proc", "queue", "fd", "held", "assigned", "big", "ewma", "since",
                 "stalled", "ready", "started", "replaced", "dead")

    def __init__(self, wid: int, proc: Any, queue: Queue, fd: int, started: float) -> None:
        self.wid = wid
        self.proc = proc
        self.queue = queue
        self.fd = fd
        self.held: Dict[int, None] = {}   # task ids put into its queue and not answered, in order
        self.assigned = 0                 # tasks handed to it over its life (for maxtasks)
        self.big = 0                      # held messages larger than _LARGE
        self.ewma: Optional[float] = None  # its usual task time (seconds)
        self.since = 0.0                  # when it last answered, or got work while idle
        self.stalled = False              # a long task: window 1 until it answers
        self.ready = False                # it said so (its initializer ran): it gets tasks
        self.started = started
        self.replaced = False             # the monitor started its replacement
        self.dead = False                 # the monitor saw it exit


class Supervision:
    """PoolCore's workers: start, watch, replace; the fork hook's side."""

    def _spawn(self) -> None:
        wid = self._next_wid
        self._next_wid += 1
        queue = Queue(slots=self._task_slots)
        proc = self._ctx.Process(
            target=_w.worker_main, name=f"ShmqPoolWorker-{wid}", daemon=True,
            args=(queue.name, self._results.name, wid, self._initializer, self._initargs,
                  self._maxtasks))
        try:
            proc.start()
        except BaseException:
            queue.close()
            raise
        try:
            # A pidfd reports the exit itself; the sentinel (a pipe) stays open while a child the
            # worker forked keeps it.
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            fd = -1
        w = Worker(wid, proc, queue, fd, time.monotonic())
        self._workers[wid] = w
        self._watch[fd if fd >= 0 else proc.sentinel] = wid
        self._wake_monitor()

    def _wake_monitor(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"w")
            except OSError:
                pass

    def worker_processes(self) -> List[Any]:
        with self._lock:
            return [w.proc for w in self._workers.values()]

    def _monitor(self) -> None:
        """Waits on the workers' pidfds. When one exits: posts a notice on the result queue (the
        leader settles the dead worker's tasks when it reads it) and, if the worker had been
        serving, starts its replacement at once."""
        while True:
            with self._lock:
                if self._state is STOPPED:
                    return
                watched = dict(self._watch)
                wake = self._wake_r
            try:
                ready = _mp_connection.wait(list(watched) + [wake])
            except OSError:
                ready = [wake]
            with self._lock:
                retired, self._retired = self._retired, []
            for q in retired:
                close_and_unlink(q)
            for fd in ready:
                if fd == wake:
                    try:
                        os.read(fd, 4096)
                    except OSError:
                        pass
                    continue
                wid = watched.get(fd)
                if wid is None:
                    continue
                with self._lock:
                    if self._watch.pop(fd, None) is None:
                        continue
                    w = self._workers.get(wid)
                if w is None:
                    continue
                if w.fd >= 0:
                    fd, w.fd = w.fd, -1   # first: a fork now must not close the number again
                    os.close(fd)
                code = reap(w.proc, 5.0)  # the exit code says which signal
                with self._lock:
                    self._notices += 1
                    self._pusher_cond.notify()
                    # A worker that never became ready (its initializer failing, say) is replaced
                    # by the leader, which counts such failures; one that served, from here.
                    w.replaced = w.ready and self._may_spawn()
                    w.dead = True
                try:
                    self._notifier.put(("dead", wid, code))
                except (ValueError, OSError):
                    return  # the pool was torn down under us
                if w.replaced:
                    with self._lock:
                        # The notice first: the caller waiting for the lost task should not wait
                        # for a fork too (a leader, if any, reads it within microseconds).
                        deadline = time.monotonic() + _NOTICE_FIRST
                        while wid in self._workers and self._leader is not None:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        if self._may_spawn():
                            self._spawn()

    def _may_spawn(self) -> bool:
        return (self._state is RUN or self._state is CLOSE) and self._broken is None

    def _forget_after_fork(self) -> None:
        # The child is single-threaded and the parent's lock may have been held at the fork.
        if self._handles_closed:
            return   # its descriptor numbers may belong to something else by now
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._pusher_cond = threading.Condition(self._lock)
        self._state = STOPPED
        self._handles_closed = True
        queues = [w.queue for w in self._workers.values()] + [self._results, self._notifier]
        queues += self._retired
        fds = [w.fd for w in self._workers.values() if w.fd >= 0] + [self._wake_r, self._wake_w]
        self._wake_r = self._wake_w = -1
        self._workers.clear()
        self._watch.clear()
        self._tasks.clear()
        self._backlog.clear()
        self._sources.clear()
        for q in queues:
            try:
                q.close()
            except Exception:
                pass
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def reap(proc: Any, timeout: float) -> Optional[int]:
    """Waits until ``proc`` is reaped and returns its exit code (None if it still runs after
    ``timeout``). Process.join can return early when another thread reaped the process; a reaped
    process has closed all its files, so its liveness locks are gone."""
    deadline = time.monotonic() + timeout
    while True:
        proc.join(0.05)
        code = proc.exitcode
        if code is not None or time.monotonic() >= deadline:
            return code


def close_and_unlink(q: Queue) -> None:
    """Closes a pool channel and removes its name: once the pool lets go of a channel nobody may
    use it, even a process that still maps it (one forked while the parent held it)."""
    name = q.name
    try:
        q.close()
    except Exception:
        pass
    try:
        _unlink(name)
    except OSError:
        pass
