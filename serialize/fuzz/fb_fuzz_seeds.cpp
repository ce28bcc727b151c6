// Writes a seed corpus for fb_verify_fuzz: valid tick and order records (with the selector byte
// the target expects) of several shapes, so the fuzzer starts from buffers that verify.
//   fb_fuzz_seeds <dir>
#include <cstdio>
#include <string>
#include <vector>

#include "samples.hpp"
#include "shmq/serialize/prefix.hpp"

namespace {

template <class Build>
bool write_seed(const std::string& path, std::uint8_t selector, const char* identifier, Build&& build) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(build(b), identifier);
  std::vector<std::byte> rec(1 + shmq::fb::kPrefixBytes + b.GetSize());
  rec[0] = static_cast<std::byte>(selector);
  shmq::fb::store_prefix(rec.data() + 1, {shmq::fb::type_id_of(identifier), 8});
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
  if (!ok) std::fprintf(stderr, "fb_fuzz_seeds: could not write to %s\n", dir.c_str());
  return ok ? 0 : 1;
}
