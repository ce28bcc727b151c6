// The hot paths of the synchronization objects as raw CPython types: LockBase (shmq.Lock and
// shmq.RLock subclass it) and SynchronizedBase (shmq's Value wrapper). `with lock:` costs a
// METH_NOARGS call and one CAS, `v.value` a getset call, the lock and a ctypes attribute read:
// nanobind's generic dispatch would add more than the whole lock costs.
#include "sync_binding.hpp"

#include "shmq/core/backoff.hpp"

#include <structmember.h>

#include <cstring>
#include <new>

namespace shmq::py {

PyTypeObject* g_lock_type = nullptr;
PyObject* g_owner_died_warning = nullptr;  // shmq.OwnerDiedWarning, set at import

namespace {

PyTypeObject* g_value_type = nullptr;
PyObject* g_str_value = nullptr;  // "value"

// Calls f(); a Python error thrown as nb::python_error becomes the NULL return of a slot.
template <class F>
PyObject* guarded(F&& f) noexcept {
  try {
    return f();
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

shmq::MutexState* state_of(LockObject* l) {
  return reinterpret_cast<shmq::MutexState*>(nb::inst_ptr<Block>(l->block)->block.data() + l->offset);
}

// One CAS (or one more level of a recursive lock); no sleeping, no liveness check.
bool fast_acquire(LockObject* l) noexcept {
  if (l->recursive) return l->rmutex.lock_if_free();
  if (!l->mutex.lock_if_free()) return false;
  // relaxed: the holding thread, for _is_mine(); read by this process's threads only.
  state_of(l)->m.owner_thread.store(shmq::current_thread_id(), std::memory_order_relaxed);
  return true;
}

// Pause rounds spent waiting for a held lock with the GIL held before it is released to sleep:
// a holder in another process usually lets go within a few hundred nanoseconds, and handing the
// GIL over and back costs more than that.
constexpr int kGilSpin = 256;

bool spin_acquire(LockObject* l) noexcept {
  shmq::core::FutexMutex& w = l->recursive ? l->rmutex.word().mutex : l->mutex.word();
  for (int i = 0; i < kGilSpin; ++i) {
    shmq::core::cpu_relax();
    if (w.holder_guess() == 0 && fast_acquire(l)) return true;  // read before the CAS: no line stealing
  }
  return false;
}

[[noreturn]] void raise_status(Status s) {
  if (s == Status::closed)
    throw_py(PyExc_OSError,
             "shmq: this process cannot join the lock's arena (every participant slot is taken)");
  throw_py(PyExc_OSError, std::string("shmq: the lock's shared word is ") + std::string(shmq::status_name(s)));
}

}  // namespace

bool is_lock(PyObject* o) { return g_lock_type != nullptr && PyObject_TypeCheck(o, g_lock_type); }

bool lock_is_mine(LockObject* l) {
  if (l->recursive) return l->rmutex.held_by_this_thread();
  // relaxed: see fast_acquire.
  return l->mutex.held_by_this_process() &&
         state_of(l)->m.owner_thread.load(std::memory_order_relaxed) == shmq::current_thread_id();
}

void warn_owner_died(LockObject* l, std::uint32_t pid) {
  PyObject* cls = g_owner_died_warning != nullptr ? g_owner_died_warning : PyExc_RuntimeWarning;
  const std::string who = pid != 0 ? "process " + std::to_string(pid) : "a process";
  const std::string msg = who + " died holding this lock; it is yours now (what it protected may "
                                "be half-updated)";
  if (PyErr_WarnEx(cls, msg.c_str(), 2) == 0) return;
  // The warning is an error: give the lock back, so that nobody waits for a caller that failed.
  if (l->recursive) {
    l->rmutex.word().release_all();
  } else {
    l->mutex.unlock_any();
  }
  throw nb::python_error();
}

bool lock_acquire(LockObject* l, bool block, std::optional<double> timeout) {
  if (fast_acquire(l)) return true;
  const Deadline d = make_deadline(block, timeout);
  if (!is_poll(d) && spin_acquire(l)) return true;
  std::uint32_t dead_pid = 0;
  auto attempt = [&](Deadline slice) {
    const Status s = l->recursive ? l->rmutex.lock(slice) : l->mutex.lock(slice);
    if (s == Status::owner_died) dead_pid = shmq::Mutex::last_dead_pid();  // this thread's
    return s;
  };
  const Status s = is_poll(d) ? attempt(Deadline::now()) : block_in_slices(attempt, d);
  switch (s) {
    case Status::ok:
    case Status::owner_died:
      if (!l->recursive)  // relaxed: see fast_acquire.
        state_of(l)->m.owner_thread.store(shmq::current_thread_id(), std::memory_order_relaxed);
      if (s == Status::owner_died) warn_owner_died(l, dead_pid);
      return true;
    case Status::timeout:
    case Status::interrupted: return false;
    default: raise_status(s);
  }
}

void lock_release(LockObject* l) {
  if (l->recursive) {
    if (!l->rmutex.unlock())
      throw_py(PyExc_AssertionError, "attempt to release recursive lock not owned by thread");
    return;
  }
  if (!l->mutex.unlock_any()) throw_py(PyExc_ValueError, "semaphore or lock released too many times");
}

namespace {

// ---- LockBase ------------------------------------------------------------------------------------

// LockBase(block, offset, recursive, init)
PyObject* lock_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject* block = nullptr;
  unsigned int offset = 0;
  int recursive = 0, init = 0;
  static const char* names[] = {"block", "offset", "recursive", "init", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OIpp", const_cast<char**>(names), &block, &offset,
                                   &recursive, &init))
    return nullptr;
  if (!nb::isinstance<Block>(block)) {
    PyErr_SetString(PyExc_TypeError, "LockBase needs a shmq block");
    return nullptr;
  }
  shmq::SyncBlock ref = nb::inst_ptr<Block>(block)->block.share();
  if (!ref.valid()) {
    PyErr_SetString(PyExc_ValueError, "the shmq block was released");
    return nullptr;
  }
  auto* self = reinterpret_cast<LockObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  new (&self->mutex) shmq::Mutex();
  new (&self->rmutex) shmq::RecursiveMutex();
  self->block = nb::handle(block).inc_ref().ptr();
  self->offset = offset;
  self->recursive = recursive != 0;
  self->ready = true;
  self->weakrefs = nullptr;
  const shmq::Error* err = nullptr;
  shmq::Error keep;
  if (self->recursive) {
    auto r = shmq::RecursiveMutex::from_block(std::move(ref), offset, init != 0);
    if (r) self->rmutex = std::move(*r); else { keep = r.error(); err = &keep; }
  } else {
    auto r = shmq::Mutex::from_block(std::move(ref), offset, init != 0);
    if (r) self->mutex = std::move(*r); else { keep = r.error(); err = &keep; }
  }
  if (err != nullptr) {
    Py_DECREF(self);
    PyErr_SetString(PyExc_ValueError, err->what.c_str());
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(self);
}

void lock_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<LockObject*>(o);
  PyTypeObject* tp = Py_TYPE(o);
  if (self->ready) {
    self->mutex.~Mutex();
    self->rmutex.~RecursiveMutex();
  }
  Py_XDECREF(self->block);
  tp->tp_free(o);
  Py_DECREF(tp);
}

// acquire(block=True, timeout=None); `blocking` is accepted for threading's spelling.
PyObject* lock_acquire_py(PyObject* o, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* self = reinterpret_cast<LockObject*>(o);
  if (nargs == 0 && kwnames == nullptr && fast_acquire(self)) Py_RETURN_TRUE;
  return guarded([&]() -> PyObject* {
    PyObject* block = nargs > 0 ? args[0] : nullptr;
    PyObject* timeout = nargs > 1 ? args[1] : nullptr;
    if (nargs > 2) throw_py(PyExc_TypeError, "acquire() takes at most 2 arguments");
    const Py_ssize_t nk = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nk; ++i) {
      const char* k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
      if (k == nullptr) throw nb::python_error();
      PyObject* v = args[nargs + i];
      if (std::strcmp(k, "block") == 0 || std::strcmp(k, "blocking") == 0) {
        block = v;
      } else if (std::strcmp(k, "timeout") == 0) {
        timeout = v;
      } else {
        throw_py(PyExc_TypeError, std::string("acquire() got an unexpected keyword argument '") + k + "'");
      }
    }
    bool b = true;
    if (block != nullptr) {
      const int t = PyObject_IsTrue(block);
      if (t < 0) throw nb::python_error();
      b = t != 0;
    }
    std::optional<double> to;
    if (timeout != nullptr && timeout != Py_None) {
      const double v = PyFloat_AsDouble(timeout);
      if (v == -1.0 && PyErr_Occurred()) throw nb::python_error();
      to = v;
    }
    return PyBool_FromLong(lock_acquire(self, b, to) ? 1 : 0);
  });
}

PyObject* lock_release_py(PyObject* o, PyObject*) {
  return guarded([&]() -> PyObject* {
    lock_release(reinterpret_cast<LockObject*>(o));
    Py_RETURN_NONE;
  });
}

PyObject* lock_enter(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<LockObject*>(o);
  if (fast_acquire(self)) Py_RETURN_TRUE;
  return guarded([&]() -> PyObject* {
    lock_acquire(self, true, std::nullopt);
    Py_RETURN_TRUE;
  });
}

PyObject* lock_exit(PyObject* o, PyObject* const*, Py_ssize_t) {
  auto* self = reinterpret_cast<LockObject*>(o);
  if (!self->recursive && self->mutex.unlock_any()) Py_RETURN_NONE;  // the hot path
  return guarded([&]() -> PyObject* {
    lock_release(self);
    Py_RETURN_NONE;
  });
}

PyObject* lock_is_mine_py(PyObject* o, PyObject*) {
  return PyBool_FromLong(lock_is_mine(reinterpret_cast<LockObject*>(o)) ? 1 : 0);
}

PyObject* lock_count_py(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<LockObject*>(o);
  if (self->recursive) return PyLong_FromUnsignedLong(self->rmutex.depth_guess());
  return PyLong_FromLong(lock_is_mine(self) ? 1 : 0);
}

// The pid of the holder (0: free), for repr.
PyObject* lock_holder_pid_py(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<LockObject*>(o);
  const std::uint32_t pid = self->recursive ? self->rmutex.holder_pid_guess() : self->mutex.holder_pid_guess();
  return PyLong_FromUnsignedLong(pid);
}

PyMethodDef lock_methods[] = {
    {"acquire", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(lock_acquire_py)),
     METH_FASTCALL | METH_KEYWORDS, "acquire(block=True, timeout=None) -> bool"},
    {"release", lock_release_py, METH_NOARGS, "release()"},
    {"__enter__", lock_enter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(lock_exit)), METH_FASTCALL,
     nullptr},
    {"_is_mine", lock_is_mine_py, METH_NOARGS, "whether the calling thread holds it"},
    {"_count", lock_count_py, METH_NOARGS, "levels the calling thread holds"},
    {"_holder_pid", lock_holder_pid_py, METH_NOARGS, "pid of the holder (0: free)"},
    {nullptr, nullptr, 0, nullptr}};

