// The reflection-driven builder: writes a FlatBuffers table of a run-time type (schema.hpp) from a
// tree of values described by a Source, into any FlatBufferBuilder (in place in a ring claim
// through DynWriter, dyn_write.hpp). The Python binding's Source walks dicts; Value (dyn_value.hpp)
// is the C++ one.
//
// What it accepts, per field kind:
//   scalars      integers (range-checked against the field's type), floats, bools; enums also by
//                name. A value equal to the field's default is omitted, as flatc's builders do.
//   strings      text (UTF-8) or bytes.
//   tables       a mapping of field name -> value; absent or None fields are omitted.
//   structs      a mapping (absent fields are 0) or a sequence of every field in order.
//   unions       a pair (member name, mapping); the hidden `<name>_type` field is set from it.
//   vectors      of scalars: any contiguous buffer of the element type (copied with one memcpy)
//                or a sequence; of structs: a buffer of whole structs or a sequence; of strings
//                and tables: a sequence.
// Errors name the field's path ("order.legs[2].symbol") and say what was wrong; nothing is left
// half-built in the builder: a failed build returns 0 with no table or vector open, so the caller
// drops the builder (DynWriter aborts the claim).
//
// How: each table is built in two phases, because FlatBuffers needs a table's strings, vectors
// and sub-tables finished before the table starts. Phase 1 goes through the mapping's entries
// once, converts scalars and structs (so every error happens here) and builds the offset-typed
// children; phase 2 adds the fields, largest first, and cannot fail.
//
// The Source concept (all calls are made by one thread, for one build):
//   typename Node                         a value handle, copied freely
//   bool is_mapping(Node) / bool is_none(Node)
//   bool fields(Node map, const TypeInfo&, Fn fn)   calls fn(const FieldInfo* f, Node value,
//                                         key_text) for each entry: f is the field the key names
//                                         (nullptr: none), key_text() the key in words (cold);
//                                         stops when fn returns false. Returns false when stopped,
//                                         or when the Source failed (Conv::error's meaning).
//   Conv to_i64(Node, int64_t&) / to_u64(Node, uint64_t&) / to_f64(Node, double&) / to_bool(Node, bool&)
//   Conv text(Node, std::string_view&)    a str (as UTF-8) or bytes
//   Conv buffer(Node, BufferView&, typename Source::Hold&)  a contiguous buffer, held by Hold
//   Conv sequence(Node, typename Source::Seq&)  then seq.size(), seq.item(i) (borrowed)
//   Conv pair(Node, Node& first, Node& second)  a 2-sequence (unions)
//   std::string describe(Node)            cold: the value's type in words ("int", "str")
// Conv::error means the Source raised an error of its own (the Python binding: a Python
// exception is set); the build stops with BuildErrc::source_error.
#pragma once

#include <flatbuffers/flatbuffers.h>
#include <flatbuffers/reflection.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "shmq/serialize/schema.hpp"

namespace shmq::fb {

enum class Conv : std::uint8_t {
  ok,
  wrong_type,  // not a value of the kind asked for
  overflow,    // an integer outside int64/uint64 (or a negative one for to_u64)
  bad_value,   // the right kind but unusable (text that is not valid UTF-8)
  error,       // the Source raised an error of its own
};

enum class BuildErrc : std::uint8_t {
  ok,
  type_error,    // a value of the wrong kind, an unknown field, a missing required field
  value_error,   // out of range, an unknown enum or union member name, too large, too deep
  source_error,  // the Source reported an error of its own (see Conv::error)
};

struct BuildError {
  BuildErrc code = BuildErrc::ok;
  std::string path;     // "order.legs[2].symbol"
  std::string message;  // "expected text or bytes, got int"

