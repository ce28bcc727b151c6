// PySource: DynBuilder's Source over Python objects (the concept is in
// serialize/include/shmq/serialize/dyn_build.hpp). A dict is walked entry by entry, each key
// matched to its field by pointer against the names interned once per type (TypeCache::keys), so
// a field costs no lookup and no Python object is created; exact ints, floats and strs convert
// without running Python code.
//
// Lifetimes: an entry's key and value, a sequence's current item and a pair's items are held
// while the builder uses them, so a conversion that runs Python code (__index__, __float__, a
// Mapping's methods) cannot free what the builder still reads. Conv::error (and fields()
// returning false without the builder's own error) means a Python exception is set.
#pragma once

#include <nanobind/nanobind.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fb_common.hpp"
#include "shmq/serialize/dyn_build.hpp"

namespace shmq::py {

class PySource {
 public:
  using Node = PyObject*;
  using Conv = shmq::fb::Conv;

  struct Hold {
    Hold() = default;
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() {
      if (held) PyBuffer_Release(&view);
    }
    Py_buffer view{};
    bool held = false;
  };

  class Seq {
   public:
    Seq() = default;
    Seq(const Seq&) = delete;
    Seq& operator=(const Seq&) = delete;
    ~Seq() {
      Py_XDECREF(cur_);
      Py_XDECREF(seq_);
    }
    std::size_t size() const noexcept { return n_; }
    // Borrowed, valid until the next item() (this Seq holds it). A list that shrank meanwhile
    // (Python code run by a conversion) reads as None past its end.
    Node item(std::size_t i) {
      PyObject* x = Py_None;
      if (PyTuple_Check(seq_)) {
        x = PyTuple_GET_ITEM(seq_, static_cast<Py_ssize_t>(i));
      } else if (static_cast<Py_ssize_t>(i) < PyList_GET_SIZE(seq_)) {
        x = PyList_GET_ITEM(seq_, static_cast<Py_ssize_t>(i));
      }
      Py_INCREF(x);
      Py_XSETREF(cur_, x);
      return x;
    }

   private:
    friend class PySource;
    PyObject* seq_ = nullptr;  // a tuple or a list (strong)
    PyObject* cur_ = nullptr;
    std::size_t n_ = 0;
  };

  PySource(SchemaObj& s, PyObject* mapping_abc) noexcept : s_(s), mapping_abc_(mapping_abc) {}
  PySource(const PySource&) = delete;
  PySource& operator=(const PySource&) = delete;
  ~PySource() {
    for (PyObject* o : keep_) Py_DECREF(o);
  }

  bool is_mapping(Node n) {
    if (PyDict_Check(n)) return true;
    if (PyTuple_Check(n) || PyList_Check(n) || PyUnicode_Check(n) || PyBytes_Check(n)) return false;
    const int is = PyObject_IsInstance(n, mapping_abc_);
    if (is < 0) PyErr_Clear();
    return is == 1;
  }
  static bool is_none(Node n) noexcept { return n == Py_None; }

