// The outcome of a typed read: an error enum plus the facts needed to explain it in words.
// Built without allocating (the hot path returns `empty` often); message() formats the text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shmq::fb {

enum class ReadErrc : std::uint8_t {
  ok = 0,
  // The channel's outcomes (nothing was consumed).
  empty,          // try_recv: no message waiting
  timeout,        // recv: the deadline passed
  interrupted,    // recv: a signal arrived while asleep (retry or check signals)
  closed,         // the channel is closed and drained
  corrupt,        // the channel found its shared state corrupt (see the channel's Stats)
  // The message's outcomes (the message was consumed and released).
  wrong_kind,     // the record's kind is not 2 (FlatBuffers): raw bytes or pickle on this channel
  wrong_type,     // a FlatBuffers message of another root type (file_identifier)
  malformed,      // the 8-byte prefix is missing or its start offset points outside the payload
  verify_failed,  // flatbuffers::Verifier rejected the buffer (truncated, bad offsets, ...)
};

std::string_view read_errc_name(ReadErrc e) noexcept;

struct ReadError {
  ReadErrc code = ReadErrc::ok;
  std::uint16_t kind = 0;            // the record's kind, for wrong_kind
  std::uint32_t expected_type = 0;   // type identity the reader wants (file_identifier as u32)
  std::uint32_t got_type = 0;        // type identity the message carries (wrong_type)
  std::uint64_t size = 0;            // payload bytes of the rejected message
  const char* expected_name = "";    // e.g. "shmq::schema::Order"; static storage

  bool ok() const noexcept { return code == ReadErrc::ok; }
  // True for outcomes where a message was taken off the channel and dropped.
  bool consumed() const noexcept { return code >= ReadErrc::wrong_kind; }
  // A sentence for logs and exceptions, naming both types for wrong_type. Allocates: cold path.
  std::string message() const;
};

// Names of root types by identity, for messages naming the type a reader did not expect. The
// shipped schemas are known; SHMQ_FB_ROOT_TYPE registers others. Thread-safe; cold path.
void register_type_name(std::uint32_t type_id, const char* name) noexcept;
const char* type_name(std::uint32_t type_id) noexcept;  // nullptr if unknown

}  // namespace shmq::fb