  bool ok() const noexcept { return code == BuildErrc::ok; }
  std::string text() const { return path.empty() ? message : path + ": " + message; }
};

struct BuildLimits {
  unsigned max_depth = 64;  // nested tables, structs and vectors (a mapping that contains itself)
};

// A contiguous buffer a Source exposes: `format` in the struct module's notation (nullptr:
// unsigned bytes), `itemsize` bytes per item, `bytes` in all.
struct BufferView {
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::size_t itemsize = 1;
  const char* format = nullptr;
};

// Scratch memory reused from build to build (one per thread): once warm, a build allocates
// nothing of its own (the builder may, when a message outgrows its claim).
struct BuildScratch {
  struct Slot {
    std::uint64_t bits = 0;          // a converted scalar, or an offset, or a struct's scratch index
    std::int64_t utype = 0;          // unions: the member's value
    bool present = false;
  };
  std::vector<Slot> slots;
  std::vector<flatbuffers::uoffset_t> offsets;
  std::vector<std::uint8_t> bytes;  // converted structs
};

namespace detail {

// A buffer format's element kind: 'i' signed, 'u' unsigned, 'f' float, 'b' bool, 0 unusable.
inline char format_kind(const char* format) noexcept {
  if (format == nullptr) return 'u';
  const char* f = format;
  if (*f == '@' || *f == '=' || *f == '<') ++f;
  if (*f == '>' || *f == '!') return 0;  // big-endian data: not the wire's byte order
  if (f[0] == '\0' || f[1] != '\0') return 0;
  switch (*f) {
    case 'b': case 'h': case 'i': case 'l': case 'q': case 'n': return 'i';
    case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N': case 'c': return 'u';
    case 'e': case 'f': case 'd': return 'f';
    case '?': return 'b';
    default: return 0;
  }
}

inline char base_kind(reflection::BaseType t) noexcept {
  switch (t) {
    case reflection::Bool: return 'b';
    case reflection::Byte: case reflection::Short: case reflection::Int: case reflection::Long: return 'i';
    case reflection::UType: case reflection::UByte: case reflection::UShort: case reflection::UInt:
    case reflection::ULong: return 'u';
    case reflection::Float: case reflection::Double: return 'f';
    default: return 0;
  }
}

inline const char* base_name(reflection::BaseType t) noexcept {
  switch (t) {
    case reflection::Bool: return "bool";
    case reflection::Byte: return "int8";
    case reflection::UByte: return "uint8";
    case reflection::Short: return "int16";
    case reflection::UShort: return "uint16";
    case reflection::Int: return "int32";
    case reflection::UInt: return "uint32";
    case reflection::Long: return "int64";
    case reflection::ULong: return "uint64";
    case reflection::Float: return "float32";
    case reflection::Double: return "float64";
    case reflection::String: return "string";
    case reflection::UType: return "union type";
    default: return "value";
  }
}

// Room left before a buffer would pass FlatBuffers' 2 GiB limit (vtables and padding included).
inline constexpr std::size_t kMaxBuildBytes = FLATBUFFERS_MAX_BUFFER_SIZE - (1u << 20);

template <class T>
void store_le(std::uint8_t* dst, T v) noexcept {
  static_assert(FLATBUFFERS_LITTLEENDIAN, "shmq's FlatBuffers paths assume a little-endian host");
  std::memcpy(dst, &v, sizeof v);
}

}  // namespace detail

template <class Source>
class DynBuilder {
 public:
  using Node = typename Source::Node;

  DynBuilder(flatbuffers::FlatBufferBuilder& b, Source& src, BuildScratch& scratch,
             BuildLimits limits = {}) noexcept
      : b_(b), src_(src), scratch_(scratch), limits_(limits) {}

  // Builds `node` as a table of `type`; returns its offset, or 0 (see error()).
  flatbuffers::uoffset_t table(const TypeInfo& type, Node node) {
    scratch_.bytes.clear();
    const flatbuffers::uoffset_t off = build_table(type, node);
    if (off == 0) finish_path(type);
    return off;
  }

  const BuildError& error() const noexcept { return error_; }
  BuildError take_error() noexcept { return std::move(error_); }

 private:
  using Slot = BuildScratch::Slot;

  // ---- errors: the message is set where the problem is; each level on the way out adds its
  // step to the path (steps_ collects them innermost first).
  std::nullptr_t fail(BuildErrc code, std::string message) {
    error_.code = code;
    error_.message = std::move(message);
    return nullptr;
  }
  bool fail_conv(Conv c, Node v, const char* wanted) {
    if (c == Conv::error) {
      fail(BuildErrc::source_error, "");
    } else if (c == Conv::overflow) {
      fail(BuildErrc::value_error, std::string("integer out of range for ") + wanted);
    } else if (c == Conv::bad_value) {
      fail(BuildErrc::value_error, std::string("not a valid ") + wanted);
    } else {
      fail(BuildErrc::type_error, std::string("expected ") + wanted + ", got " + src_.describe(v));
    }
    return false;
  }
  // Built with append(): g++ 12 reports a false -Wrestrict on `"literal" + std::string` here.
  void step(const std::string& field) { steps_.emplace_back(".").append(field); }
  void step(std::size_t index) { steps_.emplace_back("[").append(std::to_string(index)).append("]"); }
  void finish_path(const TypeInfo& root) {
    error_.path = root.path_name;
    for (auto it = steps_.rbegin(); it != steps_.rend(); ++it) error_.path += *it;
    steps_.clear();
  }

