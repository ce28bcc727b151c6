// Reading FlatBuffers of a run-time type (a schema loaded with Schema::load_*): verification with
// FlatBuffers' reflection verifier, field access through the precomputed FieldInfo tables, and
// DynReader, the run-time-typed twin of Reader<T> (same checks, same errors: ReadChecks).
//
//   shmq::fb::DynReader r(rx, *schema.find("Order"));
//   auto m = r.recv(shmq::Deadline::in(100ms));
//   if (!m) log(m.error().message());
//   else    use(m.root().string(*order->field("symbol")));   // zero copy, verified
//
// Every accessor takes a table (or struct) that the verifier accepted: offsets are followed
// without further checks. Scalars are loaded with memcpy, so a verified but oddly aligned buffer
// (another writer's) reads correctly.
//
// Synchronization: none of its own (see reader.hpp).
#pragma once

#include <flatbuffers/flatbuffers.h>
#include <flatbuffers/reflection.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/schema.hpp"

namespace shmq::fb {

// Verification of a buffer whose root is a table of `type`: flatbuffers::Verifier's checks
// (bounds, alignment, offsets, vtables, string terminators, max_depth and max_tables) for every
// field the schema declares, required fields present, and the file_identifier when the type has
// one (dyn_read.cpp says why this is not libflatbuffers' reflection verifier).
bool verify_dyn(const TypeInfo& type, std::span<const std::byte> buffer, VerifyLimits limits = {}) noexcept;
// The trusted mode's check: the identifier only (types without one: nothing to check).
bool identity_dyn(const TypeInfo& type, std::span<const std::byte> buffer) noexcept;
// What a reader of `type` expects (for ReadChecks).
Expected expected_of(const TypeInfo& type) noexcept;

namespace dyn {

template <class T>
T load(const std::uint8_t* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The target of the uoffset_t stored at p.
inline const std::uint8_t* follow(const std::uint8_t* p) noexcept {
  return p + load<flatbuffers::uoffset_t>(p);
}

// A scalar of type `t` at p, widened.
inline std::int64_t int_at(reflection::BaseType t, const std::uint8_t* p) noexcept {
  switch (t) {
    case reflection::Bool:
    case reflection::UType:
    case reflection::UByte: return load<std::uint8_t>(p);
    case reflection::Byte: return load<std::int8_t>(p);
    case reflection::Short: return load<std::int16_t>(p);
    case reflection::UShort: return load<std::uint16_t>(p);
    case reflection::Int: return load<std::int32_t>(p);
    case reflection::UInt: return load<std::uint32_t>(p);
    case reflection::Long:
    case reflection::ULong: return load<std::int64_t>(p);  // ULong: the caller reinterprets
    default: return 0;
  }
}
inline double float_at(reflection::BaseType t, const std::uint8_t* p) noexcept {
  return t == reflection::Float ? static_cast<double>(load<float>(p)) : load<double>(p);
}

struct VectorRef {
  const std::uint8_t* data = nullptr;  // the first element
  std::uint32_t size = 0;              // elements
  bool present() const noexcept { return data != nullptr; }
};

inline VectorRef vector_at(const std::uint8_t* field) noexcept {
  const std::uint8_t* v = follow(field);
  return {v + sizeof(flatbuffers::uoffset_t), load<flatbuffers::uoffset_t>(v)};
}
inline std::string_view string_at(const std::uint8_t* field) noexcept {
  const VectorRef v = vector_at(field);
  return {reinterpret_cast<const char*>(v.data), v.size};
}

// A table in a verified buffer, with its type.
class TableRef {
 public:
  TableRef() = default;
  TableRef(const std::uint8_t* table, const TypeInfo* type) noexcept : p_(table), type_(type) {}

  bool present() const noexcept { return p_ != nullptr; }
  const TypeInfo& type() const noexcept { return *type_; }
  const std::uint8_t* data() const noexcept { return p_; }

  // The field's inline bytes, or nullptr if the table does not hold it.
  const std::uint8_t* address(const FieldInfo& f) const noexcept {
    const std::uint8_t* vt = p_ - load<flatbuffers::soffset_t>(p_);
    const auto vt_size = load<flatbuffers::voffset_t>(vt);
    if (f.offset >= vt_size) return nullptr;
    const auto at = load<flatbuffers::voffset_t>(vt + f.offset);
    return at == 0 ? nullptr : p_ + at;
  }
  bool has(const FieldInfo& f) const noexcept { return address(f) != nullptr; }

  // Scalars: the stored value, or the field's default.
  std::int64_t integer(const FieldInfo& f) const noexcept {
    const std::uint8_t* a = address(f);
    return a != nullptr ? int_at(f.base, a) : f.default_integer;
  }
  double real(const FieldInfo& f) const noexcept {
    const std::uint8_t* a = address(f);
    return a != nullptr ? float_at(f.base, a) : f.default_real;
  }
  // Strings, vectors, tables: absent reads as empty / not present.
  std::string_view string(const FieldInfo& f) const noexcept {
    const std::uint8_t* a = address(f);
    return a != nullptr ? string_at(a) : std::string_view{};
  }
  VectorRef vector(const FieldInfo& f) const noexcept {
    const std::uint8_t* a = address(f);
    return a != nullptr ? vector_at(a) : VectorRef{};
  }
  TableRef table(const FieldInfo& f) const noexcept {
    const std::uint8_t* a = address(f);
    return a != nullptr ? TableRef(follow(a), f.type) : TableRef();
  }
  // A struct field: its bytes in the table (nullptr if absent).
  const std::uint8_t* structure(const FieldInfo& f) const noexcept { return address(f); }
  // A union field: the member's table, or its bytes for a struct member (type().is_struct); not
  // present for NONE or an unknown member.
  TableRef union_member(const FieldInfo& f) const noexcept {
    if (f.union_type == nullptr) return {};
    const EnumValueInfo* m = f.enum_info->find(integer(*f.union_type));
    const std::uint8_t* a = address(f);
    if (m == nullptr || m->member == nullptr || a == nullptr) return {};
    return TableRef(follow(a), m->member);
  }

 private:
  const std::uint8_t* p_ = nullptr;
  const TypeInfo* type_ = nullptr;
};

}  // namespace dyn

// A received message of a run-time type, or the reason there is none (as Received<T>).
class DynReceived {
 public:
  DynReceived() = default;

