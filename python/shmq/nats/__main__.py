"""python -m shmq.nats bridge QUEUE --stream S --direction out|in --servers URL [--token T] ...

Runs one bridge between the local shmq queue QUEUE (opened by name) and the JetStream stream S
until SIGTERM or SIGINT, then exits 0 after finishing (or giving back) its current batch.
Exit codes: 0 stopped by a signal, 1 error (in words on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shmq.nats",
                                description="shmq queues across hosts through NATS JetStream")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bridge", help="move messages between a local shmq queue and a stream")
    b.add_argument("queue", help="the local shmq queue's name (shmq.Queue(name=...))")
    b.add_argument("--stream", required=True, help="the JetStream stream")
    b.add_argument("--direction", required=True, choices=("out", "in"),
                   help="out: local queue -> stream; in: stream -> local queue")
    b.add_argument("--servers", default="nats://127.0.0.1:4222",
                   help="NATS server URL(s), comma-separated (default %(default)s)")
    b.add_argument("--subject", default=None, help="the stream's subject (default shmq.STREAM)")
    b.add_argument("--durable", default=None, help="the shared consumer (default shmq-STREAM)")
    b.add_argument("--token", default=None, help="NATS auth token")
    b.add_argument("--user", default=None, help="NATS user")
    b.add_argument("--password", default=None, help="NATS password")
    b.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    b.add_argument("--tls-ca", default=None, help="TLS with this CA file")
    b.add_argument("--batch", type=int, default=1024, help="messages per JetStream message")
    b.add_argument("--max-bytes", type=int, default=512 * 1024,
                   help="bytes per JetStream message (below the server's max_payload)")
    b.add_argument("--ack-wait", type=float, default=30.0,
                   help="seconds before an unacknowledged message is redelivered")
    b.add_argument("--name", default=None,
                   help="the bridge's name in the local queue (direction in; default in.STREAM)")
    b.add_argument("--verbose", "-v", action="store_true",
                   help="progress and counters on stderr every second")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tls = None
    if args.tls or args.tls_ca:
        import ssl
        tls = ssl.create_default_context(cafile=args.tls_ca)
    try:
        from . import Bridge
        bridge = Bridge(args.queue, args.stream, args.direction, servers=args.servers,
                        subject=args.subject, durable=args.durable, token=args.token,
                        user=args.user, password=args.password, tls=tls, batch=args.batch,
                        max_bytes=args.max_bytes, ack_wait=args.ack_wait, name=args.name,
                        verbose=args.verbose)
    except (OSError, ValueError, TypeError) as e:
        print(f"shmq.nats bridge: {e}", file=sys.stderr)
        return 1
    try:
        bridge.run(stop)
    except (OSError, ValueError) as e:
        print(f"shmq.nats bridge: {e}", file=sys.stderr)
        return 1
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
