// The batch format of shmq.nats: many queue messages packed into one buffer, which a bridge sends
// as one JetStream message (python/shmq/nats/_wire.py names it in the message's headers).
//
// Records back to back, no padding: {u32 length, u16 kind, u16 reserved = 0} (little-endian) and
// then `length` payload bytes, the message exactly as it lies in a queue slot (kind 0 raw bytes,
// 1 pickle, 2 FlatBuffers with its prefix, 256+ user-defined: codec.hpp). A batch crosses hosts,
// so parsing treats every byte as hostile: each length is checked against what is left.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace shmq::py {

inline constexpr std::size_t kBatchRecordHeader = 8;

struct BatchRecord {
  std::span<const std::byte> bytes;
  std::uint16_t kind = 0;
};

inline void append_record(std::string& out, std::span<const std::byte> bytes, std::uint16_t kind) {
  const std::uint32_t n = static_cast<std::uint32_t>(bytes.size());
  const std::uint16_t reserved = 0;
  char h[kBatchRecordHeader];
  std::memcpy(h, &n, 4);
  std::memcpy(h + 4, &kind, 2);
  std::memcpy(h + 6, &reserved, 2);
  out.append(h, kBatchRecordHeader);
  out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// The records of `payload`, or false if it is malformed (a truncated header or a length past the
// end). Records point into `payload`.
inline bool parse_batch(std::span<const std::byte> payload, std::vector<BatchRecord>& out) {
  out.clear();
  std::size_t off = 0;
  while (off < payload.size()) {
    if (payload.size() - off < kBatchRecordHeader) return false;
    std::uint32_t n = 0;
    std::uint16_t kind = 0;
    std::memcpy(&n, payload.data() + off, 4);
    std::memcpy(&kind, payload.data() + off + 4, 2);
    off += kBatchRecordHeader;
    if (n > payload.size() - off) return false;
    out.push_back({payload.subspan(off, n), kind});
    off += n;
  }
  return true;
}

}  // namespace shmq::py
