// PySource: DynBuilder's Source over Python objects (the concept is in
// serialize/include/shmq/serialize/dyn_build.hpp). Dicts are read with the field names interned
// once per type (TypeCache::keys), so a field costs one dict lookup by a pointer-equal key and no
// Python object is created; exact ints, floats and strs convert without running Python code.
//
// Lifetimes: get() returns a new reference (dropped by the builder with drop()); a sequence's
// current item and a pair's items are kept alive by the Seq / the source, so a conversion that
// runs Python code (__index__, __float__, a Mapping's __getitem__) cannot free what the builder
// still reads. Conv::error means a Python exception is set.
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

  long mapping_size(Node n) {
    if (PyDict_Check(n)) return static_cast<long>(PyDict_GET_SIZE(n));
    if (PyTuple_Check(n) || PyList_Check(n) || PyUnicode_Check(n) || PyBytes_Check(n)) return -1;
    const int is = PyObject_IsInstance(n, mapping_abc_);
    if (is <= 0) {
      PyErr_Clear();
      return -1;
    }
    const Py_ssize_t size = PyObject_Size(n);
    if (size < 0) PyErr_Clear();
    return size < 0 ? -1 : static_cast<long>(size);
  }

  Node get(Node map, const shmq::fb::TypeInfo& t, const shmq::fb::FieldInfo& f) {
    PyObject* key = s_.caches[t.index].keys[f.index];
    if (PyDict_Check(map)) {
      PyObject* v = PyDict_GetItemWithError(map, key);
      if (v == nullptr) {
        PyErr_Clear();
        return nullptr;
      }
      Py_INCREF(v);
      return v;
    }
    PyObject* v = PyObject_GetItem(map, key);
    if (v == nullptr) PyErr_Clear();  // KeyError: absent
    return v;
  }
  static bool missing(Node n) noexcept { return n == nullptr; }
  static bool is_none(Node n) noexcept { return n == Py_None; }
  static void drop(Node n) noexcept { Py_XDECREF(n); }

  std::string unknown_key(Node map, const shmq::fb::TypeInfo& t) {
    PyObject* keys = PyDict_Check(map) ? PyDict_Keys(map) : PyMapping_Keys(map);
    if (keys == nullptr) {
      PyErr_Clear();
      return "?";
    }
    std::string out = "?";
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); ++i) {
      PyObject* k = PyList_GET_ITEM(keys, i);
      if (!PyUnicode_Check(k)) {
        PyObject* r = PyObject_Repr(k);
        out = r != nullptr ? std::string(PyUnicode_AsUTF8(r)) + "' (not a str)" : "?";
        Py_XDECREF(r);
        PyErr_Clear();
        break;
      }
      const char* name = PyUnicode_AsUTF8(k);
      if (name == nullptr) {
        PyErr_Clear();
        continue;
      }
      const shmq::fb::FieldInfo* f = t.field(name);
      if (f == nullptr || f->deprecated || f->base == reflection::UType) {
        out = name;
        break;
      }
    }
    Py_DECREF(keys);
    return out;
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