  struct Depth {
    unsigned& d;
    explicit Depth(unsigned& depth) : d(depth) { ++d; }
    ~Depth() { --d; }
  };
  bool too_deep() {
    if (depth_ < limits_.max_depth) return false;
    fail(BuildErrc::value_error, "nested deeper than " + std::to_string(limits_.max_depth) +
                                     " levels (a value that contains itself?)");
    return true;
  }

  // ---- tables
  flatbuffers::uoffset_t build_table(const TypeInfo& t, Node map) {
    if (too_deep()) return 0;
    Depth depth(depth_);
    if (!src_.is_mapping(map)) {
      fail(BuildErrc::type_error, "expected a mapping for table " + t.short_name + ", got " + src_.describe(map));
      return 0;
    }
    const std::size_t base = scratch_.slots.size();
    scratch_.slots.resize(base + t.fields.size());
    bool ok = src_.fields(map, t, [&](const FieldInfo* f, Node v, auto&& key_text) {
      if (f == nullptr || f->deprecated || f->base == reflection::UType) {
        fail(BuildErrc::type_error, "table " + t.short_name + " has no field '" + key_text() + "'");
        return false;
      }
      if (src_.is_none(v)) {
        if (!f->required) return true;  // None: left out
        step(f->name);
        fail(BuildErrc::type_error, "required field '" + f->name + "' of " + t.short_name + " is None");
        return false;
      }
      if (!phase1(*f, v, base + f->index)) {
        step(f->name);
        return false;
      }
      return true;
    });
    if (!ok && error_.ok()) fail(BuildErrc::source_error, "");
    for (std::size_t i = 0; ok && i < t.fields.size(); ++i) {
      const FieldInfo& f = t.fields[i];
      if (f.required && !scratch_.slots[base + i].present) {
        step(f.name);
        fail(BuildErrc::type_error, "missing required field '" + f.name + "' of " + t.short_name);
        ok = false;
      }
    }
    flatbuffers::uoffset_t off = 0;
    if (ok) off = phase2(t, base);
    scratch_.slots.resize(base);
    return off;
  }

  // Converts or builds one field's value into its slot (index `at`: the slots may move).
  bool phase1(const FieldInfo& f, Node v, std::size_t at) {
    Slot s;
    s.present = true;
    switch (f.base) {
      case reflection::String: {
        const flatbuffers::uoffset_t o = string(v);
        if (o == 0) return false;
        s.bits = o;
        break;
      }
      case reflection::Vector: {
        const flatbuffers::uoffset_t o = vector(f, v);
        if (o == 0) return false;
        s.bits = o;
        break;
      }
      case reflection::Obj: {
        if (f.type->is_struct) {
          const std::size_t pos = scratch_.bytes.size();
          scratch_.bytes.resize(pos + f.type->bytesize);
          if (!structure(*f.type, v, pos)) return false;
          s.bits = pos;
        } else {
          const flatbuffers::uoffset_t o = build_table(*f.type, v);
          if (o == 0) return false;
          s.bits = o;
        }
        break;
      }
      case reflection::Union: {
        if (!union_value(f, v, s)) return false;
        break;
      }
      default:
        if (!scalar(f.base, f.enum_info, v, s.bits)) return false;
        break;
    }
    scratch_.slots[at] = s;
    return true;
  }

