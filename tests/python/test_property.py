"""Property: any sequence of put/get of random objects and sizes behaves as queue.Queue does."""

import queue

from hypothesis import given, settings
from hypothesis import strategies as st

import shmq

payloads = st.one_of(
    st.binary(max_size=4096),
    st.binary(min_size=200, max_size=70_000),  # beyond a slot: spills
    st.integers(),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=50),
    st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=8),
    st.none(),
)
ops = st.lists(st.one_of(st.tuples(st.just("put"), payloads), st.just(("get", None)),
                         st.just(("qsize", None))), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops, st.sampled_from([0, 3, 8]))
def test_matches_queue_queue(ops, maxsize):
    sut = shmq.Queue(maxsize=maxsize, slots=8)
    ref = queue.Queue(maxsize=maxsize if maxsize else 8)
    try:
        for op, arg in ops:
            if op == "put":
                try:
                    ref.put_nowait(arg)
                    expect = None
                except queue.Full:
                    expect = queue.Full
                try:
                    sut.put_nowait(arg)
                    got = None
                except queue.Full:
                    got = queue.Full
                assert got is expect
            elif op == "get":
                try:
                    expect = ref.get_nowait()
                except queue.Empty:
                    expect = queue.Empty
                try:
                    got = sut.get_nowait()
                except queue.Empty:
                    got = queue.Empty
                assert got == expect
            else:
                assert sut.qsize() == ref.qsize()
                assert sut.empty() == ref.empty() and sut.full() == ref.full()
    finally:
        sut.close()
