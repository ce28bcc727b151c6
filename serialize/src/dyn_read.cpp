// Verification of run-time-typed buffers: flatbuffers::Verifier (the checks flatc's generated
// Verify() functions make: bounds, alignment, offsets, vtables, string terminators, depth and
// table limits) driven by the schema's precomputed TypeInfo tables.
//
// Why not flatbuffers::Verify(schema, object, ...), the reflection verifier of libflatbuffers: in
// FlatBuffers 2.0.8 it reads out of bounds on some hostile buffers (fb_dyn_fuzz found one: valgrind
// reports an invalid read inside libflatbuffers' Verify), and it does not check required fields.
#include "shmq/serialize/dyn_read.hpp"

namespace shmq::fb {

namespace {

using flatbuffers::Table;
using flatbuffers::Verifier;

bool verify_table(Verifier& v, const TypeInfo& t, const std::uint8_t* table);

// The field's offset inside a table whose vtable was verified (0: absent).
flatbuffers::voffset_t field_at(const std::uint8_t* table, const FieldInfo& f) noexcept {
  const dyn::TableRef ref(table, nullptr);
  const std::uint8_t* a = ref.address(f);
  return a == nullptr ? 0 : static_cast<flatbuffers::voffset_t>(a - table);
}

// An offset field: its target, or nullptr if absent; `ok` false if the offset is bad.
const std::uint8_t* target(const Verifier& v, const std::uint8_t* table, const FieldInfo& f, bool& ok) {
  const flatbuffers::voffset_t at = field_at(table, f);
  if (at == 0) return nullptr;
  const flatbuffers::uoffset_t o = v.VerifyOffset(table, at);
  ok = o != 0;
  return ok ? table + at + o : nullptr;
}

bool verify_vector(Verifier& v, const FieldInfo& f, const std::uint8_t* vec) {
  if (!f.supported) return false;  // vectors of unions: neither built nor read
  const bool offsets = f.element == reflection::String || (f.element == reflection::Obj && !f.type->is_struct);
  if (!v.VerifyVectorOrString(vec, offsets ? sizeof(flatbuffers::uoffset_t) : f.element_size)) return false;
  if (!offsets) return true;
  const auto n = flatbuffers::ReadScalar<flatbuffers::uoffset_t>(vec);
  const std::uint8_t* data = vec + sizeof(flatbuffers::uoffset_t);
  for (flatbuffers::uoffset_t i = 0; i < n; ++i) {
    const std::uint8_t* slot = data + i * sizeof(flatbuffers::uoffset_t);
    const flatbuffers::uoffset_t o = v.VerifyOffset(slot, 0);
    if (o == 0) return false;
    const std::uint8_t* elem = slot + o;
    const bool good = f.element == reflection::String
                          ? v.VerifyString(reinterpret_cast<const flatbuffers::String*>(elem))
                          : verify_table(v, *f.type, elem);
    if (!good) return false;
  }
  return true;
}

bool verify_union(Verifier& v, const std::uint8_t* table, const FieldInfo& f) {
  if (f.union_type == nullptr) return false;
  const flatbuffers::voffset_t type_at = field_at(table, *f.union_type);
  if (type_at != 0 && !v.VerifyFieldStruct(table, type_at, 1, 1)) return false;
  const std::int64_t member_value = type_at != 0 ? table[type_at] : 0;
  bool ok = true;
  const std::uint8_t* value = target(v, table, f, ok);
  if (!ok) return false;
  if (value == nullptr || member_value == 0) return true;
  const EnumValueInfo* member = f.enum_info->find(member_value);
  // An unknown member (a newer schema's): accepted, as flatc's code does, and read as absent.
  if (member == nullptr || member->member == nullptr) return true;
  if (member->member->is_struct) return v.VerifyFromPointer(value, member->member->bytesize);
  return verify_table(v, *member->member, value);
}

bool verify_field(Verifier& v, const std::uint8_t* table, const FieldInfo& f) {
  switch (f.base) {
    case reflection::String: {
      bool ok = true;
      const std::uint8_t* s = target(v, table, f, ok);
      if (!ok || (s == nullptr && f.required)) return false;
      return s == nullptr || v.VerifyString(reinterpret_cast<const flatbuffers::String*>(s));
    }
    case reflection::Vector: {
      bool ok = true;
      const std::uint8_t* vec = target(v, table, f, ok);
      if (!ok || (vec == nullptr && f.required)) return false;
      return vec == nullptr || verify_vector(v, f, vec);
    }
    case reflection::Obj: {
      if (f.type->is_struct) {
        const flatbuffers::voffset_t at = field_at(table, f);
        if (at == 0) return !f.required;
        return v.VerifyFieldStruct(table, at, f.type->bytesize, f.type->minalign);
      }
      bool ok = true;
      const std::uint8_t* sub = target(v, table, f, ok);
      if (!ok || (sub == nullptr && f.required)) return false;
      return sub == nullptr || verify_table(v, *f.type, sub);
    }
    case reflection::Union: return verify_union(v, table, f);
    case reflection::UType: return true;  // with its union
    default: {
      const flatbuffers::voffset_t at = field_at(table, f);
      return at == 0 || v.VerifyFieldStruct(table, at, f.size, f.size);
    }
  }
}

bool verify_table(Verifier& v, const TypeInfo& t, const std::uint8_t* table) {
  if (!v.VerifyTableStart(table)) return false;  // counts depth and tables
  for (const FieldInfo& f : t.fields) {
    if (!f.deprecated && !verify_field(v, table, f)) return false;
  }
  return v.EndTable();
}

}  // namespace

bool identity_dyn(const TypeInfo& type, std::span<const std::byte> buffer) noexcept {
  if (buffer.size() < kMinBufferBytes) return false;
  if (type.identifier.empty()) return true;
  return flatbuffers::BufferHasIdentifier(buffer.data(), type.identifier.c_str());
}

bool verify_dyn(const TypeInfo& type, std::span<const std::byte> buffer, VerifyLimits limits) noexcept {
  if (type.is_struct) return false;
  if (buffer.size() < kMinBufferBytes || buffer.size() >= FLATBUFFERS_MAX_BUFFER_SIZE) return false;
  if (!identity_dyn(type, buffer)) return false;
  const auto* buf = reinterpret_cast<const std::uint8_t*>(buffer.data());
  Verifier v(buf, buffer.size(), limits.max_depth, limits.max_tables);
  const flatbuffers::uoffset_t root = v.VerifyOffset(0);
  return root != 0 && verify_table(v, type, buf + root);
}

Expected expected_of(const TypeInfo& type) noexcept {
  Expected e;
  e.type_id = type.type_id;
  e.name = type.name.c_str();
  e.ctx = &type;
  e.verify = [](const void* ctx, std::span<const std::byte> b, VerifyLimits l) noexcept {
    return verify_dyn(*static_cast<const TypeInfo*>(ctx), b, l);
  };
  e.identity = [](const void* ctx, std::span<const std::byte> b) noexcept {
    return identity_dyn(*static_cast<const TypeInfo*>(ctx), b);
  };
  return e;
}

}  // namespace shmq::fb
