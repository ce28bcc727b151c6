// Writer/Reader logic over an in-process fake channel: in-place builds, the fallback copy, the
// reader's checks and modes, and a corpus of truncated and mutated buffers.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "fake_channel.hpp"
#include "samples.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/writer.hpp"

namespace {

using shmq::Status;
using shmq::fb::ReadErrc;
using shmq::fb::testing::FakeChannel;
using shmq::fb::testing::FakeReader;
using shmq::fb::testing::FakeWriter;
namespace s = shmq::schema;
namespace samples = shmq::fb::samples;

using TickWriter = shmq::fb::Writer<s::Tick, FakeWriter>;
using OrderWriter = shmq::fb::Writer<s::Order, FakeWriter>;
using TickReader = shmq::fb::Reader<s::Tick, FakeReader>;
using OrderReader = shmq::fb::Reader<s::Order, FakeReader>;

// A finished FlatBuffers buffer (no prefix), built on the heap.
template <class Build>
std::vector<std::byte> heap_buffer(Build&& build, const char* identifier) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(build(b), identifier);
  const auto* p = reinterpret_cast<const std::byte*>(b.GetBufferPointer());
  return {p, p + b.GetSize()};
}

std::vector<std::byte> with_prefix(std::span<const std::byte> buffer, std::uint32_t type_id,
                                   std::uint32_t start = 8) {
  std::vector<std::byte> out(start + buffer.size());
  shmq::fb::store_prefix(out.data(), {type_id, start});
  std::memcpy(out.data() + start, buffer.data(), buffer.size());
  return out;
}

std::vector<std::byte> tick_buffer(std::uint64_t i) {
  return heap_buffer([i](auto& b) { return samples::build_tick(b, i); }, s::TickIdentifier());
}
std::vector<std::byte> order_buffer(std::uint64_t i, samples::OrderShape shape = {}) {
  return heap_buffer([i, shape](auto& b) { return samples::build_order(b, i, shape); },
                     s::OrderIdentifier());
}

// Feeds one payload to a fresh reader of T; returns the error code.
template <class T>
ReadErrc read_one(std::span<const std::byte> payload, std::uint16_t kind = 2,
                  shmq::fb::VerifyMode mode = shmq::fb::VerifyMode::verify) {
  FakeChannel ch(1 << 16);
  ch.push_raw(payload, kind);
  FakeReader rx(ch);
  shmq::fb::Reader<T, FakeReader> sut(rx, {.mode = mode});
  auto m = sut.recv(shmq::Deadline::now());
  return m.code();
}

}  // namespace

TEST_CASE("fb: a tick is built in place in the claim and read back zero-copy") {
  FakeChannel ch;
  FakeWriter tx(ch);
  FakeReader rx(ch);
  TickWriter sut(tx);
  TickReader reader(rx);
  for (std::uint64_t i = 0; i < 100; ++i) {
    REQUIRE(sut.try_send([i](auto& b) { return samples::build_tick(b, i); }) == Status::ok);
    CHECK(sut.last_in_place());
    CHECK(ch.in_arena(sut.last_buffer()));
    auto m = reader.try_recv();
    REQUIRE(m.ok());
    CHECK(m.zero_copy());
    CHECK(m.buffer().data() == sut.last_buffer());
    CHECK(samples::check_tick(m.get(), i));
  }
  CHECK(sut.fallback_copies() == 0);
  CHECK(shmq::core::Stats::read(ch.stats.fallback_copies) == 0);
  CHECK(tx.sends == 0);  // never the copying send()
  CHECK(ch.released == 100);
}

TEST_CASE("fb: an order's buffer ends at the claim's end and the prefix records its start") {
  FakeChannel ch;
  FakeWriter tx(ch);
  FakeReader rx(ch);
  OrderWriter sut(tx, {.claim_bytes = 1024});
  REQUIRE(sut.try_send([](auto& b) { return samples::build_order(b, 7); }) == Status::ok);
  REQUIRE(ch.records.size() == 1);
  const auto rec = ch.records.front();
  CHECK(rec.size == 1024);
  CHECK(rec.kind == shmq::fb::kFlatBuffersKind);
  const auto p = shmq::fb::load_prefix({ch.arena() + rec.offset, rec.size});
  CHECK(p.type_id == shmq::fb::type_id_of("ORDR"));
  CHECK(p.start == 1024 - sut.last_buffer_size());
  CHECK(ch.arena() + rec.offset + p.start == sut.last_buffer());
  CHECK(reinterpret_cast<std::uintptr_t>(sut.last_buffer()) % 8 == 0);
  OrderReader reader(rx);
  auto m = reader.try_recv();
  REQUIRE(m.ok());
  CHECK(samples::check_order(m.get(), 7));
}

