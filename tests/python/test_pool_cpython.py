"""CPython's own Pool tests (Lib/test/_test_multiprocessing.py) with shmq.Pool as their Pool.

_TestPool reaches the pool through ``self.Pool``; _TestPoolWorkerErrors and
_TestPoolWorkerLifetime call ``multiprocessing.Pool`` itself, so multiprocessing.Pool is shmq.Pool
while they run. The one test that starts a fresh interpreter with ``from multiprocessing import
Pool`` runs with that import replaced by ``from shmq import Pool``. Every test of the three
classes runs; none is skipped or changed.
"""

import multiprocessing
import unittest

import pytest

import shmq

T = pytest.importorskip("test._test_multiprocessing")
from test.support import script_helper  # noqa: E402


class _ShmqProcesses(T.ProcessesMixin):
    Pool = staticmethod(shmq.Pool)


class _PatchedMultiprocessingPool:
    """multiprocessing.Pool is shmq.Pool during each test."""

    def setUp(self):
        self._saved_pool = multiprocessing.Pool
        multiprocessing.Pool = shmq.Pool
        super().setUp()

    def tearDown(self):
        super().tearDown()
        multiprocessing.Pool = self._saved_pool


class TestShmqPool(T._TestPool, _ShmqProcesses, unittest.TestCase):
    pass


class TestShmqPoolWorkerErrors(_PatchedMultiprocessingPool, T._TestPoolWorkerErrors,
                               _ShmqProcesses, unittest.TestCase):
    pass


class TestShmqPoolWorkerLifetime(_PatchedMultiprocessingPool, T._TestPoolWorkerLifetime,
                                 _ShmqProcesses, unittest.TestCase):

    def test_worker_finalization_via_atexit_handler_of_multiprocessing(self):
        original = script_helper.assert_python_ok
        seen = []

        def with_shmq(*args, **kw):
            args = tuple(a.replace("from multiprocessing import Pool", "from shmq import Pool")
                         if isinstance(a, str) else a for a in args)
            seen.extend(a for a in args if isinstance(a, str) and "from shmq import Pool" in a)
            return original(*args, **kw)

        script_helper.assert_python_ok = with_shmq
        try:
            super().test_worker_finalization_via_atexit_handler_of_multiprocessing()
        finally:
            script_helper.assert_python_ok = original
        assert seen, "the child interpreter did not run shmq.Pool"
