// Queue leases (core/mpmc_ring.hpp, "Leases"): held until acked, ids are positions, given back or
// left by a dead holder they are redelivered once to the next lease reader, writers never
// abandon a leased slot, large messages keep their data, and a kill -9 gauntlet over the lease
// kill points in which nothing is lost and nothing is delivered twice outside a killed holder's
// own unacknowledged lease.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmq/shm/queue.hpp"
#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: no test measures speed.

using namespace shmq;
using namespace std::chrono_literals;
using testing::Cleanup;
using testing::SharedArray;
using testing::wait_exit;

// The tests' own atomics (counters, flags, start lines) use seq_cst: the simplest order to reason
// about, and nothing here is timed. The code under test states its own orders.

namespace {

std::string unique_name() { return testing::unique_name("lease"); }

// A message carrying its index: 8 bytes, then `size - 8` bytes derived from it.
std::vector<std::byte> message(std::uint64_t index, std::size_t size) {
  std::vector<std::byte> m(std::max<std::size_t>(size, 8));
  std::memcpy(m.data(), &index, 8);
  for (std::size_t j = 8; j < m.size(); ++j) m[j] = static_cast<std::byte>((index * 31 + j) & 0xFF);
  return m;
}
// The index of a message made by message(), or ~0 if its bytes are not what it made.
std::uint64_t index_of(std::span<const std::byte> b) {
  if (b.size() < 8) return ~0ull;
  std::uint64_t index = 0;
  std::memcpy(&index, b.data(), 8);
  const auto want = message(index, b.size());
  return std::memcmp(want.data(), b.data(), b.size()) == 0 ? index : ~0ull;
}

std::vector<std::uint64_t> ids_of(const QueueLease& l, std::vector<std::uint64_t>* indexes = nullptr) {
  std::vector<std::uint64_t> ids;
  (void)l.for_each([&](std::uint64_t id, std::span<const std::byte> b, std::uint16_t) {
    ids.push_back(id);
    if (indexes != nullptr) indexes->push_back(index_of(b));
  });
  return ids;
}

std::uint64_t abandoned(const Queue& q) { return q.stats().abandoned.load(std::memory_order_seq_cst); }

}  // namespace

TEST_CASE("queue lease: messages stay leased until ack, with their positions as ids") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  REQUIRE((tx && rx));
  for (std::uint64_t i = 0; i < 10; ++i) REQUIRE(tx->try_send(message(i, 24)) == Status::ok);
  QueueLease first;
  REQUIRE(rx->try_lease(4, first) == Status::ok);
  CHECK(first.valid());
  CHECK_FALSE(first.redelivered());
  CHECK(first.size() == 4);
  std::vector<std::uint64_t> indexes;
  CHECK(ids_of(first, &indexes) == std::vector<std::uint64_t>{0, 1, 2, 3});
  CHECK(indexes == std::vector<std::uint64_t>{0, 1, 2, 3});
  CHECK(sut->size_guess() == 6);  // leased messages are taken, not waiting
  QueueLease second;
  REQUIRE(rx->try_lease(100, second) == Status::ok);
  CHECK(ids_of(second) == std::vector<std::uint64_t>{4, 5, 6, 7, 8, 9});
  second.ack();
  first.ack();
  CHECK_FALSE(first.valid());
  // Acked slots are free again: the ring (16 slots) takes 16 more.
  for (std::uint64_t i = 10; i < 26; ++i) REQUIRE(tx->try_send(message(i, 24)) == Status::ok);
  CHECK(tx->try_send(message(99, 24)) == Status::full);
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);  // plain reads go on as before
  CHECK(index_of(m.bytes()) == 10);
  CHECK(abandoned(*sut) == 0);
}

