// MpmcRing: unit tests, crash recovery with simulated deaths, and a P x C thread stress test.
#include "shmq/core/mpmc_ring.hpp"

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;
using namespace shmq::core;

namespace {

constexpr std::uint64_t kNearWrap = ~0ull - 1000;          // positions start just below 2^64
constexpr std::uint32_t kEpochNearWrap = 0xFFFFFFFFu - 99;  // 2^32 - 100

// Claim words and liveness for up to 16 simulated participants.
class TestRegistry final : public ClaimRegistry {
 public:
  static constexpr std::uint32_t kMax = 16;
  TestRegistry() {
    for (auto& a : alive_) a.store(true, std::memory_order_seq_cst);
    for (auto& w : words_) w.store(0, std::memory_order_seq_cst);
  }
  std::uint32_t participants() const noexcept override { return kMax; }
  std::atomic<std::uint64_t>* claim_words(std::uint32_t i) const noexcept override {
    return &words_[i * kClaimWords];
  }
  bool alive(std::uint32_t i) const noexcept override {
    return alive_[i].load(std::memory_order_acquire);  // acquire: pairs with kill()
  }
  void reclaim(std::uint64_t) noexcept override { reclaims.fetch_add(1, std::memory_order_seq_cst); }
  // A participant that stops touching the ring and is then reported dead.
  void kill(std::uint32_t i) { alive_[i].store(false, std::memory_order_release); }

  std::atomic<int> reclaims{0};

 private:
  mutable std::array<std::atomic<std::uint64_t>, kMax * kClaimWords> words_;
  std::array<std::atomic<bool>, kMax> alive_;
};

struct Fixture {
  explicit Fixture(MpmcConfig c) : config(c) {
    auto need = MpmcRing::required_bytes(c);
    REQUIRE(need.has_value());
    bytes = *need;
    mem.reset(static_cast<std::byte*>(std::aligned_alloc(kCacheLine, align_up(bytes, kCacheLine))));
    auto r = MpmcRing::init_in({mem.get(), bytes}, c);
    REQUIRE(r.has_value());
    ring = *r;
    std::memset(static_cast<void*>(&stats), 0, sizeof stats);
  }
  MpmcWriter writer(std::uint32_t i) { return MpmcWriter(ring, registry.claim_words(i), &registry, &stats); }
  MpmcReader reader(std::uint32_t i) { return MpmcReader(ring, registry.claim_words(i), &registry, &stats); }

  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  MpmcConfig config;
  std::uint64_t bytes = 0;
  std::unique_ptr<std::byte, Free> mem;
  MpmcRing ring;
  Stats stats;
  TestRegistry registry;
};

std::span<const std::byte> as_bytes(const std::uint64_t& v) {
  return {reinterpret_cast<const std::byte*>(&v), sizeof v};
}
std::uint64_t value_of(const MpmcView& v) {
  std::uint64_t x = 0;
  std::memcpy(&x, v.data, sizeof x);
  return x;
}

// Receives one message (spinning through `empty`), copies its value, releases it.
Status recv_value(MpmcReader& r, std::uint64_t& out, int tries = 1000000) {
  MpmcView v;
  for (int i = 0; i < tries; ++i) {
    const Status st = r.try_recv(v);
    if (st == Status::empty) {
      std::this_thread::yield();
      continue;
    }
    if (st == Status::ok) {
      out = value_of(v);
      r.release(v);
    }
    return st;
  }
  return Status::empty;
}

}  // namespace

