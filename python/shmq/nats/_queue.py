"""shmq.nats.Queue: multiprocessing's Queue interface over a JetStream work-queue stream."""

from __future__ import annotations

import asyncio
import os
import queue as _queue_mod
import ssl
import threading
import time
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from . import _client, _wire
from ._client import Delivery
from .. import fb as _fb

try:
    from nats.js import api as _api
    import nats.errors
    import nats.js.errors
except ImportError as e:  # pragma: no cover
    raise ImportError("shmq.nats needs the nats-py package: pip install 'shmq[nats]'") from e

__all__ = ["Queue", "StreamConfigError"]

Empty = _queue_mod.Empty
Full = _queue_mod.Full

# JetStream's error code for "maximum messages exceeded" (a stream at maxsize, discard=new).
_ERR_STREAM_FULL = 10077
# A publish whose PubAck does not come within this long is sent again (same Nats-Msg-Id, so the
# stream stores it once).
_PUBLISH_TRY = 5.0
# put_many(pack=True): items per batch message, and its payload bound (the server's max_payload
# is 1 MiB by default).
_PACK_ITEMS = 1024
_PACK_BYTES = 512 * 1024
# While a batch delivered by a bridge is handed out item by item, its ack deadline is pushed back
# ("+WPI") at most this often.
_PROGRESS_EVERY = 1.0

_Transient = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
              nats.js.errors.NoStreamResponseError, nats.errors.ConnectionReconnectingError,
              nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
              nats.errors.StaleConnectionError)


class StreamConfigError(ValueError):
    """The existing stream cannot serve as a queue (e.g. not work-queue retention)."""


def _servers(servers: Union[str, List[str]]) -> List[str]:
    if isinstance(servers, str):
        return [s.strip() for s in servers.split(",") if s.strip()]
    return list(servers)


def _tls(tls: Any) -> Optional[ssl.SSLContext]:
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    if isinstance(tls, ssl.SSLContext):
        return tls
    raise TypeError("tls must be an ssl.SSLContext, True (the default context) or None")


class _Buffered:
    """The records of one delivery that are not handed out yet; the delivery is acked when the
    last one is (terminated instead if every record was dropped)."""
    __slots__ = ("delivery", "records", "next", "dropped", "progressed")

    def __init__(self, delivery: Delivery, records: List[Tuple[bytes, int]]) -> None:
        self.delivery = delivery
        self.records = records
        self.next = 0
        self.dropped = 0
        self.progressed = time.monotonic()


# How a record becomes what a get returns: (payload, kind) -> object; raises for a record that
# cannot be handed out (it is then dropped).
_Convert = Callable[[bytes, int], Any]