  bool ok() const noexcept { return root_.present(); }
  explicit operator bool() const noexcept { return ok(); }
  const ReadError& error() const noexcept { return error_; }
  ReadErrc code() const noexcept { return error_.code; }
  dyn::TableRef root() const noexcept { return root_; }
  std::span<const std::byte> buffer() const noexcept { return buffer_; }
  bool zero_copy() const noexcept { return zero_copy_; }

  void release() noexcept {
    root_ = {};
    buffer_ = {};
    zero_copy_ = false;
    msg_.release();
  }

 private:
  template <class>
  friend class DynReader;

  Message msg_;
  dyn::TableRef root_;
  std::span<const std::byte> buffer_;
  ReadError error_;
  bool zero_copy_ = false;
};

// Reader<T> for a type known at run time. `type` (and its Schema) must outlive the reader.
template <class R = PipeReader>
class DynReader {
 public:
  DynReader(R& reader, const TypeInfo& type, ReaderOptions options = {}) noexcept
      : r_(&reader), type_(&type), checks_(options, detail::reader_stats(reader, options.stats)),
        want_(expected_of(type)) {}

  DynReceived try_recv() {
    DynReceived out;
    finish(out, r_->try_recv(out.msg_));
    return out;
  }
  DynReceived recv(Deadline deadline) {
    DynReceived out;
    finish(out, r_->recv(out.msg_, deadline));
    return out;
  }

  std::uint64_t rejected() const noexcept { return checks_.rejected(); }
  std::uint64_t verify_failures() const noexcept { return checks_.verify_failures(); }

 private:
  void finish(DynReceived& out, Status s) {
    const Checked c = checks_.check(out.msg_, s, want_, out.error_);
    if (out.error_.code != ReadErrc::ok) return;
    out.buffer_ = c.buffer;
    out.zero_copy_ = c.zero_copy;
    const auto* buf = reinterpret_cast<const std::uint8_t*>(c.buffer.data());
    out.root_ = dyn::TableRef(dyn::follow(buf), type_);
  }

  R* r_;
  const TypeInfo* type_;
  ReadChecks checks_;
  Expected want_;
};

}  // namespace shmq::fb