PyObject* lock_block_get(PyObject* o, void*) {
  PyObject* b = reinterpret_cast<LockObject*>(o)->block;
  Py_INCREF(b);
  return b;
}
PyObject* lock_offset_get(PyObject* o, void*) {
  return PyLong_FromUnsignedLong(reinterpret_cast<LockObject*>(o)->offset);
}
PyObject* lock_recursive_get(PyObject* o, void*) {
  return PyBool_FromLong(reinterpret_cast<LockObject*>(o)->recursive ? 1 : 0);
}

PyGetSetDef lock_getset[] = {
    {"_block", lock_block_get, nullptr, nullptr, nullptr},
    {"_offset", lock_offset_get, nullptr, nullptr, nullptr},
    {"_recursive", lock_recursive_get, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot lock_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(lock_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(lock_dealloc)},
    {Py_tp_methods, lock_methods},
    {Py_tp_getset, lock_getset},
    {Py_tp_doc, const_cast<char*>("a process-shared lock in a shmq arena (base of Lock and RLock)")},
    {0, nullptr}};

PyType_Spec lock_spec = {"shmq._shmq.LockBase", sizeof(LockObject), 0,
                         Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, lock_slots};

// ---- SynchronizedBase ----------------------------------------------------------------------------

struct ValueObject {
  PyObject_HEAD
  PyObject* obj;     // the ctypes object over shared memory
  PyObject* lock;    // any object with acquire()/release()
  LockObject* fast;  // `lock` when it is a shmq lock, else nullptr
  // The ctypes type's own `value` accessors (its getset descriptor), called directly: the same
  // code a ctypes attribute read runs, without the attribute lookup. nullptr: use getattr.
  getter get;
  setter set;
  void* closure;
};

// Finds the getset descriptor behind type(obj).value, if that is what it is.
void cache_accessors(ValueObject* self) {
  self->get = nullptr;
  self->set = nullptr;
  self->closure = nullptr;
  PyObject* d = PyObject_GetAttr(reinterpret_cast<PyObject*>(Py_TYPE(self->obj)), g_str_value);
  if (d == nullptr) {
    PyErr_Clear();
    return;
  }
  if (Py_TYPE(d) == &PyGetSetDescr_Type) {
    PyGetSetDef* gs = reinterpret_cast<PyGetSetDescrObject*>(d)->d_getset;
    // The descriptor must apply to obj (a subclass may shadow `value` with something else).
    if (PyObject_TypeCheck(self->obj, PyDescr_TYPE(d))) {
      self->get = gs->get;
      self->set = gs->set;
      self->closure = gs->closure;
    }
  }
  Py_DECREF(d);
}

PyObject* value_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject* obj = nullptr;
  PyObject* lock = nullptr;
  static const char* names[] = {"obj", "lock", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO", const_cast<char**>(names), &obj, &lock)) return nullptr;
  auto* self = reinterpret_cast<ValueObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  Py_INCREF(obj);
  Py_INCREF(lock);
  self->obj = obj;
  self->lock = lock;
  self->fast = is_lock(lock) ? reinterpret_cast<LockObject*>(lock) : nullptr;
  cache_accessors(self);
  return reinterpret_cast<PyObject*>(self);
}

void value_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<ValueObject*>(o);
  PyTypeObject* tp = Py_TYPE(o);
  Py_XDECREF(self->obj);
  Py_XDECREF(self->lock);
  tp->tp_free(o);
  Py_DECREF(tp);
}

