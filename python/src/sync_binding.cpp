// Synchronization objects for Python: arena blocks with the buffer protocol (ctypes lays Value
// and Array over them), and the cores of Semaphore, Event, Condition and Barrier. Every blocking
// call sleeps in GIL-free slices and checks for signals between them (support.hpp).
#include "sync_binding.hpp"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <string>
#include <tuple>

namespace shmq::py {

namespace {

PyObject* g_broken_barrier = nullptr;  // threading.BrokenBarrierError

[[noreturn]] void raise_broken() { throw_py(g_broken_barrier, ""); }

[[noreturn]] void raise_status(const char* what, Status s) {
  if (s == Status::closed)
    throw_py(PyExc_OSError, std::string("shmq: this process cannot join the ") + what +
                                "'s arena (every participant slot is taken)");
  throw_py(PyExc_OSError,
           std::string("shmq: the ") + what + "'s shared state is " + std::string(shmq::status_name(s)));
}

template <class T>
T unwrap(shmq::Result<T> r) {
  if (!r) throw_error(r.error());
  return std::move(*r);
}

// ---- Block -------------------------------------------------------------------------------------

int block_getbuffer(PyObject* self, Py_buffer* buf, int flags) {
  Block* b = nb::inst_ptr<Block>(self);
  if (!b->block.valid()) {
    PyErr_SetString(PyExc_ValueError, "the shmq block was released");
    return -1;
  }
  if (PyBuffer_FillInfo(buf, self, b->block.data(), static_cast<Py_ssize_t>(b->block.bytes()), 0, flags) != 0)
    return -1;
  b->exports += 1;
  return 0;
}

void block_releasebuffer(PyObject* self, Py_buffer*) { nb::inst_ptr<Block>(self)->exports -= 1; }

PyType_Slot block_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(block_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(block_releasebuffer)},
    {0, nullptr}};

Block make_block(shmq::SyncBlock b) {
  Block out;
  out.block = std::move(b);
  return out;
}

shmq::SyncBlock share(const Block& b) {
  if (!b.block.valid()) throw_py(PyExc_ValueError, "the shmq block was released");
  return b.block.share();
}

shmq::SyncType checked_kind(std::uint32_t kind) {
  if (kind > static_cast<std::uint32_t>(shmq::SyncType::value)) throw_py(PyExc_ValueError, "unknown block kind");
  return static_cast<shmq::SyncType>(kind);
}

Block alloc(std::uint32_t kind, std::uint64_t nbytes) {
  return make_block(unwrap(shmq::Arena::allocate_anywhere(checked_kind(kind), nbytes)));
}

Block open_block(const std::string& arena, std::uint32_t index, std::uint32_t generation, std::uint32_t kind) {
  return make_block(unwrap(shmq::Arena::open_block({arena, index, generation}, checked_kind(kind))));
}

// ---- Semaphore -----------------------------------------------------------------------------------

Block new_semaphore(std::uint32_t value, std::uint32_t bound, bool track_units) {
  auto s = unwrap(shmq::Semaphore::create({.value = value, .bound = bound, .track_units = track_units}));
  return make_block(s.block().share());
}

struct SemaphoreCore {
  explicit SemaphoreCore(const Block& b) : sem(unwrap(shmq::Semaphore::from_block(share(b)))) {}

  bool acquire(bool block, std::optional<double> timeout) {
    const Deadline d = make_deadline(block, timeout);
    Status s = sem.acquire(Deadline::now());
    if (s == Status::timeout && !is_poll(d))
      s = block_in_slices([&](Deadline slice) { return sem.acquire(slice); }, d);
    if (s == Status::ok) return true;
    if (s == Status::timeout || s == Status::interrupted) return false;
    raise_status("semaphore", s);
  }
  void release(std::uint32_t n) {
    const Status s = sem.release(n);
    if (s == Status::full) throw_py(PyExc_ValueError, "semaphore or lock released too many times");
    if (s != Status::ok) raise_status("semaphore", s);
  }

