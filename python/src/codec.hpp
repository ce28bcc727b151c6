// The codec: how a Python object becomes a message payload and back.
//
// Kinds (core/message_kind.hpp): bytes (bytes, bytearray, memoryview travel unpickled), pickle,
// flatbuffers.
// Payload of kind 1: either a plain pickle (first byte 0x80, the PROTO opcode) or, when the
// pickler produced out-of-band buffers, {u8 0x01, u8[3] 0, u32 n, u64 length[n]} followed by the
// pickle and then the n buffers back to back. Payload of kind 2: serialize/'s prefix
// {u32 type id, u32 start} and the FlatBuffers buffer.
//
// Encoding needs the GIL; writing an encoded Payload into a channel does not (its parts point into
// objects the Payload keeps alive). Decoding needs the GIL and treats every byte as hostile.
#pragma once

#include <nanobind/nanobind.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "shmq/core/message_kind.hpp"
#include "shmq/serialize/prefix.hpp"  // the record layout only: no FlatBuffers headers

namespace shmq::py {

inline constexpr std::uint16_t kBytesKind = kind_value(MessageKind::bytes);
inline constexpr std::uint16_t kPickleKind = kind_value(MessageKind::pickle);
inline constexpr std::uint16_t kObjectBytesKind = kind_value(MessageKind::object_bytes);
using fb::kFlatBuffersKind;
inline constexpr std::uint32_t kFbPrefixBytes = fb::kPrefixBytes;

struct Part {
  const std::byte* data;
  std::size_t size;
};

// An object encoded as 1 to n byte ranges.
class Payload {
 public:
  Payload() = default;
  Payload(const Payload&) = delete;
  Payload& operator=(const Payload&) = delete;
  ~Payload();  // with the GIL held

  // Raises TypeError if raw_only and obj is not bytes-like.
  void encode(PyObject* obj, bool raw_only);
  // Raw bytes that the caller keeps alive (send_bytes' slice of a buffer it holds).
  void raw(const void* data, std::size_t n) {
    kind_ = kBytesKind;
    add(data, n);
  }
  // A finished FlatBuffers buffer (kind 2): the prefix {type id, start = 8} and the buffer,
  // written straight from the caller's memory into the channel (one copy). The type id is the
  // buffer's own file_identifier (bytes 4..7), as C++'s fb::Reader expects.
  void encode_flatbuffer(PyObject* obj);

  std::uint16_t kind() const { return kind_; }
  // Retags the payload (Connection.send marks a raw bytes-like object as object_bytes).
  void set_kind(std::uint16_t kind) { kind_ = kind; }
  std::size_t size() const { return total_; }
  bool single() const { return nparts_ == 1; }
  Part part0() const { return parts_[0]; }
  void write(std::byte* dst) const;

 private:
  static constexpr std::size_t kInline = 3;

  void add(const void* p, std::size_t n);
  void pickle(PyObject* obj);

  Part parts_[kInline]{};
  std::vector<Part> extra_;
  std::size_t nparts_ = 0;
  std::size_t total_ = 0;
  std::uint16_t kind_ = kBytesKind;
  Py_buffer raw_view_{};
  PyObject* pickled_ = nullptr;  // keeps the pickle (or a bytes copy) alive
  std::vector<Py_buffer> views_;
  std::vector<std::uint64_t> header_;
};

// Decoding (GIL held). Each returns a new reference, or nullptr with a Python error set.
PyObject* bytes_from(const std::byte* p, std::size_t n);
PyObject* unpickle(const std::byte* p, std::size_t n);
// bytes for kind 0 (and any kind but pickle); for FlatBuffers (kind 2) the buffer without its
// prefix, ready for the generated classes.
PyObject* decode(const std::byte* p, std::size_t n, std::uint16_t kind);
// The FlatBuffers buffer inside a kind-2 payload, after its prefix; the prefix is read once and
// bound-checked (another process wrote it). nullopt if it is malformed.
std::optional<std::span<const std::byte>> flatbuffer_of(const std::byte* p, std::size_t n);

// Sets g.collector; called once at import.
void init_codec();
// Forgets out-of-band buffers a parent thread was collecting at fork.
void codec_after_fork();

}  // namespace shmq::py
