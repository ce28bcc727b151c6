// The FlatBuffers binding (shmq.fb, python/shmq/fb.py): schemas loaded at run time by serialize's
// loader, their types, and the verbs that move messages built from dicts:
//   Queue/SimpleQueue/JoinableQueue: put_fb(Type, mapping=None, /, block=True, timeout=None, **fields)
//                                    get_fb(Type, block=True, timeout=None, verify=True)
//   Connection:                      send_fb(Type, mapping=None, /, **fields), recv_fb(Type, verify=True)
//   Type:                            build(mapping=None, /, **fields) -> bytes, from_bytes(buf, verify=True)
//                                    build_record(mapping=None, /, **fields) -> bytes,
//                                    from_record(payload, kind=2, verify=True)
//
// put_fb walks the dict in C++ (PySource, fb_source.hpp) with serialize's DynBuilder, building in
// place in the claimed ring space through DynWriter; a bad value raises TypeError/ValueError
// naming the field's path and the claim is aborted. get_fb verifies the message against the
// schema (serialize's ReadChecks: the reflection verifier, or with verify=False only the type
// identity) and returns a lazy View (fb_view.cpp); a message that fails is consumed and raises
// shmq.fb.VerifyError, and the channel stays usable.
//
// The verbs are plain CPython fast-call methods added to the QueueHandle and PipeEnd classes, so a
// call is one native call with no argument-parsing layer in between. Blocking follows the other
// verbs: the claim waits for room with the GIL released, in slices that check for signals.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <vector>

#include "fb_common.hpp"
#include "fb_source.hpp"
#include "pipe_binding.hpp"
#include "queue_binding.hpp"
#include "shmq/serialize/dyn_read.hpp"
#include "shmq/serialize/dyn_write.hpp"