  shmq::Semaphore sem;
};

// ---- Event ---------------------------------------------------------------------------------------

Block new_event() { return make_block(unwrap(shmq::Event::create()).block().share()); }

struct EventCore {
  explicit EventCore(const Block& b) : ev(unwrap(shmq::Event::from_block(share(b)))) {}
  bool wait(std::optional<double> timeout) {
    if (ev.is_set()) return true;
    const Deadline d = make_deadline(true, timeout);
    if (is_poll(d)) return false;
    return block_in_slices([&](Deadline slice) { return ev.wait(slice); }, d) == Status::ok;
  }
  shmq::Event ev;
};

// ---- Condition -----------------------------------------------------------------------------------

Block new_condition() { return make_block(unwrap(shmq::Condition::create()).block().share()); }

// Takes `l` back after a condition wait at `depth` levels, whatever signals arrive meanwhile
// (they are handled after the wait, as threading does). ok or owner_died.
Status relock(LockObject* l, std::uint32_t depth) {
  Status s;
  for (;;) {
    {
      nb::gil_scoped_release nogil;
      s = l->recursive ? l->rmutex.lock(Deadline::in(kSlice)) : l->mutex.lock(Deadline::in(kSlice));
    }
    if (s != Status::timeout && s != Status::interrupted) break;
  }
  if (s != Status::ok && s != Status::owner_died) raise_status("lock", s);
  if (l->recursive) {
    l->rmutex.word().adopt(shmq::current_thread_id(), depth);
  } else {  // relaxed: the holding thread, for _is_mine() (see sync_lock.cpp).
    reinterpret_cast<shmq::MutexState*>(nb::inst_ptr<Block>(l->block)->block.data() + l->offset)
        ->m.owner_thread.store(shmq::current_thread_id(), std::memory_order_relaxed);
  }
  return s;
}

struct ConditionCore {
  explicit ConditionCore(const Block& b) : cond(unwrap(shmq::Condition::from_block(share(b)))) {}

  // The caller holds `lock` (checked by the Python class). Returns whether it was notified.
  bool wait(nb::handle lock, std::optional<double> timeout) {
    if (!is_lock(lock.ptr())) throw_py(PyExc_TypeError, "a shmq Condition needs a shmq Lock or RLock");
    auto* l = reinterpret_cast<LockObject*>(lock.ptr());
    const int record = cond.enter();
    if (record < 0) {
      if (cond.holder() == kNoHolder) raise_status("condition", Status::closed);
      throw_py(PyExc_RuntimeError, "too many waiters on this Condition (at most " +
                                       std::to_string(shmq::core::kConditionWaiters) + ")");
    }
    std::uint32_t depth = 1;
    if (l->recursive) {
      depth = l->rmutex.word().release_all();
    } else {
      l->mutex.unlock_any();
    }
    const Deadline d = make_deadline(true, timeout);
    bool failed = false;  // a signal handler raised: relock, leave, then re-raise
    for (;;) {
      Status got;
      {
        nb::gil_scoped_release nogil;
        got = cond.await(record, d.capped(kSlice));
      }
      if (got != Status::timeout && got != Status::interrupted) break;
      if (PyErr_CheckSignals() != 0) {
        failed = true;
        break;
      }
      if (d.expired()) break;
    }
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    if (failed) PyErr_Fetch(&type, &value, &tb);
    const Status r = relock(l, depth);
    const bool notified = cond.leave(record);
    if (failed) {
      PyErr_Restore(type, value, tb);
      throw nb::python_error();
    }
    if (r == Status::owner_died) warn_owner_died(l, shmq::Mutex::last_dead_pid());
    return notified;
  }
  std::uint32_t notify(std::uint32_t n) { return cond.notify(n); }
  std::uint32_t notify_all() { return cond.notify_all(); }

  shmq::Condition cond;
};

// ---- Barrier -------------------------------------------------------------------------------------

Block new_barrier(std::uint32_t parties) {
  return make_block(unwrap(shmq::Barrier::create(parties)).block().share());
}

struct BarrierCore {
  explicit BarrierCore(const Block& b) : bar(unwrap(shmq::Barrier::from_block(share(b)))) {}

  // threading.Barrier.wait: the index, or BrokenBarrierError. A timeout or a signal that raises
  // breaks the barrier; an exception of the action breaks it and propagates.
  std::uint32_t wait(std::optional<double> timeout, nb::handle action) {
    shmq::core::FutexBarrier& b = bar.core();
    const std::uint32_t h = bar.holder();
    if (h == kNoHolder) raise_status("barrier", Status::closed);
    const shmq::core::HolderRegistry& reg = bar.reg();
    const Deadline d = make_deadline(true, timeout);
    shmq::core::BarrierTicket t{};
    Status s;
    for (;;) {  // arrive (not counted in until it returns ok)
      {
        nb::gil_scoped_release nogil;
        s = b.arrive(h, d.capped(kSlice), reg, t);
      }
      if (s != Status::timeout && s != Status::interrupted) break;
      check_signals();
      if (d.expired()) {
        b.abort();
        raise_broken();
      }
    }
    if (s == Status::broken) raise_broken();
    if (s != Status::ok) raise_status("barrier", s);
    if (t.last) {
      bool raised = false;
      s = b.trip(t, [&] {
        if (action.is_none()) return true;
        PyObject* r = PyObject_CallNoArgs(action.ptr());
        if (r == nullptr) {
          raised = true;
          return false;
        }
        Py_DECREF(r);
        return true;
      });
      if (raised) throw nb::python_error();
      if (s == Status::broken) raise_broken();
      return t.index;
    }
    for (;;) {  // counted in: wait for the round to end
      {
        nb::gil_scoped_release nogil;
        s = b.await(t, h, d.capped(kSlice), reg);
      }
      if (s != Status::timeout && s != Status::interrupted) break;
      if (PyErr_CheckSignals() != 0) {
        b.abort();  // the others must not wait for a party that left
        throw nb::python_error();
      }
      if (d.expired()) {
        b.abort();
        raise_broken();
      }
    }
    if (s == Status::ok) return t.index;
    if (s == Status::broken) raise_broken();
    raise_status("barrier", s);
  }

