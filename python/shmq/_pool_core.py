"""The engine under shmq.Pool and shmq.ProcessPoolExecutor: workers, dispatch, results, deaths.

Channels. Each worker has a task Queue of its own; all workers answer on one result Queue. The
parent is the only writer of every task queue and the only reader of the result queue (see
_pool_worker for the message formats).

Exact accounting. The parent records which tasks it put into which worker's queue (``held``). A
worker takes one task at a time and answers it before taking the next. When a worker dies, a
monitor thread sees its pidfd (or process sentinel) become ready at once and puts a death notice
on the result queue: every answer the worker committed before dying was claimed earlier in the
queue, so it is read before the notice. On the notice the parent takes back what is still in the
dead worker's queue (never started: dispatched again), and whatever else the worker held and did
not answer is the task it was running (at most one): retried up to ``retries`` times, then failed
with WorkerLost. Nothing is lost silently and nothing is answered twice.

No thread between caller and queues. A caller waiting for a result (``get``, ``map``, ``next``)
reads the result queue itself, as the *leader*: it files every answer it reads under its job,
tops up the workers' queues and steps down once its own result is in. Other waiting threads
follow (they sleep on a condition until their result is filed or the leader steps down). A
helper thread, the *pusher*, leads only when results must move without anyone waiting for them:
callbacks, executor futures, a backlog of undispatched tasks, a death to handle.

Dispatch and balance. The parent keeps each worker's queue topped up to a window of about
``_WINDOW_TIME`` of work (from the worker's measured task times; 2 tasks for long ones, up to
``_WINDOW_MAX`` for tiny ones), refilling a queue once it is half empty. Tasks queued behind a
task that runs much longer than usual are taken back and given to others, and an idle worker
gets half of the longest queue once there is no backlog, so one slow task never holds up the
ones behind it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from . import _pool_worker as _w
from ._pool_leading import Leadership
from ._pool_workers import (CLOSE, RUN, START_TIMEOUT, STOPPED, TERMINATE, Supervision, Worker,
                            close_and_unlink, cores, reap)
from ._queues import Empty, Full, Queue

__all__ = ["PoolCore", "Job", "WorkerLost"]

# Tasks a worker may hold (queued plus running) when its tasks are tiny; its task queue has twice
# as many slots.
_WINDOW_MAX = 256
# A worker's queue holds about this much work (seconds), so that it never waits for the parent,
# which on a busy machine may take milliseconds to come back; and never fewer than _WINDOW_MIN
# tasks (one running, one waiting). Tasks held up behind a long one are taken back (_STALL_*).
_WINDOW_TIME = 0.05
_WINDOW_MIN = 2
# Tasks queued behind a running one are taken back once it has run this many times its worker's
# usual task time, and at least _STALL_MIN seconds.
_STALL_FACTOR = 10.0
_STALL_MIN = 0.1
# Messages larger than this take a chunk of the queue's large-message arena (8 by default); a
# worker holds at most _LARGE_MAX of them so that they never spill into files.
_LARGE = 2048
_LARGE_MAX = 6
_RESULT_SLOTS = 4096


class WorkerLost(RuntimeError):
    """A pool worker died (killed by a signal, ``os._exit``, the OOM killer) while it held a
    task: that task's result raises this. ``pid``, ``exitcode``, ``signal`` (the signal number,
    or None if the worker exited) and ``task`` (a description) say which."""

    def __init__(self, pid: Optional[int], exitcode: Optional[int], task: str,
                 attempts: int = 1) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.task = task
        self.attempts = attempts
        super().__init__(self._text())

    def _text(self) -> str:
        if self.signal is not None:
            try:
                import signal as _signal
                how = f"was killed by signal {self.signal} ({_signal.Signals(self.signal).name})"
            except ValueError:
                how = f"was killed by signal {self.signal}"
        elif self.exitcode is not None:
            how = f"exited with code {self.exitcode}"
        else:
            how = "died"
        tries = f" (attempt {self.attempts})" if self.attempts > 1 else ""
        return f"pool worker (pid {self.pid}) {how} while running {self.task}{tries}"

    def __reduce__(self) -> Any:
        return (WorkerLost, (self.pid, self.exitcode, self.task, self.attempts))


class Job:
    """What a submitted call (apply, map chunk set, imap, future) gives the core."""

    #: True if results must be filed without a waiting caller (callbacks, futures).
    push = False
    #: True if ``start(index)`` must be called when a task is first handed to a worker.
    needs_start = False

    def on_result(self, index: int, ok: bool, value: Any,
                  actions: List[Callable[[], None]]) -> None:
        """Files one task's result (called with the core's lock held). Work that may run user code
        (callbacks, future callbacks) goes into ``actions``, run after the lock is released."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"task {index}"

    def end_input(self) -> None:
        """A lazy job stops reading its input (the pool was terminated)."""

    def start(self, index: int) -> bool:
        """Called once per task when it is first dispatched; False drops the task (cancelled)."""
        return True

    def pull(self, n: int, tids: Iterator[int]) -> Tuple[List[Tuple[int, int, Any]], bool]:
        """For lazy jobs (imap): up to ``n`` next tasks as ``(tid, index, message)`` (ids from
        ``tids``), and whether more may follow. An item that cannot become a task (an unpicklable
        argument) is filed as its result instead."""
        return [], False