TEST_CASE("queue lease: a lease given back is redelivered once, to the next lease only") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  auto other = sut->reader();
  REQUIRE((tx && rx && other));
  for (std::uint64_t i = 0; i < 5; ++i) REQUIRE(tx->try_send(message(i, 16)) == Status::ok);
  QueueLease l;
  REQUIRE(rx->try_lease(3, l) == Status::ok);
  REQUIRE(l.give_back());
  CHECK_FALSE(l.valid());
  Message m;
  REQUIRE(other->try_recv(m) == Status::ok);  // a plain read takes the next message, not them
  CHECK(index_of(m.bytes()) == 3);
  m.release();
  QueueLease again;
  REQUIRE(other->try_lease(10, again) == Status::ok);
  CHECK(again.redelivered());
  std::vector<std::uint64_t> indexes;
  CHECK(ids_of(again, &indexes) == std::vector<std::uint64_t>{0, 1, 2});
  CHECK(indexes == std::vector<std::uint64_t>{0, 1, 2});
  again.ack();
  QueueLease rest;
  REQUIRE(rx->try_lease(10, rest) == Status::ok);
  CHECK_FALSE(rest.redelivered());
  CHECK(ids_of(rest) == std::vector<std::uint64_t>{4});
  rest.ack();
  CHECK(rx->try_lease(10, rest) == Status::empty);
}

TEST_CASE("queue lease: a holder killed with its lease has it redelivered; writers wait for it") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  // Four slots: once the writer wraps, it reaches the dead holder's slots.
  auto sut = Queue::create({.name = name, .slots = 4, .slot_size = 64});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  for (std::uint64_t i = 0; i < 4; ++i) REQUIRE(tx->try_send(message(i, 16)) == Status::ok);
  const pid_t holder = ::fork();
  REQUIRE(holder >= 0);
  if (holder == 0) {  // takes a lease of 3 and dies holding it (_exit runs no destructor)
    auto q = Queue::open(name);
    auto rx = q ? q->reader() : Result<QueueReader>(Error(Errc::system, "open"));
    QueueLease l;
    ::_exit(rx && rx->lease(3, Deadline::in(10s), l) == Status::ok ? 0 : 2);
  }
  REQUIRE(wait_exit(holder) == 0);
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(index_of(m.bytes()) == 3);
  m.release();
  // Position 4 is the slot of position 0, the dead holder's: the writer waits rather than
  // abandoning it.
  CHECK(tx->send(message(4, 16), Deadline::in(150ms)) == Status::timeout);
  CHECK(abandoned(*sut) == 0);
  QueueLease l;
  REQUIRE(rx->try_lease(10, l) == Status::ok);
  CHECK(l.redelivered());
  std::vector<std::uint64_t> indexes;
  CHECK(ids_of(l, &indexes) == std::vector<std::uint64_t>{0, 1, 2});
  CHECK(indexes == std::vector<std::uint64_t>{0, 1, 2});
  l.ack();
  CHECK(tx->send(message(4, 16), Deadline::in(1s)) == Status::ok);
  CHECK(abandoned(*sut) == 0);
}

TEST_CASE("queue lease: a holder's lease survives its participant slot being taken over") {
  // The next holder of a dead participant's slot finds the lease in its claim words: it moves it
  // to the orphan table before it zeroes them.
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  for (std::uint64_t i = 0; i < 3; ++i) REQUIRE(tx->try_send(message(i, 16)) == Status::ok);
  const pid_t holder = ::fork();
  REQUIRE(holder >= 0);
  if (holder == 0) {
    auto q = Queue::open(name);
    auto rx = q ? q->reader() : Result<QueueReader>(Error(Errc::system, "open"));
    QueueLease l;
    ::_exit(rx && rx->lease(2, Deadline::in(10s), l) == Status::ok ? 0 : 2);
  }
  REQUIRE(wait_exit(holder) == 0);
  // New participants (writers and readers alike) take the free slots, the dead one among them.
  std::vector<QueueWriter> writers;
  for (int i = 0; i < 8; ++i) {
    auto w = sut->writer();
    REQUIRE(w.has_value());
    writers.push_back(std::move(*w));
  }
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  QueueLease l;
  REQUIRE(rx->try_lease(10, l) == Status::ok);
  CHECK(l.redelivered());
  CHECK(ids_of(l) == std::vector<std::uint64_t>{0, 1});
  l.ack();
  REQUIRE(rx->try_lease(10, l) == Status::ok);
  CHECK(ids_of(l) == std::vector<std::uint64_t>{2});
}

