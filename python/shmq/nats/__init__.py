"""shmq.nats: shmq queues across hosts, carried by NATS JetStream (the optional extra
``pip install 'shmq[nats]'``, which brings nats-py; the server is ``nats-server -js``).

* ``Queue(stream, servers=..., ...)``: multiprocessing's Queue interface over a JetStream
  work-queue stream shared by producers and consumers on any host (at-least-once).
* ``Bridge(local, stream, direction="out"|"in", ...)`` and ``python -m shmq.nats bridge``: move
  messages between a local shmq.Queue and a stream in batches; killed at any moment and
  restarted, a bridge loses nothing and delivers nothing twice to the local consumers.
"""

from ._queue import Queue, StreamConfigError
from ._bridge import Bridge, BridgeStats

__all__ = ["Queue", "Bridge", "BridgeStats", "StreamConfigError"]