  // The entries of a dict in its order (PyDict_Next: no objects made), each key matched to its
  // field by pointer (the key objects of dict literals and keyword arguments are the interned
  // names TypeCache::keys holds), else by the type's name dict. Keys and values are held during
  // fn: a conversion may run Python code that changes the dict.
  template <class Fn>
  bool fields(Node map, const shmq::fb::TypeInfo& t, Fn&& fn) {
    const TypeCache& c = s_.caches[t.index];
    if (PyDict_Check(map)) {
      Py_ssize_t pos = 0;
      PyObject* k = nullptr;
      PyObject* v = nullptr;
      while (PyDict_Next(map, &pos, &k, &v)) {
        if (!entry(c, t, k, v, fn)) return false;
      }
      return true;
    }
    PyObject* items = PyMapping_Items(map);  // other Mappings: a list of (key, value)
    if (items == nullptr) return false;
    bool ok = true;
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(items); ++i) {
      PyObject* kv = PyList_GET_ITEM(items, i);
      ok = PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2 &&
           entry(c, t, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), fn);
    }
    Py_DECREF(items);
    return ok;
  }

  Conv to_i64(Node n, std::int64_t& out) {
    if (PyLong_Check(n)) return long_i64(n, out);
    if (PyFloat_Check(n) || !PyIndex_Check(n)) return Conv::wrong_type;
    PyObject* i = PyNumber_Index(n);  // numpy integers and other __index__ objects
    if (i == nullptr) return Conv::error;
    const Conv c = long_i64(i, out);
    Py_DECREF(i);
    return c;
  }

  Conv to_u64(Node n, std::uint64_t& out) {
    PyObject* i = nullptr;
    if (!PyLong_Check(n)) {
      if (PyFloat_Check(n) || !PyIndex_Check(n)) return Conv::wrong_type;
      i = PyNumber_Index(n);
      if (i == nullptr) return Conv::error;
    }
    const unsigned long long v = PyLong_AsUnsignedLongLong(i != nullptr ? i : n);
    Py_XDECREF(i);
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return Conv::error;
      PyErr_Clear();
      return Conv::overflow;
    }
    out = v;
    return Conv::ok;
  }

  Conv to_f64(Node n, double& out) {
    if (PyFloat_CheckExact(n)) {
      out = PyFloat_AS_DOUBLE(n);
      return Conv::ok;
    }
    if (PyLong_Check(n)) {
      out = PyLong_AsDouble(n);
      if (out == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return Conv::overflow;
      }
      return Conv::ok;
    }
    // Float subclasses (numpy.float64), numpy.float32 and other __float__ objects; not text.
    const PyNumberMethods* nm = Py_TYPE(n)->tp_as_number;
    if (!PyFloat_Check(n) && (nm == nullptr || nm->nb_float == nullptr)) return Conv::wrong_type;
    out = PyFloat_AsDouble(n);
    if (out == -1.0 && PyErr_Occurred()) return Conv::error;
    return Conv::ok;
  }

  Conv to_bool(Node n, bool& out) {
    if (n == Py_True || n == Py_False) {
      out = n == Py_True;
      return Conv::ok;
    }
    if (std::strncmp(Py_TYPE(n)->tp_name, "numpy.bool", 10) == 0) {
      const int t = PyObject_IsTrue(n);
      if (t < 0) return Conv::error;
      out = t == 1;
      return Conv::ok;
    }
    std::int64_t i = 0;
    if (PyLong_Check(n) && long_i64(n, i) == Conv::ok && (i == 0 || i == 1)) {
      out = i == 1;
      return Conv::ok;
    }
    return Conv::wrong_type;
  }

  Conv text(Node n, std::string_view& out) {
    if (PyUnicode_Check(n)) {
      Py_ssize_t len = 0;
      const char* p = PyUnicode_AsUTF8AndSize(n, &len);  // cached in the str; ASCII: its data
      if (p == nullptr) {
        PyErr_Clear();  // lone surrogates
        return Conv::bad_value;
      }
      out = std::string_view(p, static_cast<std::size_t>(len));
      return Conv::ok;
    }
    if (PyBytes_Check(n)) {
      out = std::string_view(PyBytes_AS_STRING(n), static_cast<std::size_t>(PyBytes_GET_SIZE(n)));
      return Conv::ok;
    }
    if (PyByteArray_Check(n)) {
      out = std::string_view(PyByteArray_AS_STRING(n), static_cast<std::size_t>(PyByteArray_GET_SIZE(n)));
      return Conv::ok;
    }
    return Conv::wrong_type;
  }

  Conv buffer(Node n, shmq::fb::BufferView& out, Hold& hold) {
    if (PyUnicode_Check(n) || PyList_Check(n) || PyTuple_Check(n) || !PyObject_CheckBuffer(n)) {
      return Conv::wrong_type;
    }
    if (PyObject_GetBuffer(n, &hold.view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
      PyErr_Clear();  // not contiguous: read it as a sequence
      return Conv::wrong_type;
    }
    hold.held = true;
    out.data = hold.view.buf;
    out.bytes = static_cast<std::size_t>(hold.view.len);
    out.itemsize = static_cast<std::size_t>(hold.view.itemsize);
    out.format = hold.view.format;
    return Conv::ok;
  }

  Conv sequence(Node n, Seq& out) {
    if (PyTuple_Check(n) || PyList_Check(n)) {
      Py_INCREF(n);
      out.seq_ = n;
    } else if (PyUnicode_Check(n) || PyBytes_Check(n) || PyDict_Check(n) || !PySequence_Check(n)) {
      return Conv::wrong_type;
    } else {
      out.seq_ = PySequence_Tuple(n);  // other sequences (a range, a numpy array of objects)
      if (out.seq_ == nullptr) return Conv::error;
    }
    out.n_ = static_cast<std::size_t>(PyTuple_Check(out.seq_) ? PyTuple_GET_SIZE(out.seq_)
                                                             : PyList_GET_SIZE(out.seq_));
    return Conv::ok;
  }

  Conv pair(Node n, Node& first, Node& second) {
    if (!(PyTuple_Check(n) || PyList_Check(n)) || PySequence_Fast_GET_SIZE(n) != 2) {
      return Conv::wrong_type;
    }
    first = PySequence_Fast_GET_ITEM(n, 0);
    second = PySequence_Fast_GET_ITEM(n, 1);
    keep_.push_back(Py_NewRef(first));
    keep_.push_back(Py_NewRef(second));
    return Conv::ok;
  }

  std::string describe(Node n) const {
    return n == nullptr ? std::string("nothing") : std::string(Py_TYPE(n)->tp_name);
  }

 private:
  static const shmq::fb::FieldInfo* field_of(const TypeCache& c, const shmq::fb::TypeInfo& t, PyObject* key) {
    for (std::size_t i = 0; i < c.keys.size(); ++i) {
      if (c.keys[i] == key) return &t.fields[i];
    }
    if (!PyUnicode_Check(key)) return nullptr;
    PyObject* idx = PyDict_GetItemWithError(c.attrs, key);  // a str equal to a name, not interned
    if (idx == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
    return &t.fields[static_cast<std::size_t>(PyLong_AsSsize_t(idx))];
  }

  static std::string key_text(PyObject* key) {
    if (PyUnicode_Check(key)) {
      const char* s = PyUnicode_AsUTF8(key);
      if (s != nullptr) return s;
      PyErr_Clear();
      return "?";
    }
    PyObject* r = PyObject_Repr(key);
    std::string out = r != nullptr && PyUnicode_AsUTF8(r) != nullptr ? PyUnicode_AsUTF8(r) : "?";
    Py_XDECREF(r);
    PyErr_Clear();
    out.append("' (not a str)");  // append: g++ 12 warns falsely (-Wrestrict) on string + literal
    return out;
  }

  template <class Fn>
  bool entry(const TypeCache& c, const shmq::fb::TypeInfo& t, PyObject* k, PyObject* v, Fn& fn) {
    Py_INCREF(k);
    Py_INCREF(v);
    const bool go = fn(field_of(c, t, k), v, [k] { return key_text(k); });
    Py_DECREF(v);
    Py_DECREF(k);
    return go;
  }

  static Conv long_i64(PyObject* n, std::int64_t& out) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (overflow != 0) return Conv::overflow;
    if (v == -1 && PyErr_Occurred()) return Conv::error;
    out = v;
    return Conv::ok;
  }

  SchemaObj& s_;
  PyObject* mapping_abc_;
  std::vector<PyObject*> keep_;
};

}  // namespace shmq::py