  flatbuffers::uoffset_t phase2(const TypeInfo& t, std::size_t base) {
    const flatbuffers::uoffset_t start = b_.StartTable();
    for (const std::uint16_t i : t.add_order) {
      const FieldInfo& f = t.fields[i];
      const Slot& s = scratch_.slots[base + i];
      if (!s.present) continue;
      switch (f.base) {
        case reflection::String:
        case reflection::Vector:
          b_.AddOffset(f.offset, flatbuffers::Offset<void>(static_cast<flatbuffers::uoffset_t>(s.bits)));
          break;
        case reflection::Obj:
          if (f.type->is_struct) {
            b_.Align(f.type->minalign);
            b_.PushBytes(scratch_.bytes.data() + s.bits, f.type->bytesize);
            b_.TrackField(f.offset, b_.GetSize());
          } else {
            b_.AddOffset(f.offset, flatbuffers::Offset<void>(static_cast<flatbuffers::uoffset_t>(s.bits)));
          }
          break;
        case reflection::Union:
          if (s.bits != 0) {
            b_.AddOffset(f.offset, flatbuffers::Offset<void>(static_cast<flatbuffers::uoffset_t>(s.bits)));
          }
          if (f.union_type != nullptr) {
            b_.AddElement<std::uint8_t>(f.union_type->offset, static_cast<std::uint8_t>(s.utype), 0);
          }
          break;
        default:
          add_scalar(f, s.bits);
          break;
      }
    }
    return b_.EndTable(start);
  }

  void add_scalar(const FieldInfo& f, std::uint64_t bits) {
    const auto di = f.default_integer;
    const bool opt = f.optional;  // `= null`: written whenever given
    switch (f.base) {
      case reflection::Bool:
      case reflection::UByte:
      case reflection::UType: add<std::uint8_t>(f, bits, di, opt); break;
      case reflection::Byte: add<std::int8_t>(f, bits, di, opt); break;
      case reflection::Short: add<std::int16_t>(f, bits, di, opt); break;
      case reflection::UShort: add<std::uint16_t>(f, bits, di, opt); break;
      case reflection::Int: add<std::int32_t>(f, bits, di, opt); break;
      case reflection::UInt: add<std::uint32_t>(f, bits, di, opt); break;
      case reflection::Long: add<std::int64_t>(f, bits, di, opt); break;
      case reflection::ULong: add<std::uint64_t>(f, bits, di, opt); break;
      case reflection::Float: {
        float v;
        const auto u = static_cast<std::uint32_t>(bits);
        std::memcpy(&v, &u, sizeof v);
        if (opt) b_.AddElement<float>(f.offset, v);
        else b_.AddElement<float>(f.offset, v, static_cast<float>(f.default_real));
        break;
      }
      case reflection::Double: {
        double v;
        std::memcpy(&v, &bits, sizeof v);
        if (opt) b_.AddElement<double>(f.offset, v);
        else b_.AddElement<double>(f.offset, v, f.default_real);
        break;
      }
      default: break;
    }
  }
  template <class T>
  void add(const FieldInfo& f, std::uint64_t bits, std::int64_t def, bool opt) {
    const T v = static_cast<T>(bits);
    if (opt) b_.AddElement<T>(f.offset, v);
    else b_.AddElement<T>(f.offset, v, static_cast<T>(def));
  }

  // ---- scalars: converted and range-checked into the low bytes of `bits` (little-endian, the
  // element's size), the form both tables (phase 2) and vectors/structs (memcpy) take.
  bool scalar(reflection::BaseType base, const EnumInfo* e, Node v, std::uint64_t& bits) {
    switch (base) {
      case reflection::Bool: {
        bool x = false;
        const Conv c = src_.to_bool(v, x);
        if (c != Conv::ok) return fail_conv(c, v, "a bool");
        bits = x ? 1 : 0;
        return true;
      }
      case reflection::Float:
      case reflection::Double: {
        double x = 0;
        const Conv c = src_.to_f64(v, x);
        if (c != Conv::ok) return fail_conv(c, v, "a float");
        if (base == reflection::Double) {
          std::memcpy(&bits, &x, sizeof x);
        } else {
          const auto fx = static_cast<float>(x);
          std::uint32_t u;
          std::memcpy(&u, &fx, sizeof u);
          bits = u;
        }
        return true;
      }
      default: return integer(base, e, v, bits);
    }
  }

