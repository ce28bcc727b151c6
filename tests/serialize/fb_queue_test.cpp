// FlatBuffers over a real Queue: round trips in-process (threads, several producers) and across
// fork, the zero-copy proof (built and read inside the segment mapping) and the fallback counter.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "channel_util.hpp"
#include "samples.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/writer.hpp"
#include "shmq/shm/queue.hpp"

namespace {

using namespace std::chrono_literals;
using shmq::Deadline;
using shmq::Status;
using shmq::fb::ReadErrc;
using shmq::fb::testing::inside;
namespace s = shmq::schema;
namespace samples = shmq::fb::samples;

using TickWriter = shmq::fb::Writer<s::Tick, shmq::QueueWriter>;
using OrderWriter = shmq::fb::Writer<s::Order, shmq::QueueWriter>;
using TickReader = shmq::fb::Reader<s::Tick, shmq::QueueReader>;
using OrderReader = shmq::fb::Reader<s::Order, shmq::QueueReader>;

// A named queue removed (with its spill files) even when the test fails.
struct QueueFixture {
  explicit QueueFixture(std::uint64_t slots = 256, std::uint64_t slot_size = 1024) : name("queue") {
    auto q = shmq::Queue::create({.name = name.str(), .slots = slots, .slot_size = slot_size});
    REQUIRE_MESSAGE(q.has_value(), q.error().what);
    queue = std::move(*q);
  }
  ~QueueFixture() { (void)shmq::Queue::unlink(name.str()); }
  shmq::QueueWriter writer() {
    auto w = queue.writer();
    REQUIRE_MESSAGE(w.has_value(), w.error().what);
    return std::move(*w);
  }
  shmq::QueueReader reader() {
    auto r = queue.reader();
    REQUIRE_MESSAGE(r.has_value(), r.error().what);
    return std::move(*r);
  }
  shmq::fb::testing::SegmentName name;
  shmq::Queue queue;
};

}  // namespace

TEST_CASE("fb queue: ticks are built in a slot and read there, with no copy") {
  QueueFixture f(64, 256);
  auto tx = f.writer();
  auto rx = f.reader();
  TickWriter sut(tx, {.stats = &f.queue.stats()});
  TickReader reader(rx, {.stats = &f.queue.stats()});
  for (std::uint64_t i = 0; i < 2000; ++i) {
    REQUIRE(sut.try_send([i](auto& b) { return samples::build_tick(b, i); }) == Status::ok);
    CHECK(sut.last_in_place());
    CHECK(inside(f.queue.segment(), sut.last_buffer(), sut.last_buffer_size()));
    auto m = reader.try_recv();
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    CHECK(m.zero_copy());
    CHECK(m.buffer().data() == sut.last_buffer());
    CHECK(samples::check_tick(m.get(), i));
  }
  CHECK(shmq::core::Stats::read(f.queue.stats().fallback_copies) == 0);
}

TEST_CASE("fb queue: orders fit their slot; one larger than a slot is copied once") {
  QueueFixture f(64, 1024);
  auto tx = f.writer();
  auto rx = f.reader();
  OrderWriter sut(tx, {.stats = &f.queue.stats()});
  OrderReader reader(rx);
  for (std::uint64_t i = 0; i < 500; ++i) {
    REQUIRE(sut.try_send([i](auto& b) { return samples::build_order(b, i); }) == Status::ok);
    CHECK(sut.last_in_place());
    CHECK(inside(f.queue.segment(), sut.last_buffer(), sut.last_buffer_size()));
    auto m = reader.try_recv();
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    CHECK(m.zero_copy());
    CHECK(samples::check_order(m.get(), i));
  }
  CHECK(shmq::core::Stats::read(f.queue.stats().fallback_copies) == 0);
  const samples::OrderShape big{.legs = 20, .tags = 40, .ladder = 200, .note_bytes = 20000};
  REQUIRE(sut.try_send([&](auto& b) { return samples::build_order(b, 9, big); }) == Status::ok);
  CHECK_FALSE(sut.last_in_place());
  CHECK(shmq::core::Stats::read(f.queue.stats().fallback_copies) == 1);
  auto m = reader.recv(Deadline::in(10s));
  REQUIRE_MESSAGE(m.ok(), m.error().message());
  CHECK(samples::check_order(m.get(), 9, big));
}

TEST_CASE("fb queue: a reader of ticks refuses an order, naming both types") {
  QueueFixture f(16, 1024);
  auto tx = f.writer();
  auto rx = f.reader();
  OrderWriter w(tx);
  REQUIRE(w.try_send([](auto& b) { return samples::build_order(b, 1); }) == Status::ok);
  TickReader sut(rx);
  auto m = sut.try_recv();
  CHECK(m.code() == ReadErrc::wrong_type);
  const std::string text = m.error().message();
  CHECK(text.find("shmq::schema::Tick") != std::string::npos);
  CHECK(text.find("shmq::schema::Order") != std::string::npos);
  CHECK(sut.try_recv().code() == ReadErrc::empty);  // consumed
}