namespace shmq::py {

namespace {

namespace fb = shmq::fb;

struct FbGlobals {
  PyTypeObject* type_type = nullptr;
  PyObject* schema_error = nullptr;  // shmq.fb.SchemaError (set by fb.py)
  PyObject* verify_error = nullptr;  // shmq.fb.VerifyError
  PyObject* mapping_abc = nullptr;   // collections.abc.Mapping
};
FbGlobals fg;

// ---- errors

[[noreturn]] void raise_build(const fb::BuildError& e) {
  if (e.code == fb::BuildErrc::source_error) throw nb::python_error();  // already set
  throw_py(e.code == fb::BuildErrc::value_error ? PyExc_ValueError : PyExc_TypeError, e.text());
}

[[noreturn]] void raise_verify(const std::string& what) {
  throw_py(fg.verify_error != nullptr ? fg.verify_error : PyExc_ValueError, what);
}

template <class F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// ---- arguments of the fast-call verbs

struct FbArgs {
  TypeObject* type = nullptr;
  PyObject* mapping = Py_None;  // borrowed
  bool block = true;
  std::optional<double> timeout;
  bool verify = true;
  nb::object merged;  // mapping + **fields, when there are fields
  PyObject* node() const { return merged.is_valid() ? merged.ptr() : mapping; }
};

TypeObject* type_arg(const char* fname, PyObject* o) {
  TypeObject* t = as_type(o);
  if (t == nullptr) {
    throw_py(PyExc_TypeError, std::string(fname) + "() needs a shmq.fb Type (schema.Name) as its first "
                              "argument, got " + Py_TYPE(o)->tp_name);
  }
  return t;
}

std::optional<double> timeout_arg(PyObject* o) {
  if (o == Py_None) return std::nullopt;
  const double t = PyFloat_AsDouble(o);
  if (t == -1.0 && PyErr_Occurred()) throw nb::python_error();
  return t;
}

bool bool_arg(PyObject* o) {
  const int b = PyObject_IsTrue(o);
  if (b < 0) throw nb::python_error();
  return b == 1;
}

// Names, in order, of the parameters after the Type that may also come positionally.
struct Spec {
  const char* fname;
  bool mapping;  // takes (mapping, **fields)
  bool block;    // takes block and timeout
  bool verify;   // takes verify
};

FbArgs parse_args(const Spec& spec, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  FbArgs a;
  if (nargs < 1) throw_py(PyExc_TypeError, std::string(spec.fname) + "() missing the Type argument");
  a.type = type_arg(spec.fname, args[0]);
  const char* pos[4];
  std::size_t npos = 0;
  if (spec.mapping) pos[npos++] = "mapping";
  if (spec.block) {
    pos[npos++] = "block";
    pos[npos++] = "timeout";
  }
  if (spec.verify) pos[npos++] = "verify";
  if (static_cast<std::size_t>(nargs - 1) > npos) {
    throw_py(PyExc_TypeError, std::string(spec.fname) + "() takes at most " +
                                  std::to_string(npos + 1) + " positional arguments");
  }
  auto set = [&](std::string_view name, PyObject* v) {
    if (name == "mapping") a.mapping = v;
    else if (name == "block") a.block = bool_arg(v);
    else if (name == "timeout") a.timeout = timeout_arg(v);
    else if (name == "verify") a.verify = bool_arg(v);
  };
  for (Py_ssize_t i = 1; i < nargs; ++i) set(pos[static_cast<std::size_t>(i - 1)], args[i]);
  const Py_ssize_t nkw = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  std::optional<nb::dict> fields;  // made only when there are keyword fields
  bool any_fields = false;
  for (Py_ssize_t k = 0; k < nkw; ++k) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, k);
    PyObject* val = args[nargs + k];
    const char* name = PyUnicode_AsUTF8(key);
    if (name == nullptr) throw nb::python_error();
    const std::string_view n(name);
    const bool known = (spec.block && (n == "block" || n == "timeout")) || (spec.verify && n == "verify");
    if (known) {
      set(n, val);
    } else if (spec.mapping && n != "mapping") {
      if (!fields) fields.emplace();
      (*fields)[key] = nb::handle(val);  // a field of the message
      any_fields = true;
    } else {
      throw_py(PyExc_TypeError, std::string(spec.fname) + "() got an unexpected keyword argument '" +
                                    std::string(n) + "'");
    }
  }
  if (any_fields) {
    if (a.mapping != Py_None) {
      nb::dict merged;
      if (PyDict_Merge(merged.ptr(), a.mapping, 1) != 0) {
        throw_py(PyExc_TypeError, std::string(spec.fname) + "(): the mapping argument is not a mapping");
      }
      if (PyDict_Update(merged.ptr(), fields->ptr()) != 0) throw nb::python_error();
      a.merged = std::move(merged);
    } else {
      a.merged = std::move(*fields);
    }
  } else if (spec.mapping && a.mapping == Py_None) {
    a.merged = nb::dict();  // no fields at all: every field takes its default
  }
  return a;
}

// ---- writing

// A finished buffer passed instead of a mapping (interop with other builders): checked, then
// copied once into the channel with the type's prefix.
bool is_finished_buffer(PyObject* o) {
  return !PyDict_Check(o) && !PyUnicode_Check(o) && PyObject_CheckBuffer(o);
}


template <class W>
auto claim_waiting(W& w, std::size_t n, Deadline d) {
  auto c = w.try_claim(n, fb::kFlatBuffersKind);
  if (c.valid() || c.status() != Status::full || is_poll(d)) return c;
  for (;;) {
    {
      nb::gil_scoped_release nogil;
      c = w.claim(n, d.capped(kSlice), fb::kFlatBuffersKind);
    }
    if (c.valid() || (c.status() != Status::timeout && c.status() != Status::interrupted)) return c;
    check_signals();
    if (d.expired()) return c;
  }
}

template <class W>
Status send_waiting(W& w, std::span<const std::byte> m, Deadline d) {
  if (is_poll(d)) return w.try_send(m, fb::kFlatBuffersKind);
  for (;;) {
    Status s;
    {
      nb::gil_scoped_release nogil;
      s = w.send(m, d, fb::kFlatBuffersKind);
    }
    if (s != Status::interrupted) return s;
    check_signals();
  }
}