TEST_CASE("fb: a message that outgrows its claim is copied exactly once and counted") {
  FakeChannel ch;
  FakeWriter tx(ch);
  FakeReader rx(ch);
  OrderWriter sut(tx, {.claim_bytes = 1024});
  const samples::OrderShape small{};
  const samples::OrderShape big{.legs = 8, .tags = 20, .ladder = 64, .note_bytes = 4000};
  REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, 1, small); }) == Status::ok);
  CHECK(sut.fallback_copies() == 0);
  REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, 2, big); }) == Status::ok);
  CHECK_FALSE(sut.last_in_place());
  CHECK_FALSE(ch.in_arena(sut.last_buffer()));
  CHECK(sut.fallback_copies() == 1);
  CHECK(shmq::core::Stats::read(ch.stats.fallback_copies) == 1);
  CHECK(tx.sends == 1);  // the one copy: the channel's send() of the heap buffer
  OrderReader reader(rx);
  auto a = reader.try_recv();
  REQUIRE(a.ok());
  CHECK(samples::check_order(a.get(), 1, small));
  auto c = reader.try_recv();
  REQUIRE(c.ok());
  CHECK(samples::check_order(c.get(), 2, big));
}

TEST_CASE("fb: the adaptive claim grows after a large message so the next one fits") {
  FakeChannel ch(1 << 22);
  FakeWriter tx(ch);
  OrderWriter sut(tx);
  const samples::OrderShape big{.legs = 4, .tags = 10, .ladder = 16, .note_bytes = 2000};
  REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, 1, big); }) == Status::ok);
  CHECK(sut.fallback_copies() == 1);
  CHECK(sut.next_claim() > 2000);
  for (std::uint64_t i = 2; i < 20; ++i) {
    REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, i, big); }) == Status::ok);
    CHECK(sut.last_in_place());
  }
  CHECK(sut.fallback_copies() == 1);
}

TEST_CASE("fb: a claim larger than the channel's max_claim falls back to send()") {
  FakeChannel ch(1 << 20, /*max_claim=*/64);
  FakeWriter tx(ch);
  FakeReader rx(ch);
  TickWriter sut(tx);
  CHECK(sut.next_claim() == 64);
  REQUIRE(sut.try_send([](auto& b) { return samples::build_tick(b, 3); }) == Status::ok);
  CHECK(sut.fallback_copies() == 1);
  TickReader reader(rx);
  auto m = reader.try_recv();
  REQUIRE(m.ok());
  CHECK(samples::check_tick(m.get(), 3));
}

TEST_CASE("fb: full is reported and nothing is committed when there is no room") {
  FakeChannel ch(512);
  FakeWriter tx(ch);
  TickWriter sut(tx, {.claim_bytes = 1024});
  CHECK(sut.try_send([](auto& b) { return samples::build_tick(b, 1); }) == Status::full);
  CHECK(ch.records.empty());
}

TEST_CASE("fb: a reader of orders refuses a tick with an error naming both types") {
  FakeChannel ch;
  FakeWriter tx(ch);
  FakeReader rx(ch);
  TickWriter w(tx);
  REQUIRE(w.try_send([](auto& b) { return samples::build_tick(b, 1); }) == Status::ok);
  REQUIRE(w.try_send([](auto& b) { return samples::build_tick(b, 2); }) == Status::ok);
  OrderReader sut(rx);
  auto m = sut.try_recv();
  CHECK_FALSE(m.ok());
  CHECK(m.get() == nullptr);
  CHECK(m.code() == ReadErrc::wrong_type);
  CHECK(m.error().consumed());
  const std::string text = m.error().message();
  INFO(text);
  CHECK(text.find("shmq::schema::Order") != std::string::npos);
  CHECK(text.find("shmq::schema::Tick") != std::string::npos);
  CHECK(text.find("\"TICK\"") != std::string::npos);
  CHECK(ch.released == 1);  // consumed and released at once
  CHECK(sut.rejected() == 1);
  CHECK(sut.verify_failures() == 0);
  // The next message is still there for a reader of the right type.
  TickReader tick_reader(rx);
  auto t = tick_reader.try_recv();
  REQUIRE(t.ok());
  CHECK(samples::check_tick(t.get(), 2));
}

