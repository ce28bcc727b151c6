"""shmq.ProcessPoolExecutor: concurrent.futures' process pool on shmq queues.

``ProcessPoolExecutor(max_workers=None, mp_context=None, initializer=None, initargs=(), *,
max_tasks_per_child=None, retries=0)`` is a ``concurrent.futures.Executor`` (``submit``, ``map``
with ``chunksize``, ``shutdown(wait, cancel_futures)``, the context manager) and works with
``asyncio``'s ``loop.run_in_executor``. It runs on the same engine as shmq.Pool. What differs
from concurrent.futures.ProcessPoolExecutor:

* A worker that dies fails only the future of the task it was running, with ``shmq.WorkerLost``
  (or retries it, ``retries=N``); the executor replaces the worker and stays usable, where
  concurrent.futures breaks the whole pool (BrokenProcessPool on every pending future).
* ``submit`` pickles the function and arguments in the calling thread: an unpicklable one raises
  there.
* ``max_tasks_per_child`` works with every start method, fork included.
* A future is "running" from the moment it is handed to a worker's queue;
  ``shutdown(cancel_futures=True)`` cancels those not handed out yet.
"""

from __future__ import annotations

import concurrent.futures as _cf
import os
import reprlib
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import TimeoutError as _MpTimeoutError
from multiprocessing import util as _mp_util
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence

from . import _pool_worker as _w
from ._pool_core import Job, PoolCore
from .pool import IMapIterator, _context, _name

__all__ = ["ProcessPoolExecutor", "BrokenProcessPool"]


def _broken(cause: BaseException) -> BaseException:
    e = BrokenProcessPool("A child process failed in its initializer; the pool is not usable")
    e.__cause__ = cause
    return e


class _Future(_cf.Future):
    """A Future whose ``result()``/``exception()`` read the results themselves when nobody else
    does (no thread hand-off on the caller's path)."""

    def __init__(self, core: PoolCore) -> None:
        super().__init__()
        self._core = core

    def result(self, timeout: Optional[float] = None) -> Any:
        return super().result(self._wait(timeout))

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return super().exception(self._wait(timeout))

    def _wait(self, timeout: Optional[float]) -> Optional[float]:
        """Leads until done; returns the timeout left for Future's own wait (0 unless done)."""
        if self.done() or self._core.wait_until(self.done, timeout):
            return 0.0
        if timeout is None:
            # Only a pool that is gone returns early from an unbounded wait.
            raise BrokenProcessPool("the executor stopped before this future finished")
        return 0.0   # Future raises TimeoutError


class _FutureJob(Job):
    push = True
    needs_start = True

    def __init__(self, future: _Future, what: str, owner: "ProcessPoolExecutor") -> None:
        self.future = future
        self._what = what
        self._owner: Optional[ProcessPoolExecutor] = owner  # alive while the future is pending

    def start(self, index: int) -> bool:
        return self.future.set_running_or_notify_cancel()

    def describe(self, index: int) -> str:
        return self._what

    def on_result(self, index: int, ok: bool, value: Any,
                  actions: List[Callable[[], None]]) -> None:
        self._owner = None
        f = self.future
        if ok:
            actions.append(lambda: f.set_result(value))
        else:
            actions.append(lambda: _set_exception(f, value))


def _set_exception(f: _Future, exc: BaseException) -> None:
    if not f.done():
        f.set_exception(exc)


class ProcessPoolExecutor(_cf.Executor):
    """See the module docstring."""

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Sequence[Any] = (),
                 *, max_tasks_per_child: Optional[int] = None, retries: int = 0) -> None:
        self._core: Optional[PoolCore] = None
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a non-negative int")
        self._max_workers = max_workers
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._core = PoolCore(max_workers, _context(mp_context), initializer, initargs,
                              max_tasks_per_child, retries, _broken, finish_at_exit=True)
        # At interpreter exit (or when collected, which only happens once nothing is pending)
        # the pending work finishes and the workers stop, as concurrent.futures does.
        self._finalizer = _mp_util.Finalize(self, self._core.join_after_close, exitpriority=15)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _cf.Future:
        """Schedules ``fn(*args, **kwargs)``; returns a Future."""
        with self._shutdown_lock:
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            core = self._core
            if core._broken is not None:
                raise BrokenProcessPool(str(core._broken)) from core._broken.__cause__
            tid = next(core.tids)
            msg = _w.encode_call(tid, _w.pickle_function(fn), _w.APPLY, args, kwargs)
            fut = _Future(core)
            job = _FutureJob(fut, f"submit({_name(fn)}, {reprlib.repr(args)})", self)
            core.submit(job, [(tid, 0, msg)], True)
            return fut

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``: every call is submitted now; the results come in order.
        ``TimeoutError`` if a result is not there ``timeout`` seconds after this call."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        with self._shutdown_lock:
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            core = self._core
            items = list(zip(*iterables))
            nchunks = (len(items) + chunksize - 1) // chunksize
            job = IMapIterator(self, core, None, None, chunksize, _w.STARMAP,
                               f"map({_name(fn)})", nchunks)
            tasks = []
            fbytes = _w.pickle_function(fn)
            kind = _w.STAR1 if chunksize == 1 else _w.STARMAP
            for index in range(nchunks):
                if chunksize == 1:
                    chunk = items[index]
                else:
                    chunk = tuple(items[index * chunksize:(index + 1) * chunksize])
                tid = next(core.tids)
                tasks.append((tid, index, _w.encode_call(tid, fbytes, kind, chunk, None)))
            if tasks:
                core.submit(job, tasks, True)
        end = None if timeout is None else time.monotonic() + timeout
        return _map_results(job, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks. ``cancel_futures``: cancels the futures not handed to a worker yet.
        ``wait``: returns once every other future is done and the workers have exited."""
        with self._shutdown_lock:
            self._shutdown_thread = True
        core = self._core
        if core is None:
            return
        if cancel_futures:
            cancelled: List[_Future] = []

            def cancel(job: Job, index: int) -> bool:
                if isinstance(job, _FutureJob):
                    cancelled.append(job.future)
                    return True
                return False

            core.cancel_backlog([], cancel)
            for f in cancelled:
                f.cancel()
        core.close()
        if wait:
            core.join()
        else:
            core.stop_when_idle()


def _map_results(job: IMapIterator, end: Optional[float]) -> Iterator[Any]:
    try:
        while True:
            timeout = None if end is None else max(0.0, end - time.monotonic())
            try:
                item = job.next(timeout)
            except StopIteration:
                return
            except _MpTimeoutError:
                raise _cf.TimeoutError() from None
            yield item
    finally:
        # The consumer stopped early (or a result raised): the rest need not run.
        job._core.cancel_pending(job)
