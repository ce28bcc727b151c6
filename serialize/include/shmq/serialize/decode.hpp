// Root-type traits and the pure read-and-verify step: from a received payload to a checked
// buffer. No channel, no allocation; the Reader and the fuzz target share it.
//
// Nothing read from the payload is trusted: the prefix is copied into a local once, each field is
// bound-checked before use, and the buffer is handed to flatbuffers::Verifier (unless the reader
// opted out) before any accessor touches it.
//
// Synchronization
//   None of its own. The payload may lie in shared memory that a misbehaving writer still
//   changes; the `copy_then_verify` mode of the Reader exists for that case (verify a private
//   copy, so what was verified is what is read).
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "shmq/serialize/prefix.hpp"
#include "shmq/serialize/read_error.hpp"

namespace shmq::fb {

// Specialize with SHMQ_FB_ROOT_TYPE(Type, IdentifierFunction) for each root type.
template <class T>
struct RootTraits;

template <class T>
concept RootType = requires {
  { RootTraits<T>::identifier() } -> std::convertible_to<const char*>;
  { RootTraits<T>::name() } -> std::convertible_to<const char*>;
};

template <RootType T>
inline std::uint32_t type_id() noexcept {
  return type_id_of(RootTraits<T>::identifier());
}

// Verification bounds. Depth and table counts cap the verifier's work on hostile input.
struct VerifyLimits {
  unsigned max_depth = 64;
  unsigned max_tables = 1'000'000;
};

// Step 1: the prefix. On success `buffer` is the FlatBuffers buffer inside `payload`.
struct Parsed {
  ReadErrc code = ReadErrc::ok;
  std::uint32_t got_type = 0;
  std::span<const std::byte> buffer;
};

// `want` is the type id the reader accepts (type_id<T>(), or a run-time TypeInfo::type_id).
inline Parsed parse_payload(std::span<const std::byte> payload, std::uint16_t kind,
                            std::uint32_t want) noexcept {
  Parsed out;
  if (kind != kFlatBuffersKind) {
    out.code = ReadErrc::wrong_kind;
    return out;
  }
  if (payload.size() < kPrefixBytes + kMinBufferBytes) {
    out.code = ReadErrc::malformed;
    return out;
  }
  const Prefix p = load_prefix(payload);  // read once; only the local is used below
  out.got_type = p.type_id;
  if (p.type_id != want) {
    out.code = ReadErrc::wrong_type;
    return out;
  }
  const std::size_t start = p.start;
  if (start < kPrefixBytes || start > payload.size() - kMinBufferBytes ||
      payload.size() - start >= FLATBUFFERS_MAX_BUFFER_SIZE) {
    out.code = ReadErrc::malformed;
    return out;
  }
  out.buffer = payload.subspan(start);
  return out;
}

template <RootType T>
Parsed parse_payload(std::span<const std::byte> payload, std::uint16_t kind) noexcept {
  return parse_payload(payload, kind, type_id<T>());
}

// Whether `buffer` starts on the boundary FlatBuffers' scalar loads need. Records of our writers
// always do; a reader copies a buffer that does not (someone else's writer) before using it.
inline bool buffer_aligned(std::span<const std::byte> buffer) noexcept {
  return (reinterpret_cast<std::uintptr_t>(buffer.data()) & (kBufferAlign - 1)) == 0;
}

// Step 2: structural verification, including the buffer's own file_identifier.
template <RootType T>
bool verify_buffer(std::span<const std::byte> buffer, VerifyLimits limits = {}) noexcept {
  if (buffer.size() < kMinBufferBytes || buffer.size() >= FLATBUFFERS_MAX_BUFFER_SIZE) return false;
  flatbuffers::Verifier v(reinterpret_cast<const std::uint8_t*>(buffer.data()), buffer.size(),
                          limits.max_depth, limits.max_tables);
  return v.VerifyBuffer<T>(RootTraits<T>::identifier());
}

// For trusted readers: only the identifier, 4 bytes, instead of a full verification.
template <RootType T>
bool identifier_matches(std::span<const std::byte> buffer) noexcept {
  return flatbuffers::BufferHasIdentifier(buffer.data(), RootTraits<T>::identifier());
}

template <RootType T>
const T* root_of(std::span<const std::byte> buffer) noexcept {
  return flatbuffers::GetRoot<T>(buffer.data());
}

}  // namespace shmq::fb

// Declares `Type` (a FlatBuffers root table) to shmq::fb, with its schema's generated identifier
// function (flatc names it <Type>Identifier). Use at global scope.
//   SHMQ_FB_ROOT_TYPE(shmq::schema::Tick, shmq::schema::TickIdentifier)
#define SHMQ_FB_ROOT_TYPE(Type, IdentifierFn)                                               \
  template <>                                                                               \
  struct shmq::fb::RootTraits<Type> {                                                       \
    static const char* identifier() noexcept { return IdentifierFn(); }                     \
    static const char* name() noexcept { return #Type; }                                    \
    /* Registers the name for error messages of readers of other types. */                 \
    static inline const bool registered_ =                                                  \
        (::shmq::fb::register_type_name(::shmq::fb::type_id_of(IdentifierFn()), #Type), true); \
  }
