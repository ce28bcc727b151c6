"""The worker side of shmq.Pool and shmq.ProcessPoolExecutor, and the task message format.

A task message is what the parent puts into one worker's own task queue:

* ``bytes``: a pickle (protocol 5) of ``(function, kind, args, kwds)`` followed by the task id
  (8 bytes, little-endian; ``pickle.loads`` ignores bytes after the pickle); or
* ``(those bytes, [buffers])`` when the pickle has out-of-band buffers (a numpy array's data,
  say): the Queue's codec carries the buffers out of band, copied once into shared memory.

``function`` is itself pickled once per call (``pickle_function``) and travels as bytes: the
worker keeps the functions it has seen by those bytes, so a tiny task costs neither pickling
nor importing its function again. The task id is at the end so that the parent can read it from
a message it takes back from a dead or stalled worker's queue without unpickling anything.
``kind`` says how to call: ``APPLY`` ``func(*args, **kwds)``, ``MAP`` ``[func(x) for x in
args]``, ``STARMAP`` ``[func(*x) for x in args]``, and for chunks of one item ``CALL1``
``func(args)``, ``STAR1`` ``func(*args)``.

A worker answers each task with one message on the shared result queue,
``(tid, ok, value, seconds)``: ``value`` is the return value (a list for MAP/STARMAP) or, with
``ok`` False, the exception wrapped so that it re-raises in the parent with the remote traceback
as its ``__cause__`` (multiprocessing's ExceptionWithTraceback). It takes one task at a time and
answers it before taking the next, so at any moment it holds at most one task that has no answer:
that is what makes the parent's accounting after a death exact. ``None`` in its queue asks it to
exit. A worker reports ``("ready", wid)`` once its initializer ran (it gets tasks from then on), or
``("init-error", wid, exception)`` if the initializer raised, and then exits.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import time
from itertools import starmap
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError
from typing import Any, Callable, List, Optional, Sequence

from ._queues import Empty, Queue

__all__ = ["APPLY", "MAP", "STARMAP", "CALL1", "STAR1", "TRAILER", "single", "pickle_function",
           "encode_call", "task_id", "worker_main"]

APPLY, MAP, STARMAP, CALL1, STAR1 = 0, 1, 2, 3, 4


def single(kind: int) -> int:
    """The kind for a chunk of one item (no list around the argument or the result)."""
    return CALL1 if kind == MAP else STAR1 if kind == STARMAP else kind


# The task id, after a task's pickle.
TRAILER = struct.Struct("<Q")
# How often an idle worker looks whether its parent still exists (seconds).
_PARENT_CHECK = 0.5
# Functions a worker keeps unpickled (by their pickled bytes).
_FUNCTION_CACHE = 64


def pickle_function(func: Callable[..., Any]) -> bytes:
    """Pickles the function of a call once. Raises in the caller if it cannot be pickled."""
    return pickle.dumps(func, protocol=5)


def encode_call(tid: int, func: bytes, kind: int, args: Any, kwds: Optional[dict]) -> Any:
    """The message for task ``tid``: calling ``func`` (from pickle_function) as ``kind`` says.
    Raises at once, in the caller, if an argument cannot be pickled."""
    buffers: List[pickle.PickleBuffer] = []
    raw = pickle.dumps((func, kind, args, kwds), protocol=5,
                       buffer_callback=buffers.append) + TRAILER.pack(tid)
    return (raw, buffers) if buffers else raw


def task_id(msg: Any) -> int:
    raw = msg[0] if type(msg) is tuple else msg
    return TRAILER.unpack_from(raw, len(raw) - 8)[0]


def worker_main(task_name: str, result_name: str, wid: int,
                initializer: Optional[Callable[..., Any]], initargs: Sequence[Any],
                maxtasks: Optional[int]) -> None:
    """A pool worker's life: run the initializer, then answer tasks until told to stop, until
    ``maxtasks`` tasks are done, or until the parent is gone."""
    # Ctrl-C reaches the whole process group: the parent decides what it means (its map() raises
    # KeyboardInterrupt and terminate() ends the workers), so a worker never dies of it mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    # Fresh handles by name (never the parent's objects, which fork may have copied mid-use).
    tasks = Queue.open(task_name)
    results = Queue.open(result_name)
    put = results.put
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, then this worker ends
            put(("init-error", wid, _wrapped(e)))
            raise SystemExit(1)
    put(("ready", wid))
    get = tasks.get
    loads = pickle.loads
    clock = time.perf_counter
    unpack = TRAILER.unpack_from
    functions: dict = {}
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            msg = get(True, _PARENT_CHECK)
        except Empty:
            if os.getppid() != parent:
                break
            continue
        if msg is None:
            break
        if type(msg) is tuple:
            raw, buffers = msg
        else:
            raw, buffers = msg, None
        tid = unpack(raw, len(raw) - 8)[0]
        t0 = clock()
        try:
            fbytes, kind, args, kwds = loads(raw, buffers=buffers)
            func = functions.get(fbytes)
            if func is None:
                if len(functions) >= _FUNCTION_CACHE:
                    functions.clear()
                func = functions[fbytes] = loads(fbytes)
            if kind == CALL1:
                value = func(args)
            elif kind == MAP:
                value = list(map(func, args))
            elif kind == STAR1:
                value = func(*args)
            elif kind == STARMAP:
                value = list(starmap(func, args))
            else:
                value = func(*args, **kwds)
            ok = True
        except Exception as e:
            ok, value = False, _wrapped(e)
        took = clock() - t0
        try:
            put((tid, ok, value, took))
        except Exception as e:
            put((tid, False, MaybeEncodingError(e, value), took))
        # Drop references before waiting for the next task (the parent may count live objects).
        msg = raw = buffers = func = args = kwds = value = None
        done += 1


def _wrapped(e: BaseException) -> Any:
    """``e`` as it should travel: with its traceback text, re-raised in the parent with that
    text as ``__cause__``; if ``e`` cannot be pickled, a MaybeEncodingError that can."""
    w = ExceptionWithTraceback(e, e.__traceback__)
    try:
        pickle.dumps(w, protocol=5, buffer_callback=lambda b: None)
    except Exception as pe:
        return MaybeEncodingError(pe, e)
    return w
