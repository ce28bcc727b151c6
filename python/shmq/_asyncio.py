"""asyncio for shmq queues and connections: awaitables that never block the event loop.

Every awaitable first tries the non-blocking call; only when that finds nothing (or no room) does
it wait, on the channel's readiness file descriptor (``fileno()``: readable while a message
waits) or, for room, on a one-shot descriptor the watcher thread signals when a reader frees
space. The receiving call happens in the awaiting coroutine itself, after it resumed, with no
``await`` between taking the message and returning it: a coroutine cancelled while it waits has
taken nothing, so a message is either returned to the coroutine or left in the channel.

Several coroutines of one loop may wait on the same channel: the loop watches the descriptor once
and wakes one waiter per readiness event (the descriptor stays readable while messages remain, so
the next event wakes the next waiter).
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue as _queue_mod
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from . import _shmq

__all__ = ["wait_readable", "get_async", "put_async", "recv_async", "send_async", "forget"]

_TIMED_OUT = object()


class _FdWaiters:
    """The coroutines of one loop waiting for one readiness descriptor."""

    __slots__ = ("loop", "fd", "futures", "watching", "one_shot", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, one_shot: bool) -> None:
        self.loop = loop
        self.fd = fd
        self.futures: Deque[asyncio.Future] = collections.deque()
        self.watching = False
        self.one_shot = one_shot

    def add(self) -> asyncio.Future:
        fut = self.loop.create_future()
        self.futures.append(fut)
        if not self.watching:
            self.loop.add_reader(self.fd, self._ready)
            self.watching = True
        return fut

    def _ready(self) -> None:
        if self.one_shot:
            _drain(self.fd)
        while self.futures:
            fut = self.futures.popleft()
            if not fut.done():
                fut.set_result(None)
                if not self.one_shot:
                    break  # level-triggered: the next event wakes the next waiter
        if not self.futures:
            self.stop()

    def stop(self) -> None:
        if self.watching:
            self.watching = False
            self.loop.remove_reader(self.fd)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass


# (loop, fd) -> waiters. An fd number is reused only after its channel closed, which stops the
# loop's watch (see forget()).
_waiters: Dict[Tuple[int, int], _FdWaiters] = {}


def forget(fd: int) -> None:
    """Stops every loop's watch of `fd` (called when the channel owning it closes)."""
    for key in [k for k in _waiters if k[1] == fd]:
        w = _waiters.pop(key)
        try:
            w.stop()
        except Exception:  # noqa: BLE001 - the loop may be closed already
            pass
        for fut in w.futures:
            if not fut.done():
                fut.set_result(None)  # the waiter retries and sees the closed channel


async def wait_readable(fd: int, deadline: Optional[float], one_shot: bool = False) -> bool:
    """Waits until `fd` is readable or the loop's clock passes `deadline` (None: no limit).
    Returns False on timeout. Cancelling the caller cancels only the wait."""
    loop = asyncio.get_running_loop()
    key = (id(loop), fd)
    w = _waiters.get(key)
    if w is None or w.loop is not loop:
        w = _waiters[key] = _FdWaiters(loop, fd, one_shot)
    fut = w.add()
    timer = None
    if deadline is not None:
        timer = loop.call_at(deadline, _expire, fut)
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        if not fut.done():
            fut.cancel()
        if not any(not f.done() for f in w.futures):
            w.futures.clear()
            w.stop()
    return fut.result() is not _TIMED_OUT


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    return asyncio.get_running_loop().time() + max(timeout, 0.0)


async def get_async(try_get: Callable[[], Any], fileno: Callable[[], int],
                    timeout: Optional[float]) -> Any:
    """The body of Queue.get_async: `try_get()` returns an item or raises queue.Empty; a get
    that finds the queue empty also clears a stale readiness fd (another reader was first)."""
    try:
        return try_get()
    except _queue_mod.Empty:
        pass
    deadline = _deadline(timeout)
    fd = fileno()
    while True:
        if not await wait_readable(fd, deadline):
            raise _queue_mod.Empty
        try:
            return try_get()
        except _queue_mod.Empty:
            continue  # another reader was first; our fd was re-evaluated by the failed get


async def put_async(try_put: Callable[[], Any], handle: Any, timeout: Optional[float]) -> None:
    """The body of Queue.put_async: `try_put()` puts or raises queue.Full; the wait for room is
    on the handle's one-shot room descriptor."""
    try:
        return try_put()
    except _queue_mod.Full:
        pass
    deadline = _deadline(timeout)
    while True:
        fd = _shmq.space_fd(handle)
        try:
            return try_put()  # room may have come before the arm
        except _queue_mod.Full:
            pass
        if not await wait_readable(fd, deadline, one_shot=True):
            raise _queue_mod.Full


async def recv_async(conn: Any, recv: Callable[[], Any]) -> Any:
    """The body of Connection.recv_async and recv_bytes_async: waits until ``poll()`` says a
    message (or the end of the stream) is there, then calls `recv` without waiting."""
    if conn.poll():
        return recv()
    fd = conn.fileno()
    while True:
        await wait_readable(fd, None)
        if conn.poll():
            return recv()


async def send_async(conn: Any, obj: Any) -> None:
    """The body of Connection.send_async."""
    h = conn._h
    sent = h.send_nowait(obj)
    while sent == 0:
        fd = _shmq.space_fd(h)
        sent = h.send_nowait(obj)  # room may have come before the arm
        if sent == 0:
            await wait_readable(fd, None, one_shot=True)
    if sent < 0:
        # Larger than the ring: it streams while the reader reads, so a thread sends it.
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(None, conn.send, obj))