TEST_CASE("queue lease: arena and spill-file messages keep their data until the ack") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 4096});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  REQUIRE(tx->try_send(message(0, 3000)) == Status::ok);   // an arena chunk
  REQUIRE(tx->try_send(message(1, 20000)) == Status::ok);  // a spill file (larger than a chunk)
  REQUIRE(tx->try_send(message(2, 40)) == Status::ok);
  const pid_t holder = ::fork();
  REQUIRE(holder >= 0);
  if (holder == 0) {  // reads them all under a lease, then dies before the ack
    auto q = Queue::open(name);
    auto rx = q ? q->reader() : Result<QueueReader>(Error(Errc::system, "open"));
    QueueLease l;
    if (!rx || rx->lease(3, Deadline::in(10s), l) != Status::ok) ::_exit(2);
    std::vector<std::uint64_t> indexes;
    (void)ids_of(l, &indexes);
    ::_exit(indexes == std::vector<std::uint64_t>{0, 1, 2} ? 0 : 3);
  }
  REQUIRE(wait_exit(holder) == 0);
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  QueueLease l;
  REQUIRE(rx->try_lease(10, l) == Status::ok);
  CHECK(l.redelivered());
  std::vector<std::uint64_t> indexes;
  CHECK(l.for_each([](std::uint64_t, std::span<const std::byte>, std::uint16_t) {}) == Status::ok);
  (void)ids_of(l, &indexes);
  CHECK(indexes == std::vector<std::uint64_t>{0, 1, 2});
  l.ack();
  // The ack freed the chunk and the spill file: two more large messages take them again.
  REQUIRE(tx->try_send(message(3, 3000)) == Status::ok);
  REQUIRE(tx->try_send(message(4, 3000)) == Status::ok);
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(index_of(m.bytes()) == 3);
}