// The record (kind-2 payload: prefix + buffer) of a finished buffer `node` of type t, after the
// verifier accepted the buffer; raises VerifyError (nothing sent) if it did not.
std::vector<std::byte> record_of_finished(TypeObject* t, PyObject* node) {
  Py_buffer view;
  if (PyObject_GetBuffer(node, &view, PyBUF_C_CONTIGUOUS) != 0) throw nb::python_error();
  std::vector<std::byte> rec(fb::kPrefixBytes + static_cast<std::size_t>(view.len));
  std::memcpy(rec.data() + fb::kPrefixBytes, view.buf, static_cast<std::size_t>(view.len));
  PyBuffer_Release(&view);
  // The copy is 8-aligned (operator new), as the verifier wants.
  if (!fb::verify_dyn(*t->t, std::span<const std::byte>(rec).subspan(fb::kPrefixBytes))) {
    raise_verify("the buffer is not a valid " + t->t->name + " (rejected by the verifier); nothing was sent");
  }
  fb::store_prefix(rec.data(), {t->t->type_id, static_cast<std::uint32_t>(fb::kPrefixBytes)});
  return rec;
}

// Builds a.node() as a.type in place in `w` (or sends a finished buffer); raises on a bad value.
template <class W>
Status send_fb(W& w, Deadline d, const FbArgs& a) {
  TypeObject* t = a.type;
  TypeCache& cache = t->s->caches[t->t->index];
  PyObject* node = a.node();
  if (is_finished_buffer(node)) {
    const std::vector<std::byte> rec = record_of_finished(t, node);
    const std::size_t n = rec.size();
    auto c = claim_waiting(w, n, d);
    if (!c.valid()) return c.status() == Status::too_big ? send_waiting(w, rec, d) : c.status();
    std::memcpy(c.bytes().data(), rec.data(), n);
    c.commit(n);
    return Status::ok;
  }
  thread_local fb::BuildScratch scratch;
  PySource src(*t->s, fg.mapping_abc);
  fb::DynWriter<W> dw(w);
  const std::size_t hint = cache.recent_size;
  const fb::DynSent sent = dw.send_via(*t->t, src, node, scratch, hint, [&](fb::RootId id, auto& build) {
    return dw.any().send_with(
        id, build, hint, [&](std::size_t n) { return claim_waiting(w, n, d); },
        [&](std::span<const std::byte> m) { return send_waiting(w, m, d); });
  });
  if (!sent.error.ok()) raise_build(sent.error);
  // The next message of this type is expected to be about as large as this one: that sizes its
  // claim (a large one gets a side allocation of its size and is built in place) and the part
  // of a slot the builder uses.
  if (sent.status == Status::ok) cache.recent_size = fb::kPrefixBytes + dw.any().last_buffer_size();
  return sent.status;
}

// ---- reading

PyObject* view_of(TypeObject* t, shmq::Message&& m, std::shared_ptr<ChannelState> owner, bool verify) {
  fb::ReaderOptions o;
  o.mode = verify ? fb::VerifyMode::verify : fb::VerifyMode::trusted;
  fb::ReadChecks checks(o, nullptr);
  fb::ReadError err;
  const fb::Expected want = fb::expected_of(*t->t);
  const fb::Checked c = checks.check(m, Status::ok, want, err);
  if (err.code != fb::ReadErrc::ok) {
    if (owner) owner->views_ -= 1;  // the message was consumed and released
    raise_verify(err.message());
  }
  return new_root_view(t, std::move(m), std::move(owner), reinterpret_cast<const std::uint8_t*>(c.buffer.data()));
}

// ---- the verbs

constexpr Spec kPutFb{"put_fb", true, true, false};
constexpr Spec kGetFb{"get_fb", false, true, true};
constexpr Spec kSendFb{"send_fb", true, false, false};
constexpr Spec kRecvFb{"recv_fb", false, false, true};

PyObject* queue_put_fb(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    QueueHandle& h = *nb::inst_ptr<QueueHandle>(self);
    const FbArgs a = parse_args(kPutFb, args, nargs, kwnames);
    h.put_with(a.block, a.timeout, [&](shmq::QueueWriter& w, Deadline d) { return send_fb(w, d, a); });
    Py_RETURN_NONE;
  });
}

