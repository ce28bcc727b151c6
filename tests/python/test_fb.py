"""shmq.fb: schemas loaded at run time, messages built from dicts in place in the ring (put_fb /
send_fb), read lazily and verified (get_fb / recv_fb); errors with field paths; hostile buffers;
interop with the `flatbuffers` package's generated classes, with C++ Writer<T>/Reader<T>
(build/tests/serialize/fb_interop) and with the CLI's schema decoder."""

import array
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmq
import shmq.fb as fb
from shmq.schema import Level, Order, Tick

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = os.path.join(ROOT, "serialize", "schemas")
TICKS = fb.load(os.path.join(SCHEMAS, "tick.fbs"))
ORDERS = fb.load(os.path.join(SCHEMAS, "order.fbs"))


def tool(env, *parts):
    path = os.environ.get(env, os.path.join(ROOT, "build", *parts))
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    if not os.path.exists(path):
        pytest.fail(f"{path} is not built (make build)")
    return path


# The messages of tests/serialize/samples.hpp (build_tick / build_order), as dicts.
def tick_dict(i):
    return {
        "instrument_id": i % 4096, "sequence": i,
        "exchange_ns": 1_700_000_000_000_000_000 + i, "receive_ns": 1_700_000_000_000_001_000 + i,
        "bid": {"price": 100.0 + (i % 1000) * 0.01, "size": 10 + i, "orders": i % 7},
        "ask": {"price": 100.5 + (i % 1000) * 0.01, "size": 20 + i, "orders": i % 5},
        "last_price": 100.25 + i % 100, "last_size": 1 + i % 300,
        "last_side": "Buy" if i % 2 == 0 else "Sell", "flags": i & 0xFFFF,
    }


def order_dict(i, legs=3, tags=2, ladder=5, note_bytes=8):
    kind = [("MarketOrder", {}),
            ("LimitOrder", {"price": 4500.25 + i, "post_only": i % 2 == 1}),
            ("StopLimitOrder", {"stop_price": 4400.0 + i, "limit_price": 4399.5})][i % 3]
    return {
        "order_id": 1_000_000 + i, "client_order_id": f"cl-{i}", "account": "ACC-0042",
        "symbol": "ESZ5" if i % 2 == 0 else "NQZ5", "side": "SellShort" if i % 3 == 2 else "Buy",
        "quantity": 1 + i % 50, "time_in_force": i % 4, "type": kind,
        "legs": [{"symbol": f"LEG{k}", "side": "Buy" if k % 2 == 0 else "Sell", "ratio": k + 1}
                 for k in range(legs)],
        "tags": [{"key": f"k{k}", "value": f"v{i + k}"} for k in range(tags)],
        "price_ladder": [i + k - 2 for k in range(ladder)],
        "created_ns": 1_700_000_000_000_000_000 + i,
        "note": "".join(chr(ord("a") + (i + k) % 26) for k in range(note_bytes)),
    }


def check_tick(t, i):
    d = tick_dict(i)
    for k in ("instrument_id", "sequence", "exchange_ns", "receive_ns", "last_price", "last_size",
              "flags"):
        assert getattr(t, k) == d[k], k
    assert t.last_side == (1 if i % 2 == 0 else 2)
    for side in ("bid", "ask"):
        lvl = getattr(t, side)
        assert (lvl.price, lvl.size, lvl.orders, lvl.reserved) == (
            d[side]["price"], d[side]["size"], d[side]["orders"], 0)


def check_order(o, i):
    d = order_dict(i)
    for k in ("order_id", "client_order_id", "account", "symbol", "quantity", "time_in_force",
              "created_ns", "note"):
        assert getattr(o, k) == d[k], k
    assert o.side == (2 if i % 3 == 2 else 0)
    assert o.type_type == d["type"][0]
    for k, v in d["type"][1].items():
        assert getattr(o.type, k) == v
    assert [(g.symbol, g.side, g.ratio) for g in o.legs] == [
        (f"LEG{k}", k % 2, k + 1) for k in range(3)]
    assert [(t.key, t.value) for t in o.tags] == [(f"k{k}", f"v{i + k}") for k in range(2)]
    assert o.price_ladder.tolist() == d["price_ladder"]


# ---- schemas ---------------------------------------------------------------------------------

