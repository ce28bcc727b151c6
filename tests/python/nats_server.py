"""A private nats-server with JetStream for the shmq.nats tests and benchmarks: a free loopback
port, a temporary store, stopped (and restartable on the same port and store) by its owner.
Nothing here talks to any address but 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(self, token: Optional[str] = None, store: Optional[str] = None) -> None:
        exe = shutil.which("nats-server") or ("/usr/sbin/nats-server"
                                               if os.path.exists("/usr/sbin/nats-server") else None)
        if exe is None:
            raise RuntimeError("nats-server is not installed: run tools/setup.sh (Debian's nats-server)")
        self.exe = exe
        self.token = token
        self.port = _free_port()
        self._own_store = store is None
        self.store = store or tempfile.mkdtemp(prefix="shmq-nats-")
        self.proc: Optional[subprocess.Popen] = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        args: List[str] = [self.exe, "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.token:
            args += ["--auth", self.token]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nats-server exited: " + self.proc.stderr.read().decode()[-500:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