PyObject* queue_get_fb(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    QueueHandle& h = *nb::inst_ptr<QueueHandle>(self);
    const FbArgs a = parse_args(kGetFb, args, nargs, kwnames);
    shmq::Message m;
    std::shared_ptr<ChannelState> owner = h.recv_held(m, a.block, a.timeout);
    return view_of(a.type, std::move(m), std::move(owner), a.verify);
  });
}

PyObject* pipe_send_fb(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    PipeEnd& p = *nb::inst_ptr<PipeEnd>(self);
    const FbArgs a = parse_args(kSendFb, args, nargs, kwnames);
    p.send_with([&](shmq::PipeWriter& w, Deadline d) { return send_fb(w, d, a); });
    Py_RETURN_NONE;
  });
}

PyObject* pipe_recv_fb(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    PipeEnd& p = *nb::inst_ptr<PipeEnd>(self);
    const FbArgs a = parse_args(kRecvFb, args, nargs, kwnames);
    shmq::Message m;
    std::shared_ptr<ChannelState> owner = p.recv_held(m);
    return view_of(a.type, std::move(m), std::move(owner), a.verify);
  });
}

PyMethodDef queue_defs[] = {
    {"put_fb", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(queue_put_fb)),
     METH_FASTCALL | METH_KEYWORDS, "put_fb(Type, mapping=None, /, block=True, timeout=None, **fields)"},
    {"get_fb", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(queue_get_fb)),
     METH_FASTCALL | METH_KEYWORDS, "get_fb(Type, block=True, timeout=None, verify=True) -> shmq.fb.View"},
};
PyMethodDef pipe_defs[] = {
    {"send_fb", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pipe_send_fb)),
     METH_FASTCALL | METH_KEYWORDS, "send_fb(Type, mapping=None, /, **fields)"},
    {"recv_fb", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pipe_recv_fb)),
     METH_FASTCALL | METH_KEYWORDS, "recv_fb(Type, verify=True) -> shmq.fb.View"},
};

void add_methods(nb::handle cls, PyMethodDef* defs, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    PyObject* d = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &defs[i]);
    if (d == nullptr || PyObject_SetAttrString(cls.ptr(), defs[i].ml_name, d) != 0) {
      Py_XDECREF(d);
      throw nb::python_error();
    }
    Py_DECREF(d);
  }
}

// ---- Type (shmq.fb.Type)

void type_dealloc(PyObject* self) {
  Py_XDECREF(reinterpret_cast<TypeObject*>(self)->schema_obj);
  PyTypeObject* tp = Py_TYPE(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

PyObject* type_repr(PyObject* self) {
  const auto* t = reinterpret_cast<TypeObject*>(self)->t;
  return PyUnicode_FromFormat("<shmq.fb.Type %s (%s)>", t->name.c_str(), t->is_struct ? "struct" : "table");
}

PyObject* type_name(PyObject* self, void*) {
  return PyUnicode_FromString(reinterpret_cast<TypeObject*>(self)->t->name.c_str());
}
PyObject* type_short_name(PyObject* self, void*) {
  return PyUnicode_FromString(reinterpret_cast<TypeObject*>(self)->t->short_name.c_str());
}
PyObject* type_is_struct(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<TypeObject*>(self)->t->is_struct);
}
PyObject* type_fields(PyObject* self, void*) {
  const auto* t = reinterpret_cast<TypeObject*>(self)->t;
  PyObject* out = PyList_New(0);
  for (const fb::FieldInfo& f : t->fields) {
    if (f.deprecated || f.base == reflection::UType || out == nullptr) continue;
    PyObject* s = PyUnicode_FromString(f.name.c_str());
    if (s == nullptr || PyList_Append(out, s) != 0) Py_CLEAR(out);
    Py_XDECREF(s);
  }
  return out;
}

// Builds the (mapping, **fields) of a Type method's arguments into `b`, finished; raises on a bad
// value. `fname` names the method in errors.
void build_into(const char* fname, flatbuffers::FlatBufferBuilder& b, PyObject* self,
                PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  std::vector<PyObject*> all{self};
  for (Py_ssize_t i = 0; i < nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0); ++i) all.push_back(args[i]);
  const FbArgs a = parse_args({fname, true, false, false}, all.data(), nargs + 1, kwnames);
  TypeObject* t = a.type;
  if (t->t->is_struct) throw_py(PyExc_TypeError, "struct " + t->t->short_name + " cannot be a message: FlatBuffers roots are tables");
  PySource src(*t->s, fg.mapping_abc);
  thread_local fb::BuildScratch scratch;
  fb::DynBuilder<PySource> db(b, src, scratch);
  const flatbuffers::uoffset_t root = db.table(*t->t, a.node());
  if (root == 0) raise_build(db.error());
  b.Finish(flatbuffers::Offset<void>(root), t->t->identifier.empty() ? nullptr : t->t->identifier.c_str());
}

