// What the FlatBuffers binding files share (fb_binding.cpp: schemas, types and the put/get verbs;
// fb_view.cpp: the lazy views over received messages): a loaded schema with its per-type Python
// caches, the Type objects, and the entry points between the two files.
//
// Ownership: a SchemaObj (the Python object _shmq.FbSchema) owns the C++ Schema and the caches.
// Types, views and held messages keep a strong reference to it, so every TypeInfo/FieldInfo
// pointer they hold stays valid while they live. Everything here runs with the GIL held.
#pragma once

#include <nanobind/nanobind.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "shmq/serialize/schema.hpp"
#include "shmq/shm/message.hpp"
#include "support.hpp"

namespace shmq::py {

struct TypeCache {
  std::vector<PyObject*> keys;  // interned field names, by field index (what the builder looks up)
  PyObject* attrs = nullptr;    // dict: field name -> field index (what a View's attributes read)
  std::size_t recent_size = 0;  // the size of the last message built: the next one's claim hint
};

struct SchemaObj {
  explicit SchemaObj(shmq::fb::Schema s);
  ~SchemaObj();
  SchemaObj(const SchemaObj&) = delete;
  SchemaObj& operator=(const SchemaObj&) = delete;

  shmq::fb::Schema schema;
  std::vector<TypeCache> caches;  // by TypeInfo::index
};

// shmq.fb.Type: one table or struct of a schema (a native object; see fb_binding.cpp).
struct TypeObject {
  PyObject_HEAD
  PyObject* schema_obj;  // the FbSchema Python object (strong)
  SchemaObj* s;
  const shmq::fb::TypeInfo* t;
};

// The Type class, or nullptr before bind_fb ran.
PyTypeObject* fb_type_type();
inline TypeObject* as_type(PyObject* o) {
  return Py_TYPE(o) == fb_type_type() ? reinterpret_cast<TypeObject*>(o) : nullptr;
}

// ---- fb_view.cpp
void init_fb_views(nb::module_& m);
// A View (shmq.fb.View) over a verified buffer of `type` held by `msg`. `owner`: the channel
// state whose views_ count includes this message (nullptr for a message that owns its bytes).
PyObject* new_root_view(TypeObject* type, shmq::Message&& msg, std::shared_ptr<ChannelState> owner,
                        const std::uint8_t* buffer);

}  // namespace shmq::py
