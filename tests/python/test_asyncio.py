"""asyncio: get_async/put_async on the queues, recv_async/recv_bytes_async/send_async on
Connection. They never block the loop, honour timeouts, and cancelling one loses nothing: a
message is either delivered to the awaiting coroutine or stays in the channel."""

import asyncio
import multiprocessing as mp
import os
import random
import time

import pytest

import shmq

SCALE = float(os.environ.get("SHMQ_TEST_SCALE", "1"))
TOTAL = max(200, int(3000 * SCALE))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def _produce(q, total, seed):
    rng = random.Random(seed)
    for i in range(total):
        q.put(i)
        if rng.random() < 0.05:
            time.sleep(rng.choice([0, 0.0005, 0.002]))


def _send(conn, total, seed):
    rng = random.Random(seed)
    for i in range(total):
        conn.send(i)
        if rng.random() < 0.05:
            time.sleep(rng.choice([0, 0.0005, 0.002]))
    conn.close()


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue", "JoinableQueue"])
def test_get_async_returns_at_once_waits_and_times_out(kind):
    q = getattr(shmq, kind)()

    async def main():
        q.put("ready")
        assert await q.get_async() == "ready"
        with pytest.raises(shmq.Empty):
            await q.get_async(timeout=0.05)
        waiter = asyncio.create_task(q.get_async())
        for _ in range(20):  # the loop keeps running while the get waits
            await asyncio.sleep(0)
        assert not waiter.done()
        q.put({"late": 1})
        assert await waiter == {"late": 1}
        await q.put_async(b"raw")
        assert await q.get_async(timeout=5) == b"raw"

    run(main())
    q.close()


def test_get_async_cancelled_at_random_loses_and_duplicates_nothing():
    q = shmq.Queue()
    p = mp.Process(target=_produce, args=(q, TOTAL, 1))

    async def main():
        received = []
        rng = random.Random(2)

        async def taker():
            while True:
                received.append(await q.get_async())

        tasks = [asyncio.create_task(taker()) for _ in range(4)]
        p.start()
        cancels = 0
        while p.is_alive() or not q.empty():
            await asyncio.sleep(rng.choice([0, 0, 0, 0.0001, 0.001]))
            i = rng.randrange(len(tasks))
            tasks[i].cancel()
            cancels += 1
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # sometimes let the cancellation land first
            tasks[i] = asyncio.create_task(taker())
            if len(received) >= TOTAL:
                break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return received, cancels

    received, cancels = run(main())
    p.join()
    rest = []
    while True:
        try:
            rest.append(q.get_nowait())
        except shmq.Empty:
            break
    assert cancels > 0
    assert received + rest == list(range(TOTAL))
    q.close()


def test_recv_async_cancelled_at_random_loses_nothing_and_keeps_order():
    a, b = shmq.Pipe(duplex=False)
    p = mp.Process(target=_send, args=(b, TOTAL, 3))

    async def main():
        received = []
        rng = random.Random(4)
        done = asyncio.Event()

        async def taker(use_bytes):
            try:
                while True:
                    if use_bytes and rng.random() < 0.2:
                        # every message here is a pickle: recv_bytes_async returns it raw
                        import pickle
                        received.append(pickle.loads(await a.recv_bytes_async()))
                    else:
                        received.append(await a.recv_async())
            except EOFError:
                done.set()

        tasks = [asyncio.create_task(taker(i == 0)) for i in range(3)]
        p.start()
        b.close()
        cancels = 0
        while not done.is_set():
            await asyncio.sleep(rng.choice([0, 0, 0.0001, 0.001]))
            i = rng.randrange(len(tasks))
            if tasks[i].done():
                continue
            tasks[i].cancel()
            cancels += 1
            tasks[i] = asyncio.create_task(taker(i == 0))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return received, cancels

    received, cancels = run(main())
    p.join()
    assert cancels > 0
    assert received == list(range(TOTAL))
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def _slow_reader(conn, out, total, writer):
    writer.close()  # the inherited copy of the writing end (multiprocessing's idiom)
    got = []
    while True:
        try:
            got.append(conn.recv())
        except EOFError:
            break
        if len(got) % 50 == 0:
            time.sleep(0.001)
    out.put(got)