TEST_CASE("mpmc_ring: messages come out in order with their kind") {
  Fixture f({.slots = 8, .slot_size = 16, .initial_position = kNearWrap});
  auto sut_w = f.writer(0);
  auto sut_r = f.reader(1);
  for (std::uint64_t i = 0; i < 5; ++i) CHECK(sut_w.try_send(as_bytes(i), static_cast<std::uint16_t>(i + 7)) == Status::ok);
  CHECK(f.ring.size_guess() == 5);
  for (std::uint64_t i = 0; i < 5; ++i) {
    MpmcView v;
    REQUIRE(sut_r.try_recv(v) == Status::ok);
    CHECK(v.length == 8);
    CHECK(v.kind == i + 7);
    CHECK(value_of(v) == i);
    sut_r.release(v);
  }
  MpmcView v;
  CHECK(sut_r.try_recv(v) == Status::empty);
  CHECK(f.ring.size_guess() == 0);
}

TEST_CASE("mpmc_ring: try_send reports full when every slot is taken and too_big beyond a slot") {
  Fixture f({.slots = 4, .slot_size = 8});
  auto sut = f.writer(0);
  auto r = f.reader(1);
  std::uint64_t x = 1;
  for (int i = 0; i < 4; ++i) CHECK(sut.try_send(as_bytes(x)) == Status::ok);
  CHECK(sut.try_send(as_bytes(x)) == Status::full);
  std::array<std::byte, 9> big{};
  CHECK(sut.try_send(big) == Status::too_big);
  CHECK(f.ring.size_guess() == 4);
  std::uint64_t got = 0;
  CHECK(recv_value(r, got) == Status::ok);
  CHECK(sut.try_send(as_bytes(x)) == Status::ok);
}

TEST_CASE("mpmc_ring: maxsize bounds the messages waiting below the slot count") {
  Fixture f({.slots = 8, .slot_size = 8, .maxsize = 3, .initial_position = kNearWrap});
  auto sut = f.writer(0);
  auto r = f.reader(1);
  std::uint64_t x = 0;
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 3; ++i) CHECK(sut.try_send(as_bytes(x)) == Status::ok);
    CHECK(sut.try_send(as_bytes(x)) == Status::full);
    CHECK(f.ring.size_guess() == 3);
    CHECK(f.ring.capacity() == 3);
    std::uint64_t got = 0;
    for (int i = 0; i < 3; ++i) CHECK(recv_value(r, got) == Status::ok);
  }
}

TEST_CASE("mpmc_ring: an aborted claim is never delivered and later messages still are") {
  Fixture f({.slots = 4, .slot_size = 16});
  auto sut = f.writer(0);
  auto r = f.reader(1);
  MpmcClaim c = sut.try_claim();
  REQUIRE(c.valid());
  MpmcClaim c2 = sut.try_claim();
  REQUIRE(c2.valid());
  std::uint64_t v = 42;
  std::memcpy(c2.data, &v, sizeof v);
  sut.abort(c);
  sut.commit(c2, sizeof v, 3);
  std::uint64_t got = 0;
  CHECK(recv_value(r, got) == Status::ok);
  CHECK(got == 42);
  MpmcView view;
  CHECK(r.try_recv(view) == Status::empty);
}

TEST_CASE("mpmc_ring: send_many and recv_many move batches in order") {
  Fixture f({.slots = 16, .slot_size = 8, .initial_position = kNearWrap});
  auto sut_w = f.writer(0);
  auto sut_r = f.reader(1);
  std::vector<std::uint64_t> vals(40);
  for (std::uint64_t i = 0; i < vals.size(); ++i) vals[i] = i;
  std::vector<std::span<const std::byte>> msgs;
  for (auto& x : vals) msgs.push_back(as_bytes(x));
  Status why = Status::ok;
  CHECK(sut_w.try_send_many(msgs, 0, &why) == 16);
  CHECK(why == Status::full);  // 24 did not fit: a send batch is ok only when it sent them all
  std::vector<std::uint64_t> seen;
  auto collect = [&](const MpmcView& v) { seen.push_back(value_of(v)); };
  CHECK(sut_r.try_recv_many(collect, 10) == 10);
  CHECK(sut_w.send_many(std::span(msgs).subspan(16, 10), Deadline::never(), 0) == 10);
  while (seen.size() < 26) CHECK(sut_r.recv_many(collect, 100, Deadline::never()) > 0);
  REQUIRE(seen.size() == 26);
  for (std::uint64_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == i);
}

