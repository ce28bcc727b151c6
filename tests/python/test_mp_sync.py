"""CPython's own multiprocessing tests for the synchronization classes and shared ctypes
(Lib/test/_test_multiprocessing.py: _TestLock, _TestSemaphore, _TestCondition, _TestEvent,
_TestBarrier, _TestValue, _TestArray, _TestSharedCTypes), run against shmq's objects.

Each class runs with the "processes" mixin, whose Lock, RLock, Semaphore, BoundedSemaphore,
Condition, Event, Barrier, Value, Array, RawValue and RawArray are replaced by shmq's; processes
are multiprocessing's (fork, the default here), as the tests expect. Two adaptations, both about
multiprocessing's internals rather than behaviour:
  - _TestCondition.check_invariant reads multiprocessing's private semaphores
    (cond._sleeping_count, _woken_count, _wait_semaphore); here it checks the same invariant on
    shmq's condition (no waiter registered, so no pending notification either);
  - _TestSharedCTypes calls the module-level Value and copy imported from
    multiprocessing.sharedctypes; they are shmq's while those tests run.
"""

import unittest

import pytest

import shmq
import shmq.sharedctypes
from test import _test_multiprocessing as cpython


class ShmqMixin(cpython.ProcessesMixin):
    TYPE = "processes"
    Lock = staticmethod(shmq.Lock)
    RLock = staticmethod(shmq.RLock)
    Semaphore = staticmethod(shmq.Semaphore)
    BoundedSemaphore = staticmethod(shmq.BoundedSemaphore)
    Condition = staticmethod(shmq.Condition)
    Event = staticmethod(shmq.Event)
    Barrier = staticmethod(shmq.Barrier)
    Value = staticmethod(shmq.Value)
    Array = staticmethod(shmq.Array)
    RawValue = staticmethod(shmq.RawValue)
    RawArray = staticmethod(shmq.RawArray)


class TestLock(ShmqMixin, cpython._TestLock, unittest.TestCase):
    def test_objects_are_shmq_objects(self):
        self.assertIsInstance(self.Lock(), shmq.Lock)
        self.assertIsInstance(self.RLock(), shmq.RLock)
        self.assertIsInstance(self.Condition(), shmq.Condition)
        self.assertIsInstance(self.Barrier(2), shmq.Barrier)
        self.assertIsInstance(self.Value("i", 0).get_lock(), shmq.RLock)


class TestSemaphore(ShmqMixin, cpython._TestSemaphore, unittest.TestCase):
    pass


class TestCondition(ShmqMixin, cpython._TestCondition, unittest.TestCase):
    def check_invariant(self, cond):
        self.assertEqual(cond._core.waiting(), 0)


class TestEvent(ShmqMixin, cpython._TestEvent, unittest.TestCase):
    pass


class TestBarrier(ShmqMixin, cpython._TestBarrier, unittest.TestCase):
    pass


class TestValue(ShmqMixin, cpython._TestValue, unittest.TestCase):
    pass


class TestArray(ShmqMixin, cpython._TestArray, unittest.TestCase):
    pass


class TestSharedCTypes(ShmqMixin, cpython._TestSharedCTypes, unittest.TestCase):
    def setUp(self):
        super().setUp()
        saved = (cpython.Value, cpython.copy)
        cpython.Value, cpython.copy = shmq.Value, shmq.sharedctypes.copy
        self.addCleanup(setattr, cpython, "Value", saved[0])
        self.addCleanup(setattr, cpython, "copy", saved[1])


def test_every_cpython_class_ran():
    # A guard against a refactor of the CPython module silently dropping a class here.
    for name in ("_TestLock", "_TestSemaphore", "_TestCondition", "_TestEvent", "_TestBarrier",
                 "_TestValue", "_TestArray", "_TestSharedCTypes"):
        assert any(issubclass(c, getattr(cpython, name)) for c in
                   (TestLock, TestSemaphore, TestCondition, TestEvent, TestBarrier, TestValue,
                    TestArray, TestSharedCTypes)), name


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
