"""The asyncio side: one background event-loop thread per process, connections, pull requests.

A synchronous caller (shmq.nats.Queue's put/get, the bridges) submits coroutines to the loop
thread with `run()` and waits for them in its own thread, so Ctrl-C reaches it and cancels the
coroutine. asyncio callers use the `*_async` methods, which run the same coroutines on the loop
thread and await them from any loop.

Pull requests: one inbox subscription per connection, one request at a time. Every delivery is
buffered until a request takes it, so a message the server sends after its request gave up on
the client side (the expiry race) is handed to the next request instead of waiting for AckWait
and a redelivery. A delivery carries the stream subject, not the request it answers, so a late
status ("408") of an earlier request may end the current one early: it then returns what it
has (maybe nothing), which callers treat as "try again".
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Optional

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.msg import Msg
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("shmq.nats needs the nats-py package: pip install 'shmq[nats]'") from e

__all__ = ["run", "run_async", "Connection", "Delivery", "connect_error"]

# A pull request asks the server to expire it this long before the client gives up, so the
# client normally learns the outcome (messages or "408") instead of guessing.
_EXPIRY_MARGIN = 0.25
# A blocking pull with no timeout is re-issued at this interval (one request per slice).
PULL_SLICE = 5.0


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="shmq-nats-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_loop: Optional[_Loop] = None
_loop_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The process's background loop (a new one in a forked child: the parent's thread and
    sockets do not exist there)."""
    global _loop
    pid = os.getpid()
    if _loop is None or _loop.pid != pid:
        with _loop_lock:
            if _loop is None or _loop.pid != pid:
                _loop = _Loop()
    return _loop.loop


def run(coro: Awaitable[Any], timeout: Optional[float] = None) -> Any:
    """Runs `coro` on the loop thread and waits for it in the calling thread. On KeyboardInterrupt
    (or any exception in the waiting thread) the coroutine is cancelled."""
    lp = loop()
    if threading.current_thread() is _loop.thread:  # type: ignore[union-attr]
        raise RuntimeError("shmq.nats: a blocking call from the loop thread; use the *_async methods")
    fut = asyncio.run_coroutine_threadsafe(coro, lp)  # type: ignore[arg-type]
    try:
        return fut.result(timeout)
    except BaseException:
        fut.cancel()
        raise


async def run_async(coro: Awaitable[Any]) -> Any:
    """Awaits `coro`, run on the loop thread, from the caller's own event loop."""
    lp = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is lp:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, lp))  # type: ignore[arg-type]


def connect_error(e: BaseException, servers: List[str]) -> BaseException:
    """The exception a user should see for a failed connect."""
    if _is_auth_error(e):
        return PermissionError(f"NATS at {', '.join(servers)} refused the credentials "
                               f"(Authorization Violation): check token / user / password")
    if isinstance(e, (asyncio.TimeoutError, nats.errors.NoServersError, OSError)):
        return ConnectionRefusedError(f"cannot reach NATS at {', '.join(servers)}: {e!r}")
    return ConnectionError(f"NATS connect to {', '.join(servers)} failed: {e!r}")


@dataclass
class Delivery:
    """One message delivered by a pull consumer, not yet acknowledged."""
    msg: Msg
    received: float  # time.monotonic() at arrival

    @property
    def stream_seq(self) -> int:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        # (2.9 servers; a domain-prefixed v2 form has two more tokens in front).
        return int(self.msg.reply.split(".")[-4])

    @property
    def num_delivered(self) -> int:
        return int(self.msg.reply.split(".")[-5])


def _is_auth_error(e: BaseException) -> bool:
    return isinstance(e, (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)) \
        or "authorization" in str(e).lower()


