"""Shared ctypes objects with multiprocessing.sharedctypes' API: Value, Array, RawValue,
RawArray, synchronized and copy.

The ctypes object is made with ``from_buffer`` over a block of a shmq arena, so reading and
writing it is plain ctypes on shared memory; ``Value``/``Array`` wrap it with a lock (by default a
shmq RLock in the same block), taken for each access as multiprocessing does, except that the
wrapper's ``value`` is read and written by native code. The objects pickle by name (``Process``
under fork, spawn and forkserver, and shmq queues); the memory lives while a process holds one.
"""

from __future__ import annotations

import copyreg
import ctypes
from multiprocessing.sharedctypes import typecode_to_type
from typing import Any, Dict, Optional, Tuple

from . import _shmq
from .synchronize import RLock, _open

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized", "Synchronized",
           "SynchronizedArray", "SynchronizedString", "SynchronizedBase"]

_pickled_types: set = set()


def _reduce_ctype(obj: Any) -> Any:
    where = getattr(obj, "_shmq_block", None)
    if where is None:  # an ordinary ctypes object of a type we also share
        return obj.__reduce__()
    block, offset = where
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, block.handle, offset, len(obj))
    return _rebuild_ctype, (type(obj), block.handle, offset, None)


def _adopt(obj: Any, block: Any, offset: int) -> Any:
    """Marks `obj` (made over `block`) as shared: pickling it sends its address, not its bytes."""
    obj._shmq_block = (block, offset)
    t = type(obj)
    if t not in _pickled_types:
        copyreg.pickle(t, _reduce_ctype)
        _pickled_types.add(t)
    return obj


def _rebuild_ctype(type_: Any, handle: Tuple[str, int, int, int], offset: int, length: Optional[int]) -> Any:
    if length is not None:
        type_ = type_ * length
    block = _open(handle)
    return _adopt(type_.from_buffer(block, offset), block, offset)


def _new_value(type_: Any, with_lock: bool = False) -> Tuple[Any, Any]:
    """A zeroed ctypes object of `type_` in a new block (after room for an RLock if asked)."""
    offset = _shmq.SYNC_VALUE_LOCK_BYTES if with_lock else 0
    block = _shmq.sync_alloc(_shmq.SYNC_VALUE, offset + ctypes.sizeof(type_))
    return _adopt(type_.from_buffer(block, offset), block, offset), block


def _type_of(typecode_or_type: Any) -> Any:
    return typecode_to_type.get(typecode_or_type, typecode_or_type)


def _array_type(typecode_or_type: Any, size_or_initializer: Any) -> Tuple[Any, Any]:
    type_ = _type_of(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return type_ * size_or_initializer, None
    init = list(size_or_initializer)
    return type_ * len(init), init


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock."""
    obj, _ = _new_value(_type_of(typecode_or_type))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, without a lock."""
    type_, init = _array_type(typecode_or_type, size_or_initializer)
    obj, _ = _new_value(type_)
    if init is not None:
        obj.__init__(*init)
    return obj


def _with_lock(type_: Any, init: Any, lock: Any, ctx: Any) -> Any:
    if lock is False:
        obj, _ = _new_value(type_)
        init(obj)
        return obj
    if lock is True or lock is None:
        obj, block = _new_value(type_, with_lock=True)
        lock = RLock._over(block, 0)
    else:
        if not hasattr(lock, "acquire"):
            raise AttributeError(f"{lock!r} has no method 'acquire'")
        obj, _ = _new_value(type_)
    init(obj)
    return synchronized(obj, lock, ctx=ctx)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes object in shared memory with a lock (``lock=True``: a new RLock; ``False``: none,
    like RawValue; or any object with ``acquire``/``release``)."""
    return _with_lock(_type_of(typecode_or_type), lambda obj: obj.__init__(*args), lock, ctx)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes array in shared memory with a lock (see Value)."""
    type_, init = _array_type(typecode_or_type, size_or_initializer)
    return _with_lock(type_, lambda obj: obj.__init__(*init) if init is not None else None, lock, ctx)


def copy(obj: Any) -> Any:
    """A shared copy of the ctypes object `obj`."""
    new_obj, _ = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """Wraps a ctypes object so that every access takes `lock` (a new RLock if None)."""
    assert not isinstance(obj, SynchronizedBase), "object already synchronized"
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    cls = type(obj)
    try:
        scls = _class_cache[cls]
    except KeyError:
        names = [field[0] for field in cls._fields_]
        d = {name: _make_property(name) for name in names}
        scls = _class_cache[cls] = type("Synchronized" + cls.__name__, (SynchronizedBase,), d)
    return scls(obj, lock)


_class_cache: Dict[type, type] = {}


def _make_property(name: str) -> property:
    def fget(self: Any) -> Any:
        with self:
            return getattr(self._obj, name)

    def fset(self: Any, value: Any) -> None:
        with self:
            setattr(self._obj, name, value)

    return property(fget, fset)


class SynchronizedBase(_shmq.SynchronizedBase):
    """A ctypes object with a lock: ``get_obj()``, ``get_lock()``, ``acquire``/``release``, a
    context manager (the lock's)."""

    def __new__(cls, obj: Any, lock: Any = None, ctx: Any = None) -> "SynchronizedBase":
        return super().__new__(cls, obj, RLock() if lock is None else lock)

    @property
    def acquire(self) -> Any:
        return self._lock.acquire

    @property
    def release(self) -> Any:
        return self._lock.release

    def __reduce__(self) -> Any:
        return synchronized, (self._obj, self._lock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(SynchronizedBase):
    """A simple ctypes value: ``.value`` reads and writes it with the lock held."""


# Item types whose slices a memoryview reads as ctypes does (same Python objects), only faster.
_FAST_SLICE_FORMATS = frozenset("bBhHiIlLqQfd")


def _slice_view(obj: Any) -> Any:
    """A memoryview of the array's items when it can serve slices, else None."""
    try:
        fmt = memoryview(obj).format.lstrip("<>=!@")
    except TypeError:
        return None
    if fmt not in _FAST_SLICE_FORMATS or ctypes.sizeof(obj._type_) != ctypes.sizeof(obj) // max(len(obj), 1):
        return None
    return memoryview(obj).cast("B").cast(fmt)


class SynchronizedArray(SynchronizedBase):
    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            view = self.__dict__.get("_view", False)
            if view is False:
                view = self.__dict__["_view"] = _slice_view(self._obj)
            if view is not None:
                with self:
                    return view[i].tolist()
        with self:
            return self._obj[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        with self:
            self._obj[i] = value


class SynchronizedString(SynchronizedArray):
    raw = _make_property("raw")