TEST_CASE("mpmc_ring: batches say why they stopped: ok when done, else the outcome") {
  Fixture f({.slots = 4, .slot_size = 8});
  auto sut_w = f.writer(0);
  auto sut_r = f.reader(1);
  std::uint64_t x = 7;
  std::array<std::byte, 16> big{};
  const std::vector<std::span<const std::byte>> six(6, as_bytes(x));
  Status why = Status::ok;
  CHECK(sut_w.send_many(six, Deadline::now(), 0, &why) == 4);
  CHECK(why == Status::timeout);  // the fifth found no slot before the (past) deadline
  std::size_t seen = 0;
  auto count = [&](const MpmcView&) { ++seen; };
  CHECK(sut_r.try_recv_many(count, 1, &why) == 1);
  CHECK(why == Status::ok);
  CHECK(sut_r.try_recv_many(count, 10, &why) == 3);
  CHECK(why == Status::ok);  // a receive takes "up to max": some is a success
  CHECK(sut_r.try_recv_many(count, 10, &why) == 0);
  CHECK(why == Status::empty);
  const std::vector<std::span<const std::byte>> mixed{as_bytes(x), big};
  CHECK(sut_w.try_send_many(mixed, 0, &why) == 1);
  CHECK(why == Status::too_big);
  f.ring.close();
  CHECK(sut_r.recv_many(count, 10, Deadline::now(), &why) == 1);
  CHECK(sut_r.recv_many(count, 10, Deadline::now(), &why) == 0);
  CHECK(why == Status::closed);
  CHECK(seen == 5);
}

TEST_CASE("mpmc_ring: after close writers get closed and readers drain then get closed") {
  Fixture f({.slots = 4, .slot_size = 8});
  auto sut_w = f.writer(0);
  auto sut_r = f.reader(1);
  std::uint64_t x = 9;
  CHECK(sut_w.try_send(as_bytes(x)) == Status::ok);
  f.ring.close();
  CHECK(sut_w.try_send(as_bytes(x)) == Status::closed);
  std::uint64_t got = 0;
  CHECK(recv_value(sut_r, got) == Status::ok);
  MpmcView v;
  CHECK(sut_r.try_recv(v) == Status::closed);
  CHECK(sut_r.recv(v, Deadline::never()) == Status::closed);
}

TEST_CASE("mpmc_ring: recv times out on an empty ring and send on a full one") {
  Fixture f({.slots = 2, .slot_size = 8, .initial_epoch = kEpochNearWrap});
  auto sut_w = f.writer(0);
  auto sut_r = f.reader(1);
  MpmcView v;
  CHECK(sut_r.recv(v, Deadline::in(std::chrono::milliseconds(5))) == Status::timeout);
  CHECK(sut_r.recv(v, Deadline::now()) == Status::timeout);
  std::uint64_t x = 0;
  CHECK(sut_w.try_send(as_bytes(x)) == Status::ok);
  CHECK(sut_w.try_send(as_bytes(x)) == Status::ok);
  CHECK(sut_w.send(as_bytes(x), Deadline::in(std::chrono::milliseconds(5))) == Status::timeout);
}

TEST_CASE("mpmc_ring: a writer asleep on a full ring is woken when a reader frees a slot") {
  Fixture f({.slots = 2, .slot_size = 8, .initial_epoch = kEpochNearWrap});
  auto sut = f.writer(0);
  auto r = f.reader(1);
  std::uint64_t x = 1;
  CHECK(sut.try_send(as_bytes(x)) == Status::ok);
  CHECK(sut.try_send(as_bytes(x)) == Status::ok);
  std::thread t([&] {
    // Free a slot only once the writer is registered as a sleeper: the wake must reach it.
    while (!f.ring.header().space_free.has_waiters_guess()) std::this_thread::yield();
    std::uint64_t got = 0;
    CHECK(recv_value(r, got) == Status::ok);
  });
  CHECK(sut.send(as_bytes(x), Deadline::never()) == Status::ok);
  t.join();
  CHECK(f.stats.full_waits.load(std::memory_order_seq_cst) == 1);
}