class Queue:
    """A queue shared by processes on any number of hosts, stored in a NATS JetStream stream.

    ``Queue("JOBS", servers="nats://host:4222")`` has multiprocessing.Queue's interface (``put``,
    ``get``, ``put_nowait``, ``get_nowait``, ``put_many``, ``get_many``, ``qsize``, ``empty``,
    ``full``, ``close``; ``queue.Empty`` / ``queue.Full``) plus ``*_async`` coroutines. The
    stream has work-queue retention (a message is removed once acknowledged) and one durable pull
    consumer that every Queue of that stream shares, so consumers on any host compete for the
    messages.

    Delivery is at-least-once: ``put`` returns once JetStream has stored the message (its PubAck);
    ``get`` acknowledges a message only after it is decoded and about to be returned. A consumer
    that dies (or loses its connection) before that has the message redelivered to another
    consumer once ``ack_wait`` seconds have passed, up to ``max_deliver`` deliveries (-1: no
    limit). Both are the consumer's settings, fixed by whichever Queue creates it first.

    Serialization is shmq.Queue's: bytes-like objects travel raw (and any plain NATS publisher's
    data arrives as bytes), other objects are pickled (protocol 5). ``serializer="bytes"`` refuses
    to send anything but bytes-like objects and never unpickles on ``get`` (a pickled message
    comes back as its bytes): use it for queues that cross a trust boundary, since unpickling a
    peer's data runs its code. ``put_fb`` / ``get_fb`` move FlatBuffers messages (see shmq.fb),
    verified on receipt: they run no peer code, so they work with either serializer.
    Credentials (``token``, ``user``/``password``) and ``tls`` (an ``ssl.SSLContext``, or True
    for the default one) go to NATS as they are; a wrong credential raises PermissionError.

    ``maxsize > 0`` bounds the stream (``max_msgs``, new messages refused when full): ``put``
    then blocks, polling, until there is room or ``timeout`` passes.
    """

    def __init__(self, stream: str, *, servers: Union[str, List[str]] = "nats://127.0.0.1:4222",
                 subject: Optional[str] = None, durable: Optional[str] = None,
                 token: Optional[str] = None, user: Optional[str] = None,
                 password: Optional[str] = None, tls: Any = None, create: bool = True,
                 maxsize: int = 0, serializer: str = "pickle", ack_wait: float = 30.0,
                 max_deliver: int = -1, storage: str = "file", duplicate_window: float = 120.0,
                 connect_timeout: float = 5.0) -> None:
        if not stream or any(c in stream for c in ".*> \t"):
            raise ValueError(f"bad stream name {stream!r}: no '.', '*', '>' or spaces")
        if storage not in ("file", "memory"):
            raise ValueError("storage must be 'file' or 'memory'")
        if ack_wait <= 0:
            raise ValueError("ack_wait must be positive (seconds)")
        self._raw_only = _wire.check_serializer(serializer)
        self._args = dict(stream=stream, servers=servers, subject=subject, durable=durable,
                          token=token, user=user, password=password, tls=tls, create=create,
                          maxsize=maxsize, serializer=serializer, ack_wait=ack_wait,
                          max_deliver=max_deliver, storage=storage,
                          duplicate_window=duplicate_window, connect_timeout=connect_timeout)
        self.stream = stream
        self.subject = subject or f"shmq.{stream}"
        self.durable = durable or f"shmq-{stream}"
        self.ack_wait = float(ack_wait)
        self.max_deliver = int(max_deliver)
        self._maxsize = max(0, int(maxsize or 0))
        self._storage = storage
        self._duplicate_window = duplicate_window
        self._create = create
        self._closed = False
        self._consumer_ready = False
        self._lock = threading.Lock()
        self._buffer: List[_Buffered] = []
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = 0
        self._conn = _client.Connection(_servers(servers), token=token, user=user,
                                        password=password, tls=_tls(tls),
                                        name=f"shmq.nats.Queue {stream} pid {os.getpid()}",
                                        connect_timeout=connect_timeout)
        _client.run(self._open())

    # ---- set-up (loop thread)
    async def _open(self) -> None:
        await self._conn.open()
        try:
            await self._ensure_stream()
        except BaseException:
            await self._conn.close()
            raise

    async def _ensure_stream(self) -> None:
        js = self._conn.js
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None:
            if not self._create:
                raise FileNotFoundError(f"JetStream has no stream {self.stream!r} (create=False)")
            cfg = _api.StreamConfig(
                name=self.stream, subjects=[self.subject],
                retention=_api.RetentionPolicy.WORK_QUEUE,
                storage=_api.StorageType.FILE if self._storage == "file" else _api.StorageType.MEMORY,
                max_msgs=self._maxsize or -1, discard=_api.DiscardPolicy.NEW,
                duplicate_window=self._duplicate_window)
            try:
                info = await js.add_stream(cfg)
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(self.stream)  # created meanwhile by another Queue
        cfg = info.config
        if cfg.retention != _api.RetentionPolicy.WORK_QUEUE:
            raise StreamConfigError(f"stream {self.stream!r} has {cfg.retention} retention; a "
                                    f"queue needs work-queue retention")
        if self._args["subject"] is None and cfg.subjects:
            self.subject = cfg.subjects[0]
        if not self._maxsize and cfg.max_msgs and cfg.max_msgs > 0:
            self._maxsize = cfg.max_msgs

    async def _ensure_consumer(self) -> None:
        if self._consumer_ready:
            return
        js = self._conn.js
        try:
            await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            cfg = _api.ConsumerConfig(
                durable_name=self.durable, ack_policy=_api.AckPolicy.EXPLICIT,
                deliver_policy=_api.DeliverPolicy.ALL, ack_wait=self.ack_wait,
                max_deliver=self.max_deliver, filter_subject=self.subject,
                max_ack_pending=-1, max_waiting=4096)
            try:
                await js.add_consumer(self.stream, cfg)
            except nats.js.errors.BadRequestError:
                await js.consumer_info(self.stream, self.durable)  # created meanwhile
        self._consumer_ready = True

    # ---- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"shmq.nats.Queue {self.stream!r} is closed")

    def _next_id(self, n: int = 1) -> int:
        with self._lock:
            first = self._id_counter
            self._id_counter += n
        return first

    def _deadline(self, block: bool, timeout: Optional[float]) -> Optional[float]:
        if not block:
            return time.monotonic()
        if timeout is None:
            return None
        if timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return time.monotonic() + timeout

    @staticmethod
    def _remaining(deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else deadline - time.monotonic()

    def _ack_later(self, d: Delivery) -> None:
        asyncio.run_coroutine_threadsafe(self._conn.ack(d), _client.loop())

    def _term_later(self, d: Delivery) -> None:
        asyncio.run_coroutine_threadsafe(self._conn.term(d), _client.loop())

    # ---- put (coroutines run on the loop thread)
    async def _publish(self, payload: bytes, kind: int, msg_id: str,
                       deadline: Optional[float]) -> Any:
        """Publishes until JetStream stores it (or says it already has: same Nats-Msg-Id)."""
        headers = _wire.headers_for(kind, msg_id)
        pause = 0.005
        while True:
            left = self._remaining(deadline)
            try:
                return await self._conn.js.publish(
                    self.subject, payload, headers=dict(headers),
                    timeout=_PUBLISH_TRY if left is None else max(0.05, min(_PUBLISH_TRY, left)))
            except nats.js.errors.APIError as e:
                if getattr(e, "err_code", None) != _ERR_STREAM_FULL:
                    raise
                why = "the stream is full (maxsize)"
            except _Transient as e:
                why = f"JetStream did not acknowledge the message ({type(e).__name__})"
            left = self._remaining(deadline)
            if left is not None and left <= 0:
                raise Full(why)
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.2)

    async def _put_many(self, encoded: List[Tuple[bytes, int]], first_id: int,
                        deadline: Optional[float]) -> int:
        if self._maxsize:
            # A bounded stream refuses messages while full; pipelined publishes could then be
            # stored out of order. One at a time keeps put_many's order.
            done = 0
            for i, (payload, kind) in enumerate(encoded):
                try:
                    await self._publish(payload, kind, f"{self._id_prefix}-{first_id + i}", deadline)
                except Full:
                    if done == 0:
                        raise
                    return done
                done += 1
            return done
        # Pipelined: every publish goes out at once (publish_async: one reply subscription, a
        # future per PubAck); those that fail are sent again, with their Nats-Msg-Id, one by one.
        js = self._conn.js
        futures: List[Any] = []
        for i, (payload, kind) in enumerate(encoded):
            headers = _wire.headers_for(kind, f"{self._id_prefix}-{first_id + i}")
            try:
                futures.append(await js.publish_async(self.subject, payload, headers=headers))
            except _Transient:
                futures.append(None)
        waiting = [f for f in futures if f is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=_PUBLISH_TRY)
        for i, fut in enumerate(futures):
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                continue
            if fut is not None and not fut.done():
                fut.cancel()
            payload, kind = encoded[i]
            await self._publish(payload, kind, f"{self._id_prefix}-{first_id + i}", deadline)
        return len(encoded)

    # ---- get
    def _decode(self, data: bytes, kind: int) -> Any:
        return _wire.decode(data, kind, self._raw_only)

    def _advance(self, b: _Buffered, dropped: bool) -> None:
        """Moves past b's next record (lock held); settles the delivery after its last record:
        acked, or terminated if every record was dropped (JetStream never redelivers either)."""
        b.next += 1
        b.dropped += dropped
        if b.next == len(b.records):
            self._buffer.pop(0)
            if b.dropped == len(b.records):
                self._term_later(b.delivery)
            else:
                self._ack_later(b.delivery)
        elif time.monotonic() - b.progressed > _PROGRESS_EVERY:
            b.progressed = time.monotonic()
            asyncio.run_coroutine_threadsafe(self._conn.in_progress(b.delivery), _client.loop())

    def _take_buffered(self, max_items: int, convert: _Convert) -> List[Any]:
        """Up to max_items objects from deliveries already received (caller holds no lock). A
        record that `convert` refuses is dropped and its error raised when it is the first one;
        after others, it is left for the next call (which raises), so no error goes unseen."""
        out: List[Any] = []
        with self._lock:
            while self._buffer and len(out) < max_items:
                b = self._buffer[0]
                data, kind = b.records[b.next]
                try:
                    obj = convert(data, kind)
                except Exception:
                    if out:
                        break
                    self._advance(b, True)
                    raise
                self._advance(b, False)
                out.append(obj)
        return out

    def _accept(self, deliveries: List[Delivery], max_items: int, convert: _Convert) -> List[Any]:
        """Buffers the records of the deliveries, in order, and hands out up to max_items of them
        (see _take_buffered). A malformed delivery is terminated (never redelivered); its error
        is raised if nothing else came."""
        error: Optional[BaseException] = None
        with self._lock:
            for d in deliveries:
                try:
                    records = _wire.records_of(d.msg.headers, d.msg.data)
                except ValueError as e:  # malformed: never redeliver it
                    self._term_later(d)
                    error = error or e
                    continue
                if records:
                    self._buffer.append(_Buffered(d, records))
                else:
                    self._ack_later(d)  # an empty batch
        out = self._take_buffered(max_items, convert)
        if error is not None and not out:
            raise error
        return out

    async def _pull(self, batch: int, deadline: Optional[float]) -> List[Delivery]:
        await self._ensure_consumer()
        while True:
            left = self._remaining(deadline)
            max_age = self.ack_wait * 0.8
            if left is not None and left <= 0.001:
                return await self._conn.pull(self.stream, self.durable, batch, None, max_age)
            wait = _client.PULL_SLICE if left is None else min(left, _client.PULL_SLICE)
            got = await self._conn.pull(self.stream, self.durable, batch, wait, max_age)
            if got:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return got

    def _get_many_sync(self, max_items: int, block: bool, timeout: Optional[float],
                       convert: Optional[_Convert] = None) -> List[Any]:
        self._check_open()
        if max_items <= 0:
            return []
        convert = convert or self._decode
        out = self._take_buffered(max_items, convert)
        if out:
            return out
        deadline = self._deadline(block, timeout)
        while True:
            deliveries = _client.run(self._pull(max_items, deadline))
            if not deliveries:
                raise Empty
            out = self._accept(deliveries, max_items, convert)
            if out:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    async def _get_many_async(self, max_items: int, block: bool, timeout: Optional[float],
                              convert: Optional[_Convert] = None) -> List[Any]:
        self._check_open()
        if max_items <= 0:
            return []
        convert = convert or self._decode
        out = self._take_buffered(max_items, convert)
        if out:
            return out
        deadline = self._deadline(block, timeout)
        while True:
            deliveries = await _client.run_async(self._pull(max_items, deadline))
            if not deliveries:
                raise Empty
            out = self._accept(deliveries, max_items, convert)
            if out:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    # ---- the multiprocessing.Queue API
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Stores ``obj`` in the stream; returns once JetStream acknowledged it. ``queue.Full`` if
        the stream stayed full (maxsize) or unreachable past ``timeout`` (at once without
        ``block``). TypeError for a non-bytes object with serializer="bytes"."""
        self._check_open()
        payload, kind = _wire.encode(obj, self._raw_only)
        msg_id = f"{self._id_prefix}-{self._next_id()}"
        _client.run(self._publish(payload, kind, msg_id, self._deadline(block, timeout)))

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        self.put(obj, False)

    def put_many(self, items: Iterable[Any], block: bool = True,
                 timeout: Optional[float] = None, pack: bool = False) -> int:
        """Stores every item, in order, with the publishes pipelined; returns how many were stored
        (all, unless a bounded stream stayed full: then queue.Full if none was).

        ``pack=True`` packs the items into batch messages (up to 1024 items / 512 KiB each, the
        bridges' format) instead of one JetStream message per item: several times faster, but a
        batch goes to one consumer, which hands its items out one by one and acknowledges the
        batch with its last item (a consumer dying midway has the whole batch redelivered)."""
        self._check_open()
        encoded = [_wire.encode(o, self._raw_only) for o in items]
        if not encoded:
            return 0
        if pack:
            chunks, cur, size = [], [], 0
            for rec in encoded:
                if cur and (len(cur) >= _PACK_ITEMS or size + len(rec[0]) > _PACK_BYTES):
                    chunks.append(cur)
                    cur, size = [], 0
                cur.append(rec)
                size += len(rec[0]) + 8
            chunks.append(cur)
            first = self._next_id(len(chunks))
            _client.run(self._put_packed(chunks, first, self._deadline(block, timeout)))
            return len(encoded)
        first = self._next_id(len(encoded))
        return _client.run(self._put_many(encoded, first, self._deadline(block, timeout)))

    async def _put_packed(self, chunks: List[List[Tuple[bytes, int]]], first_id: int,
                          deadline: Optional[float]) -> None:
        async def one(i: int, chunk: List[Tuple[bytes, int]]) -> None:
            headers = {_wire.HDR_BATCH: str(len(chunk)), _wire.HDR_MSG_ID: f"{self._id_prefix}-{first_id + i}"}
            payload = _wire.pack(chunk)
            pause = 0.005
            while True:
                left = self._remaining(deadline)
                try:
                    await self._conn.js.publish(self.subject, payload, headers=dict(headers),
                                                timeout=_PUBLISH_TRY)
                    return
                except nats.js.errors.APIError as e:
                    if getattr(e, "err_code", None) != _ERR_STREAM_FULL:
                        raise
                except _Transient:
                    pass
                if left is not None and left <= 0:
                    raise Full("the stream stayed full or unreachable")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)

        await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks)))

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Removes and returns the oldest message; ``queue.Empty`` if none came within ``timeout``
        (at once without ``block``). Acknowledged once decoded (at-least-once)."""
        return self._get_many_sync(1, block, timeout)[0]

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    def get_many(self, max_items: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        """Up to ``max_items`` messages: waits (as ``get``) for the first, then takes what else is
        there without waiting. ``queue.Empty`` if none came."""
        return self._get_many_sync(max_items, block, timeout)

    def put_fb(self, fb_type: Any, mapping: Any = None, /, block: bool = True,
               timeout: Optional[float] = None, **fields: Any) -> None:
        """Stores a FlatBuffers message of ``fb_type`` (a table of a schema loaded with
        ``shmq.fb.load``), built in C++ from ``mapping`` and ``fields`` as ``shmq.Queue.put_fb``
        builds it (a finished buffer instead of a mapping is verified and sent as is). It travels
        as one JetStream message of kind FlatBuffers (``Shmq-Kind: 2``, payload as a shmq.Queue
        record holds it), so bridges move it to and from local queues. A bad value raises
        TypeError/ValueError naming the field's path and nothing is published; then as ``put``."""
        self._check_open()
        payload = _fb_record(fb_type, mapping, fields)
        msg_id = f"{self._id_prefix}-{self._next_id()}"
        _client.run(self._publish(payload, _wire.KIND_FLATBUFFERS, msg_id,
                                  self._deadline(block, timeout)))

    def get_fb(self, fb_type: Any, block: bool = True, timeout: Optional[float] = None,
               verify: bool = True) -> Any:
        """Removes the oldest message and returns it as a ``shmq.fb.View`` of ``fb_type`` (over a
        private copy: use it as ``with q.get_fb(T) as m: m.field`` or keep it). The message is
        checked as ``shmq.Queue.get_fb`` checks one (kind, type identity, FlatBuffers verifier);
        one that fails (a pickle, raw bytes, another type, a corrupt or hostile buffer) raises
        ``shmq.fb.VerifyError`` and is dropped: terminated in JetStream, never redelivered.
        ``verify=False`` checks only the type identity: for trusted peers only. ``queue.Empty``
        as ``get``."""
        return self._get_many_sync(1, block, timeout, _fb_reader(fb_type, verify))[0]

    def qsize(self) -> int:
        """Messages in the stream (including delivered ones not yet acknowledged): a guess, as
        other hosts change it at any moment."""
        self._check_open()
        return _client.run(self._qsize()) + self._buffered_count()

    async def _qsize(self) -> int:
        info = await self._conn.js.stream_info(self.stream)
        return int(info.state.messages)

    def _buffered_count(self) -> int:
        with self._lock:
            return sum(len(b.records) - b.next - 1 for b in self._buffer)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def close(self) -> None:
        """Closes the connection. Messages received but not handed out are given back at once
        ("-NAK"), so another consumer gets them without waiting for ack_wait. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            _client.run(self._close())
        except Exception:  # noqa: BLE001 - closing must not raise
            pass

    async def _close(self) -> None:
        with self._lock:
            pending, self._buffer = self._buffer, []
        for b in pending:
            try:
                await self._conn.nak(b.delivery)
            except Exception:  # noqa: BLE001
                pass
        try:
            await self._conn.nc.flush(timeout=1)
        except Exception:  # noqa: BLE001
            pass
        await self._conn.close()

    def join_thread(self) -> None:
        """Compatibility: nothing is buffered for sending (put waits for the PubAck)."""

    def cancel_join_thread(self) -> None:
        """Compatibility no-op."""

    # ---- asyncio
    async def put_async(self, obj: Any, timeout: Optional[float] = None) -> None:
        self._check_open()
        payload, kind = _wire.encode(obj, self._raw_only)
        msg_id = f"{self._id_prefix}-{self._next_id()}"
        await _client.run_async(self._publish(payload, kind, msg_id, self._deadline(True, timeout)))

    async def put_many_async(self, items: Iterable[Any], timeout: Optional[float] = None) -> int:
        self._check_open()
        encoded = [_wire.encode(o, self._raw_only) for o in items]
        if not encoded:
            return 0
        first = self._next_id(len(encoded))
        return await _client.run_async(self._put_many(encoded, first, self._deadline(True, timeout)))

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        return (await self._get_many_async(1, True, timeout))[0]

    async def get_many_async(self, max_items: int = 1024, timeout: Optional[float] = None) -> List[Any]:
        return await self._get_many_async(max_items, True, timeout)

    async def put_fb_async(self, fb_type: Any, mapping: Any = None, /,
                           timeout: Optional[float] = None, **fields: Any) -> None:
        """``put_fb`` as a coroutine."""
        self._check_open()
        payload = _fb_record(fb_type, mapping, fields)
        msg_id = f"{self._id_prefix}-{self._next_id()}"
        await _client.run_async(self._publish(payload, _wire.KIND_FLATBUFFERS, msg_id,
                                              self._deadline(True, timeout)))

    async def get_fb_async(self, fb_type: Any, timeout: Optional[float] = None,
                           verify: bool = True) -> Any:
        """``get_fb`` as a coroutine."""
        return (await self._get_many_async(1, True, timeout, _fb_reader(fb_type, verify)))[0]

    async def qsize_async(self) -> int:
        self._check_open()
        return await _client.run_async(self._qsize()) + self._buffered_count()

    async def close_async(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _client.run_async(self._close())

    # ---- misc
    def __reduce__(self) -> Any:
        return (_rebuild, (self._args,))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<shmq.nats.Queue stream={self.stream!r} subject={self.subject!r} {state}>"

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _rebuild(args: dict) -> Queue:
    return Queue(**args)


def _check_fb_type(fb_type: Any, verb: str) -> None:
    if not isinstance(fb_type, _fb.Type):
        raise TypeError(f"{verb}() needs a shmq.fb Type (schema.Name) as its first argument, "
                        f"got {type(fb_type).__name__}")


def _fb_record(fb_type: Any, mapping: Any, fields: dict) -> bytes:
    """The payload put_fb publishes: the message built (or a finished buffer verified) in C++."""
    _check_fb_type(fb_type, "put_fb")
    return fb_type.build_record(mapping, **fields)


def _fb_reader(fb_type: Any, verify: bool) -> _Convert:
    """get_fb's conversion of a record: a View, or VerifyError."""
    _check_fb_type(fb_type, "get_fb")
    verify = bool(verify)
    return lambda data, kind: fb_type.from_record(data, kind, verify)
