// Writes a seed corpus for fb_verify_fuzz and fb_dyn_fuzz: valid tick and order records (with the
// selector byte the targets expect) of several shapes, and for fb_dyn_fuzz records of its Shape
// schema built by DynBuilder, so the fuzzer starts from buffers that verify.
//   fb_fuzz_seeds <dir>
#include <cstdio>
#include <string>
#include <vector>

#include "samples.hpp"
#include "shmq/serialize/dyn_value.hpp"
#include "shmq/serialize/prefix.hpp"
#include "shmq/serialize/schema.hpp"
#include "touch_dyn.hpp"

namespace {

// `type_id`: the prefix's type identity (0: the identifier's).
template <class Build>
bool write_seed(const std::string& path, std::uint8_t selector, const char* identifier, Build&& build,
                std::uint32_t type_id = 0) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(build(b), identifier);
  std::vector<std::byte> rec(1 + shmq::fb::kPrefixBytes + b.GetSize());
  rec[0] = static_cast<std::byte>(selector);
  shmq::fb::store_prefix(rec.data() + 1, {type_id != 0 ? type_id : shmq::fb::type_id_of(identifier), 8});
  std::memcpy(rec.data() + 1 + shmq::fb::kPrefixBytes, b.GetBufferPointer(), b.GetSize());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(rec.data(), 1, rec.size(), f) == rec.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  namespace samples = shmq::fb::samples;
  const std::string dir = argv[1];
  bool ok = true;
  for (std::uint64_t i = 0; i < 3; ++i) {
    // selector: bit 3 = kind 2; bit 0 = Order; bit 1 = copy_then_verify.
    ok &= write_seed(dir + "/tick-" + std::to_string(i), 0x08 | static_cast<std::uint8_t>(i == 2 ? 2 : 0),
                     shmq::schema::TickIdentifier(), [i](auto& b) { return samples::build_tick(b, i); });
    const samples::OrderShape shape{.legs = i, .tags = i + 1, .ladder = 2 * i, .note_bytes = 8 * i};
    ok &= write_seed(dir + "/order-" + std::to_string(i), 0x09 | static_cast<std::uint8_t>(i == 2 ? 2 : 0),
                     shmq::schema::OrderIdentifier(),
                     [i, shape](auto& b) { return samples::build_order(b, i, shape); });
  }
  auto shape_schema = shmq::fb::Schema::load_text(shmq::fb::fuzz::kShapeSchema);
  if (!shape_schema) {
    std::fprintf(stderr, "fb_fuzz_seeds: %s\n", shape_schema.error().what.c_str());
    return 1;
  }
  const shmq::fb::TypeInfo& shape = *shape_schema->find("Shape");
  using shmq::fb::Value;
  for (std::uint64_t i = 0; i < 3; ++i) {
    const Value leaf = Value::map({{"s", samples::numbered("leaf", i)}, {"n", i}});
    Value v = Value::map({
        {"name", samples::numbered("shape", i)},
        {"pts", Value::list({Value::list({1.5, 2.5}), Value::map({{"y", static_cast<double>(i)}})})},
        {"boxes", Value::list({Value::map({{"tag", Value::list({1, 2, 3})},
                                           {"corners", Value::list({Value::list({1, 2}), Value::list({3, 4})})}})})},
        {"flags", Value::list({true, i % 2 == 0})},
        {"weights", Value::list({0.5, 1})},
        {"labels", Value::list({"a", "", samples::numbered("l", i)})},
        {"color", i == 0 ? Value("Red") : Value(7)},
        {"colors", Value::list({"Blue", 0})},
        {"maybe", i},
        {"leaves", Value::list({leaf, leaf})},
        {"any", Value::list({"Leaf", leaf})},
        {"box", Value::map({{"lo", Value::list({1, 2})}})},
    });
    if (i == 2) v = Value::map({{"name", "outer"}, {"child", v}, {"any", Value::list({"Shape", Value::map({{"name", "in"}})})}});
    ok &= write_seed(dir + "/shape-" + std::to_string(i), 0x88 | static_cast<std::uint8_t>(i == 1 ? 2 : 0),
                     nullptr, [&](auto& b) {
                       shmq::fb::ValueSource src;
                       shmq::fb::BuildScratch scratch;
                       shmq::fb::DynBuilder<shmq::fb::ValueSource> db(b, src, scratch);
                       return flatbuffers::Offset<void>(db.table(shape, &v));
                     }, shape.type_id);
  }
  if (!ok) std::fprintf(stderr, "fb_fuzz_seeds: could not write to %s\n", dir.c_str());
  return ok ? 0 : 1;
}
