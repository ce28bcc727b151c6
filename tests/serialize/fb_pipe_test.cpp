// FlatBuffers over a real Pipe: round trips in-process and across fork, the zero-copy proof
// (the buffer is built and read inside the segment mapping), and the fallback counter.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <thread>

#include "channel_util.hpp"
#include "samples.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/writer.hpp"
#include "shmq/shm/pipe.hpp"

namespace {

using namespace std::chrono_literals;
using shmq::Deadline;
using shmq::Status;
using shmq::fb::ReadErrc;
using shmq::fb::testing::SegmentName;
using shmq::fb::testing::inside;
namespace s = shmq::schema;
namespace samples = shmq::fb::samples;

struct Fixture {
  explicit Fixture(std::uint64_t capacity = 1 << 16) : name("pipe") {
    auto p = shmq::Pipe::create({.name = name.str(), .capacity = capacity});
    REQUIRE_MESSAGE(p.has_value(), p.error().what);
    pipe = std::move(*p);
    auto w = pipe.writer();
    REQUIRE(w.has_value());
    tx = std::move(*w);
    auto r = pipe.reader();
    REQUIRE(r.has_value());
    rx = std::move(*r);
  }
  shmq::core::Stats& stats() { return pipe.segment().stats(0); }

  SegmentName name;
  shmq::Pipe pipe;
  shmq::PipeWriter tx;
  shmq::PipeReader rx;
};

}  // namespace

TEST_CASE("fb pipe: ticks are built inside the segment and read there, with no copy") {
  Fixture f;
  shmq::fb::Writer<s::Tick> sut(f.tx, {.stats = &f.stats()});
  shmq::fb::Reader<s::Tick> reader(f.rx, {.stats = &f.stats()});
  for (std::uint64_t i = 0; i < 3000; ++i) {
    REQUIRE(sut.try_send([i](auto& b) { return samples::build_tick(b, i); }) == Status::ok);
    CHECK(sut.last_in_place());
    CHECK(inside(f.pipe.segment(), sut.last_buffer(), sut.last_buffer_size()));
    auto m = reader.try_recv();
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    CHECK(m.zero_copy());
    CHECK(m.buffer().data() == sut.last_buffer());
    CHECK(inside(f.pipe.segment(), m.buffer().data(), m.buffer().size()));
    CHECK(samples::check_tick(m.get(), i));
  }
  CHECK(shmq::core::Stats::read(f.stats().fallback_copies) == 0);
  CHECK(shmq::core::Stats::read(f.stats().verify_failures) == 0);
}

TEST_CASE("fb pipe: orders round-trip in batches through a wrapping ring") {
  Fixture f(1 << 14);
  shmq::fb::Writer<s::Order> sut(f.tx, {.stats = &f.stats()});
  shmq::fb::Reader<s::Order> reader(f.rx);
  std::uint64_t sent = 0, got = 0;
  while (got < 2000) {
    while (sent < 2000 &&
           sut.try_send([sent](auto& b) { return samples::build_order(b, sent); }) == Status::ok) {
      CHECK(sut.last_in_place());
      ++sent;
    }
    for (;;) {
      auto m = reader.try_recv();
      if (m.code() == ReadErrc::empty) break;
      REQUIRE_MESSAGE(m.ok(), m.error().message());
      CHECK(m.zero_copy());
      CHECK(samples::check_order(m.get(), got));
      ++got;
    }
  }
  CHECK(shmq::core::Stats::read(f.stats().fallback_copies) == 0);
}

TEST_CASE("fb pipe: an order that outgrows its claim is copied once and counted once") {
  Fixture f;
  shmq::fb::Writer<s::Order> sut(f.tx, {.claim_bytes = 1024, .stats = &f.stats()});
  shmq::fb::Reader<s::Order> reader(f.rx);
  const samples::OrderShape big{.legs = 10, .tags = 30, .ladder = 100, .note_bytes = 8000};
  REQUIRE(sut.try_send([](auto& b) { return samples::build_order(b, 1); }) == Status::ok);
  CHECK(shmq::core::Stats::read(f.stats().fallback_copies) == 0);
  REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, 2, big); }) == Status::ok);
  CHECK(shmq::core::Stats::read(f.stats().fallback_copies) == 1);
  CHECK_FALSE(inside(f.pipe.segment(), sut.last_buffer()));
  auto a = reader.try_recv();
  REQUIRE(a.ok());
  CHECK(samples::check_order(a.get(), 1));
  auto b = reader.try_recv();
  REQUIRE_MESSAGE(b.ok(), b.error().message());
  CHECK(b.zero_copy());  // copied once into the ring, then read in place
  CHECK(samples::check_order(b.get(), 2, big));
}

TEST_CASE("fb pipe: an order larger than the ring streams through and verifies") {
  Fixture f(1 << 12);
  const samples::OrderShape huge{.legs = 50, .tags = 200, .ladder = 2000, .note_bytes = 30000};
  std::thread producer([&] {
    shmq::fb::Writer<s::Order> w(f.tx, {.stats = &f.stats()});
    for (std::uint64_t i = 0; i < 3; ++i) {
      const Status st = w.send([&](auto& b) { return samples::build_order(b, i, huge); },
                               Deadline::in(20s));
      CHECK(st == Status::ok);
    }
  });
  shmq::fb::Reader<s::Order> sut(f.rx);
  for (std::uint64_t i = 0; i < 3; ++i) {
    auto m = sut.recv(Deadline::in(20s));
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    CHECK_FALSE(m.zero_copy());  // reassembled by the pipe
    CHECK(samples::check_order(m.get(), i, huge));
  }
  producer.join();
  CHECK(shmq::core::Stats::read(f.stats().fallback_copies) == 3);
}

