"""Shared fixtures: every test must leave nothing behind in /dev/shm."""

import gc
import os

import pytest

import shmq

PREFIX = f"t-py-{os.getpid()}"
_counter = [0]


def _ours() -> list:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith("shmq." + PREFIX))


@pytest.fixture
def qname():
    """A fresh segment name with this suite's prefix; removed after the test even on failure."""
    _counter[0] += 1
    name = f"{PREFIX}-{_counter[0]}"
    yield name
    try:
        shmq.unlink(name)
    except OSError:
        pass


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fails a test that leaves a segment in /dev/shm: an unnamed one nobody uses any more (found
    and removed by shmq.gc(grace=0)) or a named one with this suite's prefix."""
    yield
    gc.collect()
    removed = shmq.gc(grace=0)
    named = _ours()
    for f in named:
        try:
            os.unlink("/dev/shm/" + f)
        except OSError:
            pass
    assert removed == [] and named == [], f"left in /dev/shm: {removed + named}"
