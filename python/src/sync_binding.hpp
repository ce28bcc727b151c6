// What the synchronization bindings share (sync_lock.cpp: the raw CPython types on the hot path,
// Lock/RLock and the Value wrapper; sync_binding.cpp: blocks, semaphores, events, conditions,
// barriers and the module functions).
//
// Objects live in arena blocks (shm/arena.hpp). A Block (a nanobind class) holds one reference
// of this process to a block and exports the block's bytes through the buffer protocol, so a
// ctypes object made with from_buffer() keeps it alive; locks and cores hold their Block too.
// Threads: the GIL guards the Python objects; the shared words are the core algorithms' business.
// Fork: the arena layer closes the parent's participant descriptors in a forked child and joins
// each arena again, as the child, on its first use (so a child that never touches an object takes
// no participant slot of its arena).
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <optional>
#include <string>

#include "shmq/shm/arena.hpp"
#include "shmq/shm/sync.hpp"
#include "support.hpp"

namespace shmq::py {

// Kinds as Python names them (the block's SyncType, plus where in it the object lies).
struct Block {
  shmq::SyncBlock block;
  int exports = 0;  // memoryviews alive over its bytes
};

// The raw type behind shmq.Lock and shmq.RLock (a Python subclass adds the rest).
struct LockObject {
  PyObject_HEAD
  PyObject* block;         // the Block that keeps the arena block alive
  std::uint32_t offset;    // where the MutexState lies in the block
  bool recursive;
  bool ready;              // constructed (tp_new succeeded)
  shmq::Mutex mutex;       // used when !recursive
  shmq::RecursiveMutex rmutex;  // used when recursive
  PyObject* weakrefs;
};

extern PyTypeObject* g_lock_type;
bool is_lock(PyObject* o);

// Acquire/release as the Python methods do, for the Value wrapper and Condition.
bool lock_acquire(LockObject* l, bool block, std::optional<double> timeout);  // Python error: throws
void lock_release(LockObject* l);                                             // Python error: throws
// Whether the calling thread holds it (multiprocessing's _is_mine()).
bool lock_is_mine(LockObject* l);

// Emits shmq.OwnerDiedWarning for a lock taken over from a dead holder; if the warning is an
// error (a filter), gives the lock back and throws.
void warn_owner_died(LockObject* l, std::uint32_t pid);

void bind_sync_locks(nb::module_& m);  // sync_lock.cpp
void bind_sync(nb::module_& m);        // sync_binding.cpp
void sync_close_all();

}  // namespace shmq::py