TEST_CASE("mpmc_ring: a sleeping reader is woken by a writer in another thread") {
  Fixture f({.slots = 4, .slot_size = 8, .initial_epoch = kEpochNearWrap});
  auto sut = f.reader(1);
  std::thread t([&] {
    auto w = f.writer(0);
    while (!f.ring.header().data_ready.has_waiters_guess()) std::this_thread::yield();
    std::uint64_t x = 77;
    CHECK(w.try_send(as_bytes(x)) == Status::ok);
  });
  MpmcView v;
  REQUIRE(sut.recv(v, Deadline::never()) == Status::ok);
  CHECK(value_of(v) == 77);
  sut.release(v);
  t.join();
  CHECK(f.stats.empty_waits.load(std::memory_order_seq_cst) == 1);
}

TEST_CASE("mpmc_ring: a reader holds at most three views and reports full beyond them") {
  Fixture f({.slots = 8, .slot_size = 8});
  auto w = f.writer(0);
  auto sut = f.reader(1);
  std::uint64_t x = 0;
  for (int i = 0; i < 5; ++i) CHECK(w.try_send(as_bytes(x)) == Status::ok);
  MpmcView v[4];
  for (int i = 0; i < 3; ++i) CHECK(sut.try_recv(v[i]) == Status::ok);
  CHECK_FALSE(sut.can_hold());
  CHECK(sut.try_recv(v[3]) == Status::full);
  sut.release(v[1]);
  CHECK(sut.try_recv(v[3]) == Status::ok);
  sut.release(v[0]);
  sut.release(v[2]);
  sut.release(v[3]);
}

TEST_CASE("mpmc_ring: a writer that dies after claiming is skipped and counted recovered") {
  Fixture f({.slots = 4, .slot_size = 8, .initial_position = kNearWrap});
  auto dead = f.writer(0);
  auto w = f.writer(1);
  auto sut = f.reader(2);
  MpmcClaim c = dead.try_claim();  // claimed, never committed
  REQUIRE(c.valid());
  std::uint64_t x = 5;
  CHECK(w.try_send(as_bytes(x)) == Status::ok);
  // While the owner lives, the reader never robs it, however long it waits.
  MpmcView v;
  for (int i = 0; i < 5; ++i) {
    CHECK(sut.try_recv(v) == Status::empty);
    std::this_thread::sleep_for(kStuckGrace + std::chrono::milliseconds(1));
  }
  CHECK(f.stats.recovered.load(std::memory_order_seq_cst) == 0);
  f.registry.kill(0);
  REQUIRE(sut.recv(v, Deadline::never()) == Status::ok);
  CHECK(value_of(v) == 5);
  sut.release(v);
  CHECK(f.stats.recovered.load(std::memory_order_seq_cst) == 1);
  CHECK(f.registry.reclaims.load(std::memory_order_seq_cst) == 1);
}

TEST_CASE("mpmc_ring: a reader that dies holding a message has it counted abandoned") {
  Fixture f({.slots = 4, .slot_size = 8, .initial_position = kNearWrap});
  auto sut = f.writer(0);
  auto dead = f.reader(1);
  auto r = f.reader(2);
  std::uint64_t x = 1;
  CHECK(sut.try_send(as_bytes(x)) == Status::ok);
  MpmcView held;
  REQUIRE(dead.try_recv(held) == Status::ok);  // never released
  for (int i = 0; i < 3; ++i) CHECK(sut.try_send(as_bytes(x)) == Status::ok);
  std::uint64_t got = 0;
  for (int i = 0; i < 3; ++i) CHECK(recv_value(r, got) == Status::ok);
  // The held slot blocks the writer's next lap while its reader lives.
  for (int i = 0; i < 3; ++i) {
    CHECK(sut.try_send(as_bytes(x)) == Status::full);
    std::this_thread::sleep_for(kStuckGrace + std::chrono::milliseconds(1));
  }
  f.registry.kill(1);
  CHECK(sut.send(as_bytes(x), Deadline::never()) == Status::ok);
  CHECK(f.stats.abandoned.load(std::memory_order_seq_cst) == 1);
  CHECK(recv_value(r, got) == Status::ok);
}

