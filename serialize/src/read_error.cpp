// Cold-path text for typed reads.
#include "shmq/serialize/read_error.hpp"

#include <array>
#include <mutex>

#include "shmq/core/message_kind.hpp"
#include "shmq/serialize/prefix.hpp"

namespace shmq::fb {

std::string_view read_errc_name(ReadErrc e) noexcept {
  switch (e) {
    case ReadErrc::ok: return "ok";
    case ReadErrc::empty: return "empty";
    case ReadErrc::timeout: return "timeout";
    case ReadErrc::interrupted: return "interrupted";
    case ReadErrc::closed: return "closed";
    case ReadErrc::corrupt: return "corrupt";
    case ReadErrc::wrong_kind: return "wrong_kind";
    case ReadErrc::wrong_type: return "wrong_type";
    case ReadErrc::malformed: return "malformed";
    case ReadErrc::verify_failed: return "verify_failed";
  }
  return "unknown";
}

namespace {

struct NameTable {
  static constexpr std::size_t kMax = 64;
  std::mutex mu;
  std::array<std::uint32_t, kMax> ids{};
  std::array<const char*, kMax> names{};
  std::size_t used = 0;
};

NameTable& table() {
  static NameTable t;  // function-local: safe to use from other translation units' static init
  return t;
}

// A file_identifier as printable text: 4 characters, non-printable bytes as '?'.
std::string identifier_text(std::uint32_t id) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    const auto c = static_cast<unsigned char>(id >> (8 * i));
    s.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  return s;
}

// Built with append(): g++ 12 reports a false -Wrestrict on `"literal" + std::string`.
std::string describe(std::uint32_t id) {
  std::string s;
  s.append("\"").append(identifier_text(id)).append("\"");
  if (const char* n = type_name(id)) s.append(" (").append(n).append(")");
  return s;
}

}  // namespace

void register_type_name(std::uint32_t type_id, const char* name) noexcept {
  NameTable& t = table();
  std::lock_guard lock(t.mu);
  for (std::size_t i = 0; i < t.used; ++i) {
    if (t.ids[i] == type_id) return;
  }
  if (t.used == NameTable::kMax) return;  // names are only for error text
  t.ids[t.used] = type_id;
  t.names[t.used] = name;
  ++t.used;
}

const char* type_name(std::uint32_t type_id) noexcept {
  NameTable& t = table();
  std::lock_guard lock(t.mu);
  for (std::size_t i = 0; i < t.used; ++i) {
    if (t.ids[i] == type_id) return t.names[i];
  }
  return nullptr;
}

std::string ReadError::message() const {
  std::string want(expected_name);
  want.append(" (file_identifier \"").append(identifier_text(expected_type)).append("\")");
  switch (code) {
    case ReadErrc::ok: return "ok";
    case ReadErrc::empty: return "no message waiting";
    case ReadErrc::timeout: return "no message arrived before the deadline";
    case ReadErrc::interrupted: return "interrupted by a signal while waiting for a message";
    case ReadErrc::closed: return "the channel is closed";
    case ReadErrc::corrupt:
      return "the channel's shared state is corrupt; the message could not be read";
    case ReadErrc::wrong_kind:
      return "expected a FlatBuffers message (kind " + std::to_string(kFlatBuffersKind) + ") of " +
             want + ", got a record of kind " + std::to_string(kind) + " (" +
             std::string(message_kind_name(kind)) + "); it was dropped";
    case ReadErrc::wrong_type:
      return "expected a message of type " + want + ", got one of type " + describe(got_type) +
             "; it was dropped";
    case ReadErrc::malformed:
      return "a FlatBuffers message of " + std::to_string(size) +
             " bytes has no valid shmq prefix (type identity + start offset); it was dropped";
    case ReadErrc::verify_failed:
      return "a message of " + std::to_string(size) + " bytes claiming type " + want +
             " failed flatbuffers verification (truncated or corrupt); it was dropped";
  }
  return "unknown error";
}

}  // namespace shmq::fb
