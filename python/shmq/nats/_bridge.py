"""Bridges between a local shmq.Queue and a JetStream stream, in batches.

direction="out": local queue -> stream. Messages are taken from the local queue, packed into
batches (python/src/batch_format.hpp) of up to `batch` messages / `max_bytes` bytes, and each batch
is published as one JetStream message with a Nats-Msg-Id naming the queue and the messages'
positions in it, so a republish after a crash is a duplicate that JetStream drops.

direction="in": stream -> local queue. Batches (and single messages of any publisher) are pulled
from the stream's durable consumer, put into the local queue with their kinds (nothing is
unpickled: a bridge never runs its peers' code), and acknowledged once the put has returned.

Crash safety (SIGKILL at any instruction, then a restart) comes from the local side:
see _LocalSource and _LocalSink.
"""

from __future__ import annotations

import asyncio
import os
import queue as _queue_mod
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, TextIO, Tuple, Union

from . import _client, _wire
from ._client import Delivery
from ._queue import Queue as _NatsQueue, _Transient, _ERR_STREAM_FULL

try:
    import nats.js.errors
except ImportError as e:  # pragma: no cover
    raise ImportError("shmq.nats needs the nats-py package: pip install 'shmq[nats]'") from e

__all__ = ["Bridge", "BridgeStats"]

# A JetStream message must stay under the server's max_payload (1 MiB by default).
DEFAULT_MAX_BYTES = 512 * 1024
DEFAULT_BATCH = 1024
# How long one wait (local get, stream pull) lasts before the stop flag is looked at again.
_POLL = 0.2


@dataclass
class BridgeStats:
    """Counters of one bridge (read them while it runs; each is a plain int)."""
    messages: int = 0       # local messages moved
    batches: int = 0        # JetStream messages published (out) or consumed (in)
    bytes: int = 0          # batch payload bytes
    duplicates: int = 0     # out: batches JetStream already had; in: batches already put
    redelivered: int = 0    # out: messages taken back from a dead holder; in: redeliveries
    retries: int = 0        # publishes / acks sent again after an error or a full stream
    started: float = field(default_factory=time.monotonic)

    def line(self, direction: str, name: str) -> str:
        secs = max(time.monotonic() - self.started, 1e-9)
        return (f"shmq.nats bridge {direction} {name}: {self.messages} messages "
                f"({self.messages / secs:,.0f}/s), {self.batches} batches, {self.bytes} bytes, "
                f"{self.duplicates} duplicates, {self.redelivered} redelivered, "
                f"{self.retries} retries")


class _LocalSource:
    """Takes batches from the local queue for direction="out", under a lease (shmq.Lease): the
    messages stay in the queue until every batch of the lease has its PubAck, and a bridge killed
    before that has them redelivered to its successor, which publishes them again under the same
    Nats-Msg-Ids (a batch's id names the queue, its first message's position and its count), so
    JetStream drops the copies it already stored (within the stream's duplicate window)."""

    def __init__(self, q: Any) -> None:
        self._h = q._h
        self.identity = self._h.identity()

    def take(self, max_items: int, max_bytes: int, timeout: float) -> Optional["_Taken"]:
        try:
            lease = self._h.get_lease(max_items, True, timeout)
        except _queue_mod.Empty:
            return None
        chunks = [(payload, n, f"{first}+{n}") for payload, n, first in lease.batches(max_bytes)]
        return _Taken(chunks, lease.redelivered, lease)


@dataclass
class _Taken:
    chunks: List[Tuple[bytes, int, str]]  # (batch payload, message count, id within the queue)
    redelivered: bool
    lease: Any                            # acked once every chunk is stored

    def ack(self) -> None:
        self.lease.ack()

    def give_back(self) -> None:
        try:
            self.lease.release()
        except (RuntimeError, ValueError):
            pass  # kept in our claim word: handed on when this process leaves


class _LocalSink:
    """Puts batches into the local queue for direction="in" through a queue journal: each run of
    messages is recorded, at the instant it becomes visible, as (stream sequence, index after it)
    of the JetStream message it came from (see QueueJournal in shm/include/shmq/shm/queue.hpp:
    the seal store is the put's commit point, so the record and the put cannot disagree, whatever
    instant the bridge is killed at). The bridge holds one JetStream message at a time and takes
    the next only after the server confirmed its ack, so the journal's last message is the only
    one that may be put and not yet acknowledged. A restarted bridge settles that one before it
    pulls anything: it reads the message by its stream sequence, puts what the record says is
    missing, and deletes it from the stream (a work-queue stream: acknowledging and deleting are
    the same there), so neither a redelivery of it nor anything else can be put twice."""

    def __init__(self, q: Any, name: str) -> None:
        self._h = q._h
        self._h.open_journal(name)

    def committed(self) -> Tuple[int, int]:
        """(stream sequence, index of its next record to put) of the last run put."""
        token, nxt = self._h.journal_record()
        return token, nxt

    def put(self, payload: bytes, start: int, stream_seq: int, timeout: float) -> int:
        return self._h.put_batch_journaled(payload, start, stream_seq, True, timeout)

    def close(self) -> None:
        pass


