"""CPython's own multiprocessing tests (Lib/test/_test_multiprocessing.py) run against shmq: the
_TestQueue, _TestConnection, _TestPoll and _TestPicklingConnections classes, with the mixin's
Queue, JoinableQueue and Pipe replaced by shmq's, under the fork and spawn start methods.

Left out, as python/README's differences say why: the tests that pass a kernel fd through the
pipe itself (test_fd_transfer, test_large_fd_transfer, test_missing_fd_transfer: shmq pipes are
not sockets, so reduction.send_handle cannot use them) and the one about multiprocessing's feeder
thread (test_queue_feeder_donot_stop_onexc: shmq has none, so an unpicklable object raises in
put() itself)."""

import multiprocessing
import unittest

import pytest

import shmq

_tm = pytest.importorskip("test._test_multiprocessing")

EXCLUDED = {
    "test_fd_transfer", "test_large_fd_transfer", "test_missing_fd_transfer",
    "test_queue_feeder_donot_stop_onexc",
}


class ShmqMixin(_tm.ProcessesMixin):
    Queue = staticmethod(shmq.Queue)
    JoinableQueue = staticmethod(shmq.JoinableQueue)
    Pipe = staticmethod(shmq.Pipe)


def _make(base, start_method):
    body = {name: None for name in dir(base) if name in EXCLUDED}

    class Temp(base, ShmqMixin, unittest.TestCase):
        START_METHOD = start_method

        @classmethod
        def setUpClass(cls):
            cls._old_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(start_method, force=True)
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            super().tearDownClass()
            multiprocessing.set_start_method(cls._old_method, force=True)

    for name in body:
        setattr(Temp, name, None)  # not collected: see the module docstring
    name = f"TestShmq{start_method.capitalize()}{base.__name__[1:]}"
    Temp.__name__ = Temp.__qualname__ = name
    Temp.__module__ = __name__
    return Temp


for _method in ("fork", "spawn"):
    for _base in (_tm._TestQueue, _tm._TestConnection, _tm._TestPoll,
                  _tm._TestPicklingConnections):
        _cls = _make(_base, _method)
        globals()[_cls.__name__] = _cls
del _method, _base, _cls


def test_excluded_tests_exist():
    """The excluded names are real tests of the classes (a rename upstream shows here)."""
    names = set()
    for base in (_tm._TestQueue, _tm._TestConnection, _tm._TestPoll,
                 _tm._TestPicklingConnections):
        names |= {n for n in dir(base) if n.startswith("test_")}
    assert EXCLUDED <= names