def test_send_async_waits_for_room_and_a_cancelled_send_sends_nothing():
    a, b = shmq.Pipe(duplex=False, capacity=1024)  # room for a few dozen small messages
    out = shmq.Queue()
    p = mp.Process(target=_slow_reader, args=(a, out, TOTAL, b))
    p.start()
    a.close()

    async def main():
        sent = []
        rng = random.Random(5)
        cancelled = 0
        for i in range(TOTAL // 2):
            t = asyncio.create_task(b.send_async(i))
            if rng.random() < 0.1:
                await asyncio.sleep(0)
                t.cancel()
            try:
                await t
                sent.append(i)
            except asyncio.CancelledError:
                cancelled += 1
        big = b"B" * 5000  # larger than the ring: streamed from a worker thread
        await b.send_async(big)
        sent.append(big)
        return sent, cancelled

    sent, cancelled = run(main())
    b.close()
    got = out.get(timeout=60)
    p.join()
    assert cancelled > 0
    assert got == sent
    out.close()


def test_put_async_waits_for_room_then_times_out():
    q = shmq.Queue(maxsize=2)

    async def main():
        await q.put_async(1)
        await q.put_async(2)
        with pytest.raises(shmq.Full):
            await q.put_async(3, timeout=0.05)
        blocked = asyncio.create_task(q.put_async(3))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done()
        assert q.get() == 1  # room: the waiting put goes in
        await asyncio.wait_for(blocked, 30)
        cancelled = asyncio.create_task(q.put_async(4))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return [q.get_nowait(), q.get_nowait()]

    assert run(main()) == [2, 3]
    with pytest.raises(shmq.Empty):
        q.get_nowait()  # the cancelled put put nothing
    q.close()


def test_recv_async_reports_the_end_of_stream():
    a, b = shmq.Pipe()

    async def main():
        b.send("last")
        b.close()
        assert await a.recv_async() == "last"
        with pytest.raises(EOFError):
            await a.recv_async()

    run(main())
    a.close()


def test_async_calls_on_a_closed_handle_raise():
    q = shmq.Queue()
    q.close()
    a, b = shmq.Pipe()
    a.close()

    async def main():
        with pytest.raises(ValueError):
            await q.get_async()
        with pytest.raises(OSError):
            await a.recv_async()
        with pytest.raises(OSError):
            await a.send_async(1)

    run(main())
    b.close()


@pytest.mark.parametrize("channel", ["queue", "pipe"])
def test_cancelled_after_its_wake_up_the_message_stays(channel):
    """The narrowest window: the loop has seen the fd readable and resolved the waiter, but the
    task is cancelled before it runs. asyncio runs ready handles in order, so two sleep(0)s
    after the fd became readable put this coroutine just before the woken task."""
    import select
    if channel == "queue":
        ch = shmq.Queue()
        rx, tx = ch, ch
        get, put, fd_of = ch.get_async, ch.put, ch.fileno
    else:
        rx, tx = shmq.Pipe()
        get, put, fd_of = rx.recv_async, tx.send, rx.fileno

    async def main():
        t = asyncio.create_task(get())
        await asyncio.sleep(0)  # t waits on the fd
        put("kept")
        assert select.select([fd_of()], [], [], 10)[0]  # (blocks the loop: the point here)
        await asyncio.sleep(0)  # the loop selects; the fd's callback runs after us
        await asyncio.sleep(0)  # it ran and woke t; t runs after us
        assert not t.done()
        assert t._fut_waiter is not None and t._fut_waiter.done()  # (CPython's Task) woken
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert await get() == "kept"

    run(main())
    for c in {id(rx): rx, id(tx): tx}.values():
        c.close()