// Runs f() with the wrapper's lock held; returns f()'s result (NULL with an error set).
template <class F>
PyObject* with_lock(ValueObject* self, F&& f) {
  if (self->fast != nullptr) {
    if (!fast_acquire(self->fast)) {
      PyObject* r = guarded([&]() -> PyObject* {
        lock_acquire(self->fast, true, std::nullopt);
        Py_RETURN_NONE;
      });
      if (r == nullptr) return nullptr;
      Py_DECREF(r);
    }
    PyObject* out = f();
    PyObject* type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject* r = guarded([&]() -> PyObject* {
      lock_release(self->fast);
      Py_RETURN_NONE;
    });
    if (r == nullptr) {  // a release error replaces f's
      Py_XDECREF(out);
      Py_XDECREF(type);
      Py_XDECREF(value);
      Py_XDECREF(tb);
      return nullptr;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
    return out;
  }
  PyObject* r = PyObject_CallMethod(self->lock, "acquire", nullptr);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  PyObject* out = f();
  PyObject* type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  r = PyObject_CallMethod(self->lock, "release", nullptr);
  if (r == nullptr) {
    Py_XDECREF(out);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return nullptr;
  }
  Py_DECREF(r);
  PyErr_Restore(type, value, tb);
  return out;
}

PyObject* value_get(PyObject* o, void*) {
  auto* self = reinterpret_cast<ValueObject*>(o);
  return with_lock(self, [&] {
    if (self->get != nullptr) return self->get(self->obj, self->closure);
    return PyObject_GetAttr(self->obj, g_str_value);
  });
}

int value_set(PyObject* o, PyObject* v, void*) {
  auto* self = reinterpret_cast<ValueObject*>(o);
  if (v == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete value");
    return -1;
  }
  PyObject* r = with_lock(self, [&]() -> PyObject* {
    const int rc = self->set != nullptr ? self->set(self->obj, v, self->closure)
                                        : PyObject_SetAttr(self->obj, g_str_value, v);
    if (rc != 0) return nullptr;
    Py_RETURN_NONE;
  });
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

PyObject* value_get_obj(PyObject* o, PyObject*) {
  PyObject* obj = reinterpret_cast<ValueObject*>(o)->obj;
  Py_INCREF(obj);
  return obj;
}

PyObject* value_get_lock(PyObject* o, PyObject*) {
  PyObject* lock = reinterpret_cast<ValueObject*>(o)->lock;
  Py_INCREF(lock);
  return lock;
}

PyObject* value_enter(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<ValueObject*>(o);
  if (self->fast != nullptr) return lock_enter(reinterpret_cast<PyObject*>(self->fast), nullptr);
  return PyObject_CallMethod(self->lock, "__enter__", nullptr);
}

PyObject* value_exit(PyObject* o, PyObject* const* args, Py_ssize_t nargs) {
  auto* self = reinterpret_cast<ValueObject*>(o);
  if (self->fast != nullptr) return lock_exit(reinterpret_cast<PyObject*>(self->fast), args, nargs);
  PyObject* m = PyObject_GetAttrString(self->lock, "__exit__");
  if (m == nullptr) return nullptr;
  PyObject* r = PyObject_Vectorcall(m, args, static_cast<size_t>(nargs), nullptr);
  Py_DECREF(m);
  return r;
}

PyMethodDef value_methods[] = {
    {"get_obj", value_get_obj, METH_NOARGS, "the ctypes object over shared memory"},
    {"get_lock", value_get_lock, METH_NOARGS, "the lock that guards it"},
    {"__enter__", value_enter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(value_exit)), METH_FASTCALL,
     nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef value_getset[] = {
    {"value", value_get, value_set, "the value, read and written with the lock held", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMemberDef value_members[] = {
    {"_obj", T_OBJECT, offsetof(ValueObject, obj), READONLY, nullptr},
    {"_lock", T_OBJECT, offsetof(ValueObject, lock), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot value_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(value_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(value_dealloc)},
    {Py_tp_methods, value_methods},
    {Py_tp_getset, value_getset},
    {Py_tp_members, value_members},
    {Py_tp_doc, const_cast<char*>("a ctypes object in shared memory with its lock (base of Synchronized)")},
    {0, nullptr}};

PyType_Spec value_spec = {"shmq._shmq.SynchronizedBase", sizeof(ValueObject), 0,
                          Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, value_slots};

}  // namespace

void bind_sync_locks(nb::module_& m) {
  g_str_value = PyUnicode_InternFromString("value");
  g_lock_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&lock_spec));
  if (g_lock_type == nullptr) throw nb::python_error();
  g_value_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&value_spec));
  if (g_value_type == nullptr) throw nb::python_error();
  m.attr("LockBase") = nb::handle(reinterpret_cast<PyObject*>(g_lock_type));
  m.attr("SynchronizedBase") = nb::handle(reinterpret_cast<PyObject*>(g_value_type));
  m.def("sync_set_warning", [](nb::handle cls) {
    Py_XDECREF(g_owner_died_warning);
    g_owner_died_warning = cls.inc_ref().ptr();
  });
}

}  // namespace shmq::py
