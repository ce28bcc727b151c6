"""FlatBuffers from Python at C++ speed, for any schema.

::

    import shmq, shmq.fb
    schema = shmq.fb.load("tick.fbs")            # or the schema's text; parsed in C++
    Tick = schema.Tick                           # a table (or struct); schema["ns.Tick"] too
    q = shmq.Queue()
    q.put_fb(Tick, {"sequence": 1, "bid": {"price": 101.25, "size": 3}})
    with q.get_fb(Tick) as t:                    # verified, read in place
        print(t.sequence, t.bid.price)

Writing (``Queue.put_fb``, ``SimpleQueue.put_fb``, ``JoinableQueue.put_fb``,
``Connection.send_fb``): the mapping (plus ``**fields``) is walked in C++ and the message is
built directly in the queue's shared memory. Tables and structs are mappings (a struct may also be
a sequence of all its fields in order, and a struct's absent fields are 0); strings are ``str``
(or bytes); vectors of scalars are lists or any buffer of the element type (a numpy array,
``array.array``, ``bytes`` for ``[ubyte]``), copied with one memcpy; vectors of tables and strings
are sequences; unions are ``(member_name, mapping)``; enums are names or integers. Absent or
``None`` fields, and scalars equal to their default, are left out. A wrong type, an unknown or
missing required field, or an integer out of range raises TypeError/ValueError naming the path
(``order.legs[2].symbol``) and nothing is sent. A finished buffer (bytes-like) instead of a mapping
is verified and sent as is.

Reading (``Queue.get_fb``, ``Connection.recv_fb``): a ``View`` of the message in shared memory.
Each attribute decodes one field when read: scalars as int/float/bool (enums as int; an absent
scalar reads as its default, an absent optional one as None), strings as ``str``, tables and
structs as Views, vectors of scalars as read-only numpy arrays in place (memoryviews when numpy is
not installed), vectors of tables, structs and strings as sequences, unions as the member's View
(``<union>_type`` gives the member's name); absent strings, tables, vectors and unions read as
None. ``view.to_dict()`` decodes everything into plain Python objects (the form ``put_fb`` takes).
The view is a context manager: after its ``with`` block (or ``release()``) every view of the
message raises ValueError; the message returns to the queue then, or when the last numpy array
made from it goes.

Verification: every received message is checked against its schema by FlatBuffers' verifier
(bounds, offsets, nesting at most 64 deep, at most a million tables) before any field is read. A
message of another type (the prefix's type identity: the schema's ``file_identifier`` for its
``root_type``, a hash of the name for other tables) or a corrupt one is dropped and raises
``VerifyError``; the queue stays usable. ``get_fb(T, verify=False)`` checks only the type
identity: use it only with peers you trust (the same program on both ends), since a corrupt
message could then make field access read out of bounds.

Interop: messages are plain FlatBuffers with shmq's record prefix, so C++ ``shmq::fb::Reader<T>``
/ ``Writer<T>`` and ``flatc --python`` classes (``q.put_flatbuffer(builder)``, ``q.get_view()``)
read and write the same messages. ``Type.build(mapping)`` gives the finished buffer as bytes;
``Type.from_bytes(buf)`` a View of one. ``Type.build_record(mapping)`` and
``Type.from_record(payload, kind=2)`` do the same for a message as shmq's queues carry it (the
8-byte prefix, then the buffer; the form shmq.nats publishes), with get_fb's checks.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from . import _shmq

__all__ = ["load", "Schema", "Type", "View", "Vector", "SchemaError", "VerifyError", "to_dict",
           "release"]

Type = _shmq.FbType
View = _shmq.FbView
Vector = _shmq.FbVector


class SchemaError(ValueError):
    """A schema that does not parse. ``message`` is the parser's complaint, ``file``, ``line`` and
    ``column`` where it was (``file`` is "" for text without a file name; 0 when unknown)."""

    def __init__(self, text: str, message: str = "", file: str = "", line: int = 0,
                 column: int = 0) -> None:
        super().__init__(text)
        self.message = message or text
        self.file = file
        self.line = line
        self.column = column


class VerifyError(ValueError):
    """A received message that is not a valid message of the requested type (another type, not a
    FlatBuffers message, or rejected by the verifier). It was taken off the channel and dropped."""


_shmq.fb_set_errors(SchemaError, VerifyError)


def _looks_like_text(s: str) -> bool:
    return "\n" in s or "{" in s or ";" in s


def load(path_or_text: Union[str, bytes, "os.PathLike[str]"], *,
         include_dirs: Iterable[Union[str, "os.PathLike[str]"]] = ()) -> "Schema":
    """Parses a FlatBuffers schema (a ``.fbs`` path, or the schema's text) with libflatbuffers'
    own parser, at run time (no ``flatc`` needed). ``include`` statements are resolved next to
    the including file, then in ``include_dirs``. Raises SchemaError with the parser's line and
    message if it does not parse, FileNotFoundError for a missing file."""
    dirs = [os.fspath(d) for d in include_dirs]
    if isinstance(path_or_text, bytes):
        path_or_text = path_or_text.decode()
    if isinstance(path_or_text, os.PathLike) or not _looks_like_text(path_or_text):
        native = _shmq.fb_load(os.fspath(path_or_text), True, dirs)
    else:
        native = _shmq.fb_load(path_or_text, False, dirs)
    return Schema(native)


class _Namespace:
    """``schema.a.b`` while ``schema.a.b.T`` is spelled out."""

    __slots__ = ("_schema", "_prefix")

    def __init__(self, schema: "Schema", prefix: str) -> None:
        self._schema = schema
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return self._schema._resolve(f"{self._prefix}.{name}")

    def __repr__(self) -> str:
        return f"<shmq.fb namespace {self._prefix}>"


class Schema:
    """A loaded schema. ``schema.Name`` (or ``schema["ns.Name"]``, or ``schema.ns.Name``) is the
    ``Type`` of a table or struct; ``types`` lists every name, ``root`` is the root_type's Type
    (or None), ``enums`` maps each enum's name to its (name, value) pairs."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._types: Dict[str, Any] = {}
        names = native.type_names()
        self._names = tuple(names)
        self._namespaces = {n.rsplit(".", 1)[0] for n in names if "." in n}
        self._namespaces |= {p for n in self._namespaces for p in _prefixes(n)}

    def _type(self, name: str) -> Optional[Any]:
        t = self._types.get(name)
        if t is None:
            t = self._native.type(name)
            if t is not None:
                t = self._types.setdefault(t.name, t)  # one Type object per type
                self._types[name] = t
        return t

    def _resolve(self, name: str) -> Any:
        t = self._type(name)
        if t is not None:
            return t
        if name in self._namespaces:
            return _Namespace(self, name)
        raise AttributeError(f"the schema has no table, struct or namespace named {name!r}"
                             f" (it has: {', '.join(self._names)})")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._resolve(name)

    def __getitem__(self, name: str) -> Any:
        t = self._type(name)
        if t is None:
            raise KeyError(name)
        return t

    def __contains__(self, name: str) -> bool:
        return self._type(name) is not None

    @property
    def types(self) -> Tuple[str, ...]:
        """Fully qualified names of every table and struct."""
        return self._names

    @property
    def root(self) -> Optional[Any]:
        """The Type of the schema's root_type, or None."""
        r = self._native.root
        return None if r is None else self._type(r)

    @property
    def file_identifier(self) -> str:
        return self._native.file_identifier

    @property
    def enums(self) -> Dict[str, List[Tuple[str, int]]]:
        return self._native.enums()

    def __repr__(self) -> str:
        src = self._native.source_name or "<text>"
        return f"<shmq.fb.Schema {src}: {', '.join(self._names)}>"


def _prefixes(ns: str) -> List[str]:
    parts = ns.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def to_dict(view: Any) -> Dict[str, Any]:
    """``view.to_dict()``, also for a table with a field named ``to_dict``."""
    return View.to_dict(view)


def release(view: Any) -> None:
    """``view.release()``, also for a table with a field named ``release``."""
    View.release(view)
