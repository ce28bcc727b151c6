"""FlatBuffers through shmq from Python: the generated classes (shmq.schema) built with a Python
Builder, sent as FlatBuffers records (kind 2), read in place from shared memory; and the same
record decoded by the C++ side (the shmq CLI's schema decoder), so both languages agree."""

import json
import multiprocessing as mp
import os
import subprocess

import flatbuffers
import pytest

import shmq
from shmq.schema import Level, Tick

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_tick(seq: int) -> flatbuffers.Builder:
    b = flatbuffers.Builder(256)
    Tick.TickStart(b)
    Tick.TickAddInstrumentId(b, 7)
    Tick.TickAddSequence(b, seq)
    Tick.TickAddBid(b, Level.CreateLevel(b, 101.25, 300, 4, 0))
    Tick.TickAddLastPrice(b, 99.5)
    b.Finish(Tick.TickEnd(b), file_identifier=b"TICK")
    return b


def check_tick(buf, seq: int) -> None:
    t = Tick.Tick.GetRootAs(buf, 0)
    assert t.InstrumentId() == 7
    assert t.Sequence() == seq
    assert t.Bid().Price() == 101.25
    assert t.Bid().Size() == 300
    assert t.LastPrice() == 99.5


def test_flatbuffer_round_trip_through_a_queue_reads_in_place():
    q = shmq.Queue()
    q.put_flatbuffer(build_tick(1))
    q.put_flatbuffer(build_tick(2).Output())  # a finished buffer works too
    with q.get_view() as mv:
        assert isinstance(mv, memoryview)
        check_tick(mv, 1)
    check_tick(q.get(timeout=5), 2)  # get() returns the buffer without the record's prefix
    q.close()


def _fb_child(q, n):
    for i in range(n):
        q.put_flatbuffer(build_tick(i))


def test_flatbuffers_across_processes_in_order():
    q = shmq.Queue()
    p = mp.get_context("fork").Process(target=_fb_child, args=(q, 500))
    p.start()
    for i in range(500):
        with q.get_view(timeout=30) as mv:
            check_tick(mv, i)
    p.join(30)
    assert p.exitcode == 0
    q.close()


def test_flatbuffer_through_a_pipe():
    a, b = shmq.Pipe()
    a.send_flatbuffer(build_tick(5))
    check_tick(b.recv(), 5)
    a.close()
    b.close()


def test_a_buffer_too_short_to_be_a_flatbuffer_is_refused():
    q = shmq.Queue()
    with pytest.raises(ValueError):
        q.put_flatbuffer(b"1234")
    assert q.empty()
    q.close()


def test_the_cpp_side_decodes_a_python_built_record(qname):
    cli = os.environ.get("SHMQ_CLI", os.path.join(ROOT, "build", "tools", "shmq"))
    if not os.path.isabs(cli):
        cli = os.path.join(ROOT, cli)
    if not os.path.exists(cli):
        pytest.fail(f"the shmq CLI is not built at {cli} (make build)")
    q = shmq.Queue(name=qname)
    q.put_flatbuffer(build_tick(42))
    out = subprocess.run(
        [cli, "dump", qname, "--json", "--schema", os.path.join(ROOT, "serialize", "schemas", "tick.fbs")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '"sequence"' in text and "42" in text, text
    assert "101.25" in text, text
    json.loads(text)  # the whole output is JSON
    check_tick(q.get(timeout=5), 42)  # dump only peeked: the message is still there
    q.close()
