// libFuzzer target: the run-time-typed read path that shmq.fb's get_fb uses (ReadChecks with a
// schema loaded at run time: prefix, reflection verifier, required fields), then every field of
// whatever it accepts read through the dyn accessors, recursively, the way View.to_dict() does.
//
// Input: byte 0 is a selector, as in fb_verify_fuzz.cpp: bit 0 root type (Tick / Order), bit 1
// reader mode (verify / copy_then_verify), bits 2-3 the record kind (bit 3 set: 2; else bit 2: 1
// or 0), bits 4-6 a misalignment of the payload (0..7); bit 7 set: the root is instead Shape, a
// table of a schema with what tick.fbs and order.fbs lack (vectors of structs, arrays in structs,
// nested structs, bools, floats, strings, recursion). The rest is the record payload.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shmq/core/status.hpp"
#include "shmq/serialize/dyn_read.hpp"
#include "shmq/serialize/schema.hpp"
#include "one_shot_reader.hpp"
#include "touch_dyn.hpp"

namespace {

namespace fb = shmq::fb;

using shmq::fb::fuzz::OneShotReader;

struct Schemas {
  fb::Schema tick = load(SHMQ_SCHEMA_DIR "/tick.fbs");
  fb::Schema order = load(SHMQ_SCHEMA_DIR "/order.fbs");
  fb::Schema shape = fb::Schema::load_text(fb::fuzz::kShapeSchema).value();
  static fb::Schema load(const char* path) {
    auto s = fb::Schema::load_file(path);
    if (!s) __builtin_trap();  // the build's own schemas must load
    return std::move(*s);
  }
};

volatile std::uint64_t g_sink;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Schemas schemas;
  if (size < 1) return 0;
  const std::uint8_t sel = data[0];
  const std::size_t misalign = (sel >> 4) & 7;
  std::vector<std::uint64_t> store((size + misalign) / 8 + 1);
  auto* payload = reinterpret_cast<std::byte*>(store.data()) + misalign;
  std::memcpy(payload, data + 1, size - 1);
  const std::uint16_t kind = (sel & 8) != 0 ? 2 : (sel & 4) != 0 ? 1 : 0;
  const auto mode = (sel & 2) != 0 ? fb::VerifyMode::copy_then_verify : fb::VerifyMode::verify;
  const fb::TypeInfo* type = (sel & 0x80) != 0 ? schemas.shape.find("Shape")
                             : (sel & 1) == 0  ? schemas.tick.find("Tick")
                                               : schemas.order.find("Order");
  OneShotReader ch(payload, size - 1, kind);
  {
    fb::DynReader<OneShotReader> sut(ch, *type, {.mode = mode});
    auto m = sut.try_recv();
    if (m.ok()) {
      g_sink = g_sink + fb::fuzz::touch_table(m.root(), 0);
    } else {
      (void)m.error().message();
      if (!m.error().consumed()) __builtin_trap();  // a message was there: it must be consumed
    }
  }
  if (ch.released_ != 1) __builtin_trap();  // released exactly once, whatever happened
  return 0;
}
