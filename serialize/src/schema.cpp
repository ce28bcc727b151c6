// Schema loading (cold path): the FlatBuffers parser, its reflection data, and the per-type tables
// of schema.hpp.
#include "shmq/serialize/schema.hpp"

#include <flatbuffers/idl.h>
#include <flatbuffers/reflection.h>
#include <flatbuffers/util.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "shmq/serialize/prefix.hpp"

namespace shmq::fb {

struct Schema::Impl {
  flatbuffers::Parser parser;
  std::vector<std::uint8_t> bfbs;
  const reflection::Schema* schema = nullptr;
  std::vector<TypeInfo> types;  // sized once: TypeInfo/FieldInfo pointers into it stay valid
  std::vector<EnumInfo> enums;
  std::string identifier;
  std::string source_name;
  const TypeInfo* root = nullptr;
};

namespace {

std::string short_of(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

std::string snake_case(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (std::isupper(c) != 0) {
      const bool prev_lower = i > 0 && std::islower(static_cast<unsigned char>(s[i - 1])) != 0;
      const bool next_lower = i + 1 < s.size() && std::islower(static_cast<unsigned char>(s[i + 1])) != 0;
      if (i > 0 && (prev_lower || (next_lower && out.back() != '_'))) out.push_back('_');
      out.push_back(static_cast<char>(std::tolower(c)));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::uint32_t scalar_size(reflection::BaseType t) {
  return static_cast<std::uint32_t>(flatbuffers::GetTypeSize(t));
}

// Fills the enum tables (first, so fields can point at them).
void build_enums(Schema::Impl& s) {
  const auto* enums = s.schema->enums();
  s.enums.resize(enums != nullptr ? enums->size() : 0);
  for (std::size_t i = 0; i < s.enums.size(); ++i) {
    const reflection::Enum* e = enums->Get(static_cast<flatbuffers::uoffset_t>(i));
    EnumInfo& info = s.enums[i];
    info.name = e->name()->str();
    info.short_name = short_of(info.name);
    info.index = i;
    info.is_union = e->is_union();
    info.underlying = e->underlying_type()->base_type();
    for (const reflection::EnumVal* v : *e->values()) {
      EnumValueInfo val;
      val.name = v->name()->str();
      val.value = v->value();
      if (info.is_union && v->union_type() != nullptr && v->union_type()->base_type() == reflection::Obj) {
        val.member = &s.types[static_cast<std::size_t>(v->union_type()->index())];
      }
      info.values.push_back(std::move(val));
    }
    std::sort(info.values.begin(), info.values.end(),
              [](const EnumValueInfo& a, const EnumValueInfo& b) { return a.value < b.value; });
  }
}

void build_field(Schema::Impl& s, const reflection::Field& f, FieldInfo& out) {
  const reflection::Type* t = f.type();
  out.name = f.name()->str();
  out.base = t->base_type();
  out.element = t->element();
  out.offset = f.offset();
  out.fixed_length = t->fixed_length();
  out.default_integer = f.default_integer();
  out.default_real = f.default_real();
  out.required = f.required();
  out.deprecated = f.deprecated();
  out.optional = f.optional();
  const int index = t->index();
  const bool obj_typed = out.base == reflection::Obj ||
                         ((out.base == reflection::Vector || out.base == reflection::Array) &&
                          out.element == reflection::Obj);
  if (index >= 0) {
    if (obj_typed) {
      out.type = &s.types[static_cast<std::size_t>(index)];
    } else {
      out.enum_info = &s.enums[static_cast<std::size_t>(index)];
    }
  }
  if (flatbuffers::IsScalar(out.base)) {
    out.size = scalar_size(out.base);
  } else if (out.base == reflection::Obj && out.type != nullptr && out.type->is_struct) {
    out.size = out.type->bytesize;
  } else if (out.base == reflection::Array) {
    out.element_size = out.element == reflection::Obj ? out.type->bytesize : scalar_size(out.element);
    out.size = out.element_size * out.fixed_length;
  } else {
    out.size = sizeof(flatbuffers::uoffset_t);  // an offset in the table
  }
  if (out.base == reflection::Vector) {
    out.element_size = out.element == reflection::Obj && out.type->is_struct
                           ? out.type->bytesize
                           : scalar_size(out.element);  // an offset for tables and strings
    if (out.element == reflection::Union || out.element == reflection::UType) out.supported = false;
  }
}

void build_types(Schema::Impl& s) {
  const auto* objects = s.schema->objects();
  // First pass: names and shapes, so fields can point at any type.
  for (std::size_t i = 0; i < s.types.size(); ++i) {
    const reflection::Object* o = objects->Get(static_cast<flatbuffers::uoffset_t>(i));
    TypeInfo& t = s.types[i];
    t.name = o->name()->str();
    t.short_name = short_of(t.name);
    t.path_name = snake_case(t.short_name);
    t.index = i;
    t.is_struct = o->is_struct();
    t.bytesize = static_cast<std::uint32_t>(o->bytesize());
    t.minalign = static_cast<std::uint32_t>(std::max(1, o->minalign()));
    t.object = o;
    t.schema = s.schema;
  }
  build_enums(s);
  for (std::size_t i = 0; i < s.types.size(); ++i) {
    const reflection::Object* o = objects->Get(static_cast<flatbuffers::uoffset_t>(i));
    TypeInfo& t = s.types[i];
    // Reflection lists fields by name; tables want them by id, structs by offset.
    std::vector<const reflection::Field*> fields(o->fields()->begin(), o->fields()->end());
    std::sort(fields.begin(), fields.end(), [&](const reflection::Field* a, const reflection::Field* b) {
      return t.is_struct ? a->offset() < b->offset() : a->id() < b->id();
    });
    t.fields.resize(fields.size());
    for (std::size_t k = 0; k < fields.size(); ++k) {
      build_field(s, *fields[k], t.fields[k]);
      t.fields[k].index = k;
    }
    for (FieldInfo& f : t.fields) {
      if (f.base != reflection::Union) continue;
      for (FieldInfo& g : t.fields) {
        if (g.base == reflection::UType && g.name == f.name + "_type") {
          f.union_type = &g;
          g.union_value = &f;
        }
      }
    }
    if (!t.is_struct) {
      for (std::size_t k = 0; k < t.fields.size(); ++k) t.add_order.push_back(static_cast<std::uint16_t>(k));
      std::stable_sort(t.add_order.begin(), t.add_order.end(), [&](std::uint16_t a, std::uint16_t b) {
        const FieldInfo& fa = t.fields[a];
        const FieldInfo& fb = t.fields[b];
        const std::uint32_t sa = fa.base == reflection::Obj && fa.type->is_struct ? fa.type->minalign : fa.size;
        const std::uint32_t sb = fb.base == reflection::Obj && fb.type->is_struct ? fb.type->minalign : fb.size;
        return sa > sb;
      });
    }
  }
}

}  // namespace

std::uint32_t hashed_type_id(std::string_view name) noexcept {
  std::uint32_t h = 2166136261u;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 16777619u;
  }
  return h | 0x80000000u;
}

SchemaDiagnostic parse_diagnostic(std::string_view e) {
  // FlatBuffers 2.0.8: "<file>:<line>: <column>: error: <message>" (file may be empty).
  SchemaDiagnostic d;
  const auto err = e.find(": error: ");
  if (err == std::string_view::npos) {
    d.message = std::string(e);
    return d;
  }
  d.message = std::string(e.substr(err + 9));
  while (!d.message.empty() && (d.message.back() == '\n' || d.message.back() == ' ')) d.message.pop_back();
  std::string_view loc = e.substr(0, err);  // "<file>:<line>: <column>"
  const auto col_sep = loc.rfind(": ");
  if (col_sep == std::string_view::npos) return d;
  const std::string_view col = loc.substr(col_sep + 2);
  std::from_chars(col.data(), col.data() + col.size(), d.column);
  loc = loc.substr(0, col_sep);
  const auto line_sep = loc.rfind(':');  // none: text without a file name, "<line>: <column>"
  const std::string_view line = line_sep == std::string_view::npos ? loc : loc.substr(line_sep + 1);
  std::from_chars(line.data(), line.data() + line.size(), d.line);
  if (line_sep != std::string_view::npos) d.file = std::string(loc.substr(0, line_sep));
  return d;
}

Schema::Schema(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Schema::Schema(Schema&&) noexcept = default;
Schema& Schema::operator=(Schema&&) noexcept = default;
Schema::~Schema() = default;

Result<Schema> Schema::load_file(const std::string& path, const SchemaOptions& options,
                                 SchemaDiagnostic* diag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Error(Errc::not_found, "cannot read the schema file '" + path + "'", ENOENT);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return load_text(ss.str(), options, path, diag);
}

Result<Schema> Schema::load_text(std::string_view text, const SchemaOptions& options,
                                 const std::string& source_name, SchemaDiagnostic* diag) {
  auto impl = std::make_unique<Impl>();
  impl->source_name = source_name;
  std::vector<std::string> dirs;
  if (!source_name.empty()) {
    const std::string parent = std::filesystem::path(source_name).parent_path().string();
    dirs.push_back(parent.empty() ? "." : parent);
  }
  dirs.insert(dirs.end(), options.include_dirs.begin(), options.include_dirs.end());
  std::vector<const char*> inc;
  for (const std::string& d : dirs) inc.push_back(d.c_str());
  inc.push_back(nullptr);
  const std::string source(text);  // the parser wants a NUL-terminated string
  if (!impl->parser.Parse(source.c_str(), inc.data(),
                          source_name.empty() ? nullptr : source_name.c_str())) {
    SchemaDiagnostic d = parse_diagnostic(impl->parser.error_);
    std::string what = "the schema";
    if (!source_name.empty()) what.append(" '").append(source_name).append("'");
    what.append(" does not parse: ").append(impl->parser.error_);
    if (diag != nullptr) *diag = std::move(d);
    return Error(Errc::invalid_argument, what);
  }
  return finish(std::move(impl));
}

Result<Schema> Schema::finish(std::unique_ptr<Impl> impl) {
  Impl& s = *impl;
  s.parser.Serialize();
  s.bfbs.assign(s.parser.builder_.GetBufferPointer(),
                s.parser.builder_.GetBufferPointer() + s.parser.builder_.GetSize());
  s.schema = reflection::GetSchema(s.bfbs.data());
  s.identifier = s.parser.file_identifier_;
  s.types.resize(s.schema->objects()->size());
  build_types(s);
  const reflection::Object* root = s.schema->root_table();
  for (TypeInfo& t : s.types) {
    t.is_root = root != nullptr && t.object == root;
    if (t.is_root) s.root = &t;
    if (t.is_root && !s.identifier.empty()) {
      t.identifier = s.identifier;
      t.type_id = type_id_of(s.identifier.c_str());
    } else {
      t.type_id = hashed_type_id(t.name);
    }
  }
  return Schema(std::move(impl));
}

const TypeInfo* Schema::find(std::string_view name) const noexcept {
  const TypeInfo* by_short = nullptr;
  int short_matches = 0;
  for (const TypeInfo& t : impl_->types) {
    if (t.name == name) return &t;
    if (t.short_name == name) {
      by_short = &t;
      ++short_matches;
    }
  }
  return short_matches == 1 ? by_short : nullptr;
}

const EnumInfo* Schema::find_enum(std::string_view name) const noexcept {
  const EnumInfo* by_short = nullptr;
  int short_matches = 0;
  for (const EnumInfo& e : impl_->enums) {
    if (e.name == name) return &e;
    if (e.short_name == name) {
      by_short = &e;
      ++short_matches;
    }
  }
  return short_matches == 1 ? by_short : nullptr;
}

const TypeInfo* Schema::root() const noexcept { return impl_->root; }
std::span<const TypeInfo> Schema::types() const noexcept { return impl_->types; }
std::span<const EnumInfo> Schema::enums() const noexcept { return impl_->enums; }
const std::string& Schema::file_identifier() const noexcept { return impl_->identifier; }
const std::string& Schema::source_name() const noexcept { return impl_->source_name; }
const reflection::Schema& Schema::reflection() const noexcept { return *impl_->schema; }
std::span<const std::uint8_t> Schema::bfbs() const noexcept { return impl_->bfbs; }

bool Schema::to_json(const TypeInfo& type, const std::uint8_t* buffer, std::string* out) const {
  flatbuffers::Parser& p = impl_->parser;
  if (type.is_struct || !p.SetRootType(type.name.c_str())) return false;
  p.opts.strict_json = true;
  p.opts.indent_step = -1;  // one line
  out->clear();
  return flatbuffers::GenerateText(p, buffer, out);
}

const FieldInfo* TypeInfo::field(std::string_view field_name) const noexcept {
  for (const FieldInfo& f : fields) {
    if (f.name == field_name) return &f;
  }
  return nullptr;
}

const EnumValueInfo* EnumInfo::find(std::string_view value_name) const noexcept {
  for (const EnumValueInfo& v : values) {
    if (v.name == value_name) return &v;
  }
  return nullptr;
}

const EnumValueInfo* EnumInfo::find(std::int64_t value) const noexcept {
  const auto it = std::lower_bound(values.begin(), values.end(), value,
                                   [](const EnumValueInfo& v, std::int64_t x) { return v.value < x; });
  return it != values.end() && it->value == value ? &*it : nullptr;
}

}  // namespace shmq::fb