// Type.build(mapping=None, /, **fields) -> bytes: the finished FlatBuffers buffer, built on the heap
// (for files, other transports and the flatc-generated classes).
PyObject* type_build(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    flatbuffers::FlatBufferBuilder b(1024, nullptr, false, fb::kBufferAlign);
    build_into("build", b, self, args, nargs, kwnames);
    return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(b.GetBufferPointer()),
                                     static_cast<Py_ssize_t>(b.GetSize()));
  });
}

// Type.build_record(mapping=None, /, **fields) -> bytes: the message as a queue carries it (the
// payload of a kind-2 record: prefix + buffer, serialize/prefix.hpp), for transports that carry
// shmq's message kinds (shmq.nats). A finished buffer instead of a mapping is verified and prefixed.
PyObject* type_build_record(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    TypeObject* t = type_arg("build_record", self);
    const bool no_fields = kwnames == nullptr || PyTuple_GET_SIZE(kwnames) == 0;
    if (nargs == 1 && no_fields && is_finished_buffer(args[0])) {
      const std::vector<std::byte> rec = record_of_finished(t, args[0]);
      return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(rec.data()),
                                       static_cast<Py_ssize_t>(rec.size()));
    }
    flatbuffers::FlatBufferBuilder b(1024, nullptr, false, fb::kBufferAlign);
    build_into("build_record", b, self, args, nargs, kwnames);
    const std::size_t size = b.GetSize();
    PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(fb::kPrefixBytes + size));
    if (out == nullptr) throw nb::python_error();
    auto* p = reinterpret_cast<std::byte*>(PyBytes_AS_STRING(out));
    fb::store_prefix(p, {t->t->type_id, static_cast<std::uint32_t>(fb::kPrefixBytes)});
    std::memcpy(p + fb::kPrefixBytes, b.GetBufferPointer(), size);
    return out;
  });
}

// Type.from_record(payload, kind=2, verify=True) -> View over a private copy of a record's payload,
// with get_fb's checks: kind, prefix (type identity, start), verifier. VerifyError says which failed.
PyObject* type_from_record(PyObject* self, PyObject* args, PyObject* kwargs) {
  return guarded([&]() -> PyObject* {
    static const char* kw[] = {"payload", "kind", "verify", nullptr};
    Py_buffer view;
    int kind = fb::kFlatBuffersKind;
    int verify = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|ip:from_record", const_cast<char**>(kw), &view,
                                     &kind, &verify)) {
      return nullptr;
    }
    std::vector<std::byte> copy(static_cast<const std::byte*>(view.buf),
                                static_cast<const std::byte*>(view.buf) + view.len);
    PyBuffer_Release(&view);
    if (kind < 0 || kind > 0xffff) throw_py(PyExc_ValueError, "from_record(): kind must be in [0, 65535]");
    shmq::Message m;
    m.set_owned(std::move(copy), static_cast<std::uint16_t>(kind));
    return view_of(reinterpret_cast<TypeObject*>(self), std::move(m), nullptr, verify != 0);
  });
}

