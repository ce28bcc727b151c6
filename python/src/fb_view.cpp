// shmq.fb.View and friends: lazy, zero-copy views over a verified FlatBuffers message held in
// shared memory (or in a private copy).
//
//   Holder    the received message (a shmq::Message) and what keeps it valid: the channel state
//             (counted in its views_) and the schema. One per message; every view shares it.
//   View      a table or struct at an address in the message: attribute access decodes one field
//             (C-level getattr: the field's index comes from the type's attrs dict, keyed by the
//             interned name Python already uses for the attribute).
//   Vector    a lazy sequence over a vector of strings, tables or structs, or an array of structs.
//   Exporter  the buffer protocol over a vector of scalars: numpy arrays (numpy.frombuffer, read
//             only, zero copy) when numpy can be imported, else memoryviews.
//
// Release: leaving the `with` block (or release()) makes every view of the message raise
// ValueError from then on. The message itself goes back to the channel at once, or, while numpy
// arrays / memoryviews of its vectors are alive, when the last of them goes: no Python object
// ever reads released memory. Everything here runs with the GIL held.
#include <flatbuffers/util.h>

#include <cstring>
#include <string>

#include "fb_common.hpp"
#include "shmq/serialize/dyn_read.hpp"

namespace shmq::py {

namespace {

namespace fb = shmq::fb;
namespace dyn = shmq::fb::dyn;

struct Holder {
  PyObject_HEAD
  shmq::Message msg;
  std::shared_ptr<ChannelState> owner;
  std::uint64_t fork_generation;
  PyObject* schema_obj;  // strong
  int exports;           // buffers handed out by Exporters, not yet released
  bool released;         // views refuse access
  bool returned;         // the message went back to the channel
};

struct View {
  PyObject_HEAD
  Holder* holder;  // strong
  SchemaObj* s;
  const fb::TypeInfo* t;
  const std::uint8_t* p;  // the table, or the struct's bytes
  bool root;
};

struct Vector {
  PyObject_HEAD
  Holder* holder;  // strong
  SchemaObj* s;
  const fb::FieldInfo* f;
  const std::uint8_t* data;
  Py_ssize_t n;
  bool inline_structs;  // elements are structs stored inline (vectors and arrays of structs)
};

struct Exporter {
  PyObject_HEAD
  Holder* holder;  // strong
  const void* data;
  Py_ssize_t n;
  Py_ssize_t itemsize;
  const char* format;
};

struct ViewTypes {
  PyTypeObject* holder = nullptr;
  PyTypeObject* view = nullptr;
  PyTypeObject* vector = nullptr;
  PyTypeObject* exporter = nullptr;
  int numpy = -1;  // -1 not tried, 0 not importable, 1 imported
  PyObject* frombuffer = nullptr;
  PyObject* dtypes[reflection::MaxBaseType] = {};
};
ViewTypes vt;

template <class T>
T* alloc(PyTypeObject* type) {
  return reinterpret_cast<T*>(type->tp_alloc(type, 0));  // zeroed; holds a reference to type
}

template <class T>
void free_obj(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

// ---- Holder

void holder_return(Holder* h) {
  if (h->returned) return;
  h->returned = true;
  if (!h->owner) {
    h->msg.release();  // a private copy
    return;
  }
  if (h->fork_generation == g_fork_generation && h->owner->reader_attached()) {
    h->msg.release();
  } else {
    // A parent's message after fork, or one whose reader was closed: never hand it back.
    new (&h->msg) shmq::Message();
  }
  h->owner->views_ -= 1;
  h->owner.reset();
}

void holder_release(Holder* h) {
  h->released = true;
  if (h->exports == 0) holder_return(h);
}

void holder_dealloc(PyObject* self) {
  Holder* h = reinterpret_cast<Holder*>(self);
  holder_return(h);
  h->msg.~Message();
  h->owner.~shared_ptr();
  Py_XDECREF(h->schema_obj);
  free_obj<Holder>(self);
}

bool check_live(const Holder* h) {
  if (!h->released) return true;
  PyErr_SetString(PyExc_ValueError, "the FlatBuffers message was released (the view is used after its `with` block)");
  return false;
}

// ---- values

const char* format_of(reflection::BaseType t) {
  switch (t) {
    case reflection::Bool: return "?";
    case reflection::Byte: return "b";
    case reflection::UType:
    case reflection::UByte: return "B";
    case reflection::Short: return "h";
    case reflection::UShort: return "H";
    case reflection::Int: return "i";
    case reflection::UInt: return "I";
    case reflection::Long: return "q";
    case reflection::ULong: return "Q";
    case reflection::Float: return "f";
    case reflection::Double: return "d";
    default: return "B";
  }
}

PyObject* scalar_obj(reflection::BaseType b, const std::uint8_t* a) {
  switch (b) {
    case reflection::Bool: return PyBool_FromLong(*a != 0);
    case reflection::Float:
    case reflection::Double: return PyFloat_FromDouble(dyn::float_at(b, a));
    case reflection::ULong: return PyLong_FromUnsignedLongLong(dyn::load<std::uint64_t>(a));
    default: return PyLong_FromLongLong(dyn::int_at(b, a));
  }
}

PyObject* default_obj(const fb::FieldInfo& f) {
  if (f.optional) Py_RETURN_NONE;
  switch (f.base) {
    case reflection::Bool: return PyBool_FromLong(f.default_integer != 0);
    case reflection::Float:
    case reflection::Double: return PyFloat_FromDouble(f.default_real);
    case reflection::ULong: return PyLong_FromUnsignedLongLong(static_cast<std::uint64_t>(f.default_integer));
    default: return PyLong_FromLongLong(f.default_integer);
  }
}

PyObject* str_obj(std::string_view s) {
  return PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), nullptr);
}

PyObject* new_view(Holder* h, SchemaObj* s, const fb::TypeInfo* t, const std::uint8_t* p) {
  View* v = alloc<View>(vt.view);
  if (v == nullptr) return nullptr;
  Py_INCREF(h);
  v->holder = h;
  v->s = s;
  v->t = t;
  v->p = p;
  v->root = false;
  return reinterpret_cast<PyObject*>(v);
}

bool numpy_ready() {
  if (vt.numpy >= 0) return vt.numpy == 1;
  PyObject* np = PyImport_ImportModule("numpy");
  if (np == nullptr) {
    PyErr_Clear();
    vt.numpy = 0;
    return false;
  }
  vt.frombuffer = PyObject_GetAttrString(np, "frombuffer");
  PyObject* dtype = PyObject_GetAttrString(np, "dtype");
  Py_DECREF(np);
  bool ok = vt.frombuffer != nullptr && dtype != nullptr;
  for (int b = reflection::UType; ok && b <= reflection::Double; ++b) {
    vt.dtypes[b] = PyObject_CallFunction(dtype, "s", format_of(static_cast<reflection::BaseType>(b)));
    ok = vt.dtypes[b] != nullptr;
  }
  Py_XDECREF(dtype);
  if (!ok) {
    PyErr_Clear();
    vt.numpy = 0;
    return false;
  }
  vt.numpy = 1;
  return true;
}

// A vector (or array) of scalars: a read-only numpy array or memoryview of the bytes in place.
PyObject* scalars_obj(Holder* h, reflection::BaseType element, const std::uint8_t* data, Py_ssize_t n) {
  Exporter* e = alloc<Exporter>(vt.exporter);
  if (e == nullptr) return nullptr;
  Py_INCREF(h);
  e->holder = h;
  e->data = data;
  e->n = n;
  e->itemsize = static_cast<Py_ssize_t>(flatbuffers::GetTypeSize(element));
  e->format = format_of(element);
  PyObject* out;
  if (numpy_ready()) {
    PyObject* args[] = {reinterpret_cast<PyObject*>(e), vt.dtypes[element]};
    out = PyObject_Vectorcall(vt.frombuffer, args, 2, nullptr);
  } else {
    out = PyMemoryView_FromObject(reinterpret_cast<PyObject*>(e));
  }
  Py_DECREF(e);
  return out;
}

PyObject* new_vector(Holder* h, SchemaObj* s, const fb::FieldInfo& f, const std::uint8_t* data,
                     Py_ssize_t n, bool inline_structs) {
  Vector* v = alloc<Vector>(vt.vector);
  if (v == nullptr) return nullptr;
  Py_INCREF(h);
  v->holder = h;
  v->s = s;
  v->f = &f;
  v->data = data;
  v->n = n;
  v->inline_structs = inline_structs;
  return reinterpret_cast<PyObject*>(v);
}

PyObject* vector_obj(Holder* h, SchemaObj* s, const fb::FieldInfo& f, dyn::VectorRef vec) {
  if (!f.supported) {
    PyErr_SetString(PyExc_TypeError, "vectors of unions are not supported");
    return nullptr;
  }
  const auto n = static_cast<Py_ssize_t>(vec.size);
  if (f.element == reflection::String) return new_vector(h, s, f, vec.data, n, false);
  if (f.element == reflection::Obj) return new_vector(h, s, f, vec.data, n, f.type->is_struct);
  return scalars_obj(h, f.element, vec.data, n);
}

PyObject* union_name(const fb::FieldInfo& f, std::int64_t value) {
  const fb::EnumValueInfo* m = f.enum_info != nullptr ? f.enum_info->find(value) : nullptr;
  if (m == nullptr || m->member == nullptr) Py_RETURN_NONE;
  return PyUnicode_FromStringAndSize(m->name.data(), static_cast<Py_ssize_t>(m->name.size()));
}

// One field of a table or struct view, decoded.
PyObject* field_obj(View* v, const fb::FieldInfo& f) {
  const bool in_struct = v->t->is_struct;
  const dyn::TableRef table(v->p, v->t);
  const std::uint8_t* a = in_struct ? v->p + f.offset : table.address(f);
  switch (f.base) {
    case reflection::String:
      if (a == nullptr) Py_RETURN_NONE;
      return str_obj(dyn::string_at(a));
    case reflection::Obj:
      if (a == nullptr) Py_RETURN_NONE;
      return new_view(v->holder, v->s, f.type, f.type->is_struct ? a : dyn::follow(a));
    case reflection::Union: {
      const dyn::TableRef m = table.union_member(f);
      if (!m.present()) Py_RETURN_NONE;
      return new_view(v->holder, v->s, &m.type(), m.data());
    }
    case reflection::UType:
      return union_name(*f.union_value, a != nullptr ? dyn::int_at(f.base, a) : 0);
    case reflection::Vector:
      if (a == nullptr) Py_RETURN_NONE;
      return vector_obj(v->holder, v->s, f, dyn::vector_at(a));
    case reflection::Array:
      if (f.element == reflection::Obj) return new_vector(v->holder, v->s, f, a, f.fixed_length, true);
      return scalars_obj(v->holder, f.element, a, f.fixed_length);
    default:
      return a != nullptr ? scalar_obj(f.base, a) : default_obj(f);
  }
}

// ---- to_dict: every field, as plain Python objects

PyObject* view_dict(View* v);

PyObject* plain(PyObject* o) {
  // Views and vectors become dicts and lists; numpy arrays / memoryviews lists.
  if (o == nullptr) return nullptr;
  if (o == Py_None || PyLong_Check(o) || PyFloat_Check(o) || PyUnicode_Check(o)) return o;
  PyObject* out = o;
  if (Py_TYPE(o) == vt.view) {
    out = view_dict(reinterpret_cast<View*>(o));
  } else if (Py_TYPE(o) == vt.vector) {
    out = PySequence_List(o);
    if (out != nullptr) {
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); ++i) {
        PyObject* x = plain(Py_NewRef(PyList_GET_ITEM(out, i)));
        if (x == nullptr) {
          Py_CLEAR(out);
          break;
        }
        PyList_SetItem(out, i, x);
      }
    }
  } else if (PyMemoryView_Check(o) || PyObject_HasAttrString(o, "tolist")) {
    out = PyObject_CallMethod(o, "tolist", nullptr);
  } else {
    return o;
  }
  Py_DECREF(o);
  return out;
}