  bool integer(reflection::BaseType base, const EnumInfo* e, Node v, std::uint64_t& bits) {
    const char* wanted = detail::base_name(base);
    if (base == reflection::ULong) {
      std::uint64_t u = 0;
      Conv c = src_.to_u64(v, u);
      if (c == Conv::wrong_type && e != nullptr) return enum_name(e, v, bits);
      if (c != Conv::ok) return fail_conv(c, v, wanted);
      bits = u;
      return true;
    }
    std::int64_t x = 0;
    const Conv c = src_.to_i64(v, x);
    if (c == Conv::wrong_type && e != nullptr) return enum_name(e, v, bits);
    if (c != Conv::ok) return fail_conv(c, v, wanted);
    std::int64_t lo = 0, hi = 0;
    switch (base) {
      case reflection::Byte: lo = INT8_MIN; hi = INT8_MAX; break;
      case reflection::UType:
      case reflection::UByte: lo = 0; hi = UINT8_MAX; break;
      case reflection::Short: lo = INT16_MIN; hi = INT16_MAX; break;
      case reflection::UShort: lo = 0; hi = UINT16_MAX; break;
      case reflection::Int: lo = INT32_MIN; hi = INT32_MAX; break;
      case reflection::UInt: lo = 0; hi = UINT32_MAX; break;
      default: lo = INT64_MIN; hi = INT64_MAX; break;
    }
    if (x < lo || x > hi) {
      fail(BuildErrc::value_error, std::to_string(x) + " is out of range for " + wanted);
      return false;
    }
    bits = static_cast<std::uint64_t>(x);
    return true;
  }

  bool enum_name(const EnumInfo* e, Node v, std::uint64_t& bits) {
    std::string_view name;
    const Conv c = src_.text(v, name);
    if (c != Conv::ok) {
      return fail_conv(c == Conv::wrong_type ? Conv::wrong_type : c, v,
                       ("an integer or a name of enum " + e->short_name).c_str());
    }
    const EnumValueInfo* val = e->find(name);
    if (val == nullptr) {
      fail(BuildErrc::value_error, "'" + std::string(name) + "' is not a value of enum " + e->short_name);
      return false;
    }
    bits = static_cast<std::uint64_t>(val->value);
    return true;
  }

  // ---- strings
  flatbuffers::uoffset_t string(Node v) {
    std::string_view s;
    const Conv c = src_.text(v, s);
    if (c != Conv::ok) return fail_conv(c, v, "text or bytes"), 0;
    if (!room(s.size() + 5)) return 0;
    return b_.CreateString(s.data(), s.size()).o;
  }

  bool room(std::size_t more) {
    if (more <= detail::kMaxBuildBytes && b_.GetSize() <= detail::kMaxBuildBytes - more) return true;
    fail(BuildErrc::value_error, "the message would exceed FlatBuffers' 2 GiB limit");
    return false;
  }

  // ---- unions: (member name, mapping); None or "NONE" for no value
  bool union_value(const FieldInfo& f, Node v, Slot& s) {
    Node first{}, second{};
    const Conv c = src_.pair(v, first, second);
    if (c != Conv::ok) return fail_conv(c, v, ("a (member name, mapping) pair for union " + f.enum_info->short_name).c_str());
    std::string_view name;
    const Conv tc = src_.text(first, name);
    if (tc != Conv::ok) return fail_conv(tc, first, "a union member name");
    const EnumValueInfo* member = f.enum_info->find(name);
    if (member == nullptr) {
      fail(BuildErrc::value_error, "'" + std::string(name) + "' is not a member of union " + f.enum_info->short_name);
      return false;
    }
    s.utype = member->value;
    if (member->member == nullptr) {  // NONE
      s.bits = 0;
      return true;
    }
    const flatbuffers::uoffset_t o = build_table(*member->member, second);
    if (o == 0) return false;
    s.bits = o;
    return true;
  }

  // ---- structs: into scratch_.bytes at `pos` (zeroed), from a mapping or a full sequence
  bool structure(const TypeInfo& t, Node v, std::size_t pos) {
    if (too_deep()) return false;
    Depth depth(depth_);
    if (src_.is_mapping(v)) {
      const bool ok = src_.fields(v, t, [&](const FieldInfo* f, Node x, auto&& key_text) {
        if (f == nullptr) {
          fail(BuildErrc::type_error, "struct " + t.short_name + " has no field '" + key_text() + "'");
          return false;
        }
        if (src_.is_none(x) || struct_field(*f, x, pos + f->offset)) return true;
        step(f->name);
        return false;
      });
      if (!ok && error_.ok()) fail(BuildErrc::source_error, "");
      return ok;
    }
    typename Source::Seq seq;
    const Conv c = src_.sequence(v, seq);
    if (c != Conv::ok) return fail_conv(c, v, ("a mapping or a sequence for struct " + t.short_name).c_str());
    if (seq.size() != t.fields.size()) {
      fail(BuildErrc::type_error, "struct " + t.short_name + " has " + std::to_string(t.fields.size()) +
                                      " fields, got a sequence of " + std::to_string(seq.size()));
      return false;
    }
    for (std::size_t i = 0; i < t.fields.size(); ++i) {
      const FieldInfo& f = t.fields[i];
      if (!struct_field(f, seq.item(i), pos + f.offset)) {
        step(f.name);
        return false;
      }
    }
    return true;
  }