def test_load_from_a_path_text_or_pathlike_and_find_types_by_any_name(tmp_path):
    assert TICKS.Tick.name == "shmq.schema.Tick"
    assert TICKS["shmq.schema.Tick"] is TICKS.Tick
    assert TICKS.shmq.schema.Level is TICKS.Level
    assert TICKS.Level.is_struct and not TICKS.Tick.is_struct
    assert TICKS.root is TICKS.Tick and TICKS.file_identifier == "TICK"
    assert TICKS.Tick.fields[:2] == ["instrument_id", "sequence"]
    assert ("Sell", 2) in TICKS.enums["shmq.schema.TradeSide"]
    text = "namespace a.b; table T { x: int; } root_type T;"
    from_text = fb.load(text)
    assert from_text.T.name == "a.b.T" and from_text.a.b.T is from_text.T
    p = tmp_path / "t.fbs"
    p.write_text(text)
    assert fb.load(p).T.name == "a.b.T"  # a PathLike
    with pytest.raises(AttributeError):
        from_text.Nope
    with pytest.raises(KeyError):
        from_text["Nope"]


def test_a_short_name_in_two_namespaces_needs_its_full_name():
    s = fb.load("namespace a; table T { x: int; } namespace b; table T { y: int; }")
    with pytest.raises(AttributeError):
        s.T
    assert s["a.T"].fields == ["x"] and s.b.T.fields == ["y"]


def test_a_bad_schema_raises_schema_error_with_the_parsers_line_and_message(tmp_path):
    with pytest.raises(fb.SchemaError) as e:
        fb.load("table A { x: int; }\ntable B { y: int }\n")
    assert e.value.line == 2 and "expecting: ;" in e.value.message
    p = tmp_path / "bad.fbs"
    p.write_text("table A {\n  x: nosuchtype;\n}\n")
    with pytest.raises(fb.SchemaError) as e:
        fb.load(str(p))
    assert e.value.file == str(p) and e.value.line >= 2 and "nosuchtype" in e.value.message
    with pytest.raises(FileNotFoundError):
        fb.load(str(tmp_path / "missing.fbs"))


def test_includes_next_to_the_file_and_from_include_dirs(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "money.fbs").write_text("namespace lib; table Money { units: long; }")
    (tmp_path / "a.fbs").write_text('include "lib/money.fbs"; table A { m: lib.Money; }')
    (tmp_path / "b.fbs").write_text('include "money.fbs"; table B { m: lib.Money; }')
    assert fb.load(tmp_path / "a.fbs").A.fields == ["m"]
    with pytest.raises(fb.SchemaError):
        fb.load(tmp_path / "b.fbs")
    s = fb.load(tmp_path / "b.fbs", include_dirs=[tmp_path / "lib"])
    q = shmq.Queue()
    q.put_fb(s.B, m={"units": 5})
    with q.get_fb(s.B) as b:
        assert b.m.units == 5
    q.close()


# ---- round trips ------------------------------------------------------------------------------

def test_tick_round_trip_reads_every_field_in_place():
    q = shmq.Queue()
    for i in (0, 1, 4097):
        q.put_fb(TICKS.Tick, tick_dict(i))
    for i in (0, 1, 4097):
        with q.get_fb(TICKS.Tick) as t:
            check_tick(t, i)
    q.close()


def test_fields_from_keywords_tuples_enum_values_and_defaults():
    q = shmq.Queue()
    q.put_fb(TICKS.Tick, {"sequence": 1}, bid=(1.5, 2, 3, 4), last_side=2)
    q.put_fb(TICKS.Tick)  # every field at its default
    with q.get_fb(TICKS.Tick) as t:
        assert (t.sequence, t.bid.price, t.bid.reserved, t.last_side) == (1, 1.5, 4, 2)
        assert t.ask is None and t.flags == 0
    with q.get_fb(TICKS.Tick) as t:
        assert t.to_dict() == {"instrument_id": 0, "sequence": 0, "exchange_ns": 0, "receive_ns": 0,
                               "last_price": 0.0, "last_size": 0, "last_side": 0, "flags": 0}
    q.close()


def test_defaults_are_left_out_of_the_buffer():
    small = TICKS.Tick.build(sequence=0, flags=0, last_side="None")
    assert small == TICKS.Tick.build()
    assert len(TICKS.Tick.build(sequence=1)) > len(small)


