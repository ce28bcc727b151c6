"""Pipe and Connection over shared-memory SPSC byte rings, and wait()."""

from __future__ import annotations

import time
from multiprocessing import connection as _mp_connection
from multiprocessing import reduction as _mp_reduction
from typing import Any, Iterable, List, Optional, Tuple, Union

from . import _common, _shmq

__all__ = ["Pipe", "Connection", "wait", "BufferTooShort", "DEFAULT_CAPACITY"]

from multiprocessing import BufferTooShort

DEFAULT_CAPACITY = 1 << 20

_FAST = ("send", "recv", "send_bytes", "recv_bytes", "recv_bytes_into", "poll")


class Connection:
    """One end of a ``Pipe``; mirrors ``multiprocessing.connection.Connection``.

    ``send``/``recv`` (pickle, or raw for bytes-like objects), ``send_bytes``/``recv_bytes``/
    ``recv_bytes_into``, ``poll``, ``close``, ``closed``/``readable``/``writable``, context
    manager; ``EOFError`` when the peer closed (or died) and everything was read,
    ``BrokenPipeError`` when sending to a closed (or dead) peer, ``OSError("handle is closed")``
    after ``close()``. Differences:

    * ``send`` returns when the message is in shared memory. A message larger than the ring
      streams through it in chunks while the reader reads, so any size works (multiprocessing
      caps a message near 2 GiB; so does this, via the record length).
    * ``send(obj)`` sends bytes-like objects raw (no pickle): ``recv()`` returns them as
      ``bytes``. Other objects use pickle protocol 5 with out-of-band buffers.
    * ``fileno()`` is an eventfd kept readable, by a watcher thread, exactly while a message (or
      the end of the stream) waits: select, selectors, ``multiprocessing.connection.wait`` and
      asyncio work on it. ``shmq.wait`` needs none (it sleeps on the rings themselves).
    * asyncio: ``await recv_async()``, ``recv_bytes_async()``, ``send_async(obj)``.
    * A Connection pickles by name, so it can be passed to a Process under any start method and
      sent through queues and pipes. Each end's roles (the ring writer/reader) are taken on first
      use, so only one process may use a given end at a time (another gets ``OSError``).
    * ``recv_bytes(maxlength)`` with a longer message raises ``OSError`` and drops that message
      (multiprocessing leaves the connection unusable).
    """

    _fd: Optional[int] = None  # the readiness fd, once fileno() made it

    def __init__(self, handle: Any) -> None:
        self._h = handle
        if type(self) is Connection:
            for m in _FAST:
                setattr(self, m, getattr(handle, m))

    def __reduce__(self) -> Any:
        if self._h.closed:
            raise OSError("handle is closed")
        h = self._h
        # The end's hold travels as multiprocessing sends a Connection's fd (reduction.DupFd:
        # through the spawning Popen, else the resource sharer), so the receiver shares it.
        fd = h.hold_fd
        df = _mp_reduction.DupFd(fd) if fd >= 0 else None
        return (_rebuild, (h.name, h.end, h.readable, h.writable, h.raw_only, df))

    def __repr__(self) -> str:
        return (f"<shmq.Connection name={self._h.name!r} end={self._h.end} "
                f"{'closed' if self._h.closed else 'open'}>")

    # ---- bodies run only for subclasses (instances of Connection use the native methods)
    def send(self, obj: Any) -> None:
        """Sends ``obj`` (bytes-like raw, anything else pickled); blocks while the ring is
        full. ``BrokenPipeError`` if the other end is closed."""
        self._h.send(obj)

    def send_flatbuffer(self, builder: Any) -> None:
        """Sends a finished FlatBuffers message (a ``flatbuffers.Builder`` or its finished
        buffer) as a FlatBuffers record, as ``Queue.put_flatbuffer`` does; ``recv()`` on the other
        end returns the buffer as bytes."""
        self._h.send_flatbuffer(_common.flatbuffer_bytes(builder))

    def send_fb(self, fb_type: Any, mapping: Any = None, /, **fields: Any) -> None:
        """Sends a FlatBuffers message of ``fb_type`` (a ``shmq.fb`` Type) built from
        ``mapping`` and/or ``fields`` in place in the pipe, as ``Queue.put_fb`` does."""
        self._h.send_fb(fb_type, mapping, **fields)

    def recv_fb(self, fb_type: Any, verify: bool = True) -> Any:
        """Receives the next message as a ``shmq.fb.View`` of ``fb_type``, as ``Queue.get_fb``
        does (verified unless ``verify=False``; ``shmq.fb.VerifyError`` for a message of another
        type or a corrupt one, which is dropped). Blocks like ``recv``."""
        return self._h.recv_fb(fb_type, verify)

    def recv(self) -> Any:
        """Returns the next object sent with ``send`` (or ``send_bytes``, as bytes). Blocks until
        there is one; ``EOFError`` if the other end closed and nothing is left."""
        return self._h.recv()

    def send_bytes(self, buf: Any, offset: int = 0, size: Optional[int] = None) -> None:
        """Sends ``buf[offset:offset+size]`` of a bytes-like object as one message."""
        self._h.send_bytes(buf, offset, size)

    def recv_bytes(self, maxlength: Optional[int] = None) -> bytes:
        """Returns the next message as bytes. ``OSError`` if it is longer than ``maxlength``."""
        return self._h.recv_bytes(maxlength)

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Reads the next message into the writable buffer ``buf`` at ``offset`` and returns its
        length; ``BufferTooShort`` (carrying the message as ``args[0]``) if it does not fit."""
        return self._h.recv_bytes_into(buf, offset)

    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        """Whether there is something to read (or the other end closed), waiting up to
        ``timeout`` seconds (forever if None)."""
        return self._h.poll(timeout)

    def close(self) -> None:
        """Closes this end: the peer's ``recv`` drains what was sent, then raises EOFError; its
        ``send`` raises BrokenPipeError. Idempotent."""
        _common.forget_fd(self._fd)
        self._fd = None
        self._h.close()

    def fileno(self) -> int:
        """A file descriptor (an eventfd) that is readable exactly while a message, or the end of
        the stream, waits to be received: for select, selectors, asyncio's ``add_reader``,
        ``multiprocessing.connection.wait``. Do not read or write it; ``recv`` clears it.

        The first call starts this process's watcher thread (see python/README, "Readiness
        file descriptors"). A write-only end's fd never becomes readable."""
        self._fd = _shmq.ready_fd(self._h)  # after a fork: a new fd, from the child's watcher
        return self._fd

    async def recv_async(self) -> Any:
        """``recv()`` for asyncio: waits without blocking the event loop. Cancelling it takes no
        message: a message is either returned or left for the next receive. ``EOFError`` at the
        end of the stream. (A message larger than the pipe's ring is received, once its first
        chunk is there, as it streams in.)"""
        if self.poll():
            return self.recv()
        return await _common.aio().recv_async(self, self.recv)

    async def recv_bytes_async(self, maxlength: Optional[int] = None) -> bytes:
        """``recv_bytes()`` for asyncio, with recv_async's guarantees."""
        return await _common.aio().recv_async(self, lambda: self.recv_bytes(maxlength))

    async def send_async(self, obj: Any) -> None:
        """``send(obj)`` for asyncio: waits for room in the ring without blocking the event loop.
        Cancelled while it waits, nothing was sent. A message larger than the ring streams from a
        worker thread as the reader takes it; cancelling that one does not stop it."""
        await _common.aio().send_async(self, obj)

    @property
    def closed(self) -> bool:
        return self._h.closed

    @property
    def readable(self) -> bool:
        return self._h.readable

    @property
    def writable(self) -> bool:
        return self._h.writable

    @property
    def name(self) -> str:
        """The pipe's segment name."""
        return self._h.name

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _rebuild(name: str, end: int, readable: bool, writable: bool, raw_only: bool,
             df: Any = None) -> Connection:
    fd = -1
    if df is not None:
        try:
            fd = df.detach()
        except Exception:  # noqa: BLE001 - e.g. a process of another multiprocessing family
            fd = -1  # (the resource sharer refuses it): the end is then held by name only
    return Connection(_shmq.PipeEnd(name, False, 0, False, end, readable, writable, raw_only,
                                    fd))