TEST_CASE("queue lease: kill -9 gauntlet over the lease kill points loses and doubles nothing") {
  // A writer thread sends kTotal numbered messages (some in the arena, some in spill files) into a
  // small ring whose positions cross 2^48 (claim words keep 48 bits). Reader processes take
  // leases, record what they got, then ack; each is killed with SIGKILL at a lease kill point or
  // after a random time. A message may be seen twice only if it was in the lease a killed reader
  // had recorded but not acked; every message must be seen.
  const int cycles = testing::scaled(200, 40) + 10;
  const std::uint64_t kTotal = 30 * static_cast<std::uint64_t>(cycles);
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 64, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 4096, .initial_position = (1ull << 48) - 1000});
  REQUIRE(sut.has_value());
  SharedArray<std::atomic<std::uint32_t>> seen(kTotal);
  // Per reader run: the lease it recorded but has not acked ({first index + 1, count}).
  SharedArray<std::atomic<std::uint64_t>> pending(2 * (static_cast<std::size_t>(cycles) + 1));
  SharedArray<std::atomic<std::uint64_t>> distinct(1);
  std::vector<std::uint64_t> uncertain_first, uncertain_count;

  std::atomic<bool> stop_writer{false};
  std::thread writer([&] {
    auto tx = sut->writer();
    REQUIRE(tx.has_value());
    for (std::uint64_t i = 0; i < kTotal && !stop_writer.load(std::memory_order_seq_cst); ++i) {
      const std::size_t size = i % 97 == 5 ? 9000 : (i % 13 == 3 ? 2500 : 24);
      while (tx->send(message(i, size), Deadline::in(100ms)) == Status::timeout)
        if (stop_writer.load(std::memory_order_seq_cst)) return;
    }
  });

  auto last_run = [&](int run) { return run == cycles; };
  auto run_reader = [&](int run, core::KillPoint kp, std::uint64_t skip) {
    auto q = Queue::open(name);
    auto rx = q ? q->reader() : Result<QueueReader>(Error(Errc::system, "open"));
    if (!rx) ::_exit(2);
    if (kp != core::KillPoint::none) arm_kill_point(kp, skip);
    std::atomic<std::uint64_t>& mine_first = pending[2 * run];
    std::atomic<std::uint64_t>& mine_count = pending[2 * run + 1];
    // A run ends by itself after a few leases (or when all is seen), so the runs are many.
    const int budget = last_run(run) ? 1 << 30 : 1 + run % 10;
    for (int leases = 0; leases < budget && distinct[0].load(std::memory_order_seq_cst) < kTotal;
         ++leases) {
      QueueLease l;
      const Status st = rx->lease(1 + run % 7, Deadline::in(50ms), l);
      if (st == Status::timeout) {
        --leases;
        continue;
      }
      if (st != Status::ok) ::_exit(40 + static_cast<int>(st));
      std::vector<std::uint64_t> indexes;
      (void)ids_of(l, &indexes);
      // Recorded before the ack: a kill in between leaves these as the uncertain ones.
      mine_count.store(0, std::memory_order_seq_cst);
      mine_first.store(indexes.empty() ? 0 : indexes.front() + 1, std::memory_order_seq_cst);
      mine_count.store(indexes.size(), std::memory_order_seq_cst);
      for (std::uint64_t ix : indexes) {
        if (ix >= kTotal) ::_exit(3);  // unreadable bytes
        if (seen[ix].fetch_add(1, std::memory_order_seq_cst) == 0)
          distinct[0].fetch_add(1, std::memory_order_seq_cst);
      }
      l.ack();
      mine_count.store(0, std::memory_order_seq_cst);
    }
    ::_exit(0);
  };

  const core::KillPoint points[] = {core::KillPoint::holding_lease, core::KillPoint::acking_lease,
                                    core::KillPoint::adopting, core::KillPoint::none};
  std::mt19937_64 rng(12345);
  int killed = 0;
  for (int run = 0; run < cycles; ++run) {
    const core::KillPoint kp = points[run % 4];
    const std::uint64_t skip = rng() % 8;
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) run_reader(run, kp, skip);
    // Wait until it stops at its kill point, or for a random time; then kill it.
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(500 + rng() % 20000);
    int status = 0;
    bool gone = false;
    while (std::chrono::steady_clock::now() < until) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG | WUNTRACED);
      if (r == pid) {
        gone = !WIFSTOPPED(status);
        break;
      }
      std::this_thread::sleep_for(100us);
    }
    if (!gone) {
      ::kill(pid, SIGKILL);
      const int code = wait_exit(pid);  // 0: it finished its budget just before the kill
      CHECK((code == 128 + SIGKILL || code == 0));
      if (code != 0) ++killed;
    } else {
      CHECK(WEXITSTATUS(status) == 0);
    }
    const std::uint64_t count = pending[2 * run + 1].load(std::memory_order_seq_cst);
    const std::uint64_t first = pending[2 * run].load(std::memory_order_seq_cst);
    if (count != 0 && first != 0) {
      uncertain_first.push_back(first - 1);
      uncertain_count.push_back(count);
    }
  }
  // A last reader, never killed, takes whatever is left.
  const int last = cycles;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) run_reader(last, core::KillPoint::none, 0);
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (distinct[0].load(std::memory_order_seq_cst) < kTotal &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  if (distinct[0].load(std::memory_order_seq_cst) < kTotal) ::kill(pid, SIGKILL);
  wait_exit(pid);
  stop_writer.store(true, std::memory_order_seq_cst);
  writer.join();

  MESSAGE(cycles << " reader runs, " << killed << " killed, " << uncertain_first.size()
                  << " killed holding a recorded lease, " << abandoned(*sut) << " abandoned");
  CHECK(killed >= cycles / 3);
  std::uint64_t missing = 0, doubled_outside = 0;
  for (std::uint64_t i = 0; i < kTotal; ++i) {
    const std::uint32_t n = seen[i].load(std::memory_order_seq_cst);
    if (n == 0) ++missing;
    std::uint32_t allowed = 1;
    for (std::size_t k = 0; k < uncertain_first.size(); ++k)
      if (i >= uncertain_first[k] && i < uncertain_first[k] + uncertain_count[k]) ++allowed;
    if (n > allowed) ++doubled_outside;
  }
  CHECK(missing == 0);
  CHECK(doubled_outside == 0);
  CHECK(abandoned(*sut) <= static_cast<std::uint64_t>(killed) * 7);  // only acking kills abandon
  CHECK(sut->size_guess() == 0);
}