PyObject* view_dict(View* v) {
  if (!check_live(v->holder)) return nullptr;
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  const dyn::TableRef table(v->p, v->t);
  for (const fb::FieldInfo& f : v->t->fields) {
    if (f.deprecated || f.base == reflection::UType) continue;
    if (!v->t->is_struct && f.base != reflection::Union && table.address(f) == nullptr &&
        !flatbuffers::IsScalar(f.base)) {
      continue;  // absent strings, tables, vectors, structs
    }
    PyObject* x = plain(field_obj(v, f));
    if (x != nullptr && f.base == reflection::Union) {
      if (x == Py_None) {
        Py_DECREF(x);
        continue;
      }
      PyObject* name = union_name(f, table.integer(*f.union_type));
      PyObject* pair = name != nullptr ? PyTuple_Pack(2, name, x) : nullptr;
      Py_XDECREF(name);
      Py_DECREF(x);
      x = pair;
    }
    if (x == nullptr || PyDict_SetItem(d, v->s->caches[v->t->index].keys[f.index], x) != 0) {
      Py_XDECREF(x);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(x);
  }
  return d;
}

// ---- View type

// The message goes back when its last view, vector or array goes (holder_dealloc), or earlier on
// release(): `q.get_fb(T).bid.price` works although the root view dies before `.price`.
void view_dealloc(PyObject* self) {
  Py_XDECREF(reinterpret_cast<View*>(self)->holder);
  free_obj<View>(self);
}

// Attribute names in code are interned, so they are pointer-equal to the type's interned field
// names: a scan of a few pointers finds the field; other strs go through the name dict.
PyObject* view_getattro(PyObject* self, PyObject* name) {
  View* v = reinterpret_cast<View*>(self);
  const TypeCache& c = v->s->caches[v->t->index];
  std::size_t i = 0;
  while (i < c.keys.size() && c.keys[i] != name) ++i;
  if (i == c.keys.size() || v->t->fields[i].deprecated) {
    PyObject* idx = PyDict_GetItemWithError(c.attrs, name);
    if (idx == nullptr) {
      if (PyErr_Occurred()) return nullptr;
      return PyObject_GenericGetAttr(self, name);
    }
    i = static_cast<std::size_t>(PyLong_AsSsize_t(idx));
  }
  if (!check_live(v->holder)) return nullptr;
  return field_obj(v, v->t->fields[i]);
}

PyObject* view_to_dict(PyObject* self, PyObject*) { return view_dict(reinterpret_cast<View*>(self)); }

PyObject* view_release(PyObject* self, PyObject*) {
  View* v = reinterpret_cast<View*>(self);
  if (v->root) holder_release(v->holder);
  Py_RETURN_NONE;
}

PyObject* view_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* view_exit(PyObject* self, PyObject* const*, Py_ssize_t) { return view_release(self, nullptr); }

PyObject* view_dir(PyObject* self, PyObject*) {
  View* v = reinterpret_cast<View*>(self);
  PyObject* out = PyDict_Keys(v->s->caches[v->t->index].attrs);
  if (out == nullptr) return nullptr;
  for (const char* m : {"to_dict", "release", "released", "fb_type"}) {
    PyObject* s = PyUnicode_FromString(m);
    if (s == nullptr || PyList_Append(out, s) != 0) {
      Py_XDECREF(s);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(s);
  }
  return out;
}

PyObject* view_repr(PyObject* self) {
  View* v = reinterpret_cast<View*>(self);
  return PyUnicode_FromFormat("<shmq.fb.View %s%s>", v->t->name.c_str(),
                              v->holder->released ? " (released)" : "");
}

PyObject* view_released(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<View*>(self)->holder->released);
}

PyObject* view_fb_type(PyObject* self, void*) {
  View* v = reinterpret_cast<View*>(self);
  return PyUnicode_FromStringAndSize(v->t->name.data(), static_cast<Py_ssize_t>(v->t->name.size()));
}

PyMethodDef view_methods[] = {
    {"to_dict", view_to_dict, METH_NOARGS,
     "Every field as plain Python objects: tables and structs as dicts, vectors as lists, unions "
     "as (member name, dict); absent strings, tables and vectors are left out."},
    {"release", view_release, METH_NOARGS,
     "Returns the message to the channel (the root view only; what `with` does on exit)."},
    {"__enter__", view_enter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(view_exit)), METH_FASTCALL, nullptr},
    {"__dir__", view_dir, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef view_getset[] = {
    {"released", view_released, nullptr, "True once the message was released.", nullptr},
    {"fb_type", view_fb_type, nullptr, "The fully qualified name of the view's table or struct.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot view_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(view_dealloc)},
    {Py_tp_getattro, reinterpret_cast<void*>(view_getattro)},
    {Py_tp_methods, view_methods},
    {Py_tp_getset, view_getset},
    {Py_tp_repr, reinterpret_cast<void*>(view_repr)},
    {Py_tp_doc, const_cast<char*>(
        "A lazy view of a FlatBuffers table or struct in shared memory: each attribute decodes one "
        "field on access. Use the message's root view as a context manager; after it (or "
        "release()), every view of the message raises ValueError.")},
    {0, nullptr}};

// ---- Vector type

void vector_dealloc(PyObject* self) {
  Py_XDECREF(reinterpret_cast<Vector*>(self)->holder);
  free_obj<Vector>(self);
}

Py_ssize_t vector_len(PyObject* self) { return reinterpret_cast<Vector*>(self)->n; }

PyObject* vector_item(PyObject* self, Py_ssize_t i) {
  Vector* v = reinterpret_cast<Vector*>(self);
  if (!check_live(v->holder)) return nullptr;
  if (i < 0 || i >= v->n) {
    PyErr_SetString(PyExc_IndexError, "FlatBuffers vector index out of range");
    return nullptr;
  }
  const fb::FieldInfo& f = *v->f;
  if (v->inline_structs) return new_view(v->holder, v->s, f.type, v->data + i * f.element_size);
  const std::uint8_t* slot = v->data + i * sizeof(flatbuffers::uoffset_t);
  if (f.element == reflection::String) return str_obj(dyn::string_at(slot));
  return new_view(v->holder, v->s, f.type, dyn::follow(slot));
}

PyObject* vector_repr(PyObject* self) {
  Vector* v = reinterpret_cast<Vector*>(self);
  return PyUnicode_FromFormat("<shmq.fb.Vector %s[%zd]>", v->f->name.c_str(), v->n);
}

PyType_Slot vector_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(vector_dealloc)},
    {Py_sq_length, reinterpret_cast<void*>(vector_len)},
    {Py_sq_item, reinterpret_cast<void*>(vector_item)},
    {Py_tp_repr, reinterpret_cast<void*>(vector_repr)},
    {Py_tp_doc, const_cast<char*>("A lazy sequence over a FlatBuffers vector of strings, tables or structs.")},
    {0, nullptr}};

// ---- Exporter type (the buffer protocol over scalars in place)

void exporter_dealloc(PyObject* self) {
  Py_XDECREF(reinterpret_cast<Exporter*>(self)->holder);
  free_obj<Exporter>(self);
}

int exporter_getbuffer(PyObject* self, Py_buffer* b, int flags) {
  Exporter* e = reinterpret_cast<Exporter*>(self);
  if (!check_live(e->holder)) return -1;
  if ((flags & PyBUF_WRITABLE) != 0) {
    PyErr_SetString(PyExc_BufferError, "a FlatBuffers vector in shared memory is read-only");
    return -1;
  }
  b->buf = const_cast<void*>(e->data);
  b->obj = Py_NewRef(self);
  b->len = e->n * e->itemsize;
  b->readonly = 1;
  b->itemsize = e->itemsize;
  b->format = (flags & PyBUF_FORMAT) != 0 ? const_cast<char*>(e->format) : nullptr;
  b->ndim = 1;
  b->shape = (flags & PyBUF_ND) != 0 ? &e->n : nullptr;
  b->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? &e->itemsize : nullptr;
  b->suboffsets = nullptr;
  b->internal = nullptr;
  e->holder->exports += 1;
  return 0;
}

void exporter_releasebuffer(PyObject* self, Py_buffer*) {
  Holder* h = reinterpret_cast<Exporter*>(self)->holder;
  h->exports -= 1;
  if (h->exports == 0 && h->released) holder_return(h);
}

PyType_Slot exporter_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(exporter_dealloc)},
    {Py_bf_getbuffer, reinterpret_cast<void*>(exporter_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(exporter_releasebuffer)},
    {0, nullptr}};

