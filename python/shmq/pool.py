"""shmq.Pool: multiprocessing.Pool's interface over shmq queues, and a killed worker costs one task.

``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None, *,
retries=0)`` has multiprocessing.Pool's whole surface (apply, apply_async, map, map_async, imap,
imap_unordered, starmap, starmap_async, close, terminate, join, the context manager, AsyncResult).
How it works is in _pool_core's docstring. What differs:

* A worker that dies (any signal, ``os._exit``, the OOM killer) is replaced at once; the task it
  was running is retried (``retries=N``) or its result raises ``shmq.WorkerLost``. Every other
  task completes and the pool stays usable (multiprocessing's Pool waits forever).
* Arguments are pickled in the calling thread: an unpicklable function or argument raises in
  ``apply_async``/``map_async``/... (for ``imap``, at that item's place in the results).
* ``terminate()`` fails every unfinished result with RuntimeError (its error_callback runs)
  instead of leaving it pending forever.
* After a failed chunk, ``imap``/``imap_unordered`` go on with the next chunks (multiprocessing
  ends a chunked imap there).
* ``context`` may also be a start method's name ("fork", "spawn", "forkserver").
* Workers ignore SIGINT: Ctrl-C interrupts the caller (``map`` raises KeyboardInterrupt); the
  pool's ``terminate()`` (or the context manager, or interpreter exit) ends the workers.
* Callbacks run in the thread that reads the results: the caller's own thread while it waits,
  else a helper thread.
"""

from __future__ import annotations

import itertools
import os
import pickle
import reprlib
import warnings
from collections import deque
from multiprocessing import TimeoutError as _MpTimeoutError
from multiprocessing import get_context as _get_context
from multiprocessing import util as _mp_util
from multiprocessing.pool import CLOSE, RUN, TERMINATE
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from . import _pool_worker as _w
from ._pool_core import Job, PoolCore, WorkerLost

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator", "WorkerLost"]


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _context(context: Any) -> Any:
    if context is None:
        return _get_context()
    if isinstance(context, str):
        return _get_context(context)
    return context


# map pickles its chunks in batches (1, 2, 4, ... up to this many) and hands each batch out at once.
_SUBMIT_BATCH = 256


class _PoolBroken(RuntimeError):
    """Every fresh worker's initializer raised: nothing can run."""


def _broken(cause: BaseException) -> BaseException:
    e = _PoolBroken("the pool's initializer raised in every new worker; see __cause__")
    e.__cause__ = cause
    return e


# ---- results ------------------------------------------------------------------------------------


class ApplyResult(Job):
    """What ``apply_async`` returns (multiprocessing.pool.ApplyResult): ``get(timeout)``,
    ``wait(timeout)``, ``ready()``, ``successful()``."""

    def __init__(self, pool: "Pool", callback: Optional[Callable[[Any], Any]],
                 error_callback: Optional[Callable[[BaseException], Any]], what: str) -> None:
        self._pool: Optional[Pool] = pool   # keeps the pool alive while the result is pending
        self._core = pool._core
        self._callback = callback
        self._error_callback = error_callback
        self.push = callback is not None or error_callback is not None
        self._what = what
        self._ready = False
        self._success = False
        self._value: Any = None

    def ready(self) -> bool:
        if not self._ready:
            self._core.poll()
        return self._ready

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        self._core.wait_until(self._is_ready, timeout)

    def _is_ready(self) -> bool:
        return self._ready

    def get(self, timeout: Optional[float] = None) -> Any:
        if not self._ready and not self._core.wait_until(self._is_ready, timeout):
            raise _MpTimeoutError
        if self._success:
            return self._value
        raise self._value

    def describe(self, index: int) -> str:
        return self._what

    # -- filing (the core's lock held)
    def _complete(self, ok: bool, value: Any, actions: List[Callable[[], None]]) -> None:
        self._success, self._value = ok, value
        if self.push:
            actions.append(self._finish)
        else:
            self._ready = True
            self._pool = None

    def _finish(self) -> None:
        try:
            if self._success:
                if self._callback is not None:
                    self._callback(self._value)
            elif self._error_callback is not None:
                self._error_callback(self._value)
        finally:
            self._ready = True
            self._pool = None

    def on_result(self, index: int, ok: bool, value: Any,
                  actions: List[Callable[[], None]]) -> None:
        self._complete(ok, value, actions)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """What ``map_async``/``starmap_async`` return: ready once every chunk is back; ``get()``
    raises the first error (a chunk's exception or WorkerLost) after all chunks finished."""

    def __init__(self, pool: "Pool", chunksize: int, length: int, nchunks: int,
                 callback: Optional[Callable[[Any], Any]],
                 error_callback: Optional[Callable[[BaseException], Any]], what: str) -> None:
        super().__init__(pool, callback, error_callback, what)
        self._chunksize = chunksize
        self._length = length
        self._left = nchunks
        self._success = True
        self._value = [None] * length
        if nchunks == 0:
            self._ready = True
            self._pool = None

    def describe(self, index: int) -> str:
        first = index * self._chunksize
        last = min(self._length, first + self._chunksize) - 1
        if first == last:
            return f"{self._what} item {first}"
        return f"{self._what} items {first}-{last}"

    def on_result(self, index: int, ok: bool, value: Any,
                  actions: List[Callable[[], None]]) -> None:
        self._left -= 1
        if ok and self._success:
            cs = self._chunksize
            if cs == 1:
                self._value[index] = value   # a chunk of one: the value itself
            else:
                self._value[index * cs:(index + 1) * cs] = value
        elif not ok and self._success:
            self._success = False
            self._value = value   # only the first error is kept
        if self._left == 0:
            self._complete(self._success, self._value, actions)