TEST_CASE("fb: a record of another kind is refused as wrong_kind") {
  const auto payload = with_prefix(tick_buffer(1), shmq::fb::type_id_of("TICK"));
  CHECK(read_one<s::Tick>(payload, 2) == ReadErrc::ok);
  CHECK(read_one<s::Tick>(payload, 0) == ReadErrc::wrong_kind);
  CHECK(read_one<s::Tick>(payload, 1) == ReadErrc::wrong_kind);
  shmq::fb::ReadError e{.code = ReadErrc::wrong_kind, .kind = 1, .expected_type = 0x4B434954,
                        .expected_name = "shmq::schema::Tick"};
  CHECK(e.message().find("pickle") != std::string::npos);
}

TEST_CASE("fb: empty and timeout pass through without consuming anything") {
  FakeChannel ch;
  FakeReader rx(ch);
  TickReader sut(rx);
  CHECK(sut.try_recv().code() == ReadErrc::empty);
  CHECK(sut.recv(shmq::Deadline::now()).code() == ReadErrc::timeout);
  CHECK_FALSE(sut.try_recv().error().consumed());
}

TEST_CASE("fb: a malformed prefix is refused") {
  const auto buf = tick_buffer(5);
  const auto id = shmq::fb::type_id_of("TICK");
  std::vector<std::byte> tiny(12);
  shmq::fb::store_prefix(tiny.data(), {id, 8});
  CHECK(read_one<s::Tick>(tiny) == ReadErrc::malformed);
  CHECK(read_one<s::Tick>(std::vector<std::byte>(3)) == ReadErrc::malformed);
  for (std::uint32_t start : {0u, 4u, 7u, 0xFFFFFFFFu, 0x80000000u,
                              static_cast<std::uint32_t>(8 + buf.size() - 7),
                              static_cast<std::uint32_t>(8 + buf.size() + 1)}) {
    auto p = with_prefix(buf, id);
    shmq::fb::store_prefix(p.data(), {id, start});
    INFO("start=" << start);
    const auto e = read_one<s::Tick>(p);
    CHECK((e == ReadErrc::malformed || e == ReadErrc::verify_failed));
  }
}

TEST_CASE("fb: a buffer at an odd address is copied to an aligned one before use") {
  const auto payload = with_prefix(order_buffer(4), shmq::fb::type_id_of("ORDR"), 12);
  FakeChannel ch;
  ch.push_raw(payload, 2, /*misalign=*/0);  // record aligned, buffer at +12: 4 off
  FakeReader rx(ch);
  OrderReader sut(rx);
  auto m = sut.try_recv();
  REQUIRE(m.ok());
  CHECK_FALSE(m.zero_copy());
  CHECK(reinterpret_cast<std::uintptr_t>(m.buffer().data()) % 8 == 0);
  CHECK(samples::check_order(m.get(), 4));
}

TEST_CASE("fb: copy_then_verify releases the channel space before the view is used") {
  FakeChannel ch;
  FakeWriter tx(ch);
  FakeReader rx(ch);
  OrderWriter w(tx);
  REQUIRE(w.try_send([](auto& b) { return samples::build_order(b, 9); }) == Status::ok);
  OrderReader sut(rx, {.mode = shmq::fb::VerifyMode::copy_then_verify});
  auto m = sut.try_recv();
  REQUIRE(m.ok());
  CHECK(ch.released == 1);  // already given back
  CHECK_FALSE(m.zero_copy());
  CHECK_FALSE(ch.in_arena(m.buffer().data()));
  // A later change to the shared bytes does not reach the verified copy.
  std::memset(const_cast<std::byte*>(ch.arena()), 0xAB, 4096);
  CHECK(samples::check_order(m.get(), 9));
}

TEST_CASE("fb: trusted mode skips verification but still checks the type") {
  auto buf = order_buffer(1);
  // Break the account string's length: verification must fail, trusted mode does not look.
  const auto* o = flatbuffers::GetRoot<s::Order>(buf.data());
  // An offset, not a pointer derived from `o`: g++ -O2 with sanitizers otherwise tracks the
  // pointer's provenance to a 1-byte Table object and rejects the write (-Wstringop-overflow).
  const auto at = static_cast<std::size_t>(reinterpret_cast<std::uintptr_t>(o->account()) -
                                           reinterpret_cast<std::uintptr_t>(buf.data()));
  const std::uint32_t huge = 0x7FFFFFF0;  // little-endian, as FlatBuffers stores it
  for (std::size_t i = 0; i < 4; ++i) buf.at(at + i) = static_cast<std::byte>(huge >> (8 * i));
  const auto payload = with_prefix(buf, shmq::fb::type_id_of("ORDR"));
  CHECK(read_one<s::Order>(payload) == ReadErrc::verify_failed);
  CHECK(read_one<s::Order>(payload, 2, shmq::fb::VerifyMode::trusted) == ReadErrc::ok);
  CHECK(read_one<s::Tick>(payload, 2, shmq::fb::VerifyMode::trusted) == ReadErrc::wrong_type);
}