def _open_local(local: Any) -> Any:
    import shmq
    if isinstance(local, str):
        return shmq.Queue.open(local)
    if not hasattr(local, "_h"):
        raise TypeError("local must be a shmq.Queue or the name of one")
    return local


class Bridge:
    """Moves messages between the local shmq.Queue ``local`` (or its name) and the JetStream
    stream ``stream``, in batches.

    ``direction="out"`` publishes what local producers put; ``direction="in"`` puts what the
    stream holds into the local queue for local consumers. The stream is the one shmq.nats.Queue
    uses (work-queue retention, ``subject`` ``shmq.<stream>``, shared durable consumer
    ``durable``), so bridges and remote Queues mix freely; several ``in`` bridges (one per host)
    share the stream's messages.

    ``run(stop)`` works in the calling thread until ``stop`` (a threading.Event) is set;
    ``start()`` runs it in a thread and ``stop()`` ends it. Killed at any moment (SIGKILL) and
    restarted, a bridge loses no message and delivers none twice to the local consumers.
    """

    def __init__(self, local: Any, stream: str, direction: str = "out", *,
                 servers: Union[str, List[str]] = "nats://127.0.0.1:4222",
                 subject: Optional[str] = None, durable: Optional[str] = None,
                 token: Optional[str] = None, user: Optional[str] = None,
                 password: Optional[str] = None, tls: Any = None, create: bool = True,
                 batch: int = DEFAULT_BATCH, max_bytes: int = DEFAULT_MAX_BYTES,
                 ack_wait: float = 30.0, max_deliver: int = -1, name: Optional[str] = None,
                 storage: str = "file", verbose: bool = False,
                 log: Optional[TextIO] = None) -> None:
        if direction not in ("out", "in"):
            raise ValueError("direction must be 'out' or 'in'")
        if batch < 1 or max_bytes < 64:
            raise ValueError("batch must be >= 1 and max_bytes >= 64")
        self.direction = direction
        self.local = _open_local(local)
        self._batch = int(batch)
        self._max_bytes = int(max_bytes)
        self._verbose = verbose
        self._log = log or sys.stderr
        self.stats = BridgeStats()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # The remote side is a shmq.nats.Queue: its connection, stream and consumer set-up.
        self.remote = _NatsQueue(stream, servers=servers, subject=subject, durable=durable,
                                 token=token, user=user, password=password, tls=tls,
                                 create=create, ack_wait=ack_wait, max_deliver=max_deliver,
                                 storage=storage, serializer="bytes")
        self.name = name or f"{direction}.{stream}"
        if direction == "out":
            self._source = _LocalSource(self.local)
        else:
            self._sink = _LocalSink(self.local, self.name)

    # ---- running
    def run(self, stop: Optional[threading.Event] = None) -> None:
        """Moves messages until ``stop`` (or self.stop()) is set."""
        stop = stop or self._stop
        last_report = time.monotonic()
        self.stats.started = time.monotonic()
        try:
            if self.direction == "in":
                self._settle_last(stop)
            while not stop.is_set() and not self._stop.is_set():
                if self.direction == "out":
                    self._step_out(stop)
                else:
                    self._step_in(stop)
                if self._verbose and time.monotonic() - last_report >= 1.0:
                    last_report = time.monotonic()
                    print(self.stats.line(self.direction, self.name), file=self._log, flush=True)
        finally:
            if self._verbose:
                print(self.stats.line(self.direction, self.name) + " (stopped)", file=self._log,
                      flush=True)

    def start(self) -> "Bridge":
        """Runs the bridge in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=f"shmq.nats bridge {self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Asks the bridge to stop after its current batch and waits for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.stop()
        if self.direction == "in":
            self._sink.close()
        self.remote.close()

    def __enter__(self) -> "Bridge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- out: local -> stream
    def _step_out(self, stop: threading.Event) -> None:
        taken = self._source.take(self._batch, self._max_bytes, _POLL)
        if taken is None:
            return
        if taken.redelivered:
            self.stats.redelivered += sum(n for _, n, _ in taken.chunks)
        try:
            acks = _client.run(self._publish_chunks(taken, stop))
        except BaseException:
            taken.give_back()
            raise
        if acks is None:  # stopping before JetStream had them all: the queue keeps them
            taken.give_back()
            return
        taken.ack()
        for (payload, n, _), ack in zip(taken.chunks, acks):
            self.stats.messages += n
            self.stats.batches += 1
            self.stats.bytes += len(payload)
            if getattr(ack, "duplicate", False):
                self.stats.duplicates += 1

    async def _publish_chunks(self, taken: _Taken, stop: threading.Event) -> Optional[list]:
        async def one(payload: bytes, n: int, ident: str) -> Any:
            headers = {_wire.HDR_BATCH: str(n),
                       _wire.HDR_MSG_ID: f"shmq:{self._source.identity}:{ident}"}
            pause = 0.005
            while True:
                try:
                    return await self.remote._conn.js.publish(
                        self.remote.subject, payload, headers=dict(headers), timeout=5.0)
                except nats.js.errors.APIError as e:
                    if getattr(e, "err_code", None) != _ERR_STREAM_FULL:
                        raise
                except _Transient:
                    pass
                self.stats.retries += 1
                if stop.is_set():
                    return None  # the lease is given back: the next bridge publishes it
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.25)

        acks = await asyncio.gather(*(one(p, n, ident) for p, n, ident in taken.chunks))
        return None if any(a is None for a in acks) else list(acks)

    # ---- in: stream -> local
    def _step_in(self, stop: threading.Event) -> None:
        # One message at a time: see _LocalSink.
        for d in _client.run(_pull(self.remote, 1, _POLL)):
            if d.num_delivered > 1:
                self.stats.redelivered += 1
            batch = self._batch_of(d.msg.headers, d.msg.data, d.stream_seq)
            if batch is None:
                _client.run(self.remote._conn.term(d))
                continue
            if self._put(batch[0], batch[1], d.stream_seq, stop, d):
                self._ack(d, stop)

    def _batch_of(self, headers: Any, data: bytes, seq: int) -> Optional[Tuple[bytes, int]]:
        """(batch payload, count) of a JetStream message, or None if it is malformed."""
        try:
            if headers and _wire.HDR_BATCH in headers:
                payload, count = data or b"", int(headers[_wire.HDR_BATCH])
            else:
                (one, kind), = _wire.records_of(headers, data or b"")
                payload, count = _wire.pack([(one, kind)]), 1
            _wire.unpack(payload, count)  # validates before anything is put
            return payload, count
        except ValueError as e:
            print(f"shmq.nats bridge {self.name}: dropping malformed message {seq}: {e}",
                  file=self._log, flush=True)
            return None

    def _put(self, payload: bytes, count: int, seq: int, stop: threading.Event,
             d: Optional[Delivery]) -> bool:
        """Puts what the journal says is missing of stream message `seq`; False if stopped first
        (the rest is put by the restarted bridge, see _settle_last)."""
        done_seq, done_next = self._sink.committed()
        start = first = done_next if done_seq == seq else 0
        if start >= count:
            self.stats.duplicates += 1
        last_progress = time.monotonic()
        while start < count:
            if stop.is_set():
                return False
            start += self._sink.put(payload, start, seq, _POLL)
            if (d is not None and start < count and
                    time.monotonic() - last_progress > min(self.remote.ack_wait / 3, 5)):
                last_progress = time.monotonic()
                _client.run(self.remote._conn.in_progress(d))  # the local queue is full: keep it ours
        self.stats.messages += count - first
        self.stats.batches += 1
        self.stats.bytes += len(payload)
        return True

    def _settle_last(self, stop: threading.Event) -> None:
        """The journal's last stream message, maybe put in part and not acknowledged by the bridge
        that ran before (killed): put the rest, then delete it from the stream."""
        seq, _ = self._sink.committed()
        if seq == 0:
            return
        pause = 0.05
        while not stop.is_set():
            try:
                try:
                    raw = _client.run(self.remote._conn.js.get_msg(self.remote.stream, seq))
                except nats.js.errors.NotFoundError:
                    return  # acknowledged (or deleted) already
                batch = self._batch_of(raw.headers, raw.data, seq)
                if batch is not None and not self._put(batch[0], batch[1], seq, stop, None):
                    return
                _client.run(self.remote._conn.js.delete_msg(self.remote.stream, seq))
                return
            except nats.js.errors.NotFoundError:
                return
            except (_Transient + (nats.js.errors.APIError, OSError)):
                self.stats.retries += 1
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _ack(self, d: Delivery, stop: threading.Event) -> None:
        """Acks until the server confirms: the next batch is taken only after this one is
        recorded as done, so a batch can come back only while it is the sink's last one."""
        pause = 0.01
        while True:
            try:
                _client.run(self.remote._conn.ack_sync(d, timeout=2.0))
                return
            except (_Transient + (OSError,)):
                self.stats.retries += 1
                if stop.is_set():
                    return  # redelivered later; the sink recognises it as already put
                time.sleep(pause)
                pause = min(pause * 2, 0.5)


async def _pull(remote: _NatsQueue, batch: int, wait: float) -> List[Delivery]:
    await remote._ensure_consumer()
    return await remote._conn.pull(remote.stream, remote.durable, batch, wait, remote.ack_wait * 0.8)
