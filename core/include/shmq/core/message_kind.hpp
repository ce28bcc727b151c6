// Message kinds: the u16 every Pipe record and Queue slot carries, saying how its payload is
// encoded. The one table for the library, the CLI, the Python binding and serialize/.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmq {

enum class MessageKind : std::uint16_t {
  bytes = 0,        // raw bytes (Python: bytes, bytearray, memoryview)
  pickle = 1,       // a Python pickle, protocol 5, with its out-of-band buffers if any
  flatbuffers = 2,  // a FlatBuffers buffer behind serialize/'s prefix (serialize/prefix.hpp)
  // A Python bytes-like object sent whole by Connection.send (raw, unpickled): recv() returns it
  // as bytes, recv_bytes() its pickle, as multiprocessing does; `bytes` (send_bytes, C++
  // writers) is what recv() unpickles.
  object_bytes = 3,
};
// Kinds 4..255 are reserved for shmq; from here on they are the application's.
inline constexpr std::uint16_t kFirstUserKind = 256;

constexpr std::uint16_t kind_value(MessageKind k) noexcept { return static_cast<std::uint16_t>(k); }

// "bytes", "pickle", "flatbuffers", "reserved" or "user".
constexpr std::string_view message_kind_name(std::uint16_t kind) noexcept {
  switch (static_cast<MessageKind>(kind)) {
    case MessageKind::bytes: return "bytes";
    case MessageKind::pickle: return "pickle";
    case MessageKind::flatbuffers: return "flatbuffers";
    case MessageKind::object_bytes: return "object_bytes";
  }
  return kind < kFirstUserKind ? "reserved" : "user";
}

}  // namespace shmq
