#!/usr/bin/env python3
"""The benchmark runner `make bench` calls.

Runs the C++ Google Benchmark executables from the build directory (JSON via --benchmark_out),
then the Python comparisons (bench/python/compare.py, dropin.py, pool.py), computes every target
of DESIGN.md (P1-P5, Y1-Y6, S1-S5, F1-F3, M1, A1, M2, K1-K5) as a ratio against peers measured in
the same run, with min/median/max over repetitions, prints one summary table (missed and not-run
targets included), and writes bench-results/results.json, throughput.png and latency.png.

    .venv/bin/python bench/run.py --quick              # about 5 minutes on 2 cores
    .venv/bin/python bench/run.py --full               # more repetitions, longer runs
    .venv/bin/python bench/run.py --filter 'pipe|Pipe' # only matching benchmarks / scenarios

Ratios pair repetition i of shmq with repetition i of its peer; the verdict uses the median.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP_SUITES = ["shmq_bench_baselines", "shmq_bench_pipe", "shmq_bench_queue", "shmq_bench_fb",
              "shmq_bench_sync"]
OUR_SHM_PREFIXES = ("shmq.bench-", "shmq-bench-")


# ---------------------------------------------------------------------------------------------
# Machine

def _run_text(cmd: List[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine_info(build_dir: str) -> Dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    compiler = ""
    intro = os.path.join(build_dir, "meson-info", "intro-compilers.json")
    try:
        with open(intro) as f:
            c = json.load(f)["host"]["cpp"]
            compiler = f"{c.get('id', '')} {c.get('full_version', c.get('version', ''))}".strip()
    except Exception:
        compiler = _run_text(["c++", "--version"]).splitlines()[0:1]
        compiler = compiler[0] if compiler else ""
    commit = _run_text(["git", "rev-parse", "HEAD"])
    dirty = bool(_run_text(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpu_model": cpu,
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "compiler": compiler,
        "python": platform.python_version(),
        "git_commit": commit + ("-dirty" if dirty and commit else ""),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------------------------
# C++

def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)
    except ImportError:
        return None


def _parse_gb_json(path: str, results: Dict[str, Dict[str, Any]]) -> None:
    with open(path) as f:
        doc = json.load(f)
    for b in doc.get("benchmarks", []):
        if b.get("run_type") != "iteration":
            continue
        name = b.get("run_name", b["name"]).replace("/manual_time", "")
        entry = results.setdefault(name, {"reps": []})
        if b.get("error_occurred"):
            entry["error"] = b.get("error_message", "error")
            continue
        keep = {k: v for k, v in b.items() if isinstance(v, (int, float)) and k not in
                ("repetitions", "repetition_index", "threads", "family_index",
                 "per_family_instance_index")}
        entry["reps"].append(keep)


# Benchmarks whose shmq result is compared with a peer from another executable and that are
# sensitive to where the host happens to place the two vCPUs (a round trip is two cache-line
# transfers: on a VM it can move 3x between minutes). They run one repetition at a time,
# alternating between executables, so that repetition i of shmq and repetition i of its peer
# (the pair a ratio uses) are measured back to back.
INTERLEAVED = re.compile(r"^pingpong/")


def _list_names(exe: str, args: argparse.Namespace) -> List[str]:
    listed = subprocess.run([exe, "--benchmark_list_tests=true",
                             f"--benchmark_filter={args.filter or '.'}"],
                            capture_output=True, text=True)
    return [n.replace("/manual_time", "") for n in listed.stdout.split() if n]


def _run_one(exe: str, name: str, min_time: float, reps: int, timeout: float,
             results: Dict[str, Dict[str, Any]]) -> None:
    """Runs one benchmark in its own process (one that hangs or crashes costs only itself) and
    appends its repetitions to results[name]; records an error instead on failure."""
    fd, out_json = tempfile.mkstemp(prefix="shmq-bench-", suffix=".json")
    os.close(fd)
    cmd = [exe, f"--benchmark_filter=^{re.escape(name)}(/manual_time)?$",
           f"--benchmark_min_time={min_time}", f"--benchmark_repetitions={reps}",
           "--benchmark_format=console", "--benchmark_color=false",
           f"--benchmark_out={out_json}", "--benchmark_out_format=json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            results.setdefault(name, {"reps": []})["error"] = \
                f"exit code {p.returncode}: {' '.join(tail)}"
        else:
            _parse_gb_json(out_json, results)
    except subprocess.TimeoutExpired:
        results.setdefault(name, {"reps": []})["error"] = f"timeout after {timeout:.0f} s"
    except Exception as e:
        results.setdefault(name, {"reps": []})["error"] = f"{type(e).__name__}: {e}"
    finally:
        os.unlink(out_json)


def run_cpp_suite(exe: str, names: List[str], min_time: float, reps: int,
                  timeout: float) -> Tuple[Dict[str, Dict[str, Any]], Optional[str]]:
    """Runs the given benchmarks of one executable, each in its own process with all its
    repetitions. Returns {name: {"reps": [...], "error": str?}}."""
    results: Dict[str, Dict[str, Any]] = {}
    bar = _progress(len(names), os.path.basename(exe))
    errors = []
    for name in names:
        _run_one(exe, name, min_time, reps, timeout, results)
        if results.get(name, {}).get("error"):
            errors.append(name)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return results, (f"{len(errors)} failed: {', '.join(errors)}" if errors else None)


def run_interleaved(jobs: List[Tuple[str, str]], min_time: float, reps: int, timeout: float,
                    results: Dict[str, Dict[str, Any]], suite_errors: Dict[str, str]) -> None:
    """Repetition by repetition over every (exe, name) of `jobs`, one process per repetition."""
    if not jobs:
        return
    print(f"running {len(jobs)} ping-pong benchmarks interleaved ({reps} rounds)", file=sys.stderr)
    bar = _progress(len(jobs) * reps, "ping-pong")
    failed: Dict[str, List[str]] = {}
    for _ in range(reps):
        for exe, name in jobs:
            if not results.get(name, {}).get("error"):
                _run_one(exe, name, min_time, 1, timeout, results)
                if results.get(name, {}).get("error"):
                    failed.setdefault(os.path.basename(exe), []).append(name)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    for suite, names in failed.items():
        msg = f"{len(names)} failed: {', '.join(names)}"
        suite_errors[suite] = f"{suite_errors[suite]}; {msg}" if suite in suite_errors else msg


def run_cpp(args: argparse.Namespace) -> Tuple[Dict[str, Any], Dict[str, str]]:
    min_time = args.min_time or (0.5 if args.full else 0.1)
    reps = args.reps or (10 if args.full else 3)
    timeout = 600 if args.full else 120
    results: Dict[str, Any] = {}
    suite_errors: Dict[str, str] = {}
    interleaved: List[Tuple[str, str]] = []
    for suite in CPP_SUITES:
        exe = os.path.join(args.build_dir, "bench", suite)
        if not os.access(exe, os.X_OK):
            suite_errors[suite] = f"{exe} not built"
            continue
        names = _list_names(exe, args)
        interleaved += [(exe, n) for n in names if INTERLEAVED.search(n)]
        names = [n for n in names if not INTERLEAVED.search(n)]
        print(f"running {suite} (min_time {min_time} s, {reps} repetitions)", file=sys.stderr)
        res, err = run_cpp_suite(exe, names, min_time, reps, timeout)
        results.update(res)
        if err:
            suite_errors[suite] = err
    run_interleaved(interleaved, min_time, reps, timeout, results, suite_errors)
    return {"min_time": min_time, "repetitions": reps, "benchmarks": results}, suite_errors


# ---------------------------------------------------------------------------------------------
# Python

def run_nats(args: argparse.Namespace) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """bench/python/nats_bench.py: N1-N3, with its own nats-server (JetStream) on loopback."""
    out = tempfile.NamedTemporaryFile(prefix="shmq-bench-nats-", suffix=".json", delete=False).name
    cmd = [sys.executable, os.path.join(ROOT, "bench", "python", "nats_bench.py"),
           "--full" if args.full else "--quick", "--out", out]
    if args.filter:
        cmd += ["--filter", args.filter]
    print("running the NATS JetStream benchmarks", file=sys.stderr)
    try:
        p = subprocess.run(cmd, cwd=ROOT, timeout=1800 if args.full else 600)
        if p.returncode != 0:
            return None, f"nats_bench.py exit code {p.returncode}"
        with open(out) as f:
            return json.load(f), None
    except subprocess.TimeoutExpired:
        return None, "nats_bench.py timed out"
    finally:
        if os.path.exists(out):
            os.unlink(out)


def run_python(args: argparse.Namespace, script: str = "compare.py",
               extra: Tuple[str, ...] = ("--progress",)) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    out = tempfile.NamedTemporaryFile(prefix="shmq-bench-py-", suffix=".json", delete=False).name
    cmd = [sys.executable, os.path.join(ROOT, "bench", "python", script),
           "--full" if args.full else "--quick", "--out", out, *extra]
    if args.filter:
        cmd += ["--filter", args.filter]
    print(f"running the Python comparison ({script})", file=sys.stderr)
    try:
        p = subprocess.run(cmd, cwd=ROOT, timeout=3600 if args.full else 900)
        if p.returncode != 0:
            return None, f"{script} exit code {p.returncode}"
        with open(out) as f:
            return json.load(f), None
    except subprocess.TimeoutExpired:
        return None, f"{script} timed out"
    finally:
        if os.path.exists(out):
            os.unlink(out)


def run_pool(args: argparse.Namespace) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """shmq.Pool against multiprocessing.Pool and ProcessPoolExecutor (bench/python/pool.py)."""
    out = tempfile.NamedTemporaryFile(prefix="shmq-bench-pool-", suffix=".json", delete=False).name
    cmd = [sys.executable, os.path.join(ROOT, "bench", "python", "pool.py"),
           "--full" if args.full else "--quick", "--out", out]
    if args.filter:
        cmd += ["--filter", args.filter]
    print("running the Pool comparison", file=sys.stderr)
    try:
        p = subprocess.run(cmd, cwd=ROOT, timeout=3600 if args.full else 900)
        if p.returncode != 0:
            return None, f"pool.py exit code {p.returncode}"
        with open(out) as f:
            return json.load(f), None
    except subprocess.TimeoutExpired:
        return None, "pool.py timed out"
    finally:
        if os.path.exists(out):
            os.unlink(out)


def pool_targets(pool: Optional[Dict[str, Any]], err: Optional[str]) -> List[Dict[str, Any]]:
    """K1-K5: shmq.Pool against multiprocessing.Pool and ProcessPoolExecutor, same run."""
    K = lambda sid: py_series(pool, err, sid)  # noqa: E731
    rows = [
        ratio("K1", "Pool map, 20k tiny tasks, chunksize=1", K("pool/K1/shmq.Pool"),
              K("pool/K1/mp.Pool"), ">=", 5, "mp.Pool", "tasks/s"),
        ratio("K1 cf", "Pool map, tiny tasks, chunksize=1", K("pool/K1/shmq.Pool"),
              K("pool/K1/cf.ProcessPoolExecutor"), ">=", 20, "ProcessPoolExecutor", "tasks/s"),
        ratio("K2", "Pool map, 200k tiny tasks, default chunksize", K("pool/K2/shmq.Pool"),
              K("pool/K2/mp.Pool"), ">=", 1.0, "mp.Pool", "tasks/s"),
        ratio("K3", "Pool imap_unordered, 20k tiny tasks", K("pool/K3/shmq.Pool"),
              K("pool/K3/mp.Pool"), ">=", 5, "mp.Pool", "tasks/s"),
        ratio("K4", "Pool map, a 1 MiB numpy array per task", K("pool/K4/shmq.Pool"),
              K("pool/K4/mp.Pool"), ">=", 3, "mp.Pool", "tasks/s"),
    ]
    k5 = absolute("K5", "kill -9 of a busy worker -> its task's WorkerLost (info)",
                  K("pool/K5/shmq.Pool"), "<=", 1000, "ms")
    if k5["verdict"] != "not run":
        k5["verdict"], k5["target"] = "info", "ms (mp.Pool: never)"
    rows.append(k5)
    return rows


# ---------------------------------------------------------------------------------------------
# Targets

class Series:
    """Per-repetition values of one measurement, or why there are none."""

    def __init__(self, values: List[float], missing: str = "") -> None:
        self.values = values
        self.missing = missing if not values else ""
        if not values and not missing:
            self.missing = "no data"

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def cpp_series(cpp: Dict[str, Any], suite_errors: Dict[str, str], name: str, field: str) -> Series:
    b = cpp.get("benchmarks", {}).get(name)
    if b is None:
        suite = ("shmq_bench_pipe" if name.startswith(("pipe", "pingpong/pipe")) else
                 "shmq_bench_queue" if name.startswith("queue") else
                 "shmq_bench_fb" if name.startswith("fb/") else
                 "shmq_bench_sync" if name.startswith("lock/shmq") else "shmq_bench_baselines")
        why = suite_errors.get(suite, "filtered out or not in this build")
        return Series([], f"{name}: {why}")
    if b.get("error"):
        return Series([], f"{name}: {b['error']}")
    vals = [float(r[field]) for r in b["reps"] if field in r]
    return Series(vals, f"{name}: no {field}")


def py_series(py: Optional[Dict[str, Any]], py_error: Optional[str], sid: str,
              field: str = "reps") -> Series:
    if py is None:
        return Series([], f"Python comparison: {py_error}")
    for s in py["scenarios"]:
        if s["sid"] == sid:
            if s["status"] != "ok":
                return Series([], f"{sid}: {s['status']}: {s['reason']}")
            vals = s["reps"] if field == "reps" else s["latency"].get(field, [])
            return Series([float(v) for v in vals], f"{sid}: no data")
    return Series([], f"{sid}: filtered out")


def best_of(*series: Series) -> Tuple[Series, int]:
    ok = [(i, s) for i, s in enumerate(series) if s.values]
    if not ok:
        return Series([], "; ".join(s.missing for s in series)), -1
    i, s = max(ok, key=lambda t: t[1].median)
    return s, i


def ratio(target_id: str, what: str, shmq: Series, peer: Series, op: str, bound: float,
          peer_name: str, unit: str = "msg/s") -> Dict[str, Any]:
    row: Dict[str, Any] = {"id": target_id, "what": what, "target": f"{op} {bound:g}x {peer_name}"}
    if not shmq.values or not peer.values:
        row["verdict"] = "not run"
        row["reason"] = shmq.missing or peer.missing
        return row
    n = min(len(shmq.values), len(peer.values))
    rs = [shmq.values[i] / peer.values[i] for i in range(n) if peer.values[i] > 0]
    if not rs:
        row["verdict"] = "not run"
        row["reason"] = "peer measured zero"
        return row
    med = statistics.median(rs)
    met = med >= bound if op == ">=" else med <= bound
    row.update({"ratios": rs, "min": min(rs), "median": med, "max": max(rs),
                "verdict": "met" if met else "MISSED",
                "shmq": shmq.median, "peer": peer.median, "unit": unit})
    return row


def absolute(target_id: str, what: str, s: Series, op: str, bound: float, unit: str) -> Dict[str, Any]:
    row: Dict[str, Any] = {"id": target_id, "what": what, "target": f"{op} {bound:g} {unit}"}
    if not s.values:
        row.update({"verdict": "not run", "reason": s.missing})
        return row
    worst = max(s.values)
    met = worst <= bound if op == "<=" else min(s.values) >= bound
    row.update({"values": s.values, "min": min(s.values), "median": statistics.median(s.values),
                "max": worst, "verdict": "met" if met else "MISSED", "unit": unit})
    return row


def nats_rows(nats: Optional[Dict[str, Any]], nerr: Optional[str]) -> List[Dict[str, Any]]:
    """N1-N3 (across hosts through JetStream, loopback), from bench/python/nats_bench.py."""
    N = lambda sid, field="reps": py_series(nats, nerr, sid, field)  # noqa: E731
    rows = [ratio("N1", "remote Queue put_many/get_many 64 B (JetStream) vs BaseManager put/get",
                  N("nats/queue/batch"), N("nats/basemanager/putget"), ">=", 3, "BaseManager queue"),
            ratio("N1 packed*", "remote Queue put_many(pack=True)/get_many 64 B (extra)",
                  N("nats/queue/batch_packed"), N("nats/basemanager/putget"), ">=", 3,
                  "BaseManager queue")]
    info = ratio("N1b", "remote Queue put/get 64 B vs BaseManager put/get (info)",
                 N("nats/queue/putget"), N("nats/basemanager/putget"), ">=", 0, "BaseManager queue")
    if info["verdict"] != "not run":
        info["verdict"], info["target"] = "info", "ratio vs BaseManager"
    rows.append(info)
    rows.append(absolute("N2", "shmq -> bridge out -> JetStream -> bridge in -> shmq, 64 B",
                         N("nats/bridge/64"), ">=", 100_000, "msg/s"))
    rows.append(ratio("N2 vs N1", "bridged path vs remote Queue put_many/get_many",
                      N("nats/bridge/64"), N("nats/queue/batch"), ">=", 10, "N1"))
    js = ratio("N2 js", "bridged path vs nats-py's own pipelined publish, 64 B (info)",
               N("nats/bridge/64"), N("nats/js/publish"), ">=", 0, "JetStream publish")
    if js["verdict"] != "not run":
        js["verdict"], js["target"] = "info", "ratio vs JetStream publish"
    rows.append(js)
    for q in ("p50", "p99"):
        row = absolute(f"N3 {q}", f"end-to-end latency through both bridges, low load ({q})",
                       N("nats/latency", f"{q}_us"), "<=", float("inf"), "us")
        if row["verdict"] != "not run":
            row["verdict"], row["target"] = "info", "latency (info)"
        rows.append(row)
    return rows


def recovery_row(p50: Series, worst: Series) -> Dict[str, Any]:
    """Information: how long a lock stays blocked after its holder is killed with -9 while another
    process sleeps in lock() (p50 of each run's trials; the max column is the worst trial)."""
    row: Dict[str, Any] = {"id": "S recovery", "what": "lock recovery after the holder's kill -9 (ms)",
                           "target": "info: p50 per run, worst"}
    if not p50.values or not worst.values:
        row.update({"verdict": "not run", "reason": p50.missing or worst.missing})
        return row
    row.update({"values": p50.values, "worst": worst.values, "min": min(p50.values),
                "median": statistics.median(p50.values), "max": max(worst.values),
                "verdict": "info", "unit": "ms"})
    return row


def compute_targets(cpp: Dict[str, Any], cerr: Dict[str, str], py: Optional[Dict[str, Any]],
                    perr: Optional[str], nats: Optional[Dict[str, Any]] = None,
                    nerr: Optional[str] = "not run", dropin: Optional[Dict[str, Any]] = None,
                    derr: Optional[str] = "not run", pool: Optional[Dict[str, Any]] = None,
                    pool_err: Optional[str] = "not run") -> List[Dict[str, Any]]:
    C = lambda name, field="items_per_second": cpp_series(cpp, cerr, name, field)  # noqa: E731
    Y = lambda sid, field="reps": py_series(py, perr, sid, field)  # noqa: E731
    rows = []
    for size in (8, 64, 1024):
        peer, i = best_of(C(f"spsc/boost_spsc/{size}"), C(f"spsc/moodycamel_rwq/{size}"))
        name = ["boost spsc_queue", "moodycamel RWQ"][i] if i >= 0 else "best in-process SPSC"
        rows.append(ratio(f"P1 {size}B", f"Pipe cross-process {size} B, per message",
                          C(f"pipe/{size}"), peer, ">=", 1.0, name))
    rows.append(ratio("P2", "Pipe vs Boost.Interprocess message_queue, 64 B", C("pipe/64"),
                      C("xproc/boost_mq/64"), ">=", 30, "boost mq"))
    # Extra: the same 64 B messages sent with send_many/recv_many (one publish per batch), what a
    # throughput-bound user would write; Boost's message_queue has no batch API.
    rows.append(ratio("P2 batched*", "Pipe send_many vs Boost.Interprocess message_queue, 64 B (extra)",
                      C("pipe_batched/64"), C("xproc/boost_mq/64"), ">=", 30, "boost mq"))
    # Round trips: p50 of the sampled trips (the mean is in results.json); lower is better.
    rows.append(ratio("P3", "ping-pong round trip, spinning (p50)",
                      C("pingpong/pipe_spin", "p50_ns"), C("pingpong/cacheline", "p50_ns"),
                      "<=", 1.3, "bare cache-line", "ns"))
    # P4: send/recv with spin budget 0 on every end, so each wait is a futex sleep, as in the
    # bare futex ping-pong (the default budget spins ~2048 pauses first and, at sub-µs round
    # trips, never sleeps: pingpong/pipe_blocking, in results.json only).
    rows.append(ratio("P4a", "ping-pong round trip, sleeping (p50; spin budget 0)",
                      C("pingpong/pipe_sleep", "p50_ns"), C("pingpong/futex", "p50_ns"),
                      "<=", 1.2, "bare futex", "ns"))
    rows.append(ratio("P4b", "ping-pong round trip, sleeping (p50; spin budget 0)",
                      C("pingpong/pipe_sleep", "p50_ns"), C("pingpong/boost_mq", "p50_ns"),
                      "<=", 0.5, "boost mq", "ns"))
    for pc in ("1p1c", "2p2c"):
        rows.append(ratio(f"P5 {pc}", f"Queue cross-process 64 B, {pc}", C(f"queue/64/{pc}"),
                          C(f"mpmc/moodycamel_cq/64/{pc}"), ">=", 1.0, "moodycamel CQ in-process"))
    rows.append(ratio("P5 4p4c*", "Queue 64 B, 4p4c oversubscribed (extra)", C("queue/64/4p4c"),
                      C("mpmc/moodycamel_cq/64/4p4c"), ">=", 1.0, "moodycamel CQ in-process"))
    for size in (8, 64):
        rows.append(ratio(f"Y1 {size}B", f"Python Queue put/get bytes {size} B",
                          Y(f"bytes/shmq.Queue/{size}/1p1c"), Y(f"bytes/mp.Queue/{size}/1p1c"),
                          ">=", 50, "mp.Queue"))
        rows.append(ratio(f"Y1 {size}B ff", f"Python Queue put/get bytes {size} B",
                          Y(f"bytes/shmq.Queue/{size}/1p1c"), Y(f"bytes/faster_fifo/{size}/1p1c"),
                          ">=", 10, "faster-fifo"))
    rows.append(ratio("Y2", "Python Pipe send_bytes/recv_bytes 64 B", Y("bytes/shmq.Pipe/64/1p1c"),
                      Y("bytes/mp.Pipe/64/1p1c"), ">=", 15, "mp.Pipe"))
    rows.append(ratio("Y3", "Python put_many/get_many 64 B (batch 256)", Y("batch/shmq.Queue/64/1p1c"),
                      Y("bytes/mp.Queue/64/1p1c"), ">=", 100, "mp.Queue put/get"))
    for obj in ("dict", "tuple"):
        rows.append(ratio(f"Y4 {obj}", f"Python pickled small {obj}", Y(f"objects/shmq.Queue/{obj}"),
                          Y(f"objects/mp.Queue/{obj}"), ">=", 5, "mp.Queue"))
    rows.append(ratio("Y5", "Python 4 producers x 4 consumers, 64 B", Y("topology/shmq.Queue/64/4p4c"),
                      Y("topology/mp.Queue/64/4p4c"), ">=", 10, "mp.Queue"))
    rows.append(ratio("Y5 collapse", "Python 4p4c vs its own 1p1c (no collapse)",
                      Y("topology/shmq.Queue/64/4p4c"), Y("bytes/shmq.Queue/64/1p1c"),
                      ">=", 0.5, "shmq 1p1c"))
    rows.append(ratio("Y6", "Python 1 MiB messages", Y("bytes/shmq.Queue/1048576/1p1c"),
                      Y("bytes/mp.Queue/1048576/1p1c"), ">=", 3, "mp.Queue"))
    # F1-F3: shmq.fb (dicts built in C++ into the ring, read lazily in place) against pickling.
    rows.append(ratio("F1", "Python FlatBuffers tick: put_fb dict, get_fb every field",
                      Y("flatbuffers/shmq.Queue/put_fb"), Y("flatbuffers/shmq.Queue/pickle"),
                      ">=", 1.3, "shmq.Queue pickle"))
    rows.append(ratio("F1 mp", "Python FlatBuffers tick: put_fb dict, get_fb every field",
                      Y("flatbuffers/shmq.Queue/put_fb"), Y("flatbuffers/mp.Queue/pickle"),
                      ">=", 6, "mp.Queue pickle"))
    rows.append(ratio("F2", "Python FlatBuffers order, 1 M int64 from numpy, summed as numpy",
                      Y("fb_large/shmq.Queue/put_fb"), Y("fb_large/mp.Queue/pickle"),
                      ">=", 3, "mp.Queue"))
    rows.append(ratio("F2 shmq", "Python FlatBuffers order, 1 M int64 from numpy, summed as numpy",
                      Y("fb_large/shmq.Queue/put_fb"), Y("fb_large/shmq.Queue/pickle"),
                      ">=", 1.5, "shmq.Queue pickle"))
    rows.append(ratio("F3", "Python get_fb one field of order_7k vs unpickling it (reads only)",
                      Y("fb_read/shmq.Queue/get_fb"), Y("fb_read/shmq.Queue/pickle"),
                      ">=", 5, "unpickling"))
    fb = ratio("FB py", "Python FlatBuffers tick, pure-Python builder + flatc classes (info)",
               Y("flatbuffers/shmq.Queue/flatbuffers"), Y("flatbuffers/shmq.Queue/pickle"),
               ">=", 0, "pickle")
    if fb["verdict"] != "not run":
        fb["verdict"], fb["target"] = "info", "ratio vs pickle"
    rows.append(fb)
    # C++ FlatBuffers (issue: build in place vs build then copy): send + receive + verify + read
    # every field, one thread, per message; > 1 means in place is faster.
    for chan, msg in (("pipe", "tick"), ("pipe", "order"), ("pipe", "order_7k"),
                      ("queue", "tick"), ("queue", "order")):
        row = ratio(f"FB {chan} {msg}", f"C++ FlatBuffers {msg} via {chan}: in place vs built then copied",
                    C(f"fb/{chan}/{msg}/inplace:1/verify:1"), C(f"fb/{chan}/{msg}/inplace:0/verify:1"),
                    ">=", 0, "copied")
        if row["verdict"] != "not run":
            row["verdict"], row["target"] = "info", "ratio vs copied"
        rows.append(row)
    # Locks and shared values (the synchronization issue): C++ S1-S2, Python S3-S5.
    rows.append(ratio("S1 std", "C++ lock+unlock, uncontended", C("lock/shmq/uncontended"),
                      C("lock/std_mutex/uncontended"), ">=", 0.8, "std::mutex", "ops/s"))
    rows.append(ratio("S1 robust", "C++ lock+unlock, uncontended", C("lock/shmq/uncontended"),
                      C("lock/pthread_robust/uncontended"), ">=", 1.0, "robust pthread mutex", "ops/s"))
    rows.append(ratio("S2", "C++ 2-process contended counter", C("lock/shmq/2proc"),
                      C("lock/pthread_robust/2proc"), ">=", 1.0, "robust pthread mutex", "ops/s"))
    rows.append(ratio("S3", "Python `with lock:` uncontended", Y("sync/shmq.Lock/with"),
                      Y("sync/mp.Lock/with"), ">=", 1.2, "mp.Lock", "ops/s"))
    rows.append(ratio("S4", "Python 2 processes x 100k `with v.get_lock(): v.value += 1`",
                      Y("sync/shmq.Value/2proc"), Y("sync/mp.Value/2proc"), ">=", 2, "mp.Value", "ops/s"))
    rows.append(ratio("S5", "Python Array('d', 10**6) slice copy a[:]", Y("sync/shmq.Array/slice"),
                      Y("sync/mp.Array/slice"), ">=", 1, "mp.Array", "copies/s"))
    rows.append(recovery_row(C("lock/shmq/recovery", "p50_ms"), C("lock/shmq/recovery", "max_ms")))
    # The drop-in's extras (bench/python/dropin.py).
    D = lambda sid: py_series(dropin, derr, sid)  # noqa: E731
    rows.append(ratio("A1", "asyncio get_async vs run_in_executor(None, mp.Queue.get)",
                      D("asyncio/shmq.Queue/get_async"), D("asyncio/mp.Queue/run_in_executor"),
                      ">=", 10, "mp.Queue in a thread pool"))
    a1 = ratio("A1 overhead", "await get_async() vs get(), message waiting (info)",
               D("asyncio/shmq.Queue/overhead_async"), D("asyncio/shmq.Queue/overhead_sync"),
               "<=", 0, "get()", "ns")
    if a1["verdict"] != "not run":
        a1["verdict"], a1["target"] = "info", f"+{a1['shmq'] - a1['peer']:.0f} ns over get()"
    rows.append(a1)
    rows.append(ratio("M2", "Manager proxy dict set + get round trips",
                      D("manager/shmq.Manager/dict_setget"), D("manager/mp.Manager/dict_setget"),
                      ">=", 3, "multiprocessing.Manager", "pairs/s"))
    # M1: allocations counted by a malloc hook inside the workers' rounds, over every shmq suite.
    shmq_names = [n for n in cpp.get("benchmarks", {}) if n.startswith(("pipe", "queue", "pingpong/pipe"))]
    allocs: List[float] = []
    rss: List[float] = []
    for n in shmq_names:
        for r in cpp["benchmarks"][n]["reps"]:
            if "allocs_per_msg" in r:
                allocs.append(float(r["allocs_per_msg"]))
            if "rss_over_segments_kib" in r:
                rss.append(float(r["rss_over_segments_kib"]))
    why = "; ".join(f"{k}: {v}" for k, v in cerr.items() if k != "shmq_bench_baselines") or \
        "no shmq C++ benchmark ran"
    rows.append(absolute("M1 allocs", "allocations per message, hot path (all shmq C++ runs)",
                         Series(allocs, why), "<=", 0, "per msg"))
    rows.append(absolute("M1 RSS", "worker RSS beyond its segments' resident pages (max)",
                         Series(rss, why), "<=", 4096, "KiB"))
    rows += nats_rows(nats, nerr)
    rows += pool_targets(pool, pool_err)
    return rows


# ---------------------------------------------------------------------------------------------
# Output

def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def print_table(rows: List[Dict[str, Any]], machine: Dict[str, Any]) -> None:
    head = ["id", "what", "target", "min", "median", "max", "verdict"]
    table = []
    for r in rows:
        if r["verdict"] == "not run":
            table.append([r["id"], r["what"], r["target"], "", "", "", f"not run: {r['reason']}"])
        else:
            table.append([r["id"], r["what"], r["target"], fmt(r["min"]), fmt(r["median"]),
                          fmt(r["max"]), r["verdict"]])
    widths = [max(len(str(row[i])) for row in table + [head]) for i in range(len(head) - 1)]
    line = "  ".join(h.ljust(w) for h, w in zip(head[:-1], widths)) + "  " + head[-1]
    print()
    print(f"shmq targets - {machine['cpu_model']}, {machine['cores_usable']} cores, "
          f"Linux {machine['kernel']}, {machine['compiler']}, commit {machine['git_commit'][:12]}")
    print("ratios = shmq / peer per repetition (min / median / max); verdict on the median")
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
    met = sum(r["verdict"] == "met" for r in rows)
    missed = sum(r["verdict"] == "MISSED" for r in rows)
    notrun = sum(r["verdict"] == "not run" for r in rows)
    print(f"\n{met} met, {missed} MISSED, {notrun} not run (of {len(rows)} rows)")


def plots(out_dir: str, cpp: Dict[str, Any], py: Optional[Dict[str, Any]]) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def med(vals: List[float]) -> float:
        return statistics.median(vals)

    # --- throughput -----------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    ax = axes[0]
    if py:
        impls = ["shmq.Queue", "shmq.SimpleQueue", "shmq.Pipe", "mp.Queue", "mp.SimpleQueue",
                 "mp.Pipe", "faster_fifo"]
        for impl in impls:
            xs, ys, lo, hi = [], [], [], []
            for s in py["scenarios"]:
                if s["group"] == "bytes" and s["impl"] == impl and s["status"] == "ok" and s["reps"]:
                    xs.append(s["size"])
                    m = med(s["reps"])
                    ys.append(m)
                    lo.append(m - min(s["reps"]))
                    hi.append(max(s["reps"]) - m)
            if xs:
                style = "-o" if impl.startswith("shmq") else "--s"
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=impl,
                            linewidth=2 if impl.startswith("shmq") else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("messages / s (median, min-max bars)")
    ax.set_title("Python, 1 producer -> 1 consumer process, bytes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if not py:
        ax.text(0.5, 0.5, "Python comparison not run", ha="center", transform=ax.transAxes)

    ax = axes[1]
    series = [("pipe/{}", "shmq Pipe (x-process)"), ("pipe_batched/{}", "shmq Pipe batched"),
              ("queue/{}/1p1c", "shmq Queue 1p1c (x-process)"),
              ("spsc/boost_spsc/{}", "boost spsc (threads)"),
              ("spsc/moodycamel_rwq/{}", "moodycamel RWQ (threads)"),
              ("spsc/atomic_queue/{}", "atomic_queue (threads)"),
              ("mpmc/moodycamel_cq/{}/1p1c", "moodycamel CQ 1p1c (threads)"),
              ("xproc/boost_mq/{}", "boost message_queue (x-process)")]
    bench = cpp.get("benchmarks", {})
    for pattern, label in series:
        xs, ys = [], []
        for size in (8, 64, 1024):
            b = bench.get(pattern.format(size))
            vals = [r["items_per_second"] for r in (b or {}).get("reps", []) if "items_per_second" in r]
            if vals:
                xs.append(size)
                ys.append(med(vals))
        if xs:
            ax.plot(xs, ys, "-o" if label.startswith("shmq") else "--s", label=label,
                    linewidth=2 if label.startswith("shmq") else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("messages / s (median)")
    ax.set_title("C++, 1 producer -> 1 consumer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # --- latency --------------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, title, items in (
        (axes[0], "Python ping-pong round trip, 8 B",
         [(s["impl"], s["latency"]) for s in (py or {}).get("scenarios", [])
          if s["group"] == "pingpong" and s["status"] == "ok" and s["latency"]]),
        (axes[1], "C++ ping-pong round trip across processes, 8 B",
         [(n.split("/", 1)[1], {k: [r[k] for r in b["reps"] if k in r] for k in ("p50_ns", "p99_ns")})
          for n, b in bench.items() if n.startswith("pingpong/") and b.get("reps")]),
    ):
        labels = [i[0] for i in items]
        p50 = [med(i[1].get("p50_ns", [0]) or [0]) for i in items]
        p99 = [med(i[1].get("p99_ns", [0]) or [0]) for i in items]
        x = range(len(items))
        ax.bar([i - 0.2 for i in x], [v / 1000 for v in p50], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [v / 1000 for v in p99], width=0.4, label="p99")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("microseconds (median over repetitions)")
        ax.set_title(title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
        if not items:
            ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path = os.path.join(out_dir, "latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def shm_entries() -> set:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs, 3 repetitions (default)")
    mode.add_argument("--full", action="store_true", help="longer runs, more repetitions")
    ap.add_argument("--filter", default="", help="regex over C++ benchmark names and Python scenario ids")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"), help="where the C++ benchmarks are built")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench-results"))
    ap.add_argument("--min-time", type=float, default=0.0, help="override --benchmark_min_time")
    ap.add_argument("--reps", type=int, default=0, help="override the C++ repetitions")
    ap.add_argument("--skip-cpp", action="store_true")
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument("--skip-nats", action="store_true", help="skip N1-N3 (JetStream)")
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)

    t0 = time.monotonic()
    shm_before = shm_entries()
    machine = machine_info(args.build_dir)
    if args.skip_cpp:
        cpp, cerr = {"benchmarks": {}}, {s: "skipped (--skip-cpp)" for s in CPP_SUITES}
    else:
        cpp, cerr = run_cpp(args)
    if args.skip_python:
        py, perr = None, "skipped (--skip-python)"
        pool, poolerr = None, "skipped (--skip-python)"
    else:
        py, perr = run_python(args)
        pool, poolerr = run_pool(args)
    if args.skip_nats:
        nats, nerr = None, "skipped (--skip-nats)"
    else:
        nats, nerr = run_nats(args)
    if args.skip_python:
        dropin, derr = None, "skipped (--skip-python)"
    else:
        dropin, derr = run_python(args, "dropin.py", ())

    rows = compute_targets(cpp, cerr, py, perr, nats, nerr, dropin, derr, pool, poolerr)
    print_table(rows, machine)

    os.makedirs(args.out_dir, exist_ok=True)
    pngs: List[str] = []
    try:
        pngs = plots(args.out_dir, cpp, py)
    except Exception as e:  # a plot must never hide the numbers
        print(f"plots not written: {type(e).__name__}: {e}", file=sys.stderr)

    # Anything this run left in /dev/shm under our prefixes is removed and reported.
    leftovers = sorted(shm_entries() - shm_before)
    ours = [n for n in leftovers if n.startswith(OUR_SHM_PREFIXES)]
    for n in ours:
        try:
            os.unlink(os.path.join("/dev/shm", n))
        except OSError:
            pass
    if leftovers:
        print(f"warning: new entries in /dev/shm during the run: {leftovers} "
              f"(removed those with bench prefixes: {ours})", file=sys.stderr)

    doc = {
        "machine": machine,
        "mode": "full" if args.full else "quick",
        "filter": args.filter,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "targets": rows,
        "cpp": cpp,
        "cpp_errors": cerr,
        "python": py,
        "python_error": perr,
        "nats": nats,
        "nats_error": nerr,
        "python_dropin": dropin,
        "python_dropin_error": derr,
        "pool": pool,
        "pool_error": poolerr,
        "dev_shm_leftovers": leftovers,
    }
    path = os.path.join(args.out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {path}" + "".join(f", {p}" for p in pngs) + f" in {doc['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