class Connection:
    """One NATS connection with JetStream, owned by the loop thread."""

    def __init__(self, servers: List[str], *, token: Optional[str], user: Optional[str],
                 password: Optional[str], tls: Any, name: str,
                 connect_timeout: float = 5.0) -> None:
        self.servers = servers
        self._opts = dict(servers=servers, token=token, user=user, password=password, tls=tls,
                          name=name, connect_timeout=max(1, int(connect_timeout)),
                          allow_reconnect=True, max_reconnect_attempts=-1,
                          reconnect_time_wait=0.25, error_cb=self._on_error)
        self._connect_timeout = connect_timeout
        self._auth_failed: Optional[asyncio.Future] = None
        self.nc: Any = None
        self.js: Any = None
        # Pulls (loop thread only): the inbox, deliveries not yet taken, the request waiting.
        self._pull_lock: Optional[asyncio.Lock] = None
        self._inbox = ""
        self._inbox_sub: Any = None
        self._buffer: "collections.deque[Delivery]" = collections.deque()
        self._waiter: Optional[asyncio.Future] = None
        self._wanted = 1

    async def _on_error(self, e: Exception) -> None:
        # nats-py reports every failed (re)connect attempt here and retries; a refused credential
        # ends the first connect at once instead of retrying until connect_timeout. Other errors
        # reach the callers as exceptions of their own calls.
        if _is_auth_error(e) and self._auth_failed is not None and not self._auth_failed.done():
            self._auth_failed.set_result(e)

    async def open(self) -> None:
        self._auth_failed = asyncio.get_running_loop().create_future()
        connecting = asyncio.ensure_future(nats.connect(**self._opts))
        try:
            done, _ = await asyncio.wait({connecting, self._auth_failed},
                                         timeout=self._connect_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if connecting in done:
                self.nc = connecting.result()
            else:
                connecting.cancel()
                why = self._auth_failed.result() if self._auth_failed.done() else asyncio.TimeoutError()
                raise connect_error(why, self.servers)
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        except (PermissionError, ConnectionError):
            raise
        except BaseException as e:  # noqa: BLE001 - mapped to a user-facing exception
            raise connect_error(e, self.servers) from None
        finally:
            self._auth_failed = None
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    async def ack(self, d: Delivery) -> None:
        """Fire-and-forget ack (at-least-once: a lost ack means one redelivery)."""
        await self.nc.publish(d.msg.reply, b"+ACK")

    async def ack_sync(self, d: Delivery, timeout: float = 5.0) -> None:
        """An ack the server confirms (JetStream's double ack): raises if it was not recorded."""
        await self.nc.request(d.msg.reply, b"+ACK", timeout=timeout)

    async def nak(self, d: Delivery) -> None:
        await self.nc.publish(d.msg.reply, b"-NAK")

    async def term(self, d: Delivery) -> None:
        await self.nc.publish(d.msg.reply, b"+TERM")

    async def in_progress(self, d: Delivery) -> None:
        await self.nc.publish(d.msg.reply, b"+WPI")

    async def pull(self, stream: str, consumer: str, batch: int, wait: Optional[float],
                   max_age: Optional[float] = None) -> List[Delivery]:
        """Up to `batch` messages. wait None: only those available now (no_wait). Otherwise wait up
        to `wait` seconds for the first, and return as soon as one has come (the rest of the batch
        is asked for with a no_wait request). Buffered deliveries older than `max_age` seconds are
        dropped unacknowledged (their AckWait is over or nearly: JetStream redelivers them)."""
        if self._pull_lock is None:
            self._pull_lock = asyncio.Lock()
        async with self._pull_lock:
            await self._ensure_inbox()
            got = self._take(batch, max_age)
            if len(got) < batch:
                got += await self._request(stream, consumer, batch - len(got) if got or wait is None else 1,
                                           None if got else wait, max_age)
            if wait is not None and got and len(got) < batch:
                got += await self._request(stream, consumer, batch - len(got), None, max_age)
            return got

    async def _ensure_inbox(self) -> None:
        if self._inbox_sub is not None:
            return
        self._inbox = self.nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status is not None and not msg.data:
                if status != "100" and self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(status)
                return
            self._buffer.append(Delivery(msg, time.monotonic()))
            if (self._waiter is not None and not self._waiter.done() and
                    len(self._buffer) >= self._wanted):
                self._waiter.set_result(None)

        self._inbox_sub = await self.nc.subscribe(self._inbox, cb=on_msg)

    def _take(self, n: int, max_age: Optional[float]) -> List[Delivery]:
        out: List[Delivery] = []
        now = time.monotonic()
        while self._buffer and len(out) < n:
            d = self._buffer.popleft()
            if max_age is None or now - d.received < max_age:
                out.append(d)
        return out

    async def _request(self, stream: str, consumer: str, batch: int, wait: Optional[float],
                       max_age: Optional[float]) -> List[Delivery]:
        self._waiter = asyncio.get_running_loop().create_future()
        self._wanted = batch
        try:
            req: dict = {"batch": batch}
            if wait is None:
                req["no_wait"] = True
                client_wait = 5.0
            else:
                expires = max(wait - _EXPIRY_MARGIN, 0.001) if wait > 2 * _EXPIRY_MARGIN else wait
                req["expires"] = int(expires * 1e9)
                client_wait = wait + 2.0
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                                  json.dumps(req).encode(), reply=self._inbox)
            try:
                status = await asyncio.wait_for(asyncio.shield(self._waiter), client_wait)
            except asyncio.TimeoutError:
                status = None  # no answer (reconnecting?): what came is what we have
            got = self._take(batch, max_age)
            if status is not None and status not in ("404", "408", "409") and not got:
                raise OSError(f"JetStream pull from {stream}/{consumer} failed: status {status}")
            return got
        finally:
            self._waiter = None


async def gather_limited(coros: List[Callable[[], Awaitable[Any]]], limit: int) -> List[Any]:
    """Runs the coroutine factories with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(f: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await f()

    return await asyncio.gather(*(one(f) for f in coros))