def test_order_with_union_vectors_and_to_dict_round_trip():
    q = shmq.Queue()
    for i in range(6):
        q.put_fb(ORDERS.Order, order_dict(i))
    for i in range(6):
        with q.get_fb(ORDERS.Order) as o:
            check_order(o, i)
            d = o.to_dict()
        assert d["type"][0] == order_dict(i)["type"][0]
        assert d["legs"][1] == {"symbol": "LEG1", "side": 1, "ratio": 2}
        assert ORDERS.Order.from_bytes(ORDERS.Order.build(d)).to_dict() == d  # what put_fb takes
    q.close()


def test_vectors_of_scalars_come_from_lists_buffers_and_numpy_without_a_loop():
    q = shmq.Queue()
    base = {"account": "a", "symbol": "s"}
    sources = [list(range(5)), np.arange(5, dtype=np.int64), array.array("q", range(5)),
               np.arange(10, dtype=np.int64)[::2] // 2]  # non-contiguous: read as a sequence
    for src in sources:
        q.put_fb(ORDERS.Order, base, price_ladder=src)
        with q.get_fb(ORDERS.Order) as o:
            assert o.price_ladder.tolist() == [0, 1, 2, 3, 4]
    s = fb.load("table T { b: [ubyte]; f: [float]; ok: [bool]; }")
    q.put_fb(s.T, b=b"\x00\xffz", f=np.array([0.5, 2], dtype=np.float32), ok=[True, False])
    with q.get_fb(s.T) as t:
        assert bytes(t.b) == b"\x00\xffz"
        assert t.f.dtype == np.float32 and t.f.tolist() == [0.5, 2.0]
        assert t.ok.dtype == np.bool_ and t.ok.tolist() == [True, False]
    q.close()


def test_numpy_vectors_are_read_only_views_of_shared_memory():
    q = shmq.Queue(slots=2)
    q.put_fb(ORDERS.Order, account="a", symbol="s", price_ladder=np.arange(1000, dtype=np.int64))
    with q.get_fb(ORDERS.Order) as o:
        a = o.price_ladder
        assert isinstance(a, np.ndarray) and a.dtype == np.int64 and not a.flags.writeable
        assert not a.flags.owndata and a.sum() == 499500
        with pytest.raises(ValueError):
            a[0] = 1
    # The array outlives the block: it stays valid, its slot held (no writer reuses it)...
    q.put_fb(TICKS.Tick, {"sequence": 1}, False)
    with pytest.raises(queue.Full):
        q.put_fb(TICKS.Tick, {"sequence": 2}, False)
    assert a[999] == 999 and a.sum() == 499500
    del a  # ... until the array goes
    q.put_fb(TICKS.Tick, {"sequence": 2}, False)
    q.close()


def test_without_numpy_vectors_are_memoryviews():
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import shmq, shmq.fb as fb\n"
            "s = fb.load('table T { v: [int16]; }')\n"
            "q = shmq.Queue(); q.put_fb(s.T, v=[1, -2, 3])\n"
            "with q.get_fb(s.T) as t:\n"
            "    m = t.v; print(type(m).__name__, m.format, m.tolist(), m.readonly)\n"
            "    m.release()\n"
            "q.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["memoryview", "h", "[1,", "-2,", "3]", "True"]


def test_structs_arrays_vectors_of_structs_and_strings_and_optional_scalars():
    s = fb.load("""
        struct P { x: float; y: float; }
        struct Box { lo: P; hi: P; tag: [ubyte:3]; }
        table T { pts: [P]; boxes: [Box]; names: [string]; maybe: int = null; n: short = -3; }
    """)
    q = shmq.Queue()
    pts = np.array([1.5, 2.0, 3.0, 4.0], dtype=np.float32)  # two Ps as a buffer of whole structs
    q.put_fb(s.T, pts=pts, boxes=[{"lo": (1, 2), "hi": {"y": 5}, "tag": [7, 8, 9]}],
             names=["a", "", "é"], maybe=0)
    q.put_fb(s.T)
    with q.get_fb(s.T) as t:
        assert [(p.x, p.y) for p in t.pts] == [(1.5, 2.0), (3.0, 4.0)]
        b = t.boxes[0]
        assert (b.lo.x, b.lo.y, b.hi.x, b.hi.y, b.tag.tolist()) == (1, 2, 0, 5, [7, 8, 9])
        assert list(t.names) == ["a", "", "é"] and t.maybe == 0 and t.n == -3
        with pytest.raises(IndexError):
            t.boxes[1]
    with q.get_fb(s.T) as t:
        assert t.maybe is None and t.pts is None and t.names is None
    q.close()


def test_a_view_after_release_raises_value_error_everywhere():
    q = shmq.Queue()
    q.put_fb(ORDERS.Order, order_dict(1))
    with q.get_fb(ORDERS.Order) as o:
        legs, leg, typ = o.legs, o.legs[0], o.type
    for use in (lambda: o.symbol, lambda: leg.symbol, lambda: legs[1], lambda: typ.price,
                lambda: o.to_dict(), lambda: o.price_ladder):
        with pytest.raises(ValueError, match="released"):
            use()
    assert o.released and q.qsize() == 0
    # Without a `with`, the message goes back when its last view goes.
    q.put_fb(TICKS.Tick, tick_dict(3))
    assert q.get_fb(TICKS.Tick).bid.size == 13
    assert q.qsize() == 0
    q.close()


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, words", [
    ({"sequense": 1}, TypeError, "tick: table Tick has no field 'sequense'"),
    ({"sequence": "one"}, TypeError, "tick.sequence: expected uint64, got str"),
    ({"sequence": -1}, ValueError, "tick.sequence"),
    ({"sequence": 2 ** 64}, ValueError, "tick.sequence"),
    ({"instrument_id": 2 ** 32}, ValueError, "tick.instrument_id: 4294967296 is out of range for uint32"),
    ({"flags": 1.5}, TypeError, "tick.flags"),
    ({"last_side": "Hold"}, ValueError, "tick.last_side: 'Hold' is not a value of enum TradeSide"),
    ({"bid": {"prize": 1}}, TypeError, "tick.bid: struct Level has no field 'prize'"),
    ({"bid": [1.0]}, TypeError, "tick.bid: struct Level has 4 fields"),
    ({"bid": {"orders": "x"}}, TypeError, "tick.bid.orders"),
    ({"bid": 5}, TypeError, "tick.bid"),
])
def test_bad_tick_fields_raise_with_their_path_and_send_nothing(kwargs, exc, words):
    q = shmq.JoinableQueue()
    with pytest.raises(exc) as e:
        q.put_fb(TICKS.Tick, kwargs)
    assert words in str(e.value)
    assert q.join(timeout=0)  # no task counted
    # Nothing was sent. (The aborted claim is a skipped slot: qsize() counts it until a reader
    # passes it.)
    with pytest.raises(queue.Empty):
        q.get_fb(TICKS.Tick, block=False)
    assert q.empty()
    q.put_fb(TICKS.Tick, tick_dict(2))  # the queue carries on
    with q.get_fb(TICKS.Tick) as t:
        check_tick(t, 2)
    q.task_done()
    q.close()


