// shmq dump: peek at waiting messages, decoded by kind, without consuming them.
//   kind 0 (bytes): hex and text; kind 1 (pickle): described (protocol, size), never unpickled;
//   kind 2 (FlatBuffers): the serialize prefix, and with --schema the buffer verified against the
//   schema (serialize's run-time schema loader and verifier, the ones the Python
//   package uses) and printed as JSON; any other kind: hex and text.
#include <fmt/core.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "inspect.hpp"
#include "peek.hpp"
#include "shmq/core/message_kind.hpp"
#include "shmq/serialize/dyn_read.hpp"
#include "shmq/serialize/prefix.hpp"
#include "shmq/serialize/read_error.hpp"
#include "shmq/serialize/schema.hpp"

namespace shmq::cli {

using json = nlohmann::ordered_json;

namespace {

constexpr std::size_t kSchemaKeepBytes = 16u << 20;  // largest FlatBuffers message decoded

std::string hex_of(const std::vector<std::byte>& b, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < std::min(n, b.size()); ++i) {
    if (i != 0) s += ' ';
    s += fmt::format("{:02x}", static_cast<unsigned>(b[i]));
  }
  return s;
}

std::string text_of(const std::vector<std::byte>& b, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < std::min(n, b.size()); ++i) {
    const auto c = static_cast<unsigned char>(b[i]);
    s += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '.';
  }
  return s;
}

std::string id_text(std::uint32_t id) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    const auto c = static_cast<unsigned char>((id >> (8 * i)) & 0xFF);
    s += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  return s;
}

// A schema loaded for decoding (serialize's loader, shared with the Python package) and the
// type its messages are decoded as.
struct SchemaDecoder {
  fb::Schema schema;
  const fb::TypeInfo* type = nullptr;
};

Result<std::unique_ptr<SchemaDecoder>> load_schema(const DumpOptions& o) {
  auto s = fb::Schema::load_file(o.schema, {.include_dirs = o.include_dirs});
  if (!s) return std::move(s).error();
  const fb::TypeInfo* type = nullptr;
  if (o.root_type.empty()) {
    type = s->root();
    if (type == nullptr) {
      return Error(Errc::invalid_argument, "the schema '" + o.schema +
                                               "' declares no root_type: pass --root-type");
    }
  } else {
    type = s->find(o.root_type);
    if (type == nullptr || type->is_struct) {
      return Error(Errc::invalid_argument,
                   "the schema '" + o.schema + "' has no table named '" + o.root_type + "'");
    }
  }
  return std::make_unique<SchemaDecoder>(SchemaDecoder{std::move(*s), type});
}

json describe_pickle(const PeekedMessage& m) {
  json j = {{"unpickled", false}};
  if (m.bytes.size() >= 2 && m.bytes[0] == std::byte{0x80}) {
    j["protocol"] = static_cast<unsigned>(m.bytes[1]);
    j["framed"] = m.bytes.size() >= 3 && m.bytes[2] == std::byte{0x95};
  } else if (!m.bytes.empty()) {
    j["protocol"] = "0 or 1 (no PROTO opcode)";
  }
  return j;
}

json describe_flatbuffers(const PeekedMessage& m, const SchemaDecoder* dec) {
  json j;
  const std::size_t size = static_cast<std::size_t>(m.size);
  if (size < fb::kPrefixBytes + fb::kMinBufferBytes || m.bytes.size() < fb::kPrefixBytes) {
    j["error"] = "malformed: shorter than the 8-byte prefix and a buffer";
    return j;
  }
  const fb::Prefix pre = fb::load_prefix(std::span<const std::byte>(m.bytes));
  j["type_id"] = id_text(pre.type_id);
  if (const char* name = fb::type_name(pre.type_id); name != nullptr) j["type"] = name;
  j["buffer_offset"] = pre.start;
  if (pre.start < fb::kPrefixBytes || pre.start > size - fb::kMinBufferBytes) {
    j["error"] = fmt::format("malformed: buffer offset {} outside the {}-byte payload", pre.start, size);
    return j;
  }
  j["buffer_bytes"] = size - pre.start;
  if (dec == nullptr) return j;
  if (pre.type_id != dec->type->type_id) {
    j["error"] = fmt::format("type '{}' is not the type of {} ('{}')", id_text(pre.type_id),
                             dec->type->name, id_text(dec->type->type_id));
    return j;
  }
  if (m.bytes.size() < size) {
    j["error"] = fmt::format("not decoded: larger than {} bytes", kSchemaKeepBytes);
    return j;
  }
  // An 8-aligned private copy: FlatBuffers reads scalars in place.
  const std::size_t n = size - pre.start;
  std::vector<std::uint64_t> aligned((n + 7) / 8);
  std::memcpy(aligned.data(), m.bytes.data() + pre.start, n);
  const auto* buf = reinterpret_cast<const std::uint8_t*>(aligned.data());
  if (!fb::verify_dyn(*dec->type, std::as_bytes(std::span(buf, n)))) {
    j["error"] = "rejected by the FlatBuffers verifier (does not match the schema)";
    return j;
  }
  std::string text;
  if (!dec->schema.to_json(*dec->type, buf, &text)) {
    j["error"] = "the FlatBuffers text generator failed";
    return j;
  }
  json value = json::parse(text, nullptr, false);
  j["value"] = value.is_discarded() ? json(text) : value;
  return j;
}