  shmq::Barrier bar;
};

}  // namespace

void sync_close_all() { shmq::leave_arenas_at_exit(); }

void bind_sync(nb::module_& m) {
  nb::object broken = nb::module_::import_("threading").attr("BrokenBarrierError");
  g_broken_barrier = broken.release().ptr();
  bind_sync_locks(m);

  nb::class_<Block>(m, "Block", nb::type_slots(block_slots))
      .def_prop_ro("handle", [](const Block& b) {
        const shmq::SyncHandle h = b.block.handle();
        return std::make_tuple(h.arena, h.block, h.generation, static_cast<std::uint32_t>(b.block.type()));
      })
      .def_prop_ro("nbytes", [](const Block& b) { return b.block.bytes(); });
  m.def("sync_alloc", &alloc, nb::arg("kind"), nb::arg("nbytes"));
  m.def("sync_open", &open_block, nb::arg("arena"), nb::arg("index"), nb::arg("generation"), nb::arg("kind"));
  m.def("sync_new_semaphore", &new_semaphore, nb::arg("value"), nb::arg("bound"), nb::arg("track_units"));
  m.def("sync_new_event", &new_event);
  m.def("sync_new_condition", &new_condition);
  m.def("sync_new_barrier", &new_barrier, nb::arg("parties"));
  m.def("sync_close_all", &sync_close_all);
  m.attr("SYNC_MUTEX") = static_cast<int>(shmq::SyncType::mutex);
  m.attr("SYNC_RECURSIVE_MUTEX") = static_cast<int>(shmq::SyncType::recursive_mutex);
  m.attr("SYNC_SEMAPHORE") = static_cast<int>(shmq::SyncType::semaphore);
  m.attr("SYNC_EVENT") = static_cast<int>(shmq::SyncType::event);
  m.attr("SYNC_CONDITION") = static_cast<int>(shmq::SyncType::condition);
  m.attr("SYNC_BARRIER") = static_cast<int>(shmq::SyncType::barrier);
  m.attr("SYNC_VALUE") = static_cast<int>(shmq::SyncType::value);
  m.attr("SYNC_VALUE_LOCK_BYTES") = static_cast<int>(shmq::kValuePayloadOffset);
  m.attr("SEMAPHORE_MAX") = shmq::core::kSemaphoreMax;

  nb::class_<SemaphoreCore>(m, "SemaphoreCore")
      .def(nb::init<const Block&>(), nb::arg("block"))
      .def("acquire", &SemaphoreCore::acquire, nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("release", &SemaphoreCore::release, nb::arg("n") = 1)
      .def("get_value", [](const SemaphoreCore& s) { return s.sem.value_guess(); })
      .def_prop_ro("bound", [](const SemaphoreCore& s) { return s.sem.bound(); });

  nb::class_<EventCore>(m, "EventCore")
      .def(nb::init<const Block&>(), nb::arg("block"))
      .def("set", [](EventCore& e) { e.ev.set(); })
      .def("clear", [](EventCore& e) { e.ev.clear(); })
      .def("is_set", [](const EventCore& e) { return e.ev.is_set(); })
      .def("wait", &EventCore::wait, nb::arg("timeout").none() = nb::none());

  nb::class_<ConditionCore>(m, "ConditionCore")
      .def(nb::init<const Block&>(), nb::arg("block"))
      .def("wait", &ConditionCore::wait, nb::arg("lock"), nb::arg("timeout").none() = nb::none())
      .def("notify", &ConditionCore::notify, nb::arg("n") = 1)
      .def("notify_all", &ConditionCore::notify_all)
      .def("waiting", [](const ConditionCore& c) { return c.cond.waiting_guess(); });

  nb::class_<BarrierCore>(m, "BarrierCore")
      .def(nb::init<const Block&>(), nb::arg("block"))
      .def("wait", &BarrierCore::wait, nb::arg("timeout").none() = nb::none(),
           nb::arg("action").none() = nb::none())
      .def("abort", [](BarrierCore& b) { b.bar.abort(); })
      .def("reset", [](BarrierCore& b) { b.bar.reset(); })
      .def_prop_ro("parties", [](const BarrierCore& b) { return b.bar.parties(); })
      .def_prop_ro("n_waiting", [](const BarrierCore& b) { return b.bar.waiting_guess(); })
      .def_prop_ro("broken", [](const BarrierCore& b) { return b.bar.broken(); });
}

}  // namespace shmq::py
