"""Process-shared synchronization primitives with multiprocessing's API: Lock, RLock, Semaphore,
BoundedSemaphore, Condition, Event and Barrier.

Each is a futex word in a shmq arena (a shared segment holding many such objects). Unlike
multiprocessing's, none of them can be wedged by a process that dies, even with ``kill -9``:

- a lock records its holder; the next ``acquire`` after the holder died takes the lock, returns
  ``True`` and emits :class:`OwnerDiedWarning` naming the dead pid (what the lock protected may
  be half-updated);
- a semaphore returns the units a dead process held (for semaphores created with units, see
  ``track_units``);
- a barrier breaks (``threading.BrokenBarrierError``) when one of its parties dies.

They pickle by name, so they pass to ``Process`` under fork, spawn and forkserver and travel
through shmq queues; an object lives while some process holds it.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import process as _mp_process
from typing import Any, Callable, Optional, Tuple

from . import _shmq

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
           "OwnerDiedWarning", "BrokenBarrierError"]

BrokenBarrierError = threading.BrokenBarrierError


class OwnerDiedWarning(RuntimeWarning):
    """Emitted by the ``acquire`` that took over a lock whose holder died holding it."""


_shmq.sync_set_warning(OwnerDiedWarning)

Handle = Tuple[str, int, int, int]  # (arena, block index, generation, kind)


def _open(handle: Handle) -> Any:
    arena, index, generation, kind = handle
    return _shmq.sync_open(arena, index, generation, kind)


# ---- Lock and RLock ---------------------------------------------------------------------------

def _rebuild_lock(cls: type, handle: Handle, offset: int, recursive: bool) -> Any:
    return _shmq.LockBase.__new__(cls, _open(handle), offset, recursive, False)


def _owner_name() -> str:
    name = _mp_process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class Lock(_shmq.LockBase):
    """``multiprocessing.Lock()``: ``acquire(block=True, timeout=None)``, ``release()``, a context
    manager. Any thread or process may release it; releasing it unlocked raises ValueError."""

    def __new__(cls, *, ctx: Any = None) -> "Lock":
        block = _shmq.sync_alloc(_shmq.SYNC_MUTEX, _shmq.SYNC_VALUE_LOCK_BYTES)
        return super().__new__(cls, block, 0, False, True)

    @classmethod
    def _over(cls, block: Any, offset: int) -> Any:
        """A new lock inside `block` (a Value's own lock)."""
        return _shmq.LockBase.__new__(cls, block, offset, cls is RLock, True)

    def __reduce__(self) -> Any:
        return _rebuild_lock, (type(self), self._block.handle, self._offset, self._recursive)

    def __repr__(self) -> str:
        try:
            if self._is_mine():
                name = _owner_name()
            elif self._holder_pid() == 0:
                name = "None"
            elif self._holder_pid() == os.getpid():
                name = "SomeOtherThread"
            else:
                name = "SomeOtherProcess"
        except Exception:  # noqa: BLE001 - repr must not fail
            name = "unknown"
        return f"<{type(self).__name__}(owner={name})>"


class RLock(Lock):
    """``multiprocessing.RLock()``: the holding thread may acquire it again; only it may release
    it (AssertionError otherwise)."""

    def __new__(cls, *, ctx: Any = None) -> "RLock":
        block = _shmq.sync_alloc(_shmq.SYNC_RECURSIVE_MUTEX, _shmq.SYNC_VALUE_LOCK_BYTES)
        return _shmq.LockBase.__new__(cls, block, 0, True, True)

    def __repr__(self) -> str:
        try:
            if self._is_mine():
                name, count = _owner_name(), self._count()
            elif self._holder_pid() == 0:
                name, count = "None", 0
            elif self._holder_pid() == os.getpid():
                name, count = "SomeOtherThread", "nonzero"
            else:
                name, count = "SomeOtherProcess", "nonzero"
        except Exception:  # noqa: BLE001 - repr must not fail
            name, count = "unknown", "unknown"
        return f"<{type(self).__name__}({name}, {count})>"


# ---- Semaphore ----------------------------------------------------------------------------------

def _rebuild(cls: type, handle: Handle, *extra: Any) -> Any:
    obj = cls.__new__(cls)
    obj._setup(_open(handle), *extra)
    return obj


class Semaphore:
    """``multiprocessing.Semaphore(value=1)``.

    ``track_units`` (default: ``value > 0``) makes the semaphore remember how many units each
    process holds and give back those of a process that dies. Leave it off for a semaphore used
    to signal between processes (acquired in one, released in another), where a dead consumer's
    units were meant to be consumed.
    """

    _BOUNDED = False

    def __init__(self, value: int = 1, *, ctx: Any = None, track_units: Optional[bool] = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value > _shmq.SEMAPHORE_MAX:
            raise ValueError(f"semaphore initial value must be <= {_shmq.SEMAPHORE_MAX}")
        bound = value if self._BOUNDED else _shmq.SEMAPHORE_MAX
        track = value > 0 if track_units is None else bool(track_units)
        self._setup(_shmq.sync_new_semaphore(value, bound, track))

    def _setup(self, block: Any) -> None:
        self._block = block
        self._core = _shmq.SemaphoreCore(block)

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        return self._core.acquire(block, timeout)

    def release(self) -> None:
        self._core.release()

    def get_value(self) -> int:
        return self._core.get_value()

    def __enter__(self) -> bool:
        return self._core.acquire()

    def __exit__(self, *args: Any) -> None:
        self._core.release()

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self._block.handle)

    def __repr__(self) -> str:
        try:
            value = self.get_value()
        except Exception:  # noqa: BLE001 - repr must not fail
            value = "unknown"
        if self._BOUNDED:
            return f"<{type(self).__name__}(value={value}, maxvalue={self._core.bound})>"
        return f"<{type(self).__name__}(value={value})>"


class BoundedSemaphore(Semaphore):
    """``multiprocessing.BoundedSemaphore(value=1)``: releasing past the initial value raises
    ValueError."""

    _BOUNDED = True


# ---- Event --------------------------------------------------------------------------------------

class Event:
    """``multiprocessing.Event()``: ``set``, ``clear``, ``is_set``, ``wait(timeout=None)``."""

    def __init__(self, *, ctx: Any = None) -> None:
        self._setup(_shmq.sync_new_event())

    def _setup(self, block: Any) -> None:
        self._block = block
        self._core = _shmq.EventCore(block)

    def is_set(self) -> bool:
        return self._core.is_set()

    def set(self) -> None:
        self._core.set()

    def clear(self) -> None:
        self._core.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True if the flag is set, or was set at some moment of the wait."""
        return self._core.wait(timeout)

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self._block.handle)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


# ---- Condition ----------------------------------------------------------------------------------

class Condition:
    """``multiprocessing.Condition(lock=None)`` (a new RLock by default; a shmq Lock or RLock).

    ``notify(n)`` wakes the n longest-waiting processes or threads, never one that began to wait
    after the call.
    """

    def __init__(self, lock: Optional[Lock] = None, *, ctx: Any = None) -> None:
        lock = RLock() if lock is None else lock
        if not isinstance(lock, _shmq.LockBase):
            raise TypeError(f"a shmq Condition needs a shmq Lock or RLock, not {type(lock).__name__}")
        self._setup(_shmq.sync_new_condition(), lock)

    def _setup(self, block: Any, lock: Lock) -> None:
        self._block = block
        self._core = _shmq.ConditionCore(block)
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> None:
        return self._lock.__exit__(*args)

    def wait(self, timeout: Optional[float] = None) -> bool:
        if not self._lock._is_mine():
            raise AssertionError("must acquire() condition before using wait()")
        return self._core.wait(self._lock, timeout)

    def notify(self, n: int = 1) -> None:
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        if n > 0:
            self._core.notify(n)

    def notify_all(self) -> None:
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        self._core.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self._block.handle, self._lock)

    def __repr__(self) -> str:
        try:
            waiting = self._core.waiting()
        except Exception:  # noqa: BLE001 - repr must not fail
            waiting = "unknown"
        return f"<{type(self).__name__}({self._lock}, {waiting})>"


# ---- Barrier ------------------------------------------------------------------------------------

class Barrier:
    """``multiprocessing.Barrier(parties, action=None, timeout=None)``: ``wait(timeout=None)``
    returns the arrival index (``parties - 1`` for the last, which runs ``action``); ``abort``,
    ``reset``, ``parties``, ``n_waiting``, ``broken``. A party that dies breaks it. A timeout, an
    exception of ``action`` or one raised by a signal handler inside ``wait`` breaks it too."""

    def __init__(self, parties: int, action: Optional[Callable[[], Any]] = None,
                 timeout: Optional[float] = None, *, ctx: Any = None) -> None:
        if parties < 1:
            raise ValueError("parties must be > 0")
        self._setup(_shmq.sync_new_barrier(parties), action, timeout)

    def _setup(self, block: Any, action: Optional[Callable[[], Any]], timeout: Optional[float]) -> None:
        self._block = block
        self._core = _shmq.BarrierCore(block)
        self._action = action
        self._timeout = timeout

    def wait(self, timeout: Optional[float] = None) -> int:
        return self._core.wait(self._timeout if timeout is None else timeout, self._action)

    def reset(self) -> None:
        self._core.reset()

    def abort(self) -> None:
        self._core.abort()

    @property
    def parties(self) -> int:
        return self._core.parties

    @property
    def n_waiting(self) -> int:
        return self._core.n_waiting

    @property
    def broken(self) -> bool:
        return self._core.broken

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self._block.handle, self._action, self._timeout)

    def __repr__(self) -> str:
        if self.broken:
            return f"<{type(self).__name__} at {id(self):#x}: broken>"
        return (f"<{type(self).__name__} at {id(self):#x}: "
                f"waiters={self.n_waiting}/{self.parties}>")
