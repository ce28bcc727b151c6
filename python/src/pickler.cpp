// ForkingPickler's reducers at pickle.dumps' speed.
//
// multiprocessing.reduction.ForkingPickler.dumps builds a Pickler, copies copyreg's dispatch
// table, merges its registered reducers into the copy and pickles into a BytesIO: about 4 us per
// call before any object is pickled. Here C picklers (_pickle.Pickler, protocol 5) are kept in a
// small pool and reused; each has as dispatch table a ReducerTable, a mapping that looks a type up
// in ForkingPickler._extra_reducers, then in copyreg.dispatch_table (ForkingPickler's precedence),
// without copying either: a later ForkingPickler.register() or copyreg.pickle() applies at once.
// Objects of the types pickle handles itself (None, numbers, str, bytes, tuple, list, dict, set)
// never reach the table, so plain data pickles as fast as with pickle.dumps.
//
// A pooled pickler writes into a list (its file's write is the list's append); the pickle is the
// list's single item, or the items joined when protocol 5's framing flushed more than once.
// Everything here runs with the GIL held; a pickler is taken out of the pool for the duration of
// one dump, so a reducer that pickles again (or another thread, while a reducer released the
// GIL) simply takes another.
#include "pickler.hpp"

#include <nanobind/nanobind.h>

#include <vector>

#include "support.hpp"