def test_bad_order_fields_raise_with_their_path():
    q = shmq.Queue()
    legs = [{"symbol": "A"}, {"symbol": "B"}, {"ratio": 2}]
    cases = [
        ({"symbol": "s"}, TypeError, "order.account: missing required field 'account'"),
        ({"account": "a", "symbol": "s", "legs": legs}, TypeError,
         "order.legs[2].symbol: missing required field 'symbol' of Leg"),
        ({"account": None, "symbol": "s"}, TypeError, "order.account"),
        ({"account": "a", "symbol": 5}, TypeError, "order.symbol"),
        ({"account": "a", "symbol": "s", "type": ("Iceberg", {})}, ValueError,
         "order.type: 'Iceberg' is not a member of union OrderType"),
        ({"account": "a", "symbol": "s", "type": {"price": 1}}, TypeError, "order.type"),
        ({"account": "a", "symbol": "s", "type": ("LimitOrder", {"price": "x"})}, TypeError,
         "order.type.price"),
        ({"account": "a", "symbol": "s", "type_type": 1}, TypeError, "no field 'type_type'"),
        ({"account": "a", "symbol": "s", "price_ladder": np.zeros(3)}, TypeError,
         "order.price_ladder: a buffer of format 'd'"),
        ({"account": "a", "symbol": "s", "price_ladder": [1, "2"]}, TypeError,
         "order.price_ladder[1]"),
        ({"account": "a", "symbol": "s", "legs": [{"symbol": "A", "side": "Up"}]}, ValueError,
         "order.legs[0].side"),
        ({"account": "a", "symbol": "\ud800"}, ValueError, "order.symbol"),
        ({"account": "a", 1: "x", "symbol": "s"}, TypeError, "(not a str)"),
    ]
    for mapping, exc, words in cases:
        with pytest.raises(exc) as e:
            q.put_fb(ORDERS.Order, mapping)
        assert words in str(e.value), (mapping, str(e.value))
    with pytest.raises(queue.Empty):
        q.get_fb(ORDERS.Order, block=False)
    with pytest.raises(TypeError):
        q.put_fb(TICKS.Level, {})  # a struct is not a message
    with pytest.raises(TypeError):
        q.put_fb("Order", {})  # not a Type
    with pytest.raises(TypeError):
        q.put_fb(ORDERS.Order, [("account", "a")])
    q.close()