class IMapIterator(Job):
    """What ``imap`` returns: results in input order; ``next(timeout)`` raises
    multiprocessing.TimeoutError when nothing arrived in time. A failed chunk raises its
    exception (or WorkerLost) at its place; iteration then goes on with the next chunk.

    The leader files results (``_record``, core lock held) and one consumer takes them: each
    side only appends to or pops from its ends, which the GIL makes atomic."""

    _ordered = True

    def __init__(self, owner: Any, core: PoolCore, func: Optional[bytes],
                 iterable: Optional[Iterable[Any]], chunksize: int, kind: int, what: str,
                 nchunks: int = 0) -> None:
        """``iterable`` is read lazily as the workers have room; None means the caller submits
        ``nchunks`` chunks itself (executor map)."""
        self._pool: Any = owner            # keeps the pool alive while results are pending
        self._core = core
        self._func = func
        self._it: Optional[Iterator[Any]] = None if iterable is None else iter(iterable)
        self._chunksize = chunksize
        self._kind = _w.single(kind) if chunksize == 1 else kind   # one item: the value alone
        self._what = what
        self._made = nchunks              # chunks pulled from the input so far
        self._length: Optional[int] = None if iterable is not None else nchunks
        self._done: Dict[int, Tuple[bool, Any]] = {}   # ordered: chunk index -> (ok, value)
        self._ready: Deque[Tuple[bool, Any]] = deque()  # unordered: in completion order
        self._next = 0                     # ordered: the next chunk to yield
        self._taken = 0                    # chunks yielded
        self._filed = 0                    # chunks whose result is in
        self._current: List[Any] = []
        self._pos = 0

    # -- the lazy source (core's lock held)
    def pull(self, n: int, tids: Iterator[int]) -> Tuple[List[Tuple[int, int, Any]], bool]:
        out: List[Tuple[int, int, Any]] = []
        it = self._it
        if it is None:
            return out, False
        func, kind, size = self._func, self._kind, self._chunksize
        encode = _w.encode_call
        while len(out) < n:
            try:
                if size == 1:
                    chunk: Any = next(it)
                else:
                    chunk = tuple(itertools.islice(it, size))
                    if not chunk:
                        raise StopIteration
            except StopIteration:
                self._end()
                return out, False
            except Exception as e:
                # The input raised: that is the result at this place (as in multiprocessing).
                self._record(self._made, False, e)
                self._made += 1
                self._end()
                return out, False
            index = self._made
            self._made += 1
            tid = next(tids)
            try:
                out.append((tid, index, encode(tid, func, kind, chunk, None)))
            except Exception as e:
                self._record(index, False, e)
        return out, True

    def _end(self) -> None:
        self._it = None
        self._func = None
        self._length = self._made
        if self._filed >= self._length:
            self._pool = None

    def _record(self, index: int, ok: bool, value: Any) -> None:
        if self._ordered:
            self._done[index] = (ok, value)
        else:
            self._ready.append((ok, value))
        self._filed += 1
        if self._length is not None and self._filed >= self._length:
            self._pool = None   # every result is in: the pool may go

    def on_result(self, index: int, ok: bool, value: Any,
                  actions: List[Callable[[], None]]) -> None:
        self._record(index, ok, value)

    def end_input(self) -> None:
        if self._it is not None or self._length is None:
            self._end()

    def describe(self, index: int) -> str:
        first = index * self._chunksize
        last = first + self._chunksize - 1
        if first == last:
            return f"{self._what} item {first}"
        return f"{self._what} items {first}-{last}"

    # -- the consumer
    def __iter__(self) -> "IMapIterator":
        return self

    def _exhausted(self) -> bool:
        length = self._length
        return length is not None and self._taken >= length

    def _available(self) -> bool:
        if self._ordered:
            return self._next in self._done or self._exhausted()
        return bool(self._ready) or self._exhausted()

    def _take(self) -> Optional[Tuple[bool, Any]]:
        if self._ordered:
            got = self._done.pop(self._next, None)
            if got is not None:
                self._next += 1
        else:
            got = self._ready.popleft() if self._ready else None
        if got is not None:
            self._taken += 1
        return got

    def next(self, timeout: Optional[float] = None) -> Any:
        pos = self._pos
        current = self._current
        if pos < len(current):
            self._pos = pos + 1
            return current[pos]
        while True:
            got = self._take()
            if got is None:
                if self._exhausted():
                    self._pool = None
                    raise StopIteration
                if not self._core.wait_until(self._available, timeout):
                    raise _MpTimeoutError
                continue
            ok, value = got
            if not ok:
                self._current, self._pos = [], 0
                raise value
            if self._chunksize == 1:
                return value
            if value:
                self._current, self._pos = value, 1
                return value[0]

    __next__ = next