TEST_CASE("fb queue: two producer threads, every order arrives once and in per-producer order") {
  QueueFixture f(128, 1024);
  constexpr std::uint64_t kPer = 3000;
  std::vector<std::thread> producers;
  for (std::uint64_t p = 0; p < 2; ++p) {
    producers.emplace_back([&f, p] {
      auto tx = f.queue.writer();
      if (!tx) return;
      OrderWriter w(*tx);
      for (std::uint64_t i = 0; i < kPer; ++i) {
        const std::uint64_t id = p * 1'000'000 + i;
        if (w.send([id](auto& b) { return samples::build_order(b, id); }, Deadline::in(20s)) !=
            Status::ok) {
          return;
        }
      }
    });
  }
  auto rx = f.reader();
  OrderReader sut(rx);
  std::uint64_t next[2] = {0, 0};
  std::uint64_t bad = 0;
  for (std::uint64_t n = 0; n < 2 * kPer; ++n) {
    auto m = sut.recv(Deadline::in(20s));
    if (!m.ok()) {
      FAIL_CHECK(m.error().message());
      break;
    }
    const std::uint64_t id = m->order_id() - 1'000'000;
    const std::uint64_t p = id / 1'000'000;
    if (p > 1 || id % 1'000'000 != next[p] || !samples::check_order(m.get(), id)) {
      ++bad;
      continue;
    }
    ++next[p];
  }
  for (auto& t : producers) t.join();
  CHECK(bad == 0);
  CHECK(next[0] == kPer);
  CHECK(next[1] == kPer);
  CHECK(shmq::core::Stats::read(f.queue.stats().fallback_copies) == 0);
}

TEST_CASE("fb queue: ticks and orders from two forked producers arrive intact") {
  QueueFixture f(128, 1024);
  constexpr std::uint64_t kPer = 2000;
  std::vector<pid_t> kids;
  for (std::uint64_t p = 0; p < 2; ++p) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int rc = 0;
      {
        auto q = shmq::Queue::open(f.name.str());
        if (!q) ::_exit(10);
        auto tx = q->writer();
        if (!tx) ::_exit(11);
        // Producer 0 sends ticks, producer 1 orders: a reader per type sorts them out.
        if (p == 0) {
          TickWriter w(*tx);
          for (std::uint64_t i = 0; i < kPer && rc == 0; ++i) {
            if (w.send([i](auto& b) { return samples::build_tick(b, i); }, Deadline::in(20s)) != Status::ok) rc = 12;
            if (!w.last_in_place()) rc = 14;
          }
        } else {
          OrderWriter w(*tx);
          for (std::uint64_t i = 0; i < kPer && rc == 0; ++i) {
            if (w.send([i](auto& b) { return samples::build_order(b, i); }, Deadline::in(20s)) != Status::ok) rc = 13;
            if (!w.last_in_place()) rc = 14;
          }
        }
      }
      ::_exit(rc);
    }
    kids.push_back(pid);
  }
  auto rx = f.reader();
  // One reader handle, two typed views of it: peek the type from the prefix first.
  std::uint64_t next_tick = 0, next_order = 0, bad = 0;
  TickReader ticks(rx, {.mode = shmq::fb::VerifyMode::verify});
  OrderReader orders(rx);
  for (std::uint64_t n = 0; n < 2 * kPer; ++n) {
    // Try as a tick; a wrong_type result would consume an order, so use the raw channel to peek.
    shmq::Message raw;
    if (rx.recv(raw, Deadline::in(20s)) != Status::ok) {
      FAIL_CHECK("recv failed at " << n);
      break;
    }
    const auto p = shmq::fb::load_prefix(raw.bytes());
    // Decode through the same code path the Reader uses.
    if (p.type_id == shmq::fb::type_id<s::Tick>()) {
      const auto parsed = shmq::fb::parse_payload<s::Tick>(raw.bytes(), raw.kind());
      const bool ok = parsed.code == ReadErrc::ok && shmq::fb::verify_buffer<s::Tick>(parsed.buffer) &&
                      samples::check_tick(shmq::fb::root_of<s::Tick>(parsed.buffer), next_tick);
      if (!ok) ++bad;
      ++next_tick;
    } else {
      const auto parsed = shmq::fb::parse_payload<s::Order>(raw.bytes(), raw.kind());
      const bool ok = parsed.code == ReadErrc::ok && shmq::fb::verify_buffer<s::Order>(parsed.buffer) &&
                      samples::check_order(shmq::fb::root_of<s::Order>(parsed.buffer), next_order);
      if (!ok) ++bad;
      ++next_order;
    }
    CHECK(inside(f.queue.segment(), raw.data(), raw.size()));
  }
  int rcs = 0;
  for (pid_t pid : kids) rcs += shmq::testing::wait_exit(pid);
  CHECK(rcs == 0);
  CHECK(bad == 0);
  CHECK(next_tick == kPer);
  CHECK(next_order == kPer);
  CHECK(ticks.try_recv().code() == ReadErrc::empty);
  CHECK(orders.try_recv().code() == ReadErrc::empty);
  CHECK(shmq::core::Stats::read(f.queue.stats().fallback_copies) == 0);
}
