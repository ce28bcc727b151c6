"""Queue, SimpleQueue and JoinableQueue over a shared-memory MPMC ring.

Each class mirrors its multiprocessing namesake; the docstrings list every difference.
"""

from __future__ import annotations

import queue as _queue_mod
from typing import Any, Iterable, List, Optional, Type, TypeVar

from . import _common, _shmq

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "MessageView", "Lease"]

Empty = _queue_mod.Empty
Full = _queue_mod.Full

_Q = TypeVar("_Q", bound="Queue")

DEFAULT_SLOTS = 4096
# Messages up to this size (bytes, or a pickle) travel inside a slot; larger ones take an arena
# chunk (a CAS) or, failing that, a file (create + mmap + unlink, ~60 us at 64 KiB). 2 KiB x 4096
# slots = 8 MiB of /dev/shm per queue.
DEFAULT_SLOT_SIZE = 2048
# Messages larger than a slot go to the large-message arena: this many chunks of this many bytes
# in the queue's segment (only touched pages take memory); larger ones, or any while every chunk
# is in use, to a shared-memory file of their own.
DEFAULT_ARENA_CHUNKS = 8
DEFAULT_ARENA_CHUNK_BYTES = 2 << 20

# Methods served straight by the native handle: Queue.__init__ binds them on the instance, so a
# call costs one native call and no Python frame. (A subclass that overrides one keeps its own.)
_FAST = ("put", "get", "put_nowait", "get_nowait", "put_many", "get_many", "qsize", "empty",
         "full", "put_fb", "get_fb")


class MessageView:
    """What ``Queue.get_view()`` returns: a context manager over one received message.

    ``with q.get_view() as mv:`` gives ``mv``, a read-only ``memoryview`` of the message's bytes
    in shared memory (no copy). The message keeps its slot until the block ends; then the
    memoryview is released and the slot returned to the writers. Any message kind is viewed as its
    raw payload: for a pickled object that is the pickle (see ``kind``), for a FlatBuffers message
    the buffer that ``flatc --python`` classes read.
    """

    __slots__ = ("_native", "_mv")

    def __init__(self, native: Any) -> None:
        self._native = native
        self._mv: Optional[memoryview] = None

    @property
    def kind(self) -> int:
        """The message kind: 0 raw bytes, 1 pickle, 2 FlatBuffers, 256+ user-defined."""
        return self._native.kind

    def __len__(self) -> int:
        return len(self._native)

    def __enter__(self) -> memoryview:
        self._mv = memoryview(self._native)
        return self._mv

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        """Returns the message's space to the queue. Raises BufferError if a memoryview or an
        object made from it (a numpy array, say) still refers to the shared memory; the space
        is then returned when the last such reference goes away."""
        if self._mv is not None:
            self._mv.release()
            self._mv = None
        self._native.release()


class Lease:
    """Messages taken from a Queue under a lease (``Queue.get_lease()``): they stay in the queue,
    held by this reader, until ``ack()``. If the holding process dies (even by SIGKILL) or calls
    ``release()``, they are delivered again, to the next ``get_lease()`` of any reader of the
    queue, with ``redelivered`` True; a plain ``get()`` never sees them. Each message has a stable
    id, its position in the queue (unique, increasing): a consumer that acts on the outside world
    can use it to recognise a redelivery of something it already did.

    ``with q.get_lease() as lease:`` acks when the block ends normally and releases on an
    exception. A lease not acked when it is garbage-collected is released.
    """

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def ids(self) -> List[int]:
        """The messages' ids (queue positions), in order."""
        return self._native.ids()

    @property
    def redelivered(self) -> bool:
        """True if an earlier holder died with these messages or gave them back."""
        return self._native.redelivered

    def items(self) -> List[Any]:
        """The messages, decoded as ``get()`` decodes them."""
        return self._native.items()

    def ack(self) -> None:
        """The messages are done: they leave the queue for good."""
        self._native.ack()

    def release(self) -> None:
        """Gives the messages back unacknowledged: the next ``get_lease()`` gets them."""
        self._native.release()

    def __len__(self) -> int:
        return len(self._native.ids())

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if not self._native.held:
            return
        if exc_type is None:
            self._native.ack()
        else:
            self._native.release()