TEST_CASE("fb pipe: a reader of orders refuses ticks and raw bytes and keeps going") {
  Fixture f;
  shmq::fb::Writer<s::Tick> ticks(f.tx);
  shmq::fb::Writer<s::Order> orders(f.tx);
  REQUIRE(ticks.try_send([](auto& b) { return samples::build_tick(b, 1); }) == Status::ok);
  const std::byte raw[16]{};
  REQUIRE(f.tx.try_send(raw, 0) == Status::ok);
  REQUIRE(orders.try_send([](auto& b) { return samples::build_order(b, 3); }) == Status::ok);
  shmq::fb::Reader<s::Order> sut(f.rx);
  auto a = sut.try_recv();
  CHECK(a.code() == ReadErrc::wrong_type);
  CHECK(a.error().message().find("shmq::schema::Tick") != std::string::npos);
  CHECK(sut.try_recv().code() == ReadErrc::wrong_kind);
  auto c = sut.try_recv();
  REQUIRE(c.ok());
  CHECK(samples::check_order(c.get(), 3));
  CHECK(sut.try_recv().code() == ReadErrc::empty);
}

TEST_CASE("fb pipe: a corrupted buffer in the ring is consumed, counted and reported") {
  Fixture f;
  shmq::fb::Writer<s::Order> w(f.tx);
  // Build in place, then break the buffer inside the claim before committing it, as a faulty
  // writer would: the string length of `account` runs past the end.
  {
    auto claim = f.tx.try_claim(1024, shmq::fb::kFlatBuffersKind);
    REQUIRE(claim.valid());
    flatbuffers::FlatBufferBuilder b;
    b.Finish(samples::build_order(b, 5), s::OrderIdentifier());
    auto bytes = claim.bytes();
    shmq::fb::store_prefix(bytes.data(), {shmq::fb::type_id_of("ORDR"), 8});
    std::memcpy(bytes.data() + 8, b.GetBufferPointer(), b.GetSize());
    const auto* o = flatbuffers::GetRoot<s::Order>(bytes.data() + 8);
    const std::uint32_t huge = 0x10000000;
    // As integers: g++ 12 with ASan otherwise takes the pointer for one into the 1-byte Order
    // object and reports the write below as an overflow (-Wstringop-overflow).
    const auto at = reinterpret_cast<std::uintptr_t>(o->account()) -
                    reinterpret_cast<std::uintptr_t>(bytes.data());
    std::memcpy(bytes.data() + at, &huge, 4);
    claim.commit(8 + b.GetSize());
  }
  REQUIRE(w.try_send([](auto& b) { return samples::build_order(b, 6); }) == Status::ok);
  shmq::fb::Reader<s::Order> sut(f.rx, {.stats = &f.stats()});
  auto bad = sut.try_recv();
  CHECK(bad.code() == ReadErrc::verify_failed);
  CHECK(shmq::core::Stats::read(f.stats().verify_failures) == 1);
  auto good = sut.try_recv();
  REQUIRE(good.ok());
  CHECK(samples::check_order(good.get(), 6));
}

TEST_CASE("fb pipe: ticks and orders cross a fork, every field intact, in order") {
  SegmentName name("fork");
  auto p = shmq::Pipe::create({.name = name.str(), .capacity = 1 << 15});
  REQUIRE(p.has_value());
  auto rx = p->reader();
  REQUIRE(rx.has_value());
  constexpr std::uint64_t kEach = 3000;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int rc = 0;
    {
      auto cp = shmq::Pipe::open(name.str());
      if (!cp) ::_exit(10);
      auto tx = cp->writer();
      if (!tx) ::_exit(11);
      shmq::fb::Writer<s::Tick> ticks(*tx);
      shmq::fb::Writer<s::Order> orders(*tx);
      for (std::uint64_t i = 0; i < kEach && rc == 0; ++i) {
        if (ticks.send([i](auto& b) { return samples::build_tick(b, i); }, Deadline::in(20s)) !=
            Status::ok) {
          rc = 12;
        }
        if (orders.send([i](auto& b) { return samples::build_order(b, i); }, Deadline::in(20s)) !=
            Status::ok) {
          rc = 13;
        }
        if (!ticks.last_in_place() || !orders.last_in_place()) rc = 14;
      }
      tx->close();
    }
    ::_exit(rc);
  }
  shmq::fb::Reader<s::Tick> ticks(*rx);
  shmq::fb::Reader<s::Order> orders(*rx);
  std::uint64_t bad = 0;
  for (std::uint64_t i = 0; i < kEach; ++i) {
    auto t = ticks.recv(Deadline::in(20s));
    if (!t.ok() || !t.zero_copy() || !samples::check_tick(t.get(), i)) {
      if (bad++ == 0) FAIL_CHECK("tick " << i << ": " << t.error().message() << " zc=" << t.zero_copy());
    }
    t.release();
    auto o = orders.recv(Deadline::in(20s));
    if (!o.ok() || !o.zero_copy() || !samples::check_order(o.get(), i)) {
      if (bad++ == 0) FAIL_CHECK("order " << i << ": " << o.error().message() << " zc=" << o.zero_copy());
    }
  }
  CHECK(bad == 0);
  CHECK(ticks.recv(Deadline::in(20s)).code() == ReadErrc::closed);
  CHECK(shmq::testing::wait_exit(pid) == 0);
  CHECK(shmq::core::Stats::read(p->segment().stats(0).fallback_copies) == 0);
}
