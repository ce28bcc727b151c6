"""The leading half of the pool engine (PoolCore): who reads the result queue, and when.

One thread at a time, the *leader*, reads the result queue and files what it reads (PoolCore's
_process). A caller that waits for a result leads itself when nobody does, and steps down once its
result is in; other waiting threads follow, sleeping on a condition until their result is filed
or the lead is free. The *pusher*, a helper thread, leads only when results must move without a
waiting caller: callbacks, futures, tasks not handed out yet, a death to settle; it hands the lead
to a caller that wants it after the batch it is reading.

This class is a part of PoolCore: the state it uses is set up in PoolCore.__init__.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Optional

from ._queues import Empty
from ._pool_workers import STOPPED

__all__ = ["Leadership"]

# Results read per batch by the leader.
_BATCH = 256
# The pusher waits this long after a leader stepped down before it leads: a caller that reads
# results in a loop (imap) takes the lead back within microseconds. Callbacks and futures wait
# the short grace; undispatched tasks the long one (the workers' queues hold ~_WINDOW_TIME).
_GRACE = 0.002
_GRACE_BACKLOG = 0.02
# The pusher, while leading, looks at least this often whether it should stop.
_PUSHER_SLICE = 0.25


class Leadership:
    """PoolCore's leader and followers, and the pusher thread."""

    def wait_until(self, done: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Blocks until ``done()`` is true, reading results as the leader when nobody else does.
        Returns ``done()`` (False if ``timeout`` seconds passed first)."""
        if done():
            return True
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        me = threading.get_ident()
        with self._lock:
            while True:
                if done():
                    return True
                if self._handles_closed:
                    return False   # the pool is gone: nothing more will come
                if self._leader is None or self._leader == me:
                    nested = self._leader == me
                    self._leader = me
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._want += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._want -= 1
        try:
            self._lead(done, deadline, False)
        finally:
            if not nested:
                self._step_down()
        return done()

    @contextlib.contextmanager
    def leading(self) -> Iterator[None]:
        """Makes the calling thread the leader (if nobody leads) for a synchronous call that
        submits and then waits: no other thread starts reading its results in between."""
        me = threading.get_ident()
        with self._lock:
            mine = self._leader is None
            if mine:
                self._leader = me
        try:
            yield
        finally:
            if mine:
                self._step_down()

    def drain_if_leading(self) -> None:
        """Files the results already there if the calling thread leads (map, between batches of
        submissions: the workers' queues are topped up from what comes back)."""
        if self._leader != threading.get_ident():
            return
        try:
            msgs = self._results.get_many(_BATCH, False)
        except Empty:
            return
        self._process(msgs)

    def poll(self) -> None:
        """Files whatever results are already there, without waiting (if nobody leads)."""
        me = threading.get_ident()
        with self._lock:
            if self._leader is not None or self._handles_closed:
                return
            self._leader = me
        try:
            try:
                msgs = self._results.get_many(_BATCH, False)
            except Empty:
                msgs = ()
            self._process(msgs)
        finally:
            self._step_down()

    def _step_down(self) -> None:
        with self._lock:
            self._leader = None
            self._stepped_down = time.monotonic()
            self._cond.notify_all()
            self._pusher_cond.notify()
            # The pool stopped while this thread led (join() from a callback): close up now.
            close = self._state is STOPPED and not self._handles_closed
        if close:
            self._close_handles()

    def _lead(self, done: Callable[[], bool], deadline: Optional[float], pusher: bool) -> None:
        get_many = self._results.get_many
        while not done():
            timeout: Optional[float] = None
            if deadline is not None or self._next_check is not None or pusher:
                now = time.monotonic()
                if deadline is not None:
                    timeout = deadline - now
                    if timeout <= 0:
                        return
                if self._next_check is not None:
                    t = max(0.0, self._next_check - now)
                    timeout = t if timeout is None else min(timeout, t)
                if pusher:
                    timeout = _PUSHER_SLICE if timeout is None else min(timeout, _PUSHER_SLICE)
            try:
                msgs = get_many(_BATCH, True, timeout)
            except Empty:
                msgs = ()
            self._process(msgs)
            del msgs
            if pusher and self._want:
                return

    def _pusher_needed(self) -> bool:
        return bool(self._push or self._notices or self._backlog or self._sources)

    def _pusher(self) -> None:
        me = threading.get_ident()
        while True:
            stop = False
            with self._lock:
                while True:
                    if self._state is STOPPED:
                        return
                    if self._auto_stop and self._leader is None and self.idle():
                        stop = True
                        break
                    if self._leader is None and self._pusher_needed():
                        grace = _GRACE if self._push or self._notices else _GRACE_BACKLOG
                        wait = self._stepped_down + grace - time.monotonic()
                        if wait <= 0:
                            break
                        self._pusher_cond.wait(wait)
                    else:
                        self._pusher_cond.wait()
                if not stop:
                    self._leader = me
            if stop:
                self._stop()
                return
            try:
                self._lead(lambda: bool(self._want) or not self._pusher_needed()
                           or self._state is STOPPED, None, True)
            except (ValueError, OSError):
                if self._state is STOPPED:
                    return
                raise
            finally:
                self._step_down()

