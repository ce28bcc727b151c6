// The payload layout of a FlatBuffers record (message kind 2) and the type identity taken from a
// schema's file_identifier.
//
//   payload offset 0   u32 type identity: the root type's 4-byte file_identifier, little-endian
//                  4   u32 start: offset of the FlatBuffers buffer within the payload (>= 8)
//                  8   unused gap (in-place builds only; never read)
//              start   the finished FlatBuffers buffer, 8-byte aligned, to the payload's end
//
// Why a start offset: FlatBufferBuilder builds downward, so a buffer built in place into a claim
// ends at the claim's end and starts wherever its size puts it. Recording the start lets the
// writer commit the claim as is, with no move. A copied (fallback) message has start == 8.
//
// Synchronization
//   None of its own: the prefix is written into claimed ring space before the claim is committed
//   and read after the record is received, so the channel's commit (release) / receive (acquire)
//   pair orders it like any other payload byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "shmq/core/message_kind.hpp"

namespace shmq::fb {

// Message kind of every FlatBuffers record.
inline constexpr std::uint16_t kFlatBuffersKind = kind_value(MessageKind::flatbuffers);

inline constexpr std::size_t kPrefixBytes = 8;
// Buffers start on an 8-byte boundary of the payload, the largest scalar FlatBuffers aligns.
inline constexpr std::size_t kBufferAlign = 8;
// Root offset (4) + file_identifier (4): anything shorter cannot be a buffer with an identifier.
inline constexpr std::size_t kMinBufferBytes = 8;

struct Prefix {
  std::uint32_t type_id;
  std::uint32_t start;
};
static_assert(sizeof(Prefix) == kPrefixBytes, "the prefix is two u32 with no padding");

// The identity of a root type: its file_identifier's 4 bytes read as a little-endian u32, so it
// equals the u32 at offset 4 of the buffer itself.
constexpr std::uint32_t type_id_of(const char* file_identifier) noexcept {
  std::uint32_t id = 0;
  for (int i = 0; i < 4 && file_identifier[i] != '\0'; ++i) {
    id |= static_cast<std::uint32_t>(static_cast<unsigned char>(file_identifier[i])) << (8 * i);
  }
  return id;
}

inline void store_prefix(std::byte* payload, Prefix p) noexcept {
  std::memcpy(payload, &p, sizeof p);  // payloads are 8-aligned, but memcpy states no assumption
}

// Reads the prefix of a payload of at least kPrefixBytes. The bytes may be shared with another
// process: they are copied once into a local and only the copy is checked and used.
inline Prefix load_prefix(std::span<const std::byte> payload) noexcept {
  Prefix p;
  std::memcpy(&p, payload.data(), sizeof p);
  return p;
}

}  // namespace shmq::fb