def test_a_mapping_that_contains_itself_is_refused_not_a_crash():
    s = fb.load("table N { next: N; v: int; }")
    d = {"v": 1}
    d["next"] = d
    q = shmq.Queue()
    with pytest.raises(ValueError, match="deeper than 64"):
        q.put_fb(s.N, d)
    with pytest.raises(queue.Empty):
        q.get_fb(s.N, block=False)
    q.close()


def test_python_code_run_by_a_conversion_cannot_break_the_build():
    class Sneaky:
        def __init__(self, victim):
            self.victim = victim

        def __index__(self):
            self.victim.clear()  # drops the other values of the list being read
            return 7

    q = shmq.Queue()
    values = [1, 2, 3]
    values.insert(1, Sneaky(values))
    with pytest.raises(TypeError, match=r"order.price_ladder\[2\]"):
        q.put_fb(ORDERS.Order, account="a", symbol="s", price_ladder=values)
    with pytest.raises(queue.Empty):
        q.get_fb(ORDERS.Order, block=False)
    q.close()


def test_full_and_empty_behave_as_put_and_get():
    q = shmq.Queue(slots=2)
    q.put_fb(TICKS.Tick, sequence=1)
    q.put_fb(TICKS.Tick, sequence=2)
    with pytest.raises(queue.Full):
        q.put_fb(TICKS.Tick, {"sequence": 3}, False)
    with pytest.raises(queue.Full):
        q.put_fb(TICKS.Tick, {"sequence": 3}, timeout=0.01)
    for i in (1, 2):
        with q.get_fb(TICKS.Tick, timeout=5) as t:
            assert t.sequence == i
    with pytest.raises(queue.Empty):
        q.get_fb(TICKS.Tick, block=False)
    with pytest.raises(queue.Empty):
        q.get_fb(TICKS.Tick, timeout=0.01)
    q.close()
    with pytest.raises(ValueError):
        q.put_fb(TICKS.Tick, sequence=1)


# ---- verification -----------------------------------------------------------------------------

def test_another_type_or_a_hostile_buffer_raises_verify_error_and_the_queue_stays_usable():
    q = shmq.Queue()
    q.put_fb(TICKS.Tick, tick_dict(1))
    q.put({"a": "pickle"})
    good = bytearray(ORDERS.Order.build(order_dict(4)))
    bad = bytearray(good)
    bad[0:4] = (0x7FFFFFF0).to_bytes(4, "little")  # the root offset points far outside
    q.put_flatbuffer(bytes(bad))
    q.put_flatbuffer(bytes(good[:40]) + b"\0" * 4)  # truncated
    q.put_fb(ORDERS.Order, order_dict(5))
    for _ in range(4):
        with pytest.raises(fb.VerifyError):
            q.get_fb(ORDERS.Order, timeout=5)
    with q.get_fb(ORDERS.Order, timeout=5) as o:
        check_order(o, 5)
    assert q.empty()
    q.close()


def test_verify_false_reads_a_trusted_message_but_still_checks_the_type():
    q = shmq.Queue()
    q.put_fb(ORDERS.Order, order_dict(7))
    q.put_fb(TICKS.Tick, tick_dict(7))
    with q.get_fb(ORDERS.Order, verify=False) as o:
        check_order(o, 7)
    with pytest.raises(fb.VerifyError):
        q.get_fb(ORDERS.Order, verify=False)
    q.close()