class Queue:
    """A process-shared FIFO queue in shared memory; a drop-in for ``multiprocessing.Queue``.

    ``Queue(maxsize=0)`` behaves like ``multiprocessing.Queue(maxsize)``: ``put``/``get`` with
    ``block`` and ``timeout``, ``queue.Full``/``queue.Empty``, ``ValueError`` after ``close()``,
    picklable, usable by ``Process`` under fork, spawn and forkserver. Differences:

    * No feeder thread. ``put`` returns once the message is in shared memory, so pickling errors
      raise in ``put``, ``qsize()``/``empty()``/``full()`` are exact at that instant, and
      ``join_thread()``/``cancel_join_thread()`` have nothing to wait for.
    * Bounded storage. The ring has ``slots`` entries (default 4096; a message larger than
      ``slot_size`` bytes goes to the queue's large-message arena, ``arena_chunks`` chunks of
      ``arena_chunk_bytes``, or beyond that into a file of its own, so any size works). ``maxsize=0`` means
      "at most ``slots`` messages": a ``put`` into a full ring blocks (or raises ``queue.Full``
      with ``block=False``) where multiprocessing would keep buffering in the feeder thread.
      ``maxsize`` larger than ``slots`` raises ``ValueError``; pass ``slots=``.
    * ``bytes``, ``bytearray`` and ``memoryview`` travel raw and come out as ``bytes``; other
      objects use pickle protocol 5 with out-of-band buffers (a numpy array is copied once into
      shared memory and once out). ``serializer="bytes"`` refuses anything else with TypeError.
    * Handles pickle by name: a Queue can be passed to a Process in any start method and also sent
      through another queue or pipe (multiprocessing allows inheritance only).
    * ``name="jobs"`` creates (or opens, if it exists) a named queue that unrelated processes
      reach with ``Queue.open("jobs")``; a named queue lives until ``unlink()``. An unnamed queue
      disappears when its last user closes it or exits (also after SIGKILL, at the next start).
    * ``get_view()``, ``put_many()`` and ``get_many()`` are extensions; so are ``fileno()`` (a
      readiness fd, readable while a message waits) and asyncio's ``get_async()`` and
      ``put_async()``.
    * ``close()`` releases this process's shared-memory resources at once; after it every method
      of this handle raises ``ValueError`` (multiprocessing: ``put``/``get``).
    """

    _closed_error: Type[BaseException] = ValueError
    _joinable = False
    _fd: Optional[int] = None  # the readiness fd, once fileno() made it

    def __init__(self, maxsize: int = 0, *, name: Optional[str] = None,
                 slots: Optional[int] = None, slot_size: int = DEFAULT_SLOT_SIZE,
                 serializer: str = "pickle", create: Optional[bool] = None,
                 arena_chunks: int = DEFAULT_ARENA_CHUNKS,
                 arena_chunk_bytes: int = DEFAULT_ARENA_CHUNK_BYTES) -> None:
        raw_only = _common.check_serializer(serializer)
        if maxsize is None or maxsize < 0:
            maxsize = 0
        if slots is None:
            slots = DEFAULT_SLOTS
            while slots < maxsize:
                slots *= 2
        if name is None:
            _common.scan_once()
        handle = _shmq.QueueHandle(name or "", create, int(slots), int(slot_size), int(maxsize),
                                   raw_only, self._joinable, self._closed_error,
                                   int(arena_chunks), int(arena_chunk_bytes))
        self._setup(handle, serializer)

    def _setup(self, handle: Any, serializer: str) -> None:
        self._h = handle
        self._serializer = serializer
        cls = type(self)
        for m in _FAST:
            if getattr(cls, m, None) is getattr(Queue, m, None):
                setattr(self, m, getattr(handle, m))

    @classmethod
    def open(cls: Type[_Q], name: str, *, serializer: str = "pickle") -> _Q:
        """Opens the existing queue ``name``; FileNotFoundError if there is none."""
        self = cls.__new__(cls)
        raw_only = _common.check_serializer(serializer)
        handle = _shmq.QueueHandle(name, False, 0, 0, 0, raw_only, cls._joinable,
                                   cls._closed_error)
        self._setup(handle, serializer)
        return self

    # ---- pickling: by name, so a handle reaches any process (the receiver opens the segment)
    def __reduce__(self) -> Any:
        if self._h.closed:
            raise self._closed_error(f"{type(self).__name__} {self!r} is closed")
        return (_rebuild, (type(self), self._h.name, self._serializer))

    def __repr__(self) -> str:
        state = "closed" if self._h.closed else "open"
        return f"<shmq.{type(self).__name__} name={self._h.name!r} {state}>"

    # ---- the multiprocessing.Queue API (bodies run only for subclasses; see _FAST)
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Puts ``obj`` into the queue. With ``block`` (the default) waits up to ``timeout``
        seconds (forever if None) for room, then raises ``queue.Full``; without, raises
        ``queue.Full`` at once if there is no room. Returns when the message is in shared
        memory. Raises ``ValueError`` if this handle is closed, ``TypeError`` if
        serializer="bytes" and ``obj`` is not bytes-like, and what pickle raises."""
        return self._h.put(obj, block, timeout)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Removes and returns the oldest item; ``queue.Empty`` if none arrives within
        ``timeout`` (or at once without ``block``). Bytes-like items come back as ``bytes``."""
        return self._h.get(block, timeout)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        return self._h.put_nowait(obj)

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self._h.get_nowait()

    def put_many(self, items: Iterable[Any], block: bool = True,
                 timeout: Optional[float] = None) -> int:
        """Puts every item of ``items`` in order, publishing them in batches. Returns how many
        were put: all of them, unless the queue stayed full past ``timeout`` (or at once
        without ``block``), in which case ``queue.Full`` is raised only if none was put."""
        return self._h.put_many(items, block, timeout)

    def get_many(self, max_items: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        """Returns up to ``max_items`` items: waits (as ``get``) for the first, then takes
        whatever else is already there without waiting. Raises ``queue.Empty`` if none came."""
        return self._h.get_many(max_items, block, timeout)

    def put_flatbuffer(self, builder: Any, block: bool = True,
                       timeout: Optional[float] = None) -> None:
        """Puts a finished FlatBuffers message: a ``flatbuffers.Builder`` after ``Finish(root,
        file_identifier=...)`` (its bytes are copied once, straight into shared memory) or the
        finished buffer as bytes-like. It travels as a FlatBuffers record (kind 2) carrying the
        schema's file_identifier, so C++ ``shmq::fb::Reader<T>`` reads it in place and refuses a
        message of another type. ``get()`` returns the buffer as bytes; ``get_view()`` a
        memoryview of it in shared memory, for the ``flatc --python`` classes (``shmq.schema``)."""
        self._h.put_flatbuffer(_common.flatbuffer_bytes(builder), block, timeout)

    def get_view(self, block: bool = True, timeout: Optional[float] = None) -> MessageView:
        """Receives the next message without copying it; use as ``with q.get_view() as mv:``
        (see MessageView). Raises ``queue.Empty`` as ``get`` does."""
        return MessageView(self._h.get_view(block, timeout))

    def get_lease(self, max_items: int = 1024, block: bool = True,
                  timeout: Optional[float] = None) -> Lease:
        """Takes up to ``max_items`` messages as a Lease (a reader mode next to ``get``): they are
        held, not removed, until ``lease.ack()``, and redelivered to the next ``get_lease()`` if
        this process dies or calls ``lease.release()``. Waits as ``get`` does for the first
        message, then takes what else is there (a lease left by a dead holder comes first).
        ``queue.Empty`` if none came. A handle holds at most 3 leases and views at a time."""
        return Lease(self._h.get_lease(max_items, block, timeout))

    def put_fb(self, fb_type: Any, mapping: Any = None, /, block: bool = True,
               timeout: Optional[float] = None, **fields: Any) -> None:
        """Puts a FlatBuffers message of ``fb_type`` (a table of a schema loaded with
        ``shmq.fb.load``), built in C++ from ``mapping`` and ``fields`` straight into shared
        memory (see ``shmq.fb``). A bad value raises TypeError/ValueError naming the field's path
        and nothing is put. A finished buffer (bytes-like) instead of a mapping is checked by the
        verifier and copied. Blocks and raises ``queue.Full`` as ``put`` does."""
        return self._h.put_fb(fb_type, mapping, block, timeout, **fields)

    def get_fb(self, fb_type: Any, block: bool = True, timeout: Optional[float] = None,
               verify: bool = True) -> Any:
        """Receives the next message as a ``shmq.fb.View`` of ``fb_type`` in shared memory; use
        as ``with q.get_fb(T) as m: m.field``. The message is verified against the schema first;
        one of another type, or a corrupt one, is dropped and raises ``shmq.fb.VerifyError``.
        ``verify=False`` checks only the type identity: for trusted peers. Raises
        ``queue.Empty`` as ``get`` does."""
        return self._h.get_fb(fb_type, block, timeout, verify)

    def qsize(self) -> int:
        """The number of messages in the queue (exact at the instant of the call; other
        processes may change it at once)."""
        return self._h.qsize()

    def empty(self) -> bool:
        """``qsize() == 0`` at the instant of the call."""
        return self._h.empty()

    def full(self) -> bool:
        """Whether a ``put`` would block at the instant of the call."""
        return self._h.full()

    def close(self) -> None:
        """Closes this handle: this process will neither put nor get through it. Releases the
        roles and the mapping (the last user of an unnamed queue removes it). Idempotent."""
        _common.forget_fd(self._fd)
        self._fd = None
        self._h.close()

    def fileno(self) -> int:
        """A file descriptor (an eventfd) readable exactly while a message waits in the queue:
        for select, selectors, asyncio's ``add_reader``, ``multiprocessing.connection.wait``. Do
        not read or write it; ``get`` clears it. The first call starts this process's watcher
        thread. When other processes take the last message, the fd clears within 50 ms (a get
        through this handle clears it at once)."""
        self._fd = _shmq.ready_fd(self._h)  # after a fork: a new fd, from the child's watcher
        return self._fd

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """``get()`` for asyncio: waits up to ``timeout`` seconds (forever if None) without
        blocking the event loop, then raises ``queue.Empty``. Cancelling it takes no message: a
        message is either returned to the awaiting coroutine or left in the queue."""
        try:
            return self.get_nowait()  # the common case, without another coroutine
        except Empty:
            pass
        return await _common.aio().get_async(self.get_nowait, self.fileno, timeout)

    async def put_async(self, obj: Any, timeout: Optional[float] = None) -> None:
        """``put(obj)`` for asyncio: waits up to ``timeout`` seconds (forever if None) for room
        without blocking the event loop, then raises ``queue.Full``. Cancelled while it waits,
        nothing was put."""
        h = self._h
        await _common.aio().put_async(lambda: self.put_nowait(obj), h, timeout)

    def join_thread(self) -> None:
        """Compatibility: there is no feeder thread, every put is already in shared memory.
        Like multiprocessing, only valid after ``close()``."""
        if not self._h.closed:
            raise ValueError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Compatibility no-op: there is no feeder thread whose exit could block."""

    @property
    def name(self) -> str:
        """The segment name (``/dev/shm/shmq.<name>``); generated for unnamed queues."""
        return self._h.name

    @property
    def maxsize(self) -> int:
        """The bound in messages (``slots`` when created with maxsize=0)."""
        return self._h.capacity

    def unlink(self) -> None:
        """Removes the queue's name from /dev/shm (for named queues; unnamed ones go by
        themselves). Processes that have it open keep working; new opens fail."""
        _common.unlink(self._h.name)

    def __enter__(self: _Q) -> _Q:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _rebuild(cls: Type[Queue], name: str, serializer: str) -> Queue:
    return cls.open(name, serializer=serializer)


class JoinableQueue(Queue):
    """A Queue with ``task_done()`` and ``join()``, like ``multiprocessing.JoinableQueue``.

    The unfinished-task counter lives in shared memory; ``put`` counts a task before the item
    becomes visible. ``join(timeout=None)`` is an extension: it returns False if the timeout
    passed first (multiprocessing's join takes no timeout and returns None).
    """

    _joinable = True

    def task_done(self) -> None:
        """Marks one task taken by ``get`` as finished. ``ValueError`` if called more times than
        items were put."""
        self._h.task_done()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Blocks until every item ever put has been marked done with ``task_done()``."""
        return self._h.join(timeout)


class SimpleQueue:
    """A queue like ``multiprocessing.SimpleQueue``: ``put``, ``get``, ``empty``, ``close``.

    Same engine as Queue (no lock, no feeder thread). As in multiprocessing, using a closed
    SimpleQueue raises ``OSError`` ("handle is closed"). Extensions: ``name=``, ``slots=``,
    ``slot_size=``, ``serializer=`` as for Queue, ``SimpleQueue.open(name)``, ``fileno()``,
    ``get_async()`` and ``put_async()`` (as Queue's).
    """

    _fd: Optional[int] = None

    def __init__(self, *, name: Optional[str] = None, slots: int = DEFAULT_SLOTS,
                 slot_size: int = DEFAULT_SLOT_SIZE, serializer: str = "pickle",
                 create: Optional[bool] = None, arena_chunks: int = DEFAULT_ARENA_CHUNKS,
                 arena_chunk_bytes: int = DEFAULT_ARENA_CHUNK_BYTES) -> None:
        raw_only = _common.check_serializer(serializer)
        if name is None:
            _common.scan_once()
        handle = _shmq.QueueHandle(name or "", create, int(slots), int(slot_size), 0, raw_only,
                                   False, OSError, int(arena_chunks), int(arena_chunk_bytes))
        self._setup(handle, serializer)

    def _setup(self, handle: Any, serializer: str) -> None:
        self._h = handle
        self._serializer = serializer
        if type(self) is SimpleQueue:
            self.put = handle.put_always
            self.get = handle.get_always
            self.put_fb = handle.put_fb
            self.get_fb = handle.get_fb

    @classmethod
    def open(cls, name: str, *, serializer: str = "pickle") -> "SimpleQueue":
        """Opens the existing queue ``name``; FileNotFoundError if there is none."""
        self = cls.__new__(cls)
        handle = _shmq.QueueHandle(name, False, 0, 0, 0, _common.check_serializer(serializer),
                                   False, OSError)
        self._setup(handle, serializer)
        return self

    def __reduce__(self) -> Any:
        if self._h.closed:
            raise OSError("handle is closed")
        return (_rebuild_simple, (type(self), self._h.name, self._serializer))

    def __repr__(self) -> str:
        return f"<shmq.SimpleQueue name={self._h.name!r}>"

    def put(self, obj: Any) -> None:
        """Puts ``obj``, waiting for room if the ring is full."""
        self._h.put_always(obj)

    def get(self) -> Any:
        """Removes and returns the oldest item, waiting for one."""
        return self._h.get_always()

    def put_fb(self, fb_type: Any, mapping: Any = None, /, block: bool = True,
               timeout: Optional[float] = None, **fields: Any) -> None:
        """As ``Queue.put_fb``: a FlatBuffers message built in place from a mapping."""
        return self._h.put_fb(fb_type, mapping, block, timeout, **fields)

    def get_fb(self, fb_type: Any, block: bool = True, timeout: Optional[float] = None,
               verify: bool = True) -> Any:
        """As ``Queue.get_fb``: the next message as a verified ``shmq.fb.View``."""
        return self._h.get_fb(fb_type, block, timeout, verify)

    def empty(self) -> bool:
        """True if the queue is empty at the instant of the call."""
        return self._h.empty()

    def close(self) -> None:
        """Closes this handle (releases its roles and mapping). Idempotent."""
        _common.forget_fd(self._fd)
        self._fd = None
        self._h.close()

    def fileno(self) -> int:
        """The readiness fd, as ``Queue.fileno()``."""
        self._fd = _shmq.ready_fd(self._h)  # after a fork: a new fd, from the child's watcher
        return self._fd

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """``get()`` for asyncio, as ``Queue.get_async()``."""
        try:
            return self._h.get_nowait()
        except Empty:
            pass
        return await _common.aio().get_async(self._h.get_nowait, self.fileno, timeout)

    async def put_async(self, obj: Any, timeout: Optional[float] = None) -> None:
        """``put(obj)`` for asyncio, as ``Queue.put_async()``."""
        h = self._h
        await _common.aio().put_async(lambda: h.put_nowait(obj), h, timeout)

    @property
    def name(self) -> str:
        return self._h.name

    def unlink(self) -> None:
        """Removes the name from /dev/shm (for named queues)."""
        _common.unlink(self._h.name)


def _rebuild_simple(cls: Type[SimpleQueue], name: str, serializer: str) -> SimpleQueue:
    return cls.open(name, serializer=serializer)