class IMapUnorderedIterator(IMapIterator):
    """What ``imap_unordered`` returns: results in completion order."""

    _ordered = False


# ---- the pool -----------------------------------------------------------------------------------


class Pool:
    """A process pool with multiprocessing.Pool's interface; see the module docstring."""

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Sequence[Any] = (),
                 maxtasksperchild: Optional[int] = None, context: Any = None, *,
                 retries: int = 0) -> None:
        self._state = RUN   # set first: __del__ reads it even if __init__ fails
        self._core: Optional[PoolCore] = None
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a non-negative int")
        self._ctx = _context(context)
        self._processes = processes
        self._maxtasksperchild = maxtasksperchild
        self._retries = retries
        self._core = PoolCore(processes, self._ctx, initializer, initargs, maxtasksperchild,
                              retries, _broken, finish_at_exit=False)
        self._terminate = _mp_util.Finalize(self, self._core.terminate, exitpriority=15)

    # ---- multiprocessing.Pool's private attributes that its tests (and some users) read
    @property
    def _pool(self) -> List[Any]:
        """The live worker Process objects."""
        self._core.poll()
        return self._core.worker_processes()

    def _repopulate_pool(self) -> None:
        """Handles exits seen so far (the pool replaces dead workers by itself)."""
        self._core.poll()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<shmq.Pool state={self._state} pool_size={self._processes}>"

    def __del__(self, _warn: Any = warnings.warn, RUN: str = RUN) -> None:
        if getattr(self, "_state", None) == RUN and getattr(self, "_core", None) is not None:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    # ---- calls
    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: Dict[str, Any] = {}) -> Any:
        """``func(*args, **kwds)`` in a worker; returns its result."""
        with self._core.leading():
            return self._wait(self._apply(func, args, kwds, None, None, False))

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: Dict[str, Any] = {}, callback: Optional[Callable[[Any], Any]] = None,
                    error_callback: Optional[Callable[[BaseException], Any]] = None) -> ApplyResult:
        """Runs ``func(*args, **kwds)`` in a worker; returns an ApplyResult."""
        return self._apply(func, args, kwds, callback, error_callback, True)

    def _apply(self, func: Callable[..., Any], args: Iterable[Any], kwds: Dict[str, Any],
               callback: Any, error_callback: Any, wake: bool) -> ApplyResult:
        self._check_running()
        args = tuple(args)
        kwds = dict(kwds)
        what = f"apply({_name(func)}, {reprlib.repr(args)})"
        tid = next(self._core.tids)
        msg = _w.encode_call(tid, _w.pickle_function(func), _w.APPLY, args, kwds)
        result = ApplyResult(self, callback, error_callback, what)
        self._core.submit(result, [(tid, 0, msg)], wake)
        return result

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: Optional[int] = None) -> List[Any]:
        """``list(map(func, iterable))`` computed by the workers, ``chunksize`` items per task."""
        with self._core.leading():
            return self._wait(self._map_async(func, iterable, _w.MAP, chunksize, None, None, False))

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None) -> List[Any]:
        """Like map, with each item unpacked as arguments: ``func(*item)``."""
        with self._core.leading():
            return self._wait(self._map_async(func, iterable, _w.STARMAP, chunksize, None, None,
                                              False))

    def _wait(self, result: ApplyResult) -> Any:
        """The result of a synchronous call. If the wait is interrupted (Ctrl-C), the call's tasks
        that no worker was given yet are dropped: nobody can get their results any more."""
        try:
            return result.get()
        except BaseException:
            if not result._ready:
                self._core.cancel_pending(result)
            raise

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: Optional[int] = None, callback: Optional[Callable[[Any], Any]] = None,
                  error_callback: Optional[Callable[[BaseException], Any]] = None) -> MapResult:
        return self._map_async(func, iterable, _w.MAP, chunksize, callback, error_callback, True)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None,
                      callback: Optional[Callable[[Any], Any]] = None,
                      error_callback: Optional[Callable[[BaseException], Any]] = None) -> MapResult:
        return self._map_async(func, iterable, _w.STARMAP, chunksize, callback, error_callback,
                               True)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], kind: int,
                   chunksize: Optional[int], callback: Any, error_callback: Any,
                   wake: bool) -> MapResult:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        n = len(iterable)  # type: ignore[arg-type]
        if chunksize is None:
            # multiprocessing's rule: about four chunks per worker
            chunksize, extra = divmod(n, self._processes * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if n == 0:
            chunksize = 0
        nchunks = 0 if n == 0 else (n + chunksize - 1) // chunksize
        what = f"{'starmap' if kind == _w.STARMAP else 'map'}({_name(func)})"
        result = MapResult(self, chunksize, n, nchunks, callback, error_callback, what)
        if nchunks:
            self._submit_chunks(result, func, kind, iterable, chunksize, wake)
        return result

    def _submit_chunks(self, result: MapResult, func: Callable[..., Any], kind: int,
                       iterable: Iterable[Any], chunksize: int, wake: bool) -> None:
        """Pickles the chunks in this thread (an error raises here) and hands them out in
        batches as they are pickled, so the workers start at once."""
        core = self._core
        tids = core.tids
        fbytes = _w.pickle_function(func)
        dumps = pickle.dumps
        trailer = _w.TRAILER.pack
        buffers: List[Any] = []
        batch: List[Tuple[int, int, Any]] = []
        limit = 1   # the first chunk goes out at once, then batches double up to _SUBMIT_BATCH
        try:
            if chunksize == 1:
                kind = _w.single(kind)   # the item itself, no tuple around it
                chunks: Iterable[Any] = iterable
            elif type(iterable) in (list, tuple, range):
                # A slice: a memcpy of a list, three numbers for a range.
                seq: Any = iterable
                chunks = (seq[i:i + chunksize] for i in range(0, len(seq), chunksize))
            else:
                it = iter(iterable)
                chunks = iter(lambda: tuple(itertools.islice(it, chunksize)), ())
            # encode_call, inlined: this loop runs once per task of a map
            for index, chunk in enumerate(chunks):
                tid = next(tids)
                raw = dumps((fbytes, kind, chunk, None), 5, buffer_callback=buffers.append)
                if buffers:
                    batch.append((tid, index, (raw + trailer(tid), buffers)))
                    buffers = []
                else:
                    batch.append((tid, index, raw + trailer(tid)))
                if len(batch) >= limit:
                    core.drain_if_leading()
                    core.submit(result, batch, False)
                    batch = []
                    limit = min(2 * limit, _SUBMIT_BATCH)
            if batch:
                core.submit(result, batch, wake)
        except BaseException:
            # Chunks already handed out still run; their results go nowhere.
            core.cancel_pending(result)
            raise

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int = 1) -> IMapIterator:
        """Like map, lazily: results in order as they come (the input is read as the workers
        have room)."""
        return self._imap(IMapIterator, func, iterable, chunksize, "imap")

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapIterator:
        """Like imap, results in completion order."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, "imap_unordered")

    def _imap(self, cls: Any, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              what: str) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        it = cls(self, self._core, _w.pickle_function(func), iterable, chunksize, _w.MAP,
                 f"{what}({_name(func)})")
        self._core.add_source(it)
        return it

    # ---- ending
    def close(self) -> None:
        """No more tasks; the workers exit once the submitted ones are done (see join)."""
        if self._state == RUN:
            self._state = CLOSE
            self._core.close()

    def terminate(self) -> None:
        """Stops the workers now; unfinished results raise RuntimeError."""
        self._state = TERMINATE
        self._terminate()

    def join(self) -> None:
        """Waits for the workers to exit (after close(): once every task is done)."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._core.join()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()