def test_finished_buffers_go_through_put_fb_after_verification():
    q = shmq.Queue()
    buf = ORDERS.Order.build(order_dict(2))
    q.put_fb(ORDERS.Order, buf)
    with q.get_fb(ORDERS.Order) as o:
        check_order(o, 2)
    with pytest.raises(fb.VerifyError):
        q.put_fb(ORDERS.Order, buf[:-30])
    assert q.empty()
    check_order(ORDERS.Order.from_bytes(buf), 2)
    with pytest.raises(fb.VerifyError):
        ORDERS.Order.from_bytes(b"\x00" * 16)
    q.close()


def _mutations(buf, seed_bytes):
    out = bytearray(buf)
    for k in range(0, len(seed_bytes) - 2, 3):
        pos = int.from_bytes(seed_bytes[k:k + 2], "little") % len(out)
        out[pos] = seed_bytes[k + 2]
    return bytes(out)


_SEEDS = [ORDERS.Order.build(order_dict(i, legs=i % 4, tags=i % 3, ladder=i)) for i in range(4)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 3), noise=st.binary(min_size=3, max_size=60), cut=st.integers(0, 400))
def test_hostile_buffers_are_rejected_or_read_safely(which, noise, cut):
    buf = _mutations(_SEEDS[which], noise)
    buf = buf[: max(8, len(buf) - cut % 64)]
    try:
        v = ORDERS.Order.from_bytes(buf)
    except fb.VerifyError:
        return
    try:
        v.to_dict()  # whatever verified reads without touching memory outside the buffer
    except UnicodeDecodeError:
        pass  # a string that is not UTF-8: verified structure, but not text


@settings(max_examples=40, deadline=None)
@given(noise=st.binary(min_size=3, max_size=30))
def test_hostile_records_through_a_queue_leave_it_usable(noise):
    q = shmq.Queue()
    try:
        q.put_flatbuffer(_mutations(_SEEDS[3], noise))
        q.put_fb(TICKS.Tick, sequence=9)
        try:
            with q.get_fb(ORDERS.Order, timeout=5) as o:
                o.to_dict()
        except (fb.VerifyError, UnicodeDecodeError):
            pass
        with q.get_fb(TICKS.Tick, timeout=5) as t:
            assert t.sequence == 9
    finally:
        q.close()


# ---- across processes and channels ------------------------------------------------------------

def _produce(q, n):
    for i in range(n):
        q.put_fb(ORDERS.Order, order_dict(i))


def test_put_fb_and_get_fb_across_processes_in_order():
    q = shmq.Queue()
    p = mp.get_context("fork").Process(target=_produce, args=(q, 300))
    p.start()
    for i in range(300):
        with q.get_fb(ORDERS.Order, timeout=30) as o:
            check_order(o, i)
    p.join(30)
    assert p.exitcode == 0
    q.close()


BIG = np.arange(300_000, dtype=np.int64)  # 2.4 MB: larger than a Pipe's 1 MiB ring


def _echo(conn, n):
    for _ in range(n):
        with conn.recv_fb(TICKS.Tick) as t:
            d = t.to_dict()
        d["sequence"] += 1000
        conn.send_fb(TICKS.Tick, d)
    conn.send_fb(ORDERS.Order, account="a", symbol="s", price_ladder=BIG)  # streamed in chunks


def test_send_fb_and_recv_fb_over_a_pipe_both_ways():
    a, b = shmq.Pipe()
    p = mp.get_context("fork").Process(target=_echo, args=(b, 50))
    p.start()
    for i in range(50):
        a.send_fb(TICKS.Tick, tick_dict(i), flags=i)
        with a.recv_fb(TICKS.Tick) as t:
            assert t.sequence == i + 1000 and t.flags == i and t.bid.size == 10 + i
    with a.recv_fb(ORDERS.Order) as o:
        assert o.price_ladder.sum() == BIG.sum()
    p.join(30)
    assert p.exitcode == 0
    a.close()
    b.close()


def test_simple_and_joinable_queues_have_the_fb_verbs():
    sq = shmq.SimpleQueue()
    sq.put_fb(TICKS.Tick, sequence=4)
    with sq.get_fb(TICKS.Tick) as t:
        assert t.sequence == 4
    sq.close()
    jq = shmq.JoinableQueue()
    jq.put_fb(TICKS.Tick, sequence=5)
    assert not jq.join(timeout=0)
    with jq.get_fb(TICKS.Tick) as t:
        assert t.sequence == 5
    jq.task_done()
    assert jq.join(timeout=5)
    jq.close()


