// libFuzzer target: the read-and-verify path of shmq::fb::Reader on arbitrary record bytes.
//
// Input: byte 0 is a selector: bit 0 root type (Tick / Order), bit 1 reader mode (verify /
// copy_then_verify; `trusted` is not fuzzed: it reads unverified data by design), bits 2-3 the
// record kind (bit 3 set: 2; else bit 2: 1 or 0), bits 4-6 a misalignment of the payload (0..7).
// The rest is the record payload (shmq prefix + FlatBuffers buffer). Whatever the reader accepts
// is then read field by field.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shmq/core/status.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/schemas.hpp"
#include "one_shot_reader.hpp"
#include "touch.hpp"

namespace {

using shmq::fb::fuzz::OneShotReader;

volatile std::uint64_t g_sink;

template <class T>
void run(const std::byte* payload, std::size_t size, std::uint16_t kind, shmq::fb::VerifyMode mode) {
  OneShotReader ch(payload, size, kind);
  {
    shmq::fb::Reader<T, OneShotReader> sut(ch, {.mode = mode});
    auto m = sut.try_recv();
    if (m.ok()) {
      g_sink = g_sink + shmq::fb::fuzz::touch(m.get());
    } else {
      (void)m.error().message();
      if (!m.error().consumed()) __builtin_trap();  // a message was there: it must be consumed
    }
  }
  if (ch.released_ != 1) __builtin_trap();  // released exactly once, whatever happened
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t sel = data[0];
  const std::size_t misalign = (sel >> 4) & 7;
  // A private, 8-aligned copy at the chosen misalignment (ring payloads are 8-aligned; other
  // writers' need not be).
  std::vector<std::uint64_t> store((size + misalign) / 8 + 1);
  auto* payload = reinterpret_cast<std::byte*>(store.data()) + misalign;
  std::memcpy(payload, data + 1, size - 1);
  const std::uint16_t kind = (sel & 8) != 0 ? 2 : (sel & 4) != 0 ? 1 : 0;
  const auto mode = (sel & 2) != 0 ? shmq::fb::VerifyMode::copy_then_verify : shmq::fb::VerifyMode::verify;
  if ((sel & 1) == 0) {
    run<shmq::schema::Tick>(payload, size - 1, kind, mode);
  } else {
    run<shmq::schema::Order>(payload, size - 1, kind, mode);
  }
  return 0;
}
