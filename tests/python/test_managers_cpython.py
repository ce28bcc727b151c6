"""CPython's own multiprocessing tests for the synchronization classes and shared ctypes
(_TestLock, _TestSemaphore, _TestCondition, _TestEvent, _TestBarrier, _TestValue, _TestArray), run
against the objects a shmq.Manager hands out (its Lock, RLock, ..., Value and Array are shmq's own
objects, made and kept by the manager's server); and CPython's _TestContainers (the manager's
dict, list and Namespace proxies) with CPython's own manager mixin, on a shmq.Manager.

The classes are test_mp_sync.py's (CPython's tests against shmq's objects made directly, with its
two adaptations); only where the objects come from changes. Two more adaptations, both because an
argument now travels to the manager's server and back:
  - where a test compares a lock given to Value/Array with what get_lock() returns, that is
    another Python object over the same shared lock: `assertEqual` compares the shared lock (its
    block's handle) instead of the Python object's identity;
  - _TestBarrier's results list is the manager's list, as CPython's own manager runs have it
    (a barrier's action must pickle; the processes' _DummyList holds an inherit-only Lock).
"""

import unittest

import shmq
import test_mp_sync as plain
from test import _test_multiprocessing as cpython


def _from_manager(name):
    return property(lambda self: getattr(type(self).manager, name))


class ManagerMixin(plain.ShmqMixin):
    manager = None
    Lock = _from_manager("Lock")
    RLock = _from_manager("RLock")
    Semaphore = _from_manager("Semaphore")
    BoundedSemaphore = _from_manager("BoundedSemaphore")
    Condition = _from_manager("Condition")
    Event = _from_manager("Event")
    Barrier = _from_manager("Barrier")
    Value = _from_manager("Value")
    Array = _from_manager("Array")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.manager = shmq.Manager()

    @classmethod
    def tearDownClass(cls):
        cls.manager.shutdown()
        cls.manager = None
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.addTypeEqualityFunc(shmq.Lock, self._same_shared_lock)
        self.addTypeEqualityFunc(shmq.RLock, self._same_shared_lock)

    def _same_shared_lock(self, first, second, msg=None):
        if first._block.handle != second._block.handle or first._offset != second._offset:
            self.fail(msg or f"{first!r} and {second!r} are different shared locks")


class TestManagerLock(ManagerMixin, plain.TestLock):
    pass


class TestManagerSemaphore(ManagerMixin, plain.TestSemaphore):
    pass


class TestManagerCondition(ManagerMixin, plain.TestCondition):
    pass


class TestManagerEvent(ManagerMixin, plain.TestEvent):
    pass


class TestManagerBarrier(ManagerMixin, plain.TestBarrier):
    def DummyList(self):
        # CPython's own choice for its manager runs: a barrier's action goes to the manager's
        # server (and here comes back), so it must pickle; the processes' _DummyList does not.
        return type(self).manager.list()


class TestManagerValue(ManagerMixin, plain.TestValue):
    pass


class TestManagerArray(ManagerMixin, plain.TestArray):
    pass


class TestContainers(cpython.ManagerMixin, cpython._TestContainers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cpython.BaseMixin.setUpClass.__func__(cls)  # CPython's, but for the manager it makes
        cls.manager = shmq.Manager()