# A task's record is a list (the hot path makes one per task): its job, its index in the job, its
# message, whether the message is large, how many times a worker died holding it, and the id of the
# worker it was last handed to (-1: never handed out; -2: started by Job.start, not handed out yet).
_JOB, _INDEX, _MSG, _BIG, _TRIES, _WID = range(6)


class PoolCore(Supervision, Leadership):
    """Workers, channels and bookkeeping shared by Pool and ProcessPoolExecutor. Starting and
    watching workers is in Supervision (_pool_workers), reading the result queue in Leadership
    (_pool_leading); the bookkeeping of tasks, here."""

    def __init__(self, processes: int, ctx: Any, initializer: Optional[Callable[..., Any]],
                 initargs: Sequence[Any], maxtasks: Optional[int], retries: int,
                 broken: Callable[[BaseException], BaseException], finish_at_exit: bool) -> None:
        """``finish_at_exit``: at interpreter exit, finish the submitted tasks first (an executor)
        rather than end the workers at once (a Pool, like multiprocessing's)."""
        self._ctx = ctx
        self._task_slots = 2 * _WINDOW_MAX
        self.at_exit = self.join_after_close if finish_at_exit else self.terminate
        self.processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasks
        self._retries = retries
        self._make_broken = broken
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)     # followers: a result was filed
        self._pusher_cond = threading.Condition(self._lock)
        self._state = RUN
        self._broken: Optional[BaseException] = None
        self._init_failures = 0
        self._workers: Dict[int, Worker] = {}
        self._tasks: Dict[int, list] = {}   # tid -> task record
        self._backlog: Deque[int] = deque()
        self._sources: Deque[Job] = deque()
        self.tids = itertools.count()   # task ids; next() is atomic under the GIL
        self._next_wid = 0
        self._leader: Optional[int] = None
        self._want = 0          # followers waiting for the lead
        self._push = 0          # unanswered tasks of push jobs
        self._notices = 0       # death notices posted, not yet handled
        self._stepped_down = 0.0
        self._next_check: Optional[float] = None
        self._watch: Dict[int, int] = {}   # fd -> wid, watched by the monitor
        self._retired: List[Queue] = []    # dead workers' queues, for the monitor to close
        self._results = Queue(slots=_RESULT_SLOTS)
        self._notifier = Queue.open(self._results.name)  # the monitor's and terminate's writes
        self._wake_r, self._wake_w = os.pipe()
        self._handles_closed = False
        self._auto_stop = False   # executor.shutdown(wait=False): stop once idle
        cores.add(self)
        with self._lock:
            for _ in range(processes):
                self._spawn()
        self._monitor_thread = threading.Thread(target=self._monitor, daemon=True,
                                                name="shmq-pool-monitor")
        self._pusher_thread = threading.Thread(target=self._pusher, daemon=True,
                                               name="shmq-pool-pusher")
        self._monitor_thread.start()
        self._pusher_thread.start()

    # ---- submitting ------------------------------------------------------------------------------

    def check_running(self) -> None:
        if self._state is not RUN:
            raise ValueError("Pool not running")
        if self._broken is not None:
            raise self._make_broken(self._broken.__cause__)

    def submit(self, job: Job, items: Sequence[Tuple[int, int, Any]],
               wake_pusher: bool = True) -> None:
        """Queues ``job``'s tasks, ``(tid, index, message)`` with ids from ``tids`` and messages
        from encode_call, and hands out what the workers have room for. ``wake_pusher=False`` when
        the caller waits for the result right away (map, apply)."""
        actions: List[Callable[[], None]] = []
        with self._lock:
            self.check_running()
            tasks = self._tasks
            backlog = self._backlog
            for tid, index, msg in items:
                tasks[tid] = [job, index, msg, type(msg) is tuple or len(msg) > _LARGE, 0, -1]
                backlog.append(tid)
            if job.push:
                self._push += len(items)
            self._dispatch(actions)
            if wake_pusher and (job.push or self._backlog):
                self._pusher_cond.notify()
        self._run(actions)

    def add_source(self, job: Job) -> None:
        """Registers a lazy job (imap): its tasks are pulled while the workers have room."""
        actions: List[Callable[[], None]] = []
        with self._lock:
            self.check_running()
            self._sources.append(job)
            self._dispatch(actions)
            self._pusher_cond.notify()
        self._run(actions)

    def _pull(self, n: int) -> None:
        """Adds up to ``n`` tasks of the lazy jobs (imap) to the backlog."""
        tasks = self._tasks
        backlog = self._backlog
        while n > 0 and self._sources:
            job = self._sources[0]
            got, more = job.pull(n, self.tids)
            for tid, index, msg in got:
                tasks[tid] = [job, index, msg, type(msg) is tuple or len(msg) > _LARGE, 0, -1]
                backlog.append(tid)
            if job.push:
                self._push += len(got)
            n -= len(got)
            if not more:
                self._sources.popleft()

    def cancel_pending(self, job: Job) -> None:
        """Drops ``job``'s tasks that no worker has been given yet (its consumer went away)."""
        with self._lock:
            try:
                self._sources.remove(job)
            except ValueError:
                pass
            keep = deque()
            for tid in self._backlog:
                t = self._tasks.get(tid)
                if t is not None and t[_JOB] is job:
                    del self._tasks[tid]
                    if job.push:
                        self._push -= 1
                else:
                    keep.append(tid)
            self._backlog = keep

    def cancel_backlog(self, actions: List[Callable[[], None]],
                       cancel: Callable[[Job, int], bool]) -> None:
        """For executor.shutdown(cancel_futures=True): drops every undispatched task whose job
        agrees (``cancel(job, index)`` returns True)."""
        with self._lock:
            keep = deque()
            for tid in self._backlog:
                t = self._tasks.get(tid)
                if t is None:
                    continue
                if cancel(t[_JOB], t[_INDEX]):
                    del self._tasks[tid]
                    if t[_JOB].push:
                        self._push -= 1
                else:
                    keep.append(tid)
            self._backlog = keep
            for job in list(self._sources):
                if cancel(job, -1):
                    self._sources.remove(job)

    # ---- dispatch and balance (lock held) -------------------------------------------------------

    def _room(self, w: Worker) -> int:
        """How many tasks ``w`` gets now: none while its queue is more than half full (the
        parent tops queues up in large batches, not one task per answer)."""
        if w.stalled:
            window = 1
        elif w.ewma is None:
            window = _WINDOW_MIN
        else:
            window = max(_WINDOW_MIN, min(_WINDOW_MAX, int(_WINDOW_TIME / max(w.ewma, 1e-7))))
        held = len(w.held)
        if held > window // 2:
            return 0
        room = window - held
        if self._maxtasks is not None:
            room = min(room, self._maxtasks - w.assigned)
        return room

    def _dispatch(self, actions: List[Callable[[], None]]) -> None:
        if not (self._backlog or self._sources) or self._state in (TERMINATE, STOPPED):
            return
        rooms = []
        for w in self._workers.values():
            if w.ready and not w.dead:
                room = self._room(w)
                if room > 0:
                    rooms.append([w, room, [], w.big])
        if not rooms:
            return
        rooms.sort(key=lambda r: len(r[0].held))  # the least loaded first
        batches = list(rooms)
        tasks = self._tasks
        backlog = self._backlog
        if self._sources:
            self._pull(sum(r[1] for r in rooms) - len(backlog))
        n = len(rooms)
        i = 0
        while n and backlog:
            tid = backlog.popleft()
            t = tasks.get(tid)
            if t is None:
                continue
            if t[_BIG] or t[_JOB].needs_start:
                if t[_BIG]:
                    # Large messages go to the workers holding fewest of them.
                    k = next((j for j in range(n) if rooms[(i + j) % n][3] < _LARGE_MAX), None)
                    if k is None:
                        backlog.appendleft(tid)
                        break
                    i = (i + k) % n
                job = t[_JOB]
                if job.needs_start and t[_WID] == -1:
                    t[_WID] = -2   # started: not again when it is dispatched again
                    if not job.start(t[_INDEX]):
                        del tasks[tid]
                        if job.push:
                            self._push -= 1
                        continue
                if t[_BIG]:
                    rooms[i][3] += 1
            r = rooms[i]
            r[2].append(tid)
            r[1] -= 1
            if r[1] == 0:
                rooms.pop(i)
                n -= 1
            else:
                i += 1
            if i >= n:
                i = 0
        now = time.monotonic()
        for r in batches:
            if r[2]:
                self._hand(r[0], r[2], now)

    def _hand(self, w: Worker, batch: List[int], now: float) -> None:
        if not w.held:
            w.since = now
        if len(w.held) + len(batch) >= 2:
            # Tasks now wait behind a running one: look at it again if it runs long.
            at = w.since + max(_STALL_MIN, _STALL_FACTOR * (w.ewma or 0.0))
            if self._next_check is None or at < self._next_check:
                self._next_check = at
        tasks = self._tasks
        held = w.held
        wid = w.wid
        msgs = []
        for tid in batch:
            t = tasks[tid]
            held[tid] = None
            t[_WID] = wid
            if t[_BIG]:
                w.big += 1
            msgs.append(t[_MSG])
        w.assigned += len(batch)
        w.queue.put_many(msgs)

    def _take_back(self, w: Worker, limit: int) -> List[int]:
        """Takes up to ``limit`` unstarted tasks out of ``w``'s queue (oldest first)."""
        got: List[int] = []
        try:
            while len(got) < limit:
                msg = w.queue.get_nowait()
                if msg is not None:
                    got.append(_w.task_id(msg))
        except Empty:
            pass
        for tid in got:
            w.held.pop(tid, None)
            w.assigned -= 1
            t = self._tasks.get(tid)
            if t is not None and t[_BIG]:
                w.big -= 1
        return got

    def _balance(self, now: float) -> None:
        """Takes queued tasks back from workers stuck on a long task, and gives an idle worker
        half of the longest queue when there is no backlog."""
        self._next_check = None
        live = []
        for w in self._workers.values():
            if w.dead:
                continue   # its notice is on the way
            if w.ready:
                live.append(w)
            elif now - w.started >= START_TIMEOUT:
                w.proc.kill()   # stuck before it could serve: the monitor reports its death
                w.started = float("inf")
            elif self._next_check is None or w.started + START_TIMEOUT < self._next_check:
                self._next_check = w.started + START_TIMEOUT
        if len(live) < 2:
            return
        moved: List[int] = []
        for v in live:
            if len(v.held) < 2:
                continue
            limit = max(_STALL_MIN, _STALL_FACTOR * (v.ewma or 0.0))
            if now - v.since >= limit:
                moved += self._take_back(v, len(v.held))
                v.stalled = True
            elif self._next_check is None or v.since + limit < self._next_check:
                self._next_check = v.since + limit
        if not moved and not self._backlog and not self._sources:
            idle = [w for w in live if not w.held and self._room(w) > 0]
            if idle:
                v = max(live, key=lambda w: len(w.held))
                queued = len(v.held) - 1
                if queued > 0:
                    moved = self._take_back(v, max(1, queued * len(idle) // (len(idle) + 1)))
        if moved:
            self._backlog.extendleft(reversed(moved))

    # ---- results ---------------------------------------------------------------------------------

    def _process(self, msgs: Sequence[Any]) -> None:
        """Files a batch read from the result queue, then tops the workers' queues up."""
        actions: List[Callable[[], None]] = []
        with _ctrl_c_held(), self._lock:
            now = time.monotonic()
            tasks_pop = self._tasks.pop
            workers_get = self._workers.get
            answered = 0
            balance = False
            for m in msgs:
                tid = m[0]
                if type(tid) is int:
                    t = tasks_pop(tid, None)
                    if t is None:
                        continue  # a task of a job that was cancelled or terminated
                    w = workers_get(t[_WID])
                    if w is not None:
                        held = w.held
                        held.pop(tid, None)
                        if not held:
                            balance = True   # an idle worker may take queued tasks of another
                        took = m[3]
                        ewma = w.ewma
                        w.ewma = took if ewma is None else ewma + 0.25 * (took - ewma)
                        w.since = now
                        w.stalled = False
                        if t[_BIG]:
                            w.big -= 1
                    job = t[_JOB]
                    if job.push:
                        self._push -= 1
                    answered += 1
                    job.on_result(t[_INDEX], m[1], m[2], actions)
                elif tid == "ready":
                    w = workers_get(m[1])
                    if w is not None:
                        w.ready = True
                        self._init_failures = 0
                elif tid == "dead":
                    balance = True
                    self._on_death(m[1], m[2], actions)
                elif tid == "init-error":
                    self._on_init_error(m[2], actions)
            if answered:
                self._init_failures = 0
            if self._state is RUN or self._state is CLOSE:
                if balance or (self._next_check is not None and now >= self._next_check):
                    self._balance(now)
                if self._backlog or self._sources:
                    self._dispatch(actions)
            self._cond.notify_all()
        if actions:
            self._run(actions)

    def _run(self, actions: List[Callable[[], None]]) -> None:
        for act in actions:
            try:
                act()
            except Exception:  # a user callback raised: report it, keep the pool going
                print("Exception in a shmq pool callback:", file=sys.stderr)
                traceback.print_exc()
        if actions:
            with self._lock:
                self._cond.notify_all()

    def _on_death(self, wid: int, exitcode: Optional[int],
                  actions: List[Callable[[], None]]) -> None:
        self._notices -= 1
        w = self._workers.pop(wid, None)
        if w is None:
            return
        back = self._take_back(w, 1 << 62)
        # The monitor closes its queue: closing a segment takes a while, the caller waiting for
        # the lost task's result should not.
        self._retired.append(w.queue)
        self._wake_monitor()
        requeue: List[int] = []
        for tid in list(w.held):
            t = self._tasks.get(tid)
            if t is None:
                continue
            t[_TRIES] += 1
            if t[_TRIES] <= self._retries:
                requeue.append(tid)
                continue
            del self._tasks[tid]
            job = t[_JOB]
            if job.push:
                self._push -= 1
            exc = WorkerLost(w.proc.pid, exitcode, job.describe(t[_INDEX]), t[_TRIES])
            job.on_result(t[_INDEX], False, exc, actions)
        self._backlog.extendleft(reversed(requeue + back))
        if not w.replaced and self._may_spawn():
            self._spawn()

    def _on_init_error(self, exc: BaseException, actions: List[Callable[[], None]]) -> None:
        self._init_failures += 1
        if self._init_failures < max(3, self.processes) or self._broken is not None:
            return
        # Every fresh worker fails to start: nothing could ever run. Fail everything pending.
        self._broken = self._make_broken(exc)
        self._fail_all(self._broken, actions)

    def _fail_all(self, exc: BaseException, actions: List[Callable[[], None]]) -> None:
        tasks = list(self._tasks.values())
        sources = list(self._sources)
        self._tasks.clear()
        self._backlog.clear()
        self._sources.clear()
        self._push = 0
        for w in self._workers.values():
            w.held.clear()
        for job in sources:
            job.end_input()
        for t in tasks:
            t[_JOB].on_result(t[_INDEX], False, exc, actions)

    # ---- leading ---------------------------------------------------------------------------------

    # ---- ending ----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._state is RUN:
                self._state = CLOSE

    def join_after_close(self) -> None:
        """Finishes what was submitted, then stops (an executor at interpreter exit)."""
        self.close()
        self.join()

    def stop_when_idle(self) -> None:
        """After close(): the pusher stops the workers once every task is done."""
        with self._lock:
            self._auto_stop = True
            self._pusher_cond.notify()

    def idle(self) -> bool:
        return not self._tasks and not self._backlog and not self._sources

    def join(self) -> None:
        """After close(): finishes every task, then stops the workers and the threads. After
        terminate(): stops what is left."""
        if self._state is CLOSE:
            self.wait_until(self.idle)
        self._stop()

    def terminate(self, exc: Optional[BaseException] = None) -> None:
        """Ends every worker now; unfinished results fail with ``exc``."""
        actions: List[Callable[[], None]] = []
        with self._lock:
            if self._state in (TERMINATE, STOPPED):
                stopped = True
            else:
                stopped = False
                self._state = TERMINATE
                self._fail_all(exc or RuntimeError("the pool was terminated before this task "
                                                   "finished"), actions)
                procs = [w.proc for w in self._workers.values()]
        if stopped:
            self._stop()
            return
        for p in procs:
            try:
                p.terminate()
            except (OSError, AttributeError, ValueError):
                pass
        self._wake_leader()
        self._run(actions)
        self._stop()

    def _wake_leader(self) -> None:
        try:
            self._notifier.put(("wake",), False)
        except (Full, ValueError, OSError):
            pass

    def _stop(self) -> None:
        """Asks the workers to exit, waits for them, ends the threads, closes the channels."""
        with self._lock:
            if self._state is STOPPED and self._handles_closed:
                return
            if self._state is not TERMINATE:
                self._state = TERMINATE
            workers = list(self._workers.values())
            for w in workers:
                try:
                    w.queue.put_nowait(None)
                except (Full, ValueError, OSError):
                    w.proc.terminate()
        for w in workers:
            if reap(w.proc, 10.0) is None:
                w.proc.kill()
                reap(w.proc, 10.0)
        with self._lock:
            self._state = STOPPED
            self._pusher_cond.notify_all()
            self._cond.notify_all()
        self._wake_monitor()
        self._wake_leader()
        me = threading.current_thread()
        for t in (self._monitor_thread, self._pusher_thread):
            if t is not me and t.is_alive():
                t.join(5.0)
        self._close_handles()

    def _close_handles(self) -> None:
        me = threading.get_ident()
        deadline = time.monotonic() + 5.0
        with self._lock:
            # A leader still reading the result queue must leave it first (the wake made it).
            while self._leader is not None and self._leader != me:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.05))
                self._wake_leader()
            if self._handles_closed or self._leader == me:
                return
            self._handles_closed = True
            queues = [w.queue for w in self._workers.values()] + self._retired
            self._retired = []
            fds = [w.fd for w in self._workers.values() if w.fd >= 0] + [self._wake_r, self._wake_w]
            for w in self._workers.values():
                w.fd = -1
            self._wake_r = self._wake_w = -1
            self._workers.clear()
            self._watch.clear()
        cores.discard(self)
        for q in queues + [self._notifier, self._results]:
            close_and_unlink(q)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


class _ctrl_c_held:
    """Holds Ctrl-C back while the main thread files a batch: a KeyboardInterrupt in the middle
    would drop answers already taken from the result queue. It is raised right after."""

    __slots__ = ("_old", "_hit")

    def __enter__(self) -> None:
        self._old = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._hit = False
            self._old = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self._hit = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            if self._hit and exc[0] is None:
                raise KeyboardInterrupt