  bool struct_field(const FieldInfo& f, Node x, std::size_t at) {
    if (f.base == reflection::Obj) return structure(*f.type, x, at);
    if (f.base == reflection::Array) return array(f, x, at);
    std::uint64_t bits = 0;
    if (!scalar(f.base, f.enum_info, x, bits)) return false;
    std::memcpy(scratch_.bytes.data() + at, &bits, f.size);  // little-endian: the low bytes
    return true;
  }

  // A fixed-length array inside a struct: a sequence (or buffer) of exactly fixed_length items.
  bool array(const FieldInfo& f, Node x, std::size_t at) {
    if (f.element != reflection::Obj) {
      BufferView bv;
      typename Source::Hold hold;
      const Conv bc = src_.buffer(x, bv, hold);
      if (bc == Conv::error) return fail_conv(bc, x, "");
      if (bc == Conv::ok && buffer_matches(f.element, bv)) {
        if (bv.bytes != f.size) {
          fail(BuildErrc::type_error, "expected " + std::to_string(f.fixed_length) + " items, got " +
                                          std::to_string(bv.bytes / f.element_size));
          return false;
        }
        std::memcpy(scratch_.bytes.data() + at, bv.data, bv.bytes);
        return true;
      }
    }
    typename Source::Seq seq;
    const Conv c = src_.sequence(x, seq);
    if (c != Conv::ok) return fail_conv(c, x, "a sequence");
    if (seq.size() != f.fixed_length) {
      fail(BuildErrc::type_error, "expected " + std::to_string(f.fixed_length) + " items, got " +
                                      std::to_string(seq.size()));
      return false;
    }
    for (std::size_t i = 0; i < seq.size(); ++i) {
      const std::size_t to = at + i * f.element_size;
      bool ok;
      if (f.element == reflection::Obj) {
        ok = structure(*f.type, seq.item(i), to);
      } else {
        std::uint64_t bits = 0;
        ok = scalar(f.element, f.enum_info, seq.item(i), bits);
        if (ok) std::memcpy(scratch_.bytes.data() + to, &bits, f.element_size);
      }
      if (!ok) {
        step(i);
        return false;
      }
    }
    return true;
  }

  // ---- vectors
  static bool buffer_matches(reflection::BaseType element, const BufferView& bv) noexcept {
    const std::size_t size = flatbuffers::GetTypeSize(element);
    if (bv.itemsize != size) return false;
    const char have = detail::format_kind(bv.format);
    const char want = detail::base_kind(element);
    // Bytes of either signedness fill an 8-bit vector (bytes objects for [byte]).
    return have == want || (size == 1 && (have == 'i' || have == 'u') && (want == 'i' || want == 'u'));
  }