// Type.from_bytes(buffer, verify=True) -> View over a private copy of a finished buffer.
PyObject* type_from_bytes(PyObject* self, PyObject* args, PyObject* kwargs) {
  return guarded([&]() -> PyObject* {
    static const char* kw[] = {"buffer", "verify", nullptr};
    Py_buffer view;
    int verify = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:from_bytes", const_cast<char**>(kw), &view, &verify)) {
      return nullptr;
    }
    std::vector<std::byte> copy(static_cast<const std::byte*>(view.buf),
                                static_cast<const std::byte*>(view.buf) + view.len);
    PyBuffer_Release(&view);
    TypeObject* t = reinterpret_cast<TypeObject*>(self);
    shmq::Message m;
    m.set_owned(std::move(copy), fb::kFlatBuffersKind);
    const std::span<const std::byte> buf = m.bytes();
    const bool good = verify != 0 ? fb::verify_dyn(*t->t, buf) : fb::identity_dyn(*t->t, buf);
    if (!good) raise_verify("the buffer is not a valid " + t->t->name + " (rejected by the verifier)");
    return new_root_view(t, std::move(m), nullptr, reinterpret_cast<const std::uint8_t*>(buf.data()));
  });
}

PyMethodDef type_methods[] = {
    {"build", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(type_build)),
     METH_FASTCALL | METH_KEYWORDS,
     "build(mapping=None, /, **fields) -> bytes: the finished FlatBuffers buffer of this table."},
    {"from_bytes", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(type_from_bytes)),
     METH_VARARGS | METH_KEYWORDS,
     "from_bytes(buffer, verify=True) -> View over a private copy of a finished buffer of this table."},
    {"build_record", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(type_build_record)),
     METH_FASTCALL | METH_KEYWORDS,
     "build_record(mapping=None, /, **fields) -> bytes: the message as shmq's queues carry it "
     "(kind 2: the 8-byte prefix, then the buffer)."},
    {"from_record", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(type_from_record)),
     METH_VARARGS | METH_KEYWORDS,
     "from_record(payload, kind=2, verify=True) -> View of a record's payload, checked as get_fb "
     "checks a message (VerifyError if it is not a valid message of this table)."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef type_getset[] = {
    {"name", type_name, nullptr, "The fully qualified name (namespace.Name).", nullptr},
    {"short_name", type_short_name, nullptr, "The name without its namespace.", nullptr},
    {"is_struct", type_is_struct, nullptr, "True for a struct, False for a table.", nullptr},
    {"fields", type_fields, nullptr, "The field names, in schema order.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot type_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(type_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(type_repr)},
    {Py_tp_methods, type_methods},
    {Py_tp_getset, type_getset},
    {Py_tp_doc, const_cast<char*>("A table or struct of a schema loaded with shmq.fb.load().")},
    {0, nullptr}};

// ---- schemas

[[noreturn]] void raise_schema(const shmq::Error& e, const fb::SchemaDiagnostic& d) {
  if (e.code == shmq::Errc::not_found) throw_error(e);
  PyObject* exc = fg.schema_error != nullptr ? fg.schema_error : PyExc_ValueError;
  PyObject* inst = PyObject_CallFunction(exc, "sssii", e.what.c_str(), d.message.c_str(), d.file.c_str(),
                                         d.line, d.column);
  if (inst == nullptr) throw nb::python_error();
  PyErr_SetObject(exc, inst);
  Py_DECREF(inst);
  throw nb::python_error();
}

nb::object load_schema(const std::string& path_or_text, bool is_path,
                       const std::vector<std::string>& include_dirs, const std::string& source_name) {
  fb::SchemaDiagnostic diag;
  const fb::SchemaOptions opts{.include_dirs = include_dirs};
  auto r = is_path ? fb::Schema::load_file(path_or_text, opts, &diag)
                   : fb::Schema::load_text(path_or_text, opts, source_name, &diag);
  if (!r) raise_schema(r.error(), diag);
  return nb::cast(new SchemaObj(std::move(*r)), nb::rv_policy::take_ownership);
}

nb::object schema_type(nb::handle self, const std::string& name) {
  SchemaObj& s = nb::cast<SchemaObj&>(self);
  const fb::TypeInfo* t = s.schema.find(name);
  if (t == nullptr) return nb::none();
  TypeObject* o = reinterpret_cast<TypeObject*>(fg.type_type->tp_alloc(fg.type_type, 0));
  if (o == nullptr) throw nb::python_error();
  o->schema_obj = Py_NewRef(self.ptr());
  o->s = &s;
  o->t = t;
  return nb::steal(reinterpret_cast<PyObject*>(o));
}

nb::list schema_type_names(SchemaObj& s) {
  nb::list out;
  for (const fb::TypeInfo& t : s.schema.types()) out.append(nb::str(t.name.c_str()));
  return out;
}

nb::dict schema_enums(SchemaObj& s) {
  nb::dict out;
  for (const fb::EnumInfo& e : s.schema.enums()) {
    if (e.is_union) continue;
    nb::list values;
    for (const fb::EnumValueInfo& v : e.values) values.append(nb::make_tuple(nb::str(v.name.c_str()), v.value));
    out[nb::str(e.name.c_str())] = values;
  }
  return out;
}

void set_errors(nb::handle schema_error, nb::handle verify_error) {
  Py_XSETREF(fg.schema_error, Py_NewRef(schema_error.ptr()));
  Py_XSETREF(fg.verify_error, Py_NewRef(verify_error.ptr()));
}

}  // namespace

