"""How shmq messages look inside JetStream messages (one home for the format).

A JetStream message is one of:

* no ``Shmq-Kind`` / ``Shmq-Batch`` header: one message of raw bytes (kind 0). Anything a plain
  NATS client publishes arrives this way, so a shmq.nats.Queue reads other publishers' data;
* ``Shmq-Kind: K``: one message of shmq kind K (1 pickle, 2 FlatBuffers, 256+ user-defined; the
  kinds of shmq.Queue), its payload exactly as a shmq.Queue record holds it (python/src/codec.hpp:
  a FlatBuffers payload is the 8-byte prefix of serialize/prefix.hpp, then the buffer), so a
  bridge moves it between a stream and a local queue unchanged;
* ``Shmq-Batch: N``: N messages packed by a bridge in the batch format of
  python/src/batch_format.hpp (packed and parsed in C++). A bridge moves batches because the
  per-message cost of Python's asyncio client, not the network, bounds a NATS client here.

Every byte of a received message is untrusted: lengths are checked against the payload and a
malformed batch raises ValueError; nothing is unpickled unless the reader's serializer allows it.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable, List, Optional, Tuple

from .. import _shmq

KIND_BYTES = 0
KIND_PICKLE = 1
KIND_FLATBUFFERS = 2

HDR_KIND = "Shmq-Kind"
HDR_BATCH = "Shmq-Batch"
HDR_MSG_ID = "Nats-Msg-Id"

SERIALIZERS = ("pickle", "bytes")


def check_serializer(serializer: str) -> bool:
    """True when only bytes-like objects may travel (serializer="bytes")."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"serializer must be one of {SERIALIZERS}, not {serializer!r}")
    return serializer == "bytes"


def encode(obj: Any, raw_only: bool) -> Tuple[bytes, int]:
    """(payload, kind) for one object: bytes-like raw, anything else pickle protocol 5."""
    if isinstance(obj, bytes):
        return obj, KIND_BYTES
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj), KIND_BYTES
    if raw_only:
        raise TypeError(f"serializer='bytes' sends only bytes-like objects, not {type(obj).__name__}")
    return pickle.dumps(obj, protocol=5), KIND_PICKLE


def headers_for(kind: int, msg_id: Optional[str]) -> Optional[dict]:
    h = {}
    if kind != KIND_BYTES:
        h[HDR_KIND] = str(kind)
    if msg_id is not None:
        h[HDR_MSG_ID] = msg_id
    return h or None


def decode(payload: bytes, kind: int, raw_only: bool) -> Any:
    """The object a message stands for, as shmq.Queue.get decodes a record: a pickle unpickled,
    a FlatBuffers message as its buffer (without the prefix; ValueError if the prefix is
    malformed), any other kind as its bytes. With raw_only nothing is unpickled: a pickle comes
    back as its bytes, which the caller may inspect but need not run."""
    if kind == KIND_BYTES or (kind == KIND_PICKLE and raw_only):
        return payload
    return _shmq.decode_record(payload, kind)


def pack(records: Iterable[Tuple[bytes, int]]) -> bytes:
    """A batch payload from (bytes, kind) pairs."""
    return _shmq.batch_pack(list(records))


def unpack(payload: bytes, count: int) -> List[Tuple[bytes, int]]:
    """The (bytes, kind) records of a batch payload; ValueError if it is not exactly `count`
    well-formed records."""
    out = _shmq.batch_records(bytes(payload))
    if len(out) != count:
        raise ValueError(f"shmq batch: {len(out)} records where the header says {count}")
    return out


def records_of(headers: Optional[dict], payload: bytes) -> List[Tuple[bytes, int]]:
    """The shmq messages one JetStream message carries (see the module docstring)."""
    if not headers:
        return [(payload, KIND_BYTES)]
    batch = headers.get(HDR_BATCH)
    if batch is not None:
        try:
            count = int(batch)
        except ValueError:
            raise ValueError(f"shmq batch: bad {HDR_BATCH} header {batch!r}") from None
        return unpack(payload, count)
    kind = headers.get(HDR_KIND)
    if kind is None:
        return [(payload, KIND_BYTES)]
    try:
        k = int(kind)
    except ValueError:
        raise ValueError(f"shmq message: bad {HDR_KIND} header {kind!r}") from None
    if not 0 <= k < 1 << 16:
        raise ValueError(f"shmq message: kind {k} out of range")
    return [(payload, k)]