TEST_CASE("mpmc_ring: attach rejects corrupt ring headers with named errors") {
  Fixture f({.slots = 8, .slot_size = 16});
  std::span<std::byte> mem{f.mem.get(), f.bytes};
  auto& h = f.ring.header();
  SUBCASE("bad magic") {
    h.magic ^= 1;
    auto sut = MpmcRing::attach(mem);
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().code == Errc::bad_magic);
  }
  SUBCASE("slots not a power of two") {
    h.slots = 7;
    auto sut = MpmcRing::attach(mem);
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().code == Errc::corrupt);
    CHECK(sut.error().what.find("slots") != std::string::npos);
  }
  SUBCASE("stride disagreeing with slot_size") {
    h.stride = 8;
    auto sut = MpmcRing::attach(mem);
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().what.find("stride") != std::string::npos);
  }
  SUBCASE("maxsize above slots") {
    h.maxsize = 9;
    auto sut = MpmcRing::attach(mem);
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().what.find("maxsize") != std::string::npos);
  }
  SUBCASE("memory smaller than the ring") {
    auto sut = MpmcRing::attach(mem.subspan(0, f.bytes - 1));
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().code == Errc::size_mismatch);
  }
  SUBCASE("valid header attaches") {
    auto sut = MpmcRing::attach(mem);
    REQUIRE(sut.has_value());
    CHECK(sut->slots() == 8);
  }
}

TEST_CASE("mpmc_ring: a slot length beyond the slot size is reported corrupt, not read") {
  Fixture f({.slots = 4, .slot_size = 16});
  auto w = f.writer(0);
  auto sut = f.reader(1);
  std::uint64_t x = 3;
  CHECK(w.try_send(as_bytes(x)) == Status::ok);
  CHECK(w.try_send(as_bytes(x)) == Status::ok);
  f.ring.slot(0).length = 1u << 30;
  MpmcView v;
  CHECK(sut.try_recv(v) == Status::corrupt);
  CHECK(f.stats.corrupt_events.load(std::memory_order_seq_cst) == 1);
  std::uint64_t got = 0;
  CHECK(recv_value(sut, got) == Status::ok);  // the next message is intact
  CHECK(got == 3);
}

TEST_CASE("mpmc_ring: a sequence number ahead of the position is reported corrupt") {
  Fixture f({.slots = 4, .slot_size = 16});
  auto sut = f.writer(0);
  f.ring.slot(0).seq.store(1000, std::memory_order_seq_cst);
  std::uint64_t x = 3;
  CHECK(sut.try_send(as_bytes(x)) == Status::corrupt);
}

