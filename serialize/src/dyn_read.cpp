// Verification of run-time-typed buffers: FlatBuffers' reflection verifier over the schema's
// reflection data, after the identifier check.
#include "shmq/serialize/dyn_read.hpp"

namespace shmq::fb {

namespace {

// Required fields present in `t` and every table it reaches (a verified buffer: offsets are safe
// to follow; nesting is bounded by the verifier's depth limit).
bool required_present(const dyn::TableRef& t) noexcept {
  for (const FieldInfo& f : t.type().fields) {
    if (f.deprecated) continue;
    if (f.required && !t.has(f)) return false;
    if (f.base == reflection::Obj && !f.type->is_struct && f.type->reaches_required) {
      const dyn::TableRef sub = t.table(f);
      if (sub.present() && !required_present(sub)) return false;
    } else if (f.base == reflection::Vector && f.element == reflection::Obj && !f.type->is_struct &&
               f.type->reaches_required) {
      const dyn::VectorRef v = t.vector(f);
      for (std::uint32_t i = 0; i < v.size; ++i) {
        if (!required_present(dyn::TableRef(dyn::follow(v.data + 4 * i), f.type))) return false;
      }
    } else if (f.base == reflection::Union) {
      const dyn::TableRef m = t.union_member(f);
      if (m.present() && m.type().reaches_required && !required_present(m)) return false;
    }
  }
  return true;
}

}  // namespace

bool identity_dyn(const TypeInfo& type, std::span<const std::byte> buffer) noexcept {
  if (buffer.size() < kMinBufferBytes) return false;
  if (type.identifier.empty()) return true;
  return flatbuffers::BufferHasIdentifier(buffer.data(), type.identifier.c_str());
}

bool verify_dyn(const TypeInfo& type, std::span<const std::byte> buffer, VerifyLimits limits) noexcept {
  if (type.is_struct || type.schema == nullptr) return false;
  if (buffer.size() < kMinBufferBytes || buffer.size() >= FLATBUFFERS_MAX_BUFFER_SIZE) return false;
  if (!identity_dyn(type, buffer)) return false;
  const auto* buf = reinterpret_cast<const std::uint8_t*>(buffer.data());
  if (!flatbuffers::Verify(*type.schema, *type.object, buf, buffer.size(), limits.max_depth,
                           limits.max_tables)) {
    return false;
  }
  return !type.reaches_required || required_present(dyn::TableRef(dyn::follow(buf), &type));
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
