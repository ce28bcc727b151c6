"""The C++ programs in examples/, built against the *installed* library as a user would build
them: `meson install --destdir` into a temporary directory, then `c++ ... $(pkg-config --cflags
--libs shmq)` with that directory as the pkg-config sysroot. A header or library the install
forgets, or a shmq.pc that does not describe it, fails here.

The build directory comes from $SHMQ_BUILD_DIR (default: build/ under the repository root), and
must be built already (`make build`). No test asserts a duration.
"""

import glob
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TIMEOUT = 120  # seconds; a hang fails instead of blocking


def build_dir():
    d = Path(os.environ.get("SHMQ_BUILD_DIR", "build"))
    return d if d.is_absolute() else REPO / d


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The library installed under a temporary root; yields (root, environment for pkg-config)."""
    if not (build_dir() / "build.ninja").exists():
        pytest.fail(f"no configured build in {build_dir()}: run `make build` first")
    root = tmp_path_factory.mktemp("install")
    meson = Path(sys.executable).with_name("meson")
    run([str(meson) if meson.exists() else "meson", "install", "-C", str(build_dir()),
         "--no-rebuild", "--quiet", "--destdir", str(root), "--tags", "devel"])
    pcs = glob.glob(str(root / "**" / "pkgconfig" / "shmq.pc"), recursive=True)
    assert pcs, "the install has no shmq.pc"
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = os.path.dirname(pcs[0])
    env["PKG_CONFIG_SYSROOT_DIR"] = str(root)  # the .pc names the real prefix; we installed below root
    libs = glob.glob(str(root / "**" / "libshmq.so"), recursive=True)
    assert libs, "the install has no libshmq.so"
    env["SHMQ_LIBDIR"] = os.path.dirname(libs[0])
    return root, env


def pkg_config(env):
    out = run(["pkg-config", "--cflags", "--libs", "shmq"], env=env).stdout.split()
    # Only the temporary root may provide shmq itself: the repository is not on any path.
    assert any(f.startswith("-I") and f.startswith("-I" + env["PKG_CONFIG_SYSROOT_DIR"]) for f in out), out
    assert not any(str(REPO) in f for f in out), out
    return out


@pytest.fixture(scope="module")
def programs(installed, tmp_path_factory):
    """The three examples, compiled in parallel; a dict name -> path."""
    root, env = installed
    flags = pkg_config(env)
    out = tmp_path_factory.mktemp("bin")
    # The FlatBuffers example brings its own schema, compiled by flatc as its user would.
    run(["flatc", "--cpp", "-o", str(out), str(EXAMPLES / "quote.fbs")])
    cxx = os.environ.get("CXX", "c++")

    def compile_one(name):
        exe = out / name
        run([cxx, "-std=c++20", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(out),
             str(EXAMPLES / f"{name}.cpp"), "-o", str(exe), *flags,
             f"-Wl,-rpath,{env['SHMQ_LIBDIR']}"], env=env, cwd=str(out))
        return name, str(exe)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(compile_one, ["pipe_pubsub", "queue_workers", "fb_pipe"]))


def test_the_install_has_the_public_headers(installed):
    root, _ = installed
    for header in ["shmq/core/spsc_format.hpp", "shmq/core/mpmc_format.hpp",
                   "shmq/core/message_kind.hpp", "shmq/shm/pipe.hpp", "shmq/shm/queue.hpp",
                   "shmq/shm/gc.hpp", "shmq/serialize/writer.hpp", "shmq/schema/tick_generated.h"]:
        assert glob.glob(str(root / "**" / "include" / header), recursive=True), header


def test_pipe_publisher_and_subscriber_meet_by_name(programs):
    name = f"t-ex-{os.getpid()}-prices"
    sub = subprocess.Popen([programs["pipe_pubsub"], "subscribe", name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pub = run([programs["pipe_pubsub"], "publish", name, "1000"])
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        if os.path.exists(f"/dev/shm/shmq.{name}"):
            os.unlink(f"/dev/shm/shmq.{name}")
    assert sub.returncode == 0, err
    assert pub.stdout.strip() == "published 1000 messages"
    lines = out.splitlines()
    # every 250th message is printed, then the count
    assert lines == ["price 0 100.00", "price 250 162.50", "price 500 225.00", "price 750 287.50",
                     "received 1000 messages"]
    assert not os.path.exists(f"/dev/shm/shmq.{name}"), "Pipe::unlink left the pipe"


def test_queue_worker_pool_answers_every_job_once(programs):
    p = run([programs["queue_workers"], "4", "1000"])
    assert p.stdout.strip() == "4 workers squared 1..1000: sum 333833500"


def test_flatbuffers_quotes_cross_a_pipe_verified(programs):
    p = run([programs["fb_pipe"], "200"])
    assert "writer: sent 200 quotes" in p.stdout
    assert "reader: 200 of 200 quotes intact" in p.stdout
