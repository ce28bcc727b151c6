"""Managers over shared memory: multiprocessing's ``SyncManager`` and ``BaseManager``, whose server
process talks to its clients over shmq duplex pipes instead of sockets.

    import shmq
    with shmq.Manager() as m:
        d = m.dict(); l = m.list(range(10)); q = m.Queue()

The server, the proxies and their semantics are multiprocessing's own (``multiprocessing.managers``
``Server``, ``BaseProxy``, ``SyncManager``'s registry): only the transport changes. Proxies pickle
as multiprocessing's do, so they pass to ``Process`` under any start method.

Transport. A manager's address is the name of its accept queue (a shmq SimpleQueue). ``Client``
makes a duplex Pipe, puts the name of the far end into the accept queue and waits until the
server has opened that end (it answers with one message), checking between slices of 50 ms that
the server lives; only then does it let go of its copy of the far end. The server gives each
accepted connection a thread, as multiprocessing's does.

Liveness. The server holds a shared ``flock`` on its accept queue's file for as long as it runs
(a forked child drops its inherited copy): a client that finds no such lock raises
``ManagerGone`` instead of waiting. A connection whose server dies mid-call raises
``ManagerGone`` at ``recv`` (the pipe's end of stream); a client killed mid-call ends its server
thread the same way and never wedges the server or other clients.

shmq-native objects. SyncManager's ``Queue``, ``JoinableQueue`` (both ``shmq.JoinableQueue``: a
manager's queue counts tasks like ``queue.Queue``), ``Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``, ``Value`` and ``Array`` hand out
shmq's own objects: used in shared memory, with no proxy round trip, and robust to a holder's
``kill -9`` as shmq's are. Their lifetime is the manager's: the client asks the server to make
each one (one round trip, like a proxy's creation), the server keeps a handle to every object it
made until it shuts down, and the client gets a handle of its own. So an object passed on by name
(through a queue, a proxied dict, a Process' arguments) opens in its receiver even after every
client dropped theirs, as long as the manager runs; and the manager's memory grows with every
such object made until shutdown (multiprocessing frees a referent with its last proxy).
``Value(typecode, value)`` whose type has no shared-memory form (``c_char_p``, ``c_wchar_p``,
``c_void_p``, a pointer, or a typecode ctypes does not know) stays multiprocessing's
``ValueProxy`` to a Python object in the server.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import weakref
from multiprocessing import connection as _mp_connection
from multiprocessing import managers as _mpm
from multiprocessing.sharedctypes import typecode_to_type as _typecode_to_type
from typing import Any, Callable, Dict, Optional

from . import _connection, _queues, sharedctypes, synchronize

__all__ = [
    "BaseManager", "SyncManager", "Manager", "BaseProxy", "ManagerGone", "Address",
    "Listener", "Client", "Token", "Namespace", "RemoteError", "SERIALIZER", "Server",
    "ManagedValue",
]

# multiprocessing's proxy and server machinery, re-exported for BaseManager.register() users.
BaseProxy = _mpm.BaseProxy
Token = _mpm.Token
Namespace = _mpm.Namespace
RemoteError = _mpm.RemoteError
AutoProxy = _mpm.AutoProxy
MakeProxyType = _mpm.MakeProxyType

# The key of the shmq transport in multiprocessing.managers.listener_client, the table
# multiprocessing's Server, BaseManager and BaseProxy look their Listener/Client up in.
SERIALIZER = "shmq"

# Ring bytes per direction of a manager connection: requests and replies are small; a larger
# one streams through the ring.
CONNECTION_CAPACITY = 1 << 18
# How long a client waits between checks that the server it is connecting to still lives.
_SLICE = 0.05
_ACCEPTED = b"shmq-manager-accepted"


class ManagerGone(ConnectionResetError, EOFError):
    """The manager's server process is gone (it died or was shut down): raised by a call through
    a proxy or by connecting to it, instead of waiting forever. Also an ``EOFError``, which
    multiprocessing raises in the same place."""


class Address(str):
    """A shmq manager's address: the name of its accept queue. Unpickling one imports this
    module, which registers the transport with multiprocessing in the receiving process."""

    __slots__ = ()

    def __reduce__(self) -> Any:
        return (Address, (str(self),))

    def __repr__(self) -> str:
        return f"shmq.managers.Address({str(self)!r})"


def _queue_path(address: str) -> str:
    return "/dev/shm/shmq." + address


def _server_alive(address: str) -> bool:
    """Whether a live process holds the listener's lock on the accept queue `address`."""
    try:
        fd = os.open(_queue_path(address), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: the server is gone
        return False
    finally:
        os.close(fd)


# ---- the transport -------------------------------------------------------------------------------

class Listener:
    """Accepts connections from ``Client(address)``: multiprocessing.connection.Listener's
    interface over a shmq accept queue. ``address=None`` makes a fresh name (the queue then
    disappears with its last user); a given name is used as is and removed by ``close()``."""

    def __init__(self, address: Optional[str] = None, family: Any = None, backlog: int = 1,
                 authkey: Optional[bytes] = None) -> None:
        if address is not None and not isinstance(address, str):
            raise ValueError(f"a shmq manager's address is a shared-memory name (str), not "
                             f"{address!r}: shmq managers serve processes on this machine only")
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        self._authkey = authkey
        self._named = address is not None
        self._queue = _queues.SimpleQueue(name=address, slots=256, slot_size=512,
                                          create=True if address is not None else None)
        self._address = Address(self._queue.name)
        self._lock_fd: Optional[int] = os.open(_queue_path(self._address),
                                               os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        _listeners.add(self)

    @property
    def address(self) -> Address:
        return self._address

    @property
    def last_accepted(self) -> None:
        return None

    def accept(self) -> _connection.Connection:
        """Waits for a client and returns the server's end of its pipe. ``OSError`` if the
        client vanished before it could be opened (the caller just accepts again)."""
        if self._queue is None:
            raise OSError("listener is closed")
        name = self._queue.get()
        if not isinstance(name, str):
            raise OSError(f"a stray message in the accept queue {self._address!r}")
        conn = _connection._rebuild(name, 1, True, True, False)
        try:
            conn.send_bytes(_ACCEPTED)
            if self._authkey is not None:
                _mp_connection.deliver_challenge(conn, self._authkey)
                _mp_connection.answer_challenge(conn, self._authkey)
        except BaseException:
            conn.close()
            raise
        _listeners.close_in_children(conn)
        return conn

    def close(self) -> None:
        """Stops listening: releases the liveness lock and the accept queue (a named one is
        also removed from /dev/shm)."""
        q, self._queue = self._queue, None
        if q is None:
            return
        _listeners.discard(self)
        self._drop_lock()
        if self._named:
            try:
                q.unlink()
            except OSError:
                pass
        q.close()

    def _drop_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _forget_in_child(self) -> None:
        """In a forked child: lets go of this process's copies (the lock fd, the accept queue's
        handle); the parent goes on listening."""
        self._drop_lock()
        q, self._queue = self._queue, None
        if q is not None:
            q.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ListenerSet:
    """The live Listeners of this process and the connections they accepted. A forked child (a
    Pool's worker, forked by a server thread while it serves a call) closes its inherited lock
    fds, so that the server's death shows even while its children live on, and its copies of the
    accept queues, of the accepted connections and of the queues the server keeps for its
    clients, which it never uses: otherwise each would stay open as long as the child, and a
    child killed after everyone else closed (a Pool's ``terminate()``) would leave them in
    /dev/shm for the next ``shmq.gc()``. (In a forked child, ``close()`` lets go of this
    process's copy only: the parent's stay open.)"""

    def __init__(self) -> None:
        self._items: "set[Listener]" = set()
        self._objects: "weakref.WeakSet[Any]" = weakref.WeakSet()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def add(self, l: Listener) -> None:
        self._items.add(l)

    def discard(self, l: Listener) -> None:
        self._items.discard(l)

    def close_in_children(self, obj: Any) -> None:
        """A forked child closes its copy of `obj` (a connection, a queue) at once."""
        self._objects.add(obj)

    def _after_fork_in_child(self) -> None:
        for l in self._items:
            l._forget_in_child()
        self._items.clear()
        for obj in list(self._objects):
            obj.close()
        self._objects = weakref.WeakSet()


_listeners = _ListenerSet()


class ClientConnection(_connection.Connection):
    """The client's end of a manager connection: a Connection whose ``recv`` turns the end of
    stream into ``ManagerGone``."""

    def __init__(self, handle: Any, address: str) -> None:
        super().__init__(handle)
        self._address = address
        self.send = handle.send  # the native method: the hot half of every proxy call

    def recv(self) -> Any:
        try:
            return self._h.recv()
        except EOFError:
            raise ManagerGone(f"the shmq manager at {self._address!r} is gone (its server "
                              f"process died or was shut down)") from None

    def recv_bytes(self, maxlength: Optional[int] = None) -> bytes:
        try:
            return self._h.recv_bytes(maxlength)
        except EOFError:
            raise ManagerGone(f"the shmq manager at {self._address!r} is gone") from None


def Client(address: str, family: Any = None, authkey: Optional[bytes] = None) -> ClientConnection:
    """Connects to the Listener at ``address``: multiprocessing.connection.Client's interface.
    ``ManagerGone`` if no server listens there."""
    if not isinstance(address, str):
        raise ValueError(f"a shmq manager's address is a shared-memory name, not {address!r}")
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    try:
        accept_queue = _queues.SimpleQueue.open(address)
    except FileNotFoundError:
        raise ManagerGone(f"no shmq manager at {address!r}") from None
    try:
        if not _server_alive(address):
            raise ManagerGone(f"no shmq manager at {address!r} (its server is gone)")
        mine, theirs = _connection.Pipe(duplex=True, capacity=CONNECTION_CAPACITY)
        conn = ClientConnection(mine._h, address)
        try:
            accept_queue.put(theirs.name)
            # Hold the server's end until it has opened it, so that it never finds it closed.
            while not conn.poll(_SLICE):
                if not _server_alive(address):
                    raise ManagerGone(f"the shmq manager at {address!r} is gone")
            if conn.recv_bytes() != _ACCEPTED:
                raise OSError(f"unexpected greeting from the shmq manager at {address!r}")
        except BaseException:
            conn.close()
            raise
        finally:
            theirs.close()
    finally:
        accept_queue.close()
    if authkey is not None:
        _mp_connection.answer_challenge(conn, authkey)
        _mp_connection.deliver_challenge(conn, authkey)
    return conn


_mpm.listener_client[SERIALIZER] = (Listener, Client)


# ---- managers ------------------------------------------------------------------------------------

def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _serializer(serializer: str) -> str:
    if serializer in ("pickle", SERIALIZER):
        return SERIALIZER
    raise ValueError(f"shmq managers pickle over shared memory; serializer={serializer!r} is "
                     f"not supported (use 'pickle')")


class BaseManager(_mpm.BaseManager):
    """multiprocessing.managers.BaseManager over shmq pipes. ``register()``, ``start()``,
    ``connect()``, ``get_server()``, ``shutdown()``, the context manager and the proxies behave
    as multiprocessing's; ``address`` is a shared-memory name (or None for a fresh one), not a
    socket address, so a manager serves the processes of this machine."""

    def __init__(self, address: Optional[str] = None, authkey: Optional[bytes] = None,
                 serializer: str = "pickle", ctx: Any = None, *,
                 shutdown_timeout: float = 1.0) -> None:
        if address is not None and not isinstance(address, str):
            raise ValueError(f"a shmq manager's address is a shared-memory name (str), not "
                             f"{address!r}")
        super().__init__(address=None if address is None else Address(address),
                         authkey=authkey, serializer=_serializer(serializer), ctx=ctx,
                         shutdown_timeout=shutdown_timeout)

    @classmethod
    def _run_server(cls, *args: Any, **kwds: Any) -> None:
        # shutdown() terminates (SIGTERM) a server slow to exit: let that be a normal exit, which
        # releases the server's shared memory (its accept queue has no other user to remove it).
        # Children the server forks (a Pool's workers) get the default action back.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        os.register_at_fork(after_in_child=_default_sigterm)
        super()._run_server(*args, **kwds)


class ManagedValue(sharedctypes.Synchronized):
    """A manager's ``Value``: a ``shmq.Value`` (``.value``, ``get_lock()``, ``get_obj()``) that
    also has multiprocessing's ValueProxy's ``get()`` and ``set(value)``."""

    def get(self) -> Any:
        return self.value

    def set(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return ManagedValue, (self._obj, self._lock)


def _make_value(typecode: Any, value: Any, lock: Any = True) -> Any:
    v = sharedctypes.Value(typecode, value, lock=lock)
    if type(v) is sharedctypes.Synchronized:
        return ManagedValue(v.get_obj(), v.get_lock())
    return v  # lock=False (the raw ctypes object), or a Structure's synchronized wrapper


# The shmq-native types of a SyncManager: typeid -> what its server calls to make one.
_NATIVE: Dict[str, Callable[..., Any]] = {
    "Queue": _queues.JoinableQueue,
    "JoinableQueue": _queues.JoinableQueue,
    "Lock": synchronize.Lock,
    "RLock": synchronize.RLock,
    "Semaphore": synchronize.Semaphore,
    "BoundedSemaphore": synchronize.BoundedSemaphore,
    "Condition": synchronize.Condition,
    "Event": synchronize.Event,
    "Barrier": synchronize.Barrier,
    "Value": _make_value,
    "Array": sharedctypes.Array,
}


class Server(_mpm.Server):
    """multiprocessing's manager Server plus ``make_native``: makes a shmq-native object for a
    client and keeps it until the server ends, so that the object lives as long as the manager
    (see the module's docstring)."""

    public = _mpm.Server.public + ["make_native"]

    def __init__(self, *args: Any, **kwds: Any) -> None:
        super().__init__(*args, **kwds)
        self.native_objects: "list[Any]" = []

    def make_native(self, c: Any, typeid: str, /, *args: Any, **kwds: Any) -> Any:
        """``(True, obj)``, or ``(False, exception)`` when making it failed (bad arguments): the
        client raises that exception itself rather than a RemoteError with its text."""
        try:
            obj = _NATIVE[typeid](*args, **kwds)
        except Exception as e:  # noqa: BLE001 - handed to the client, which raises it
            return False, e
        with self.mutex:
            self.native_objects.append(obj)
        if isinstance(obj, _queues.Queue):
            _listeners.close_in_children(obj)
        return True, obj


def _in_shared_memory(typecode_or_type: Any) -> bool:
    """Whether a ctypes object of this typecode or type can live in shared memory: a ctypes
    type that holds no pointer, not even in a field or an item."""
    t = _typecode_to_type.get(typecode_or_type, typecode_or_type) \
        if isinstance(typecode_or_type, str) else typecode_or_type
    if not isinstance(t, type):
        return False
    while issubclass(t, ctypes.Array):
        t = t._type_
    if issubclass(t, ctypes._SimpleCData):
        return t._type_ not in ("z", "Z", "P", "O")  # char*, wchar_t*, void*, PyObject*
    if issubclass(t, (ctypes.Structure, ctypes.Union)):
        return all(_in_shared_memory(field[1]) for field in getattr(t, "_fields_", ()))
    return False


class SyncManager(BaseManager, _mpm.SyncManager):
    """multiprocessing's SyncManager over shmq pipes. ``dict``, ``list``, ``Namespace`` and
    ``Pool`` are proxies served by the manager's process; ``Queue``, ``JoinableQueue``, ``Lock``,
    ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``,
    ``Value`` and ``Array`` are shmq's own objects in shared memory, made and kept by the server
    until it shuts down (see the module's docstring)."""

    _Server = Server

    def Queue(self, maxsize: int = 0) -> _queues.JoinableQueue:
        """A ``shmq.JoinableQueue`` (``queue.Queue``'s semantics: ``task_done``/``join``)."""
        return self._make_native("Queue", maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> _queues.JoinableQueue:
        """A ``shmq.JoinableQueue``."""
        return self._make_native("JoinableQueue", maxsize)

    def Lock(self) -> synchronize.Lock:
        """A ``shmq.Lock``."""
        return self._make_native("Lock")

    def RLock(self) -> synchronize.RLock:
        """A ``shmq.RLock``."""
        return self._make_native("RLock")

    def Semaphore(self, value: int = 1) -> synchronize.Semaphore:
        """A ``shmq.Semaphore``."""
        return self._make_native("Semaphore", value)

    def BoundedSemaphore(self, value: int = 1) -> synchronize.BoundedSemaphore:
        """A ``shmq.BoundedSemaphore``."""
        return self._make_native("BoundedSemaphore", value)

    def Condition(self, lock: Optional[synchronize.Lock] = None) -> synchronize.Condition:
        """A ``shmq.Condition`` (``lock``: a shmq Lock or RLock, e.g. this manager's)."""
        return self._make_native("Condition", lock)

    def Event(self) -> synchronize.Event:
        """A ``shmq.Event``."""
        return self._make_native("Event")

    def Barrier(self, parties: int, action: Optional[Callable[[], Any]] = None,
                timeout: Optional[float] = None) -> synchronize.Barrier:
        """A ``shmq.Barrier`` (``action`` runs in the last process to arrive, not in the
        server)."""
        return self._make_native("Barrier", parties, action, timeout)

    def Value(self, typecode: Any, value: Any, lock: Any = True) -> Any:
        """A ``ManagedValue``: a ``shmq.Value`` with ``get()``/``set()`` too; a ValueProxy if the
        type has no shared-memory form (see the module's docstring)."""
        if not _in_shared_memory(typecode):
            return _mpm.SyncManager.Value(self, typecode, value, lock)
        return self._make_native("Value", typecode, value, lock=lock)

    def Array(self, typecode: Any, sequence: Any, lock: Any = True) -> Any:
        """A ``shmq.Array`` (``sequence``: its items, or their number)."""
        return self._make_native("Array", typecode, sequence, lock=lock)

    def _make_native(self, typeid: str, *args: Any, **kwds: Any) -> Any:
        self._check_started()
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            ok, result = _mpm.dispatch(conn, None, "make_native", (typeid,) + args, kwds)
        finally:
            conn.close()
        if not ok:
            raise result
        return result

    def _check_started(self) -> None:
        if self._state.value != _mpm.State.STARTED:
            raise _mpm.ProcessError("the manager is not running (start() it, or use it as a "
                                    "context manager)")


def Manager(*, ctx: Any = None) -> SyncManager:
    """Returns a started SyncManager, like ``multiprocessing.Manager()``."""
    m = SyncManager(ctx=ctx)
    m.start()
    return m

