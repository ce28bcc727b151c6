// shmq::fb::Schema: a FlatBuffers schema (.fbs) parsed at run time by libflatbuffers' own Parser,
// with its reflection data and, per table, struct and enum, a table of facts precomputed once so
// the reflection-driven builder (dyn_build.hpp), reader and verifier (dyn_read.hpp) never search
// the reflection schema on the hot path.
//
//   auto s = shmq::fb::Schema::load_file("order.fbs");           // includes resolved
//   if (!s) fail(s.error().what);                                   // "order.fbs:3: 7: error: ..."
//   const shmq::fb::TypeInfo* order = s->find("Order");             // or "shmq.schema.Order"
//
// The CLI (`shmq dump --schema`) and the Python package (`shmq.fb.load`) load schemas here.
//
// Type identity on the wire (the prefix's type id, prefix.hpp): the schema's root type, when the
// schema declares a file_identifier, is that identifier (so C++'s shmq::fb::Reader<T> and
// flatc-generated code agree) and its buffers carry the identifier. Every other table gets a
// 32-bit hash of its fully qualified name with the top bit set (never four printable ASCII
// characters, so it never equals an identifier) and its buffers carry no identifier.
//
// Thread roles: a loaded Schema is immutable and may be read by any number of threads, except
// to_json() (it sets the parser's root type): one thread at a time.
#pragma once

#include <flatbuffers/reflection_generated.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmq/core/result.hpp"

namespace flatbuffers {
class Parser;
}

namespace shmq::fb {

struct TypeInfo;

struct EnumValueInfo {
  std::string name;
  std::int64_t value = 0;
  const TypeInfo* member = nullptr;  // unions: the table this value stands for (NONE: nullptr)
};

struct EnumInfo {
  std::string name;  // fully qualified, e.g. "shmq.schema.Side"
  std::string short_name;
  std::size_t index = 0;  // in Schema::enums()
  bool is_union = false;
  reflection::BaseType underlying = reflection::UByte;
  std::vector<EnumValueInfo> values;  // ascending by value

  const EnumValueInfo* find(std::string_view value_name) const noexcept;
  const EnumValueInfo* find(std::int64_t value) const noexcept;
};

// One field of a table or struct, with what the builder and reader need in one place.
struct FieldInfo {
  std::string name;
  std::size_t index = 0;             // in TypeInfo::fields
  reflection::BaseType base = reflection::None;
  reflection::BaseType element = reflection::None;  // vectors and arrays: the element's type
  // Tables: the field's vtable slot offset. Structs: the field's byte offset in the struct.
  std::uint16_t offset = 0;
  std::uint16_t fixed_length = 0;    // arrays (in structs): the element count
  std::uint32_t size = 0;            // bytes the value takes inline (scalar, struct, array)
  std::uint32_t element_size = 0;    // vectors and arrays: bytes per element, inline
  std::int64_t default_integer = 0;
  double default_real = 0;
  bool required = false;
  bool deprecated = false;
  bool optional = false;             // a scalar declared `= null`: absent reads as None
  bool supported = true;             // false: a vector of unions (neither built nor read)
  const TypeInfo* type = nullptr;    // Obj, vector of Obj, array of Obj
  const EnumInfo* enum_info = nullptr;  // enum-typed scalars and vectors, unions and their _type
  const FieldInfo* union_type = nullptr;   // a union field: its hidden `<name>_type` field
  const FieldInfo* union_value = nullptr;  // a `<name>_type` field: its union field
};

struct TypeInfo {
  std::string name;        // fully qualified, e.g. "shmq.schema.Order"
  std::string short_name;  // "Order"
  std::string path_name;   // the root of error paths: short_name in snake_case, "order"
  std::size_t index = 0;   // in Schema::types()
  bool is_struct = false;
  std::uint32_t bytesize = 0;  // structs: inline size
  std::uint32_t minalign = 1;  // structs: alignment
  std::vector<FieldInfo> fields;  // tables: by id (vtable order); structs: by offset
  // Tables: field indices by inline size, largest first (the order the builder adds them, as
  // flatc's generated code does, so padding is smallest).
  std::vector<std::uint16_t> add_order;
  const reflection::Object* object = nullptr;
  const reflection::Schema* schema = nullptr;  // the reflection data it belongs to
  bool is_root = false;           // the schema's root_type
  std::uint32_t type_id = 0;      // identity in the shmq prefix (see the header comment)
  std::string identifier;         // file_identifier written into its buffers ("": none)

  const FieldInfo* field(std::string_view field_name) const noexcept;
};

// Where and why a schema failed to parse, split out of the parser's message.
struct SchemaDiagnostic {
  std::string file;      // "" for text without a file name
  int line = 0;          // 1-based; 0 if the parser gave none
  int column = 0;
  std::string message;   // the parser's words, without the location
};

struct SchemaOptions {
  // Directories searched for `include` files, after the including file's own directory.
  std::vector<std::string> include_dirs;
};

class Schema {
 public:
  // Cold path. A parse error returns Errc::invalid_argument whose text is the parser's
  // "file:line: column: error: message"; *diag, if given, gets the parts.
  static Result<Schema> load_file(const std::string& path, const SchemaOptions& options = {},
                                  SchemaDiagnostic* diag = nullptr);
  // `source_name` names the text in messages and anchors relative includes ("" : the cwd).
  static Result<Schema> load_text(std::string_view text, const SchemaOptions& options = {},
                                  const std::string& source_name = "",
                                  SchemaDiagnostic* diag = nullptr);

  Schema(Schema&&) noexcept;
  Schema& operator=(Schema&&) noexcept;
  ~Schema();

  // A table or struct by fully qualified name, or by short name when only one type has it.
  const TypeInfo* find(std::string_view name) const noexcept;
  const EnumInfo* find_enum(std::string_view name) const noexcept;
  const TypeInfo* root() const noexcept;  // nullptr: no root_type
  std::span<const TypeInfo> types() const noexcept;
  std::span<const EnumInfo> enums() const noexcept;
  const std::string& file_identifier() const noexcept;  // "" if none
  const std::string& source_name() const noexcept;

  const reflection::Schema& reflection() const noexcept;
  std::span<const std::uint8_t> bfbs() const noexcept;  // the binary schema (reflection.fbs)

  // A verified buffer of `type` as one line of strict JSON (FlatBuffers' text generator).
  // Returns false if the generator fails. Not thread-safe (see the header comment).
  bool to_json(const TypeInfo& type, const std::uint8_t* buffer, std::string* out) const;

  struct Impl;  // opaque: the parser, the reflection data and the tables (schema.cpp)

 private:
  explicit Schema(std::unique_ptr<Impl> impl) noexcept;
  static Result<Schema> finish(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The diagnostic parts of a FlatBuffers parser message ("file:line: col: error: msg").
SchemaDiagnostic parse_diagnostic(std::string_view parser_error);

// The type id of a non-root table (see the header comment): FNV-1a of the name, top bit set.
std::uint32_t hashed_type_id(std::string_view fully_qualified_name) noexcept;

}  // namespace shmq::fb