json describe(const PeekedMessage& m, std::size_t index, const DumpOptions& o,
              const SchemaDecoder* dec) {
  json j = {{"index", index},
            {"position", m.position},
            {"kind", m.kind},
            {"kind_name", message_kind_name(m.kind)},
            {"size", m.size}};
  if (m.held) j["held"] = true;
  if (m.chunked) j["chunked"] = true;
  if (!m.complete) j["complete"] = false;
  if (m.spilled) j["spilled"] = true;
  if (!m.note.empty()) j["note"] = m.note;
  if (!m.complete && !m.chunked) return j;  // a queue slot still being written: no bytes yet
  if (m.kind == kind_value(MessageKind::pickle)) {
    j["pickle"] = describe_pickle(m);
  } else if (m.kind == kind_value(MessageKind::flatbuffers) && !m.spilled) {
    j["flatbuffers"] = describe_flatbuffers(m, dec);
  }
  const std::size_t shown = static_cast<std::size_t>(std::min<std::uint64_t>(o.max_bytes, m.size));
  if (m.kind != kind_value(MessageKind::pickle)) {  // a pickle is described, not shown as text
    j["hex"] = hex_of(m.bytes, shown);
    j["text"] = text_of(m.bytes, shown);
    if (shown < m.size) j["truncated"] = true;
  }
  return j;
}

void print_text(const json& msg) {
  std::string head = fmt::format("#{:<3} pos {:<10} kind {} ({})  {} B", msg["index"].get<std::size_t>(),
                                 msg["position"].get<std::uint64_t>(), msg["kind"].get<unsigned>(),
                                 msg["kind_name"].get<std::string>(), msg["size"].get<std::uint64_t>());
  for (const char* flag : {"held", "chunked", "spilled"}) {
    if (msg.contains(flag)) head += std::string("  [") + flag + "]";
  }
  std::cout << head << "\n";
  if (msg.contains("note")) std::cout << "     " << msg["note"].get<std::string>() << "\n";
  if (msg.contains("pickle")) {
    const json& p = msg["pickle"];
    std::cout << "     pickle, protocol "
              << (p.contains("protocol") ? p["protocol"].dump() : std::string("?"))
              << " (not unpickled)\n";
  }
  if (msg.contains("flatbuffers")) {
    const json& f = msg["flatbuffers"];
    std::string line = "     flatbuffers";
    if (f.contains("type_id")) line += " type '" + f["type_id"].get<std::string>() + "'";
    if (f.contains("type")) line += " (" + f["type"].get<std::string>() + ")";
    if (f.contains("buffer_bytes")) line += fmt::format(", {} B buffer", f["buffer_bytes"].get<std::uint64_t>());
    std::cout << line << "\n";
    if (f.contains("value")) std::cout << "     " << f["value"].dump() << "\n";
    if (f.contains("error")) std::cout << "     " << f["error"].get<std::string>() << "\n";
  }
  if (msg.contains("hex")) {
    const char* more = msg.contains("truncated") ? " ..." : "";
    std::cout << "     hex   " << msg["hex"].get<std::string>() << more << "\n";
    std::cout << "     text  " << msg["text"].get<std::string>() << more << "\n";
  }
}

}  // namespace

int cmd_dump(const DumpOptions& o) {
  const std::string ctx = "dump " + o.name;
  auto probe = Probe::open(o.name);
  if (!probe) return report(ctx, probe.error());
  const Probe& p = *probe;
  if (!p.sound()) return report(ctx, p.first_error());
  if (p.kind_name() == "arena")
    return report(ctx, "an arena holds synchronization objects, not messages: see `shmq stat " + o.name + "`");
  if (o.direction >= p.directions()) {
    return report(ctx, fmt::format("direction {} does not exist: this {} has {}", o.direction,
                                   p.kind_name(), p.directions()));
  }
  std::unique_ptr<SchemaDecoder> dec;
  if (!o.schema.empty()) {
    auto d = load_schema(o);
    if (!d) return report(ctx, d.error());
    dec = std::move(*d);
  }
  // A FlatBuffers prefix and a pickle's protocol need the first bytes even when few are shown.
  const std::size_t keep = dec ? kSchemaKeepBytes : std::max<std::size_t>(o.max_bytes, 16);
  const PeekResult r = peek(p, o.direction, static_cast<std::size_t>(o.count), keep);
  const RingState rs = read_ring_state(p, o.direction);

  json msgs = json::array();
  for (std::size_t i = 0; i < r.messages.size(); ++i) {
    msgs.push_back(describe(r.messages[i], i, o, dec.get()));
  }
  if (o.json) {
    json j = {{"name", p.name()}, {"kind", p.kind_name()}, {"direction", o.direction}};
    if (rs.ok) {
      if (rs.has_message_depth) {
        j["depth_messages"] = rs.depth_messages;
      } else {
        j["depth_bytes"] = rs.depth_bytes;
      }
    }
    j["messages"] = msgs;
    j["stopped"] = r.stopped.empty() ? json(nullptr) : json(r.stopped);
    j["corrupt"] = r.corrupt;
    std::cout << j.dump(2) << "\n";
  } else {
    std::string waiting = !rs.ok ? std::string("?")
                          : rs.has_message_depth ? fmt::format("{} messages", rs.depth_messages)
                                                 : human_bytes(rs.depth_bytes);
    std::cout << fmt::format("{} ({}{}): {} waiting, showing {}\n", p.name(), p.kind_name(),
                             p.directions() == 2 ? fmt::format(", direction {}", o.direction) : "",
                             waiting, msgs.size());
    for (const auto& m : msgs) print_text(m);
    if (!r.stopped.empty() && !r.corrupt) std::cout << "(" << r.stopped << ")\n";
  }
  if (r.corrupt) return report(ctx, Error(Errc::corrupt, r.stopped));
  return kExitOk;
}

}  // namespace shmq::cli