def Pipe(duplex: bool = True, *, capacity: int = DEFAULT_CAPACITY,
         serializer: str = "pickle") -> Tuple[Connection, Connection]:
    """Returns ``(conn1, conn2)``, the two ends of a pipe in shared memory, like
    ``multiprocessing.Pipe``. With ``duplex=False`` conn1 only receives and conn2 only sends.

    ``capacity`` is the ring size in bytes per direction (a power of two; default 1 MiB); larger
    messages stream through it. ``serializer="bytes"`` makes ``send`` refuse non-bytes objects.
    """
    raw_only = _common.check_serializer(serializer)
    _common.scan_once()
    if duplex:
        a = _shmq.PipeEnd("", True, int(capacity), True, 0, True, True, raw_only)
        b = _shmq.PipeEnd(a.name, False, 0, True, 1, True, True, raw_only)
    else:
        # One direction: end 0 reads, end 1 writes (the order multiprocessing returns them in).
        a = _shmq.PipeEnd("", True, int(capacity), False, 0, True, False, raw_only)
        b = _shmq.PipeEnd(a.name, False, 0, False, 1, False, True, raw_only)
    return Connection(a), Connection(b)


def _native_of(obj: Any) -> Any:
    if isinstance(obj, Connection):
        return obj._h
    h = getattr(obj, "_h", None)  # shmq queues: readable when a message waits
    if h is not None and isinstance(h, _shmq.QueueHandle):
        return h
    return None


def wait(object_list: Iterable[Any], timeout: Optional[float] = None) -> List[Any]:
    """Like ``multiprocessing.connection.wait``: returns the objects of ``object_list`` that are
    ready, waiting up to ``timeout`` seconds (forever if None) for at least one.

    shmq Connections (ready when a message waits or the stream ended) and Queues (ready when a
    message waits) alone are waited on together with one futex_waitv call, on the rings
    themselves. Mixed with other objects (multiprocessing connections, sockets, Process
    sentinels, file descriptors), every shmq object joins the others through its readiness fd
    (``fileno()``) in one ``multiprocessing.connection.wait``; shmq objects are also checked
    directly, so every one ready at the moment of return is reported.
    """
    objs = list(object_list)
    native = []
    native_objs = []
    others = []
    for o in objs:
        h = _native_of(o)
        if h is None:
            others.append(o)
        else:
            native.append(h)
            native_objs.append(o)
    if not others:
        ready = _shmq.wait(native, timeout)
        return [native_objs[i] for i in ready]

    def native_ready() -> List[Any]:
        return [native_objs[i] for i in _shmq.wait(native, 0.0)] if native else []

    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    ready = native_ready()
    ready_others = _mp_connection.wait(others, 0)
    while not ready and not ready_others:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        woke = _mp_connection.wait(objs, left)
        ready = native_ready()
        ready_others = [o for o in woke if _native_of(o) is None]
        if left == 0.0:
            break  # (a readiness fd can lag a Queue that another process drained)
    return _in_order(objs, ready, ready_others)


def _in_order(objs: List[Any], a: List[Any], b: List[Any]) -> List[Any]:
    ids = {id(o) for o in a} | {id(o) for o in b}
    return [o for o in objs if id(o) in ids]


Waitable = Union[Connection, Any]