namespace {

// P writers x C readers threads; every (writer, n) arrives exactly once and in per-writer order.
void stress(unsigned writers, unsigned readers, std::uint64_t per_writer, std::uint64_t maxsize) {
  Fixture f({.slots = 64, .slot_size = 16, .maxsize = maxsize, .initial_position = kNearWrap,
             .initial_epoch = kEpochNearWrap});
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::atomic<unsigned> writers_done{0};
  std::vector<std::vector<std::uint64_t>> last(readers, std::vector<std::uint64_t>(writers, 0));
  std::vector<std::vector<std::uint8_t>> seen(writers, std::vector<std::uint8_t>(per_writer, 0));
  std::vector<std::uint64_t> received(readers, 0);
  std::atomic<std::uint64_t> order_errors{0}, dup_errors{0};
  std::vector<std::thread> threads;
  auto wait_start = [&] {
    ready.fetch_add(1, std::memory_order_seq_cst);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
  };
  for (unsigned w = 0; w < writers; ++w)
    threads.emplace_back([&, w] {
      auto sut = f.writer(w);
      wait_start();
      std::uint64_t n = 0;
      while (n < per_writer) {
        std::array<std::uint64_t, 2 * 8> buf;
        const std::uint64_t batch = std::min<std::uint64_t>(1 + (n % 8), per_writer - n);
        if (n % 3 == 0) {
          std::array<std::span<const std::byte>, 8> msgs;
          for (std::uint64_t i = 0; i < batch; ++i) {
            buf[2 * i] = w;
            buf[2 * i + 1] = n + i;
            msgs[i] = {reinterpret_cast<const std::byte*>(&buf[2 * i]), 16};
          }
          n += sut.send_many(std::span(msgs).first(batch), Deadline::never(), 1);
        } else {
          buf[0] = w;
          buf[1] = n;
          const std::span<const std::byte> m{reinterpret_cast<const std::byte*>(buf.data()), 16};
          const Status st = (n & 1) ? sut.try_send(m, 1) : sut.send(m, Deadline::never(), 1);
          if (st == Status::ok)
            ++n;
          else
            std::this_thread::yield();  // full: let a reader run (2 cores, up to 8 threads)
        }
      }
      if (writers_done.fetch_add(1, std::memory_order_seq_cst) + 1 == writers) f.ring.close();
    });
  for (unsigned r = 0; r < readers; ++r)
    threads.emplace_back([&, r] {
      auto sut = f.reader(writers + r);
      wait_start();
      auto take = [&](const MpmcView& v) {
        std::uint64_t rec[2];
        std::memcpy(rec, v.data, 16);
        const std::uint64_t w = rec[0], n = rec[1];
        if (w >= writers || n >= per_writer) {
          dup_errors.fetch_add(1, std::memory_order_seq_cst);
          return;
        }
        if (n != 0 && n < last[r][w]) order_errors.fetch_add(1, std::memory_order_seq_cst);
        last[r][w] = n;
        if (seen[w][n]++ != 0) dup_errors.fetch_add(1, std::memory_order_seq_cst);
        ++received[r];
      };
      for (std::uint64_t i = 0;; ++i) {
        if (i % 2 == 0) {
          MpmcView v;
          const Status st = sut.recv(v, Deadline::never());
          if (st == Status::closed) break;
          CHECK(st == Status::ok);
          if (st != Status::ok) break;
          take(v);
          sut.release(v);
        } else {
          Status why = Status::ok;
          sut.recv_many(take, 7, Deadline::never(), &why);
          if (why == Status::closed) break;
        }
      }
    });
  while (ready.load(std::memory_order_seq_cst) != writers + readers) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  std::uint64_t total = 0;
  for (auto n : received) total += n;
  CHECK(total == writers * per_writer);
  CHECK(order_errors.load(std::memory_order_seq_cst) == 0);
  CHECK(dup_errors.load(std::memory_order_seq_cst) == 0);
  std::uint64_t missing = 0;
  for (auto& v : seen)
    for (auto s : v) missing += s == 0;
  CHECK(missing == 0);
  CHECK(f.ring.size_guess() == 0);
}

}  // namespace

TEST_CASE("mpmc_ring: P writers x C readers threads deliver every message once in per-writer order") {
  const std::uint64_t per_writer = shmq::testing::scaled<std::uint64_t>(50000, 10000);
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned p = 1; p <= 4; ++p)
    for (unsigned c = 1; c <= 4; ++c) {
      CAPTURE(p);
      CAPTURE(c);
      stress(p, c, per_writer, (p + c) % 3 == 0 ? 5 : 0);
    }
  MESSAGE("thread stress: " << per_writer * 40 << " messages in "
                            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
}
