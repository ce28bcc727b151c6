// Verification of run-time-typed buffers: FlatBuffers' reflection verifier over the schema's
// reflection data, after the identifier check.
#include "shmq/serialize/dyn_read.hpp"

namespace shmq::fb {

bool identity_dyn(const TypeInfo& type, std::span<const std::byte> buffer) noexcept {
  if (buffer.size() < kMinBufferBytes) return false;
  if (type.identifier.empty()) return true;
  return flatbuffers::BufferHasIdentifier(buffer.data(), type.identifier.c_str());
}

bool verify_dyn(const TypeInfo& type, std::span<const std::byte> buffer, VerifyLimits limits) noexcept {
  if (type.is_struct || type.schema == nullptr) return false;
  if (buffer.size() < kMinBufferBytes || buffer.size() >= FLATBUFFERS_MAX_BUFFER_SIZE) return false;
  if (!identity_dyn(type, buffer)) return false;
  return flatbuffers::Verify(*type.schema, *type.object,
                             reinterpret_cast<const std::uint8_t*>(buffer.data()), buffer.size(),
                             limits.max_depth, limits.max_tables);
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