def test_a_large_message_is_built_in_the_queue_arena():
    q = shmq.Queue()
    ladder = np.arange(1 << 20, dtype=np.int64)  # 8 MiB: beyond an arena chunk, a file of its own
    for _ in range(3):
        q.put_fb(ORDERS.Order, account="a", symbol="s", price_ladder=ladder)
        with q.get_fb(ORDERS.Order) as o:
            assert o.price_ladder.sum() == ladder.sum()
    q.close()


# ---- interop ----------------------------------------------------------------------------------

def test_the_flatbuffers_package_reads_put_fb_messages_and_writes_get_fb_ones():
    q = shmq.Queue()
    q.put_fb(TICKS.Tick, tick_dict(6))
    with q.get_view() as mv:  # flatc --python classes over the same bytes
        t = Tick.Tick.GetRootAs(mv, 0)
        assert (t.Sequence(), t.Bid().Size(), t.LastSide()) == (6, 16, 1)
        del t
    b = flatbuffers.Builder(256)
    Tick.TickStart(b)
    Tick.TickAddSequence(b, 77)
    Tick.TickAddBid(b, Level.CreateLevel(b, 1.25, 3, 4, 0))
    b.Finish(Tick.TickEnd(b), file_identifier=b"TICK")
    q.put_flatbuffer(b)
    with q.get_fb(TICKS.Tick) as t:
        assert (t.sequence, t.bid.price, t.bid.orders) == (77, 1.25, 4)
    ob = flatbuffers.Builder(256)
    acc, sym = ob.CreateString("ACC"), ob.CreateString("SYM")
    Order.OrderStart(ob)
    Order.OrderAddAccount(ob, acc)
    Order.OrderAddSymbol(ob, sym)
    Order.OrderAddQuantity(ob, 12)
    ob.Finish(Order.OrderEnd(ob), file_identifier=b"ORDR")
    q.put_fb(ORDERS.Order, ob.Output())  # a finished buffer, verified and sent
    with q.get_fb(ORDERS.Order) as o:
        assert (o.account, o.symbol, o.quantity) == ("ACC", "SYM", 12)
    q.close()


def test_cpp_writer_to_get_fb_and_put_fb_to_cpp_reader(qname):
    exe = tool("SHMQ_FB_INTEROP", "tests", "serialize", "fb_interop")
    q = shmq.Queue(name=qname)
    out = subprocess.run([exe, "write-order", qname, "20"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([exe, "write-tick", qname, "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for i in range(20):
        with q.get_fb(ORDERS.Order, timeout=10) as o:
            check_order(o, i)
    for i in range(5):
        with q.get_fb(TICKS.Tick, timeout=10) as t:
            check_tick(t, i)
    for i in range(20):
        q.put_fb(ORDERS.Order, order_dict(i))
    out = subprocess.run([exe, "read-order", qname, "20"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for i in range(5):
        q.put_fb(TICKS.Tick, tick_dict(i))
    out = subprocess.run([exe, "read-tick", qname, "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    q.close()


def test_the_cli_decodes_put_fb_messages_with_the_same_schema_loader(qname):
    cli = tool("SHMQ_CLI", "tools", "shmq")
    q = shmq.Queue(name=qname)
    q.put_fb(ORDERS.Order, order_dict(1))
    out = subprocess.run([cli, "dump", qname, "--json", "--schema", os.path.join(SCHEMAS, "order.fbs")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    value = json.loads(out.stdout)["messages"][0]["flatbuffers"]["value"]
    assert value["symbol"] == "NQZ5" and value["legs"][2]["symbol"] == "LEG2"
    assert value["type"] == {"price": 4501.25, "post_only": True}
    q.close()


def test_the_python_readme_example_runs():
    text = open(os.path.join(ROOT, "python", "README.md")).read()
    section = text[text.index("## FlatBuffers from dicts"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    assert len(code.strip().splitlines()) <= 12
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ESZ5 1.75 8 {'symbol': 'ESZ5', 'px': {'bid': 1.5, 'ask': 1.75}, 'sizes': [3, 1, 4]}")