  flatbuffers::uoffset_t vector(const FieldInfo& f, Node v) {
    if (!f.supported) {
      fail(BuildErrc::type_error, "vectors of unions are not supported");
      return 0;
    }
    if (too_deep()) return 0;
    Depth depth(depth_);
    if (f.element == reflection::String || (f.element == reflection::Obj && !f.type->is_struct)) {
      return offset_vector(f, v);
    }
    // Scalars and structs: inline elements, written straight into the builder.
    BufferView bv;
    typename Source::Hold hold;
    const Conv bc = src_.buffer(v, bv, hold);
    if (bc == Conv::error) return fail_conv(bc, v, ""), 0;
    if (bc == Conv::ok) {
      const bool structs = f.element == reflection::Obj;
      // Structs: any buffer of whole structs (a numpy structured array, or float32 pairs for a
      // struct of two floats); scalars: a buffer of the element type.
      if (structs ? bv.itemsize != 0 && f.element_size % bv.itemsize == 0 && bv.bytes % f.element_size == 0
                  : buffer_matches(f.element, bv)) {
        if (!room(bv.bytes + 16)) return 0;
        std::uint8_t* dst = nullptr;
        const flatbuffers::uoffset_t o = inline_vector(f, bv.bytes / f.element_size, &dst);
        if (bv.bytes != 0) std::memcpy(dst, bv.data, bv.bytes);
        return o;
      }
      if (f.element != reflection::UByte && f.element != reflection::Byte) {
        // A buffer of another element type (float64 for [int64]): say so rather than convert.
        fail(BuildErrc::type_error, "a buffer of format '" + std::string(bv.format ? bv.format : "B") +
                                        "' (" + std::to_string(bv.itemsize) + "-byte items) does not match [" +
                                        (structs ? f.type->short_name : detail::base_name(f.element)) + "]");
        return 0;
      }
    }
    typename Source::Seq seq;
    const Conv c = src_.sequence(v, seq);
    if (c != Conv::ok) return fail_conv(c, v, "a sequence or a buffer"), 0;
    const std::size_t n = seq.size();
    if (!room(n * f.element_size + 16)) return 0;
    std::uint8_t* dst = nullptr;
    const flatbuffers::uoffset_t o = inline_vector(f, n, &dst);
    if (f.element == reflection::Obj) {
      // Structs are converted in scratch (their fields are written piecewise), then copied.
      const std::size_t pos = scratch_.bytes.size();
      scratch_.bytes.resize(pos + f.element_size);
      for (std::size_t i = 0; i < n; ++i) {
        std::memset(scratch_.bytes.data() + pos, 0, f.element_size);
        if (!structure(*f.type, seq.item(i), pos)) {
          step(i);
          return 0;
        }
        std::memcpy(dst + i * f.element_size, scratch_.bytes.data() + pos, f.element_size);
      }
      scratch_.bytes.resize(pos);
      return o;
    }
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t bits = 0;
      if (!scalar(f.element, f.enum_info, seq.item(i), bits)) {
        step(i);
        return 0;
      }
      std::memcpy(dst + i * f.element_size, &bits, f.element_size);
    }
    return o;
  }

  // A finished vector of n inline elements whose bytes the caller fills at *dst. Structs are
  // aligned to their own alignment: the vector is started as n * size / align items of `align`
  // bytes (FlatBufferBuilder's alignment helpers want power-of-two sizes) and its length word is
  // then set to n.
  flatbuffers::uoffset_t inline_vector(const FieldInfo& f, std::size_t n, std::uint8_t** dst) {
    if (f.element != reflection::Obj) return b_.CreateUninitializedVector(n, f.element_size, dst);
    const std::size_t align = f.type->minalign;
    const flatbuffers::uoffset_t o = b_.CreateUninitializedVector(n * f.element_size / align, align, dst);
    flatbuffers::WriteScalar<flatbuffers::uoffset_t>(b_.GetCurrentBufferPointer(),
                                                     static_cast<flatbuffers::uoffset_t>(n));
    return o;
  }

  // Strings and tables: the elements first, then the vector of their offsets.
  flatbuffers::uoffset_t offset_vector(const FieldInfo& f, Node v) {
    typename Source::Seq seq;
    const Conv c = src_.sequence(v, seq);
    if (c != Conv::ok) return fail_conv(c, v, "a sequence"), 0;
    const std::size_t n = seq.size();
    const std::size_t base = scratch_.offsets.size();
    for (std::size_t i = 0; i < n; ++i) {
      const flatbuffers::uoffset_t o =
          f.element == reflection::String ? string(seq.item(i)) : build_table(*f.type, seq.item(i));
      if (o == 0) {
        scratch_.offsets.resize(base);
        step(i);
        return 0;
      }
      scratch_.offsets.push_back(o);
    }
    if (!room(4 * n + 16)) {
      scratch_.offsets.resize(base);
      return 0;
    }
    b_.StartVector(n, sizeof(flatbuffers::uoffset_t));
    for (std::size_t i = n; i-- > 0;) {
      b_.PushElement(flatbuffers::Offset<void>(scratch_.offsets[base + i]));
    }
    scratch_.offsets.resize(base);
    return b_.EndVector(n);
  }

  flatbuffers::FlatBufferBuilder& b_;
  Source& src_;
  BuildScratch& scratch_;
  BuildLimits limits_;
  unsigned depth_ = 0;
  BuildError error_;
  std::vector<std::string> steps_;  // only on failure
};

}  // namespace shmq::fb
