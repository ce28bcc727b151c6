"""Process-wide plumbing: fork hooks, exit clean-up, leftover scan, option checks."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from multiprocessing import util as _mp_util
from typing import Any, Optional, Sequence

from . import _shmq

__all__ = ["gc", "unlink", "check_serializer", "check_timeout", "forget_fd", "aio"]

_SERIALIZERS = ("pickle", "bytes")


def check_serializer(serializer: str) -> bool:
    """Returns True when only bytes-like objects may travel (serializer="bytes")."""
    if serializer not in _SERIALIZERS:
        raise ValueError(f"serializer must be one of {_SERIALIZERS}, not {serializer!r}")
    return serializer == "bytes"


def check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is not None and timeout < 0:
        # multiprocessing clamps negative timeouts to 0 for get(); queue.Queue raises. Clamp.
        return 0.0
    return timeout


def aio() -> Any:
    """The asyncio helpers (imported on first use: asyncio is a heavy import)."""
    from . import _asyncio
    return _asyncio


def forget_fd(fd: Optional[int]) -> None:
    """Before a channel's readiness fd closes: every asyncio loop stops watching it."""
    mod = sys.modules.get(__package__ + "._asyncio")
    if fd is not None and mod is not None:
        mod.forget(fd)


def gc(patterns: Sequence[str] = (), *, include_named: bool = False, force: bool = False,
       dry_run: bool = False, grace: float = 5.0) -> list:
    """Removes what processes killed with SIGKILL left in /dev/shm; the policy of ``shmq gc``.

    Unnamed queues and pipes (generated names) that no live process holds are removed. Named
    segments are kept: they live until ``unlink()`` or ``shmq rm``, even with nobody attached and
    messages waiting. ``include_named=True`` also removes named segments nobody holds, if they
    hold no message; with ``force=True`` even those holding messages. Nothing a live process
    holds is removed, nor any file younger than ``grace`` seconds (its creator may be setting it
    up). ``patterns`` (shell patterns) restrict it to matching names. Spill files of queues that
    are gone are removed too. Returns the names removed (with ``dry_run``, that would be).

    Called once per process, cheaply, the first time shmq creates an unnamed queue or pipe, so the
    leftovers of killed processes do not accumulate.
    """
    if grace < 0:
        raise ValueError(f"grace must be >= 0, not {grace!r}")
    return list(_shmq.gc_scan(list(patterns), include_named, force, dry_run, float(grace)))


def unlink(name: str) -> None:
    """Removes the named segment ``name`` and a queue's spill files (like ``shmq rm``). Processes
    that have it open keep using it; new opens fail with FileNotFoundError."""
    _shmq.unlink(name)


# ---- fork and exit -------------------------------------------------------------------------------
# After os.fork() the child must not act as its parent's writer, reader or participant: the native
# layer drops every inherited role handle (closing its file descriptors without telling the peer
# anything) and keeps only the mappings, so each handle re-acquires its roles lazily on first use.

_scan_lock = threading.Lock()
_scanned_pid: Optional[int] = None


def scan_once() -> None:
    """Runs gc() once per process, ignoring errors (a best-effort clean-up)."""
    global _scanned_pid
    pid = os.getpid()
    if _scanned_pid == pid:
        return
    with _scan_lock:
        if _scanned_pid == pid:
            return
        _scanned_pid = pid
        try:
            gc()
        except OSError:
            pass


def _close_all() -> None:
    try:
        _shmq.close_all()
    except Exception:  # noqa: BLE001 - exit-time clean-up must never raise
        pass


class _ExitHook:
    """Registered with multiprocessing's after-fork registry (which holds it weakly)."""

    def install(self) -> None:
        # multiprocessing children leave through os._exit() after running their finalizers, so
        # atexit alone would leave the last user's mapping (and an unnamed segment) behind.
        _mp_util.Finalize(None, _close_all, exitpriority=-100)


_exit_hook = _ExitHook()


def _after_fork_in_child() -> None:
    _shmq.after_fork_in_child()


def _install() -> None:
    os.register_at_fork(after_in_child=_after_fork_in_child)
    atexit.register(_close_all)
    _exit_hook.install()
    _mp_util.register_after_fork(_exit_hook, _ExitHook.install)


_install()


def flatbuffer_bytes(buf: Any) -> Any:
    """The finished buffer of a ``flatbuffers.Builder`` as a memoryview of the builder's own
    bytearray (no copy), or ``buf`` itself if it is already bytes-like."""
    if hasattr(buf, "Bytes") and hasattr(buf, "Head"):
        return memoryview(buf.Bytes)[buf.Head():]
    return buf
