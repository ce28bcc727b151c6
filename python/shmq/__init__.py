"""shmq: lock-free shared-memory queues and pipes between processes.

A drop-in, much faster replacement for ``multiprocessing.Queue``, ``SimpleQueue``,
``JoinableQueue`` and ``Pipe``::

    import shmq
    q = shmq.Queue()
    q.put({"job": 1}); q.get()
    a, b = shmq.Pipe()
    a.send_bytes(b"ping"); b.recv_bytes()
    with q.get_view() as mv: ...         # zero copy
    jobs = shmq.Queue(name="jobs")       # unrelated processes: shmq.Queue.open("jobs")
    await q.get_async(); conn.fileno()   # asyncio and readiness fds
    with shmq.Manager() as m: d = m.dict()   # multiprocessing's managers over shmq pipes

Exceptions are those of multiprocessing: ``queue.Empty``/``queue.Full`` (re-exported here as
``shmq.Empty``/``shmq.Full``), ``EOFError``, ``BrokenPipeError``, ``ValueError`` after
``close()``, ``OSError`` subclasses for system errors.
"""

from queue import Empty, Full

from ._common import gc, unlink
from ._connection import BufferTooShort, Connection, Pipe, wait
from ._queues import JoinableQueue, Lease, MessageView, Queue, SimpleQueue
from .sharedctypes import Array, RawArray, RawValue, Value
from .synchronize import (Barrier, BoundedSemaphore, BrokenBarrierError, Condition, Event, Lock,
                          OwnerDiedWarning, RLock, Semaphore)
from . import fb  # shmq.fb: FlatBuffers built from dicts, read lazily (put_fb / get_fb)
from .futures import ProcessPoolExecutor
from .pool import Pool, WorkerLost

__version__ = "0.1.0"

__all__ = [
    "Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Connection", "wait", "MessageView", "Lease",
    "Empty", "Full", "BufferTooShort", "gc", "unlink", "fb", "Manager",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray", "OwnerDiedWarning", "BrokenBarrierError",
    "Pool", "ProcessPoolExecutor", "WorkerLost",
]


def __getattr__(name: str):
    # shmq.Manager and shmq.managers import multiprocessing.managers (and its pool): on first use.
    if name in ("Manager", "managers"):
        import importlib
        managers = importlib.import_module(__name__ + ".managers")
        return managers if name == "managers" else managers.Manager
    raise AttributeError(f"module 'shmq' has no attribute {name!r}")