namespace shmq::py {

namespace {

PyObject* g_extra = nullptr;    // ForkingPickler._extra_reducers (a dict, mutated by register())
PyObject* g_copyreg = nullptr;  // copyreg.dispatch_table
PyObject* g_pickler_type = nullptr;  // _pickle.Pickler
PyObject* g_table = nullptr;    // the ReducerTable every pooled pickler uses
PyObject* g_sink_type = nullptr;  // types.SimpleNamespace

// ---- ReducerTable: a read-only mapping over the two tables.

PyObject* table_getitem(PyObject*, PyObject* key) {
  PyObject* r = PyDict_GetItemWithError(g_extra, key);
  if (r == nullptr && !PyErr_Occurred()) r = PyDict_GetItemWithError(g_copyreg, key);
  if (r != nullptr) return Py_NewRef(r);
  if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
  return nullptr;
}

Py_ssize_t table_len(PyObject*) { return PyDict_Size(g_extra) + PyDict_Size(g_copyreg); }

PyType_Slot table_slots[] = {
    {Py_mp_subscript, reinterpret_cast<void*>(table_getitem)},
    {Py_mp_length, reinterpret_cast<void*>(table_len)},
    {0, nullptr}};
PyType_Spec table_spec = {"shmq._shmq.ReducerTable", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT,
                          table_slots};

// ---- the pool

struct Pickler {
  PyObject* dump;        // bound Pickler.dump
  PyObject* clear_memo;  // bound Pickler.clear_memo
  PyObject* parts;       // the list the pickler's file appends to
};

constexpr std::size_t kPoolMax = 8;
std::vector<Pickler> g_pool;

void drop(Pickler& p) {
  Py_XDECREF(p.dump);
  Py_XDECREF(p.clear_memo);
  Py_XDECREF(p.parts);
}

bool make(Pickler& out) {
  nb::object parts = nb::steal(PyList_New(0));
  if (!parts.is_valid()) return false;
  nb::object append = nb::steal(PyObject_GetAttrString(parts.ptr(), "append"));
  if (!append.is_valid()) return false;
  nb::object kw = nb::steal(PyDict_New());
  if (!kw.is_valid() || PyDict_SetItemString(kw.ptr(), "write", append.ptr()) != 0) return false;
  nb::object empty = nb::steal(PyTuple_New(0));
  nb::object sink = nb::steal(PyObject_Call(g_sink_type, empty.ptr(), kw.ptr()));
  if (!sink.is_valid()) return false;
  nb::object args = nb::steal(Py_BuildValue("(Oi)", sink.ptr(), 5));
  nb::object pkw = nb::steal(PyDict_New());
  if (!args.is_valid() || !pkw.is_valid() ||
      PyDict_SetItemString(pkw.ptr(), "buffer_callback", g.collector) != 0)
    return false;
  nb::object pickler = nb::steal(PyObject_Call(g_pickler_type, args.ptr(), pkw.ptr()));
  if (!pickler.is_valid()) return false;
  if (PyObject_SetAttrString(pickler.ptr(), "dispatch_table", g_table) != 0) return false;
  PyObject* dump = PyObject_GetAttrString(pickler.ptr(), "dump");
  PyObject* clear = PyObject_GetAttrString(pickler.ptr(), "clear_memo");
  if (dump == nullptr || clear == nullptr) {
    Py_XDECREF(dump);
    Py_XDECREF(clear);
    return false;
  }
  out = Pickler{dump, clear, parts.release().ptr()};
  return true;
}

// The pickle the parts list holds (a new reference); empties the list.
PyObject* take_pickle(PyObject* parts) {
  const Py_ssize_t n = PyList_GET_SIZE(parts);
  PyObject* res;
  if (n == 1) {
    res = Py_NewRef(PyList_GET_ITEM(parts, 0));
  } else {
    nb::object empty = nb::steal(PyBytes_FromStringAndSize(nullptr, 0));
    res = empty.is_valid() ? PyObject_CallMethod(empty.ptr(), "join", "(O)", parts) : nullptr;
  }
  if (PyList_SetSlice(parts, 0, n, nullptr) != 0) {
    Py_XDECREF(res);
    return nullptr;
  }
  return res;
}

PyObject* keep(nb::object o) { return o.release().ptr(); }

}  // namespace

void init_pickler() {
  nb::module_ reduction = nb::module_::import_("multiprocessing.reduction");
  g_extra = keep(reduction.attr("ForkingPickler").attr("_extra_reducers"));
  g_copyreg = keep(nb::module_::import_("copyreg").attr("dispatch_table"));
  if (!PyDict_Check(g_extra) || !PyDict_Check(g_copyreg))
    throw nb::type_error("multiprocessing's reducer tables are not dicts");
  g_pickler_type = keep(nb::module_::import_("_pickle").attr("Pickler"));
  g_sink_type = keep(nb::module_::import_("types").attr("SimpleNamespace"));
  PyObject* type = PyType_FromSpec(&table_spec);
  if (type == nullptr) throw nb::python_error();
  g_table = PyObject_CallNoArgs(type);
  Py_DECREF(type);
  if (g_table == nullptr) throw nb::python_error();
}

PyObject* forking_dumps(PyObject* obj) {
  Pickler p{};
  if (!g_pool.empty()) {
    p = g_pool.back();
    g_pool.pop_back();
  } else if (!make(p)) {
    return nullptr;
  }
  PyObject* res = nullptr;
  PyObject* r = PyObject_CallOneArg(p.dump, obj);
  if (r != nullptr) {
    Py_DECREF(r);
    res = take_pickle(p.parts);
  }
  // The memo is cleared after each dump, not before the next: it holds a reference to every
  // object pickled, which would keep the last one sent alive in this process (and a pickler
  // whose memo is not empty must not be reused: its next pickle would refer into it).
  PyObject *type, *value, *tb;  // keep a pickling error while the pickler is reset
  PyErr_Fetch(&type, &value, &tb);
  if (res == nullptr && PyList_SetSlice(p.parts, 0, PyList_GET_SIZE(p.parts), nullptr) != 0)
    PyErr_Clear();
  PyObject* cleared = PyObject_CallNoArgs(p.clear_memo);
  const bool reusable = cleared != nullptr;
  if (reusable) {
    Py_DECREF(cleared);
  } else {
    PyErr_Clear();
  }
  PyErr_Restore(type, value, tb);
  if (reusable && g_pool.size() < kPoolMax) {
    g_pool.push_back(p);
  } else {
    drop(p);
  }
  return res;
}

}  // namespace shmq::py