void holder_type_dealloc(PyObject* self) { holder_dealloc(self); }

PyType_Slot holder_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(holder_type_dealloc)}, {0, nullptr}};

PyTypeObject* make_type(const char* name, std::size_t size, PyType_Slot* slots) {
  PyType_Spec spec{name, static_cast<int>(size), 0, Py_TPFLAGS_DEFAULT, slots};
  PyObject* t = PyType_FromSpec(&spec);
  if (t == nullptr) throw nb::python_error();
  return reinterpret_cast<PyTypeObject*>(t);
}

}  // namespace

void init_fb_views(nb::module_& m) {
  vt.holder = make_type("shmq._shmq.FbHolder", sizeof(Holder), holder_slots);
  vt.view = make_type("shmq.fb.View", sizeof(View), view_slots);
  vt.vector = make_type("shmq.fb.Vector", sizeof(Vector), vector_slots);
  vt.exporter = make_type("shmq._shmq.FbExporter", sizeof(Exporter), exporter_slots);
  m.attr("FbView") = nb::handle(reinterpret_cast<PyObject*>(vt.view));
  m.attr("FbVector") = nb::handle(reinterpret_cast<PyObject*>(vt.vector));
}

PyObject* new_root_view(TypeObject* type, shmq::Message&& msg, std::shared_ptr<ChannelState> owner,
                        const std::uint8_t* buffer) {
  Holder* h = alloc<Holder>(vt.holder);
  if (h == nullptr) {
    if (owner) owner->views_ -= 1;
    return nullptr;
  }
  new (&h->msg) shmq::Message(std::move(msg));
  new (&h->owner) std::shared_ptr<ChannelState>(std::move(owner));
  h->fork_generation = g_fork_generation;
  h->schema_obj = Py_NewRef(type->schema_obj);
  PyObject* v = new_view(h, type->s, type->t, dyn::follow(buffer));
  Py_DECREF(h);  // the view holds it now (or, on failure, this frees it and returns the message)
  if (v != nullptr) reinterpret_cast<View*>(v)->root = true;
  return v;
}

}  // namespace shmq::py
