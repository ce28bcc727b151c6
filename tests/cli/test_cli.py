"""Tests of the `shmq` command-line tool against real segments in /dev/shm.

The binary comes from $SHMQ_CLI (default: build/tools/shmq under the repository root). Every
segment a test makes is named t-cli-<pid>-<n>; the fixture removes them (spill files included) and
kills the processes a test started, even when the test fails. `gc` is always given that prefix as
a pattern, so the suite never touches segments of anything else running on the machine.
No test asserts a duration: waits are bounded only so that a hang fails instead of blocking.
"""

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")
PREFIX = f"t-cli-{os.getpid()}-"
PATTERN = PREFIX + "*"

# Offsets in the segment header (shm/include/shmq/shm/segment.hpp) and a pipe ring's control
# block (core/include/shmq/core/spsc_ring.hpp), for hand-made corruption.
HDR_MAGIC = 0
HDR_KIND = 12
HDR_TOTAL_BYTES = 40
HEADER_BYTES = 16384
RING_TAIL = 128
RING_HEAD = 256


def cli_path():
    p = os.environ.get("SHMQ_CLI")
    path = Path(p) if p else REPO / "build" / "tools" / "shmq"
    if not path.is_absolute():
        path = REPO / path
    return path


@pytest.fixture(scope="session")
def shmq_bin():
    path = cli_path()
    if not path.exists():
        pytest.fail(f"the shmq binary is missing at {path}: build it first (or set SHMQ_CLI)")
    return str(path)