TEST_CASE("fb: verification failures are counted in the channel's Stats") {
  FakeChannel ch;
  auto buf = tick_buffer(1);
  buf[4] = std::byte{'X'};  // the buffer's own identifier no longer matches
  ch.push_raw(with_prefix(buf, shmq::fb::type_id_of("TICK")), 2);
  ch.push_raw(with_prefix(tick_buffer(2), shmq::fb::type_id_of("TICK")), 2);
  FakeReader rx(ch);
  TickReader sut(rx);
  auto bad = sut.try_recv();
  CHECK(bad.code() == ReadErrc::verify_failed);
  CHECK(bad.error().message().find("failed flatbuffers verification") != std::string::npos);
  CHECK(shmq::core::Stats::read(ch.stats.verify_failures) == 1);
  CHECK(sut.verify_failures() == 1);
  auto good = sut.try_recv();
  REQUIRE(good.ok());
  CHECK(samples::check_tick(good.get(), 2));
}

TEST_CASE("fb: every truncation of a tick or an order is rejected") {
  std::size_t cases = 0;
  const auto check_all = [&](const std::vector<std::byte>& full, std::uint32_t id, auto tag) {
    using T = typename decltype(tag)::type;
    for (std::size_t n = 0; n < full.size(); ++n) {
      const auto payload = with_prefix(std::span(full).first(n), id);
      INFO("truncated to " << n << " of " << full.size());
      const auto e = read_one<T>(payload);
      CHECK((e == ReadErrc::verify_failed || e == ReadErrc::malformed));
      ++cases;
    }
  };
  for (std::uint64_t i = 0; i < 3; ++i) {
    check_all(tick_buffer(i), shmq::fb::type_id_of("TICK"), std::type_identity<s::Tick>{});
    check_all(order_buffer(i), shmq::fb::type_id_of("ORDR"), std::type_identity<s::Order>{});
  }
  CHECK(cases > 1000);
}

namespace {

void put_u32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) { std::memcpy(b.data() + at, &v, 4); }
void put_u16(std::vector<std::byte>& b, std::size_t at, std::uint16_t v) { std::memcpy(b.data() + at, &v, 2); }
std::size_t at_of(const std::vector<std::byte>& b, const void* p) {
  return static_cast<std::size_t>(static_cast<const std::byte*>(p) - b.data());
}

// Targeted corruptions, each one invalid by construction, located through the accessors.
std::vector<std::vector<std::byte>> order_mutations(std::uint64_t i) {
  const auto good = order_buffer(i);
  std::vector<std::vector<std::byte>> out;
  const auto mutate = [&](auto&& f) {
    auto b = good;
    f(b);
    out.push_back(std::move(b));
  };
  const auto* o = flatbuffers::GetRoot<s::Order>(good.data());
  const std::size_t table = at_of(good, o);
  std::int32_t vt_rel;
  std::memcpy(&vt_rel, good.data() + table, 4);
  const std::size_t vtable = table - static_cast<std::size_t>(vt_rel);
  const std::uint32_t size = static_cast<std::uint32_t>(good.size());
  for (std::uint32_t root : {size, size + 4, 0xFFFFFFFCu, 0x7FFFFFFCu, 2u, 3u}) {
    mutate([&](auto& b) { put_u32(b, 0, root); });
  }
  for (std::uint32_t id : {0u, 0x4B434954u /* TICK */}) mutate([&](auto& b) { put_u32(b, 4, id); });
  for (std::int32_t soff : {0x7FFFFFF0, -0x7FFFFFF0, static_cast<std::int32_t>(table) + 4, 1}) {
    mutate([&](auto& b) { put_u32(b, table, static_cast<std::uint32_t>(soff)); });
  }
  mutate([&](auto& b) { put_u16(b, vtable, 0xFFFE); });       // vtable size beyond the buffer
  mutate([&](auto& b) { put_u16(b, vtable, 3); });            // odd vtable size
  // (The vtable's table-size entry is not a corruption: no accessor and no verifier reads it.)
  for (std::size_t field = 0; field < 13; ++field) {            // a field beyond the buffer
    std::uint16_t vsize;
    std::memcpy(&vsize, good.data() + vtable, 2);
    if (4 + 2 * field + 2 > vsize) break;
    std::uint16_t present;
    std::memcpy(&present, good.data() + vtable + 4 + 2 * field, 2);
    if (present == 0) continue;  // absent field: any offset other than 0 would make it present
    mutate([&](auto& b) { put_u16(b, vtable + 4 + 2 * field, 0xFFF0); });
  }
  const std::size_t account = at_of(good, o->account());
  mutate([&](auto& b) { put_u32(b, account, 0x7FFFFFF0); });  // string longer than the buffer
  mutate([&](auto& b) {                                       // string without its terminator
    b[account + 4 + o->account()->size()] = std::byte{'!'};
  });
  const std::size_t legs = at_of(good, o->legs());
  mutate([&](auto& b) { put_u32(b, legs, 0x3FFFFFFF); });     // vector longer than the buffer
  mutate([&](auto& b) { put_u32(b, legs + 4, 0x7FFFFFF0); }); // element offset out of bounds
  const std::size_t leg0 = at_of(good, o->legs()->Get(0));
  mutate([&](auto& b) { put_u32(b, leg0, 0x7FFFFFF0); });     // nested table's vtable out of bounds
  const std::size_t ladder = at_of(good, o->price_ladder());
  mutate([&](auto& b) { put_u32(b, ladder, 0x7FFFFFFF); });
  const std::size_t note = at_of(good, o->note());
  mutate([&](auto& b) { put_u32(b, note, size); });
  return out;
}