SchemaObj::SchemaObj(fb::Schema s) : schema(std::move(s)) {
  caches.resize(schema.types().size());
  for (const fb::TypeInfo& t : schema.types()) {
    TypeCache& c = caches[t.index];
    c.attrs = PyDict_New();
    if (c.attrs == nullptr) throw nb::python_error();
    for (const fb::FieldInfo& f : t.fields) {
      PyObject* key = PyUnicode_InternFromString(f.name.c_str());
      if (key == nullptr) throw nb::python_error();
      c.keys.push_back(key);
      if (f.deprecated) continue;
      PyObject* idx = PyLong_FromSize_t(f.index);
      if (idx == nullptr || PyDict_SetItem(c.attrs, key, idx) != 0) {
        Py_XDECREF(idx);
        throw nb::python_error();
      }
      Py_DECREF(idx);
    }
  }
}

SchemaObj::~SchemaObj() {
  for (TypeCache& c : caches) {
    for (PyObject* k : c.keys) Py_XDECREF(k);
    Py_XDECREF(c.attrs);
  }
}

PyTypeObject* fb_type_type() { return fg.type_type; }

void bind_fb(nb::module_& m) {
  PyType_Spec spec{"shmq.fb.Type", static_cast<int>(sizeof(TypeObject)), 0, Py_TPFLAGS_DEFAULT, type_slots};
  fg.type_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&spec));
  if (fg.type_type == nullptr) throw nb::python_error();
  m.attr("FbType") = nb::handle(reinterpret_cast<PyObject*>(fg.type_type));
  fg.mapping_abc = nb::object(nb::module_::import_("collections.abc").attr("Mapping")).release().ptr();
  init_fb_views(m);

  nb::class_<SchemaObj>(m, "FbSchema")
      .def("type", &schema_type, nb::arg("name"))
      .def("type_names", &schema_type_names)
      .def("enums", &schema_enums)
      .def_prop_ro("root", [](SchemaObj& s) -> nb::object {
        const fb::TypeInfo* r = s.schema.root();
        return r != nullptr ? nb::object(nb::str(r->name.c_str())) : nb::none();
      })
      .def_prop_ro("file_identifier", [](SchemaObj& s) { return s.schema.file_identifier(); })
      .def_prop_ro("source_name", [](SchemaObj& s) { return s.schema.source_name(); });
  m.def("fb_load", &load_schema, nb::arg("path_or_text"), nb::arg("is_path"),
        nb::arg("include_dirs"), nb::arg("source_name") = "");
  m.def("fb_set_errors", &set_errors, nb::arg("schema_error"), nb::arg("verify_error"));

  add_methods(nb::type<QueueHandle>(), queue_defs, std::size(queue_defs));
  add_methods(nb::type<PipeEnd>(), pipe_defs, std::size(pipe_defs));
}

}  // namespace shmq::py