class Cli:
    def __init__(self, binary):
        self.binary = binary
        self.procs = []
        self.counter = 0

    def name(self):
        self.counter += 1
        return f"{PREFIX}{self.counter}"

    def run(self, *args, input=None, timeout=60):
        r = subprocess.run([self.binary, *map(str, args)], input=input, capture_output=True,
                           timeout=timeout)
        # A signal (SIGSEGV, SIGBUS, SIGABRT) shows as a negative return code: never acceptable.
        assert r.returncode >= 0, f"shmq {args} died with signal {-r.returncode}: {r.stderr!r}"
        return r

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"shmq {args} -> {r.returncode}: {r.stderr.decode()}"
        return r

    def json(self, *args, **kw):
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def spawn(self, *args):
        p = subprocess.Popen([self.binary, *map(str, args)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        for f in SHM.glob(f"shmq.{PREFIX}*"):
            try:
                f.unlink()
            except FileNotFoundError:
                pass


@pytest.fixture
def cli(shmq_bin):
    c = Cli(shmq_bin)
    try:
        yield c
    finally:
        c.cleanup()


def seg_path(name):
    return SHM / f"shmq.{name}"


def patch(name, offset, data):
    with open(seg_path(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def ls_entry(cli, name):
    for e in cli.json("ls", PATTERN):
        if e["name"] == name:
            return e
    return None


def wait_until(pred, what, bound=20.0):
    """Polls pred() until it holds; the bound only turns a hang into a failure."""
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")


def alive(cli, name):
    e = ls_entry(cli, name)
    return e["participants"]["alive"] if e else 0


# ---- usage ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["bogus"],
    ["stat"],
    ["ls", "--bogus"],
    ["create", "x"],
    ["create", "x", "--kind", "tube"],
    ["create", "x", "--kind", "pipe", "--slots", "4"],
    ["create", "x", "--kind", "queue", "--duplex"],
    ["watch", "x", "--interval", "0"],
    ["dump", "x", "--root-type", "T"],
    ["recv", "x", "--timeout", "-1"],
    ["stat", "bad/name"],
])
def test_usage_errors_exit_2(cli, args):
    r = cli.run(*args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error explains itself on stderr"


def test_help_exits_0(cli):
    r = cli.run("--help")
    assert r.returncode == 0
    for sub in ["ls", "stat", "watch", "create", "rm", "gc", "dump", "send", "recv"]:
        assert sub.encode() in r.stdout


def test_missing_segment_is_an_error_in_words(cli):
    name = cli.name()
    for args in (["stat", name], ["dump", name], ["watch", name, "-n", "1"], ["rm", name],
                 ["recv", name, "-t", "0"]):
        r = cli.run(*args)
        assert r.returncode == 1, args
        assert b"no segment" in r.stderr, (args, r.stderr)


# ---- create, ls, stat, rm --------------------------------------------------------------------

def test_create_pipe_then_ls_stat_rm(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--capacity", 8192, "--duplex")
    e = ls_entry(cli, name)
    assert e["kind"] == "pipe" and e["state"] == "ready"
    assert e["capacity"] == 8192 and e["directions"] == 2
    assert e["depth_bytes"] == 0
    assert e["participants"] == {"alive": 0, "dead": 0}
    assert e["owner_uid"] == os.geteuid() and e["age_seconds"] >= 0

    st = cli.json("stat", name)
    assert st["header"]["params"]["capacity"] == 8192
    assert len(st["stats"]) == 2 and len(st["rings"]) == 2
    assert st["problems"] == []
    text = cli.ok("stat", name).stdout.decode()
    assert "duplex" in text and "direction 1" in text

    table = cli.ok("ls", PATTERN).stdout.decode()
    assert name in table and "NAME" in table

    cli.ok("rm", name)
    assert not seg_path(name).exists()
    assert ls_entry(cli, name) is None


def test_create_queue_reports_its_shape(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "queue", "--slots", 16, "--slot-size", 64, "--maxsize", 10)
    e = ls_entry(cli, name)
    assert e["kind"] == "queue" and e["capacity"] == 10 and e["slot_size"] == 64
    assert e["depth_messages"] == 0
    st = cli.json("stat", name)
    assert st["header"]["params"]["capacity"] == 16
    assert st["header"]["params"]["maxsize"] == 10


def test_create_refuses_an_existing_name_and_bad_parameters(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    r = cli.run("create", name, "--kind", "queue")
    assert r.returncode == 1 and b"already exists" in r.stderr
    r = cli.run("create", cli.name(), "--kind", "pipe", "--capacity", 1000)
    assert r.returncode == 1 and b"power of two" in r.stderr


# ---- send, recv ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pipe", "queue"])
def test_send_then_recv_lines(cli, kind):
    name = cli.name()
    cli.ok("create", name, "--kind", kind)
    cli.ok("send", name, input=b"alpha\nbeta\n\ngamma")
    if kind == "pipe":
        assert ls_entry(cli, name)["depth_bytes"] > 0
    else:
        assert ls_entry(cli, name)["depth_messages"] == 4
    r = cli.ok("recv", name, "--count", 4, "--timeout", 10)
    assert r.stdout == b"alpha\nbeta\n\ngamma\n"
    # Nothing left: a count that cannot be met is an error, a quiet period without one is not.
    r = cli.run("recv", name, "--count", 1, "--timeout", 0.05)
    # A queue times out; a pipe whose writer (send) has exited reports the end of the stream.
    assert r.returncode == 1
    assert (b"timed out" if kind == "queue" else b"closed") in r.stderr
    r = cli.run("recv", name, "--timeout", 0.05)
    assert r.returncode == 0 and r.stdout == b""


def test_pipe_recv_ends_at_close(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    cli.ok("send", name, input=b"one\ntwo\n")  # send's writer closes the stream when it exits
    r = cli.ok("recv", name, timeout=60)       # no count, no timeout: until closed
    assert r.stdout == b"one\ntwo\n"


def test_send_and_recv_files_including_spilled_queue_messages(cli, tmp_path):
    name = cli.name()
    cli.ok("create", name, "--kind", "queue", "--slots", 8, "--slot-size", 64)
    small = tmp_path / "small.bin"
    big = tmp_path / "big.bin"
    small.write_bytes(b"\x00\x01\n\x02")
    big.write_bytes(os.urandom(5000))  # larger than a slot: spills into its own file
    cli.ok("send", name, "-f", small, "-f", big, "--kind", 300)
    dump = cli.json("dump", name)
    assert [m["size"] for m in dump["messages"]] == [4, 5000]
    assert dump["messages"][1].get("spilled") is True
    assert all(m["kind"] == 300 for m in dump["messages"])
    out = tmp_path / "msg."
    cli.ok("recv", name, "-n", 2, "-t", 10, "-f", out)
    assert (tmp_path / "msg.0").read_bytes() == small.read_bytes()
    assert (tmp_path / "msg.1").read_bytes() == big.read_bytes()


def test_a_second_pipe_reader_is_refused(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    cli.spawn("recv", name)
    wait_until(lambda: alive(cli, name) == 1, "the reader to attach")
    r = cli.run("recv", name, "-t", 0)
    assert r.returncode == 1 and b"held by a live" in r.stderr


# ---- dump ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pipe", "queue"])
def test_dump_peeks_without_consuming(cli, kind):
    name = cli.name()
    cli.ok("create", name, "--kind", kind)
    lines = [f"message {i}".encode() for i in range(5)]
    cli.ok("send", name, input=b"\n".join(lines) + b"\n")
    d = cli.json("dump", name, "--count", 3)
    assert len(d["messages"]) == 3 and not d["corrupt"]
    assert [m["text"] for m in d["messages"]] == [l.decode() for l in lines[:3]]
    assert d["messages"][0]["hex"].startswith("6d 65 73")  # "mes"
    text = cli.ok("dump", name).stdout.decode()
    assert "message 4" in text
    # Everything is still there, in order.
    assert cli.ok("recv", name, "-n", 5, "-t", 10).stdout.splitlines() == lines


def test_dump_and_depth_skip_what_a_live_reader_read_but_has_not_returned(cli):
    # The ring's reader returns space in batches: a reader that read 2 messages of a 64 KiB pipe
    # has not yet moved head, but it has been handed them, so they are neither waiting nor shown.
    import shmq
    r, w = shmq.Pipe(duplex=False, capacity=1 << 16)
    try:
        for i in range(5):
            w.send_bytes(b"message %d" % i)
        assert r.recv_bytes() == b"message 0" and r.recv_bytes() == b"message 1"
        d = cli.json("dump", r.name)
        assert [m["text"] for m in d["messages"]] == ["message 2", "message 3", "message 4"]
        assert not any(m.get("held") for m in d["messages"])
        ring = cli.json("stat", r.name)["rings"][0]
        assert ring["head"] == 0 and ring["read"] == 48  # two 24-byte records read
        assert ring["depth_bytes"] == ring["tail"] - 48 == 72
        assert "space not yet returned" in cli.ok("stat", r.name).stdout.decode()
    finally:
        r.close()
        w.close()


def test_dump_describes_pickles_without_unpickling(cli, tmp_path):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    # A pickle whose unpickling would run os.system: it must only be described.
    evil = b"\x80\x05\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x05touch\x85R."
    f = tmp_path / "p.bin"
    f.write_bytes(evil)
    cli.ok("send", name, "-f", f, "--kind", 1)
    m = cli.json("dump", name)["messages"][0]
    assert m["kind_name"] == "pickle" and m["size"] == len(evil)
    assert m["pickle"]["protocol"] == 5 and m["pickle"]["unpickled"] is False
    assert "hex" not in m


def test_dump_truncates_long_messages(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    cli.ok("send", name, input=b"x" * 500 + b"\n")
    m = cli.json("dump", name, "--max-bytes", 8)["messages"][0]
    assert m["size"] == 500 and m["truncated"] is True and m["text"] == "x" * 8


def test_dump_chunked_pipe_message(cli, tmp_path):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--capacity", 4096)
    big = tmp_path / "big.bin"
    big.write_bytes(b"0123456789" * 300)  # 3000 B > half the ring: streamed in chunks
    p = cli.spawn("send", name, "-f", big)
    # The writer blocks once the ring is full; dump sees the message being streamed.
    wait_until(lambda: (ls_entry(cli, name) or {}).get("depth_bytes", 0) > 0, "the first chunk")
    m = cli.json("dump", name)["messages"][0]
    assert m["chunked"] is True and m["size"] == 3000 and m["text"].startswith("0123456789")
    r = cli.ok("recv", name, "-n", 1, "-t", 10, "-f", tmp_path / "out.")
    assert (tmp_path / "out.0").read_bytes() == big.read_bytes()
    p.wait(timeout=30)


def make_tick_payload(tmp_path):
    flatc = shutil.which("flatc")
    if flatc is None:
        pytest.skip("flatc is not installed")
    schema = REPO / "serialize" / "schemas" / "tick.fbs"
    (tmp_path / "tick.json").write_text('{"instrument_id": 7, "sequence": 42, "last_side": "Buy"}')
    subprocess.run([flatc, "-b", "-o", str(tmp_path), str(schema), str(tmp_path / "tick.json")],
                   check=True, capture_output=True)
    buf = (tmp_path / "tick.tick").read_bytes()
    # serialize/include/shmq/serialize/prefix.hpp: u32 type id (file_identifier), u32 start.
    payload = tmp_path / "tick.payload"
    payload.write_bytes(b"TICK" + struct.pack("<I", 8) + buf)
    return schema, payload


def test_large_messages_go_to_the_arena_and_dump_reads_them(cli, tmp_path):
    name = cli.name()
    r = cli.ok("create", name, "--kind", "queue", "--slot-size", 64, "--arena-chunks", 1,
               "--arena-chunk-bytes", 4096)
    assert "arena 1 x 4" in r.stdout.decode()
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"a" * 1000)
    big.write_bytes(b"b" * 5000)  # larger than a chunk: a file of its own
    cli.ok("send", name, "-f", small, "-f", small, "-f", big)
    assert len(list(SHM.glob(f"shmq.{name}.x*"))) == 2  # the second 1000 B found the chunk taken
    msgs = cli.json("dump", name)["messages"]
    assert [m["size"] for m in msgs] == [1000, 1000, 5000]
    assert msgs[0]["note"] == "in arena chunk 0"
    assert cli.json("stat", name)["rings"][0]["arena"] == {"chunks": 1, "chunk_bytes": 4096, "in_use": 1}
    assert "arena: 1 chunks of 4.0 KiB, 1 in use" in cli.ok("stat", name).stdout.decode()
    assert "file" in msgs[1]["note"] and "file" in msgs[2]["note"]
    out = tmp_path / "got"
    cli.ok("recv", name, "-n", 3, "-f", out)
    got = sorted(tmp_path.glob("got*"))
    assert [p.read_bytes() for p in got] == [b"a" * 1000, b"a" * 1000, b"b" * 5000]
    assert list(SHM.glob(f"shmq.{name}.x*")) == []
    bad = cli.run("create", cli.name(), "--kind", "queue", "--arena-chunk-bytes", 1000)
    assert bad.returncode == 1 and b"4096" in bad.stderr


def test_dump_decodes_flatbuffers_with_a_schema(cli, tmp_path):
    schema, payload = make_tick_payload(tmp_path)
    name = cli.name()
    cli.ok("create", name, "--kind", "queue", "--slot-size", 256)
    cli.ok("send", name, "-f", payload, "--kind", 2)
    bad = tmp_path / "bad.payload"
    bad.write_bytes(b"TICK" + struct.pack("<I", 8) + b"\xff" * 40)  # right type, garbage buffer
    cli.ok("send", name, "-f", bad, "--kind", 2)

    plain = cli.json("dump", name)["messages"][0]["flatbuffers"]
    assert plain["type_id"] == "TICK" and "value" not in plain

    msgs = cli.json("dump", name, "--schema", schema, "--root-type", "Tick")["messages"]
    assert msgs[0]["flatbuffers"]["value"] == {"instrument_id": 7, "sequence": 42, "last_side": "Buy"}
    assert "verifier" in msgs[1]["flatbuffers"]["error"]
    # The schema's own root_type is the default.
    msgs = cli.json("dump", name, "--schema", schema)["messages"]
    assert msgs[0]["flatbuffers"]["value"]["sequence"] == 42
    r = cli.run("dump", name, "--schema", schema, "--root-type", "Nope")
    assert r.returncode == 1 and b"Nope" in r.stderr


# ---- watch -----------------------------------------------------------------------------------

def test_watch_prints_plain_lines_when_not_a_tty(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--duplex")
    r = cli.ok("watch", name, "--interval", 0.05, "--count", 3)
    lines = r.stdout.decode().splitlines()
    assert "sent/s" in lines[0] and "abandoned" in lines[0]
    assert len(lines) == 1 + 3 * 2  # a header, then one line per direction per sample
    assert b"\x1b[" not in r.stdout


def test_watch_sees_traffic(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "queue")
    w = cli.spawn("watch", name, "--interval", 0.05, "--count", 20)
    assert b"sent/s" in w.stdout.readline()  # watch has its first snapshot: now send
    cli.ok("send", name, input=b"m\n" * 200)
    out, _ = w.communicate(timeout=60)
    assert w.returncode == 0
    # time dir sent/s recv/s in(2 words) out(2 words) depth wakes/s abandoned
    rows = [l.split() for l in out.decode().splitlines()]
    assert any(float(r[2].rstrip("kMG")) > 0 for r in rows), "some sample shows sends"
    assert rows[-1][8] == "200"  # depth


# ---- crashes, gc -----------------------------------------------------------------------------

def test_killed_participant_shows_dead_and_gc_keeps_the_named_segment(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    reader = cli.spawn("recv", name)
    wait_until(lambda: alive(cli, name) == 1, "the reader to attach")
    st = cli.json("stat", name)
    assert [p["role"] for p in st["participants"] if p["alive"]] == ["reader"]

    # In use: gc keeps it and rm refuses it.
    g = cli.json("gc", PATTERN, "--grace", 0)
    assert [(s["name"], s["action"]) for s in g["segments"]] == [(name, "kept")]
    r = cli.run("rm", name)
    assert r.returncode == 1 and b"in use" in r.stderr

    reader.send_signal(signal.SIGKILL)
    reader.wait(timeout=30)
    e = ls_entry(cli, name)
    assert e["participants"] == {"alive": 0, "dead": 1}

    assert e["idle"] is True and e["idle_messages"] == 0

    # Named: it lives until `shmq rm`, even with every participant dead.
    g = cli.json("gc", PATTERN, "--grace", 0)
    assert [(s["name"], s["action"], s["named"]) for s in g["segments"]] == [(name, "kept", True)]
    assert "idle, 0 messages" in g["segments"][0]["reason"]
    dry = cli.json("gc", PATTERN, "--grace", 0, "--include-named", "--dry-run")
    assert [(s["name"], s["action"]) for s in dry["segments"]] == [(name, "would-remove")]
    assert seg_path(name).exists()
    # A fresh file is protected by the grace period.
    kept = cli.json("gc", PATTERN, "--grace", 3600, "--include-named")
    assert kept["segments"][0]["action"] == "kept" and seg_path(name).exists()

    r = cli.ok("gc", PATTERN, "--grace", 0, "--include-named")
    assert f"removed      {name}: named, idle and empty (--include-named)" in r.stdout.decode()
    assert not seg_path(name).exists()


def test_gc_never_deletes_a_job_waiting_in_a_named_queue(cli):
    # A producer puts a job into a named queue and exits; the consumer is not started yet; an
    # operator runs gc.
    name = cli.name()
    cli.ok("create", name, "--kind", "queue")
    cli.ok("send", name, input=b"job 1\n")
    r = cli.ok("gc", PATTERN, "--grace", 0)
    assert f"kept         {name}: named" in r.stdout.decode() and "idle, 1 message)" in r.stdout.decode()
    e = ls_entry(cli, name)
    assert e["idle"] is True and e["idle_messages"] == 1
    row = [l for l in cli.ok("ls", PATTERN).stdout.decode().splitlines() if l.startswith(name)]
    assert row and row[0].split()[2] == "idle"  # the STATE column
    text = cli.ok("stat", name).stdout.decode()
    assert "idle        nobody attached, 1 message waiting" in text
    # --include-named refuses a segment holding messages without --force, and says why.
    g = cli.json("gc", PATTERN, "--grace", 0, "--include-named")
    assert [(s["action"], s["messages"]) for s in g["segments"]] == [("kept", 1)]
    assert "--force" in g["segments"][0]["reason"]
    r = cli.run("gc", PATTERN, "--force")
    assert r.returncode == 2, "--force alone is a usage error"
    # The consumer that comes later gets the job.
    assert cli.ok("recv", name, "-n", 1, "-t", 10).stdout == b"job 1\n"
    assert cli.json("gc", PATTERN, "--grace", 0, "--include-named")["removed"] == 1
    assert not seg_path(name).exists()


def test_gc_include_named_force_deletes_messages_and_lists_them(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--capacity", 4096)
    cli.ok("send", name, input=b"a\nb\nc\n")
    r = cli.ok("gc", PATTERN, "--grace", 0, "--include-named", "--force")
    assert f"removed      {name}: named and idle (--include-named --force): 3 messages deleted" \
        in r.stdout.decode()
    assert not seg_path(name).exists()


def test_gc_removes_an_anonymous_queue_whose_users_died(cli):
    # An unnamed queue (a generated name) whose last user was killed before it could unlink it.
    code = ("import os, shmq; q = shmq.Queue(); q.put('lost'); print(q.name, flush=True); "
            "os._exit(0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    name = p.stdout.decode().strip()
    try:
        assert seg_path(name).exists()
        g = cli.json("gc", name, "--grace", 0)
        s = g["segments"][0]
        assert (s["name"], s["action"], s["named"]) == (name, "removed", False)
        assert "anonymous" in s["reason"]
        assert not seg_path(name).exists()
    finally:
        seg_path(name).unlink(missing_ok=True)


def test_rm_force_removes_a_segment_in_use(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "queue")
    cli.spawn("recv", name)
    wait_until(lambda: alive(cli, name) == 1, "the reader to attach")
    cli.ok("rm", "--force", name)
    assert not seg_path(name).exists()


def test_gc_removes_spill_files_with_their_queue(cli, tmp_path):
    name = cli.name()
    cli.ok("create", name, "--kind", "queue", "--slot-size", 64, "--arena-chunks", 0)
    big = tmp_path / "big.bin"
    big.write_bytes(b"y" * 1000)
    cli.ok("send", name, "-f", big, "-f", big)
    assert len(list(SHM.glob(f"shmq.{name}.x*"))) == 2
    assert [e["name"] for e in cli.json("ls", PATTERN)] == [name]  # spill files are not segments
    g = cli.json("gc", PATTERN, "--grace", 0)
    assert [(s["action"], s["messages"]) for s in g["segments"]] == [("kept", 2)]  # named
    assert len(list(SHM.glob(f"shmq.{name}.x*"))) == 2
    cli.ok("gc", PATTERN, "--grace", 0, "--include-named", "--force")
    assert list(SHM.glob(f"shmq.{name}*")) == []


def test_gc_keeps_spill_files_of_an_anonymous_queue_still_mapped(cli):
    # An anonymous (memfd) queue has no file in /dev/shm; its memfd is labelled shmq.<tag> and its
    # spill files are shmq.<tag>.x<pos>. Here a memfd with such a label stands for a live one.
    import mmap
    tag = f"memfd-{os.getpid()}cli{cli.name()[-1]}"
    spill = SHM / f"shmq.{tag}.x0000000000000001"
    fd = os.memfd_create(f"shmq.{tag}")
    try:
        os.ftruncate(fd, 4096)
        with mmap.mmap(fd, 4096):
            spill.write_bytes(b"a committed message")
            out = cli.json("gc", tag, "--grace", 0)
            assert [(e["name"], e["action"]) for e in out["segments"]] == [(spill.name, "kept")]
            assert f"mapped by pid {os.getpid()}" in out["segments"][0]["reason"]
            assert spill.exists()
        os.close(fd)
        fd = -1
        out = cli.json("gc", tag, "--grace", 0)  # nobody maps it now: an orphan
        assert [(e["name"], e["action"]) for e in out["segments"]] == [(spill.name, "removed")]
        assert not spill.exists()
    finally:
        if fd >= 0:
            os.close(fd)
        spill.unlink(missing_ok=True)


# ---- corrupt segments ------------------------------------------------------------------------

def test_corrupt_header_is_reported_and_collected(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    patch(name, HDR_KIND, struct.pack("<I", 7))
    e = ls_entry(cli, name)
    assert e["state"] == "corrupt" and e["problems"][0]["code"] == "corrupt"
    r = cli.run("stat", name)
    assert r.returncode == 1 and b"corrupt header at field kind" in r.stderr
    r = cli.run("stat", name, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["state"] == "corrupt"
    for args in (["dump", name], ["watch", name, "-n", "1"], ["send", name], ["recv", name]):
        r = cli.run(*args, input=b"x\n")
        assert r.returncode == 1 and b"corrupt" in r.stderr, args
    # Named and unreadable: kept, even with --include-named, unless --force.
    for args in ([], ["--include-named"]):
        g = cli.json("gc", PATTERN, "--grace", 0, *args)
        s = g["segments"][0]
        assert s["action"] == "kept" and s["corrupt"] is True and s["messages"] is None
        assert "field 'kind'" in s["problem"]
    g = cli.json("gc", PATTERN, "--grace", 0, "--include-named", "--force")
    assert g["segments"][0]["action"] == "removed" and g["segments"][0]["corrupt"] is True
    assert not seg_path(name).exists()


def test_corrupt_segment_in_use_is_reported_but_kept(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe")
    cli.spawn("recv", name)
    wait_until(lambda: alive(cli, name) == 1, "the reader to attach")
    patch(name, HDR_TOTAL_BYTES, struct.pack("<Q", 1 << 50))
    g = cli.json("gc", PATTERN, "--grace", 0)
    s = g["segments"][0]
    assert s["action"] == "kept" and s["corrupt"] is True and "total_bytes" in s["problem"]
    assert seg_path(name).exists()


@pytest.mark.parametrize("content, words", [
    (b"", b"empty file"),
    (b"\x00" * 100, b"truncated"),
    (b"NOTSHMQ!" + b"\x00" * 20000, b"not a shmq segment"),
])
def test_foreign_files_are_reported_and_collected(cli, content, words):
    name = cli.name()
    fd = os.open(seg_path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, content)
    os.close(fd)
    assert ls_entry(cli, name)["state"] == "corrupt"
    r = cli.run("stat", name)
    assert r.returncode == 1 and words in r.stderr
    r = cli.run("dump", name)
    assert r.returncode == 1
    g = cli.json("gc", PATTERN, "--grace", 0)
    assert g["segments"][0]["action"] == "kept" and g["segments"][0]["corrupt"] is True
    g = cli.json("gc", PATTERN, "--grace", 0, "--include-named", "--force")
    assert g["segments"][0]["action"] == "removed" and g["segments"][0]["corrupt"] is True
    assert not seg_path(name).exists()


def test_corrupt_ring_positions_stop_dump_and_stat(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--capacity", 4096)
    cli.ok("send", name, input=b"a\nb\n")
    patch(name, HEADER_BYTES + RING_HEAD, struct.pack("<Q", 1 << 40))  # head far beyond tail
    r = cli.run("dump", name)
    assert r.returncode == 1 and b"head/tail" in r.stderr
    r = cli.run("stat", name)
    assert r.returncode == 1 and b"head/tail" in r.stderr
    assert ls_entry(cli, name)["state"] == "corrupt"


def test_corrupt_record_length_stops_dump_with_a_clear_message(cli):
    name = cli.name()
    cli.ok("create", name, "--kind", "pipe", "--capacity", 4096)
    cli.ok("send", name, input=b"first\nsecond\n")
    # The second record starts at position 16: give it a length beyond the ring.
    data = HEADER_BYTES + 1024
    patch(name, data + 16, struct.pack("<I", 1 << 30))
    r = cli.run("dump", name, "--json")
    assert r.returncode == 1 and b"corrupt record at position 16" in r.stderr
    d = json.loads(r.stdout)
    assert [m["text"] for m in d["messages"]] == ["first"] and d["corrupt"] is True


def test_random_header_damage_never_crashes(cli):
    """Flips random bytes of the header and ring control: every command ends in 0 or 1."""
    rng = random.Random(1234)
    base = cli.name()
    for kind in ("pipe", "queue"):
        for i in range(12):
            name = f"{base}-{kind}-{i}"
            cli.ok("create", name, "--kind", kind, *(["--capacity", 4096] if kind == "pipe" else
                                                     ["--slots", 8, "--slot-size", 64]))
            cli.ok("send", name, input=b"hello\nworld\n")
            for _ in range(4):
                region = rng.choice([(0, 256), (HEADER_BYTES, HEADER_BYTES + 1024)])
                patch(name, rng.randrange(*region), bytes([rng.randrange(256)]))
            for args in (["stat", name], ["ls", name], ["dump", name], ["watch", name, "-n", 1,
                                                                          "-i", 0.01]):
                r = cli.run(*args)
                assert r.returncode in (0, 1), (args, r.returncode, r.stderr)
    g = cli.run("gc", PATTERN, "--grace", 0, "--include-named", "--force")
    assert g.returncode == 0
    assert list(SHM.glob(f"shmq.{base}*")) == []