std::vector<std::vector<std::byte>> tick_mutations(std::uint64_t i) {
  const auto good = tick_buffer(i);
  std::vector<std::vector<std::byte>> out;
  const auto* t = flatbuffers::GetRoot<s::Tick>(good.data());
  const std::size_t table = at_of(good, t);
  std::int32_t vt_rel;
  std::memcpy(&vt_rel, good.data() + table, 4);
  const std::size_t vtable = table - static_cast<std::size_t>(vt_rel);
  const auto size = static_cast<std::uint32_t>(good.size());
  for (std::uint32_t root : {size, 0xFFFFFFF0u, 1u}) {
    auto b = good;
    put_u32(b, 0, root);
    out.push_back(b);
  }
  for (std::uint16_t vs : {std::uint16_t{0xFFFE}, std::uint16_t{1}}) {
    auto b = good;
    put_u16(b, vtable, vs);
    out.push_back(b);
  }
  {
    auto b = good;  // a field offset in the vtable pointing past the table
    put_u16(b, vtable + 4, 0xFFF0);
    out.push_back(b);
  }
  {
    auto b = good;
    put_u32(b, table, 0x7FFFFFF0);
    out.push_back(b);
  }
  {
    auto b = good;
    put_u32(b, 4, 0x5244524Fu);  // "ORDR": identifier of another type
    out.push_back(b);
  }
  return out;
}

}  // namespace

TEST_CASE("fb: targeted corruptions of orders and ticks are all rejected by verification") {
  std::size_t n = 0;
  for (std::uint64_t i = 0; i < 6; ++i) {
    for (const auto& b : order_mutations(i)) {
      INFO("order " << i << " mutation " << n);
      CHECK(read_one<s::Order>(with_prefix(b, shmq::fb::type_id_of("ORDR"))) == ReadErrc::verify_failed);
      ++n;
    }
    for (const auto& b : tick_mutations(i)) {
      INFO("tick " << i << " mutation " << n);
      CHECK(read_one<s::Tick>(with_prefix(b, shmq::fb::type_id_of("TICK"))) == ReadErrc::verify_failed);
      ++n;
    }
  }
  CHECK(n > 100);
}

TEST_CASE("fb: random byte flips never crash the reader, and what verifies reads cleanly") {
  std::mt19937_64 rng(12345);
  std::size_t accepted = 0, rejected = 0;
  for (std::uint64_t i = 0; i < 400; ++i) {
    auto b = i % 2 == 0 ? order_buffer(i) : tick_buffer(i);
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) b[rng() % b.size()] ^= static_cast<std::byte>(1 + rng() % 255);
    FakeChannel ch(1 << 16);
    ch.push_raw(with_prefix(b, shmq::fb::type_id_of(i % 2 == 0 ? "ORDR" : "TICK")), 2);
    FakeReader rx(ch);
    if (i % 2 == 0) {
      OrderReader sut(rx);
      auto m = sut.try_recv();
      if (m.ok()) {
        ++accepted;
        (void)samples::check_order(m.get(), i);  // reads every field: ASan/UBSan watch this
      } else {
        ++rejected;
      }
    } else {
      TickReader sut(rx);
      auto m = sut.try_recv();
      if (m.ok()) {
        ++accepted;
        (void)samples::check_tick(m.get(), i);
      } else {
        ++rejected;
      }
    }
  }
  CHECK(accepted + rejected == 400);
  CHECK(rejected > 0);
}
