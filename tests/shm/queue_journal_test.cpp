// Queue journals (queue.hpp, QueueJournal; core [Q7] sealed writes): a writer's record of what it
// put is exact across its crashes, so a restarted writer puts every message exactly once. Unit
// tests and a kill -9 gauntlet over the writer's kill points.
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

std::string unique_name() { return testing::unique_name("journal"); }

// Message i of token t: {t, i} then filler up to `size` bytes.
std::vector<std::byte> message(std::uint64_t t, std::uint64_t i, std::size_t size) {
  std::vector<std::byte> m(std::max<std::size_t>(size, 16));
  std::memcpy(m.data(), &t, 8);
  std::memcpy(m.data() + 8, &i, 8);
  for (std::size_t j = 16; j < m.size(); ++j) m[j] = static_cast<std::byte>((t + i * 7 + j) & 0xFF);
  return m;
}
bool parse(std::span<const std::byte> b, std::uint64_t& t, std::uint64_t& i) {
  if (b.size() < 16) return false;
  std::memcpy(&t, b.data(), 8);
  std::memcpy(&i, b.data() + 8, 8);
  const auto want = message(t, i, b.size());
  return std::memcmp(want.data(), b.data(), b.size()) == 0;
}

// Token t carries this many messages; some of them larger than a slot (arena or spill file).
std::uint64_t messages_of(std::uint64_t t) { return 1 + (t * 7) % 23; }
std::size_t size_of(std::uint64_t t, std::uint64_t i) {
  const std::uint64_t h = t * 31 + i;
  return h % 41 == 3 ? 9000 : (h % 17 == 5 ? 2000 : 24);
}

}  // namespace

TEST_CASE("queue journal: the record says what was put, and a new holder of the name reads it") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(sut.has_value());
  {
    auto tx = sut->writer();
    REQUIRE(tx.has_value());
    REQUIRE(tx->open_journal("in.JOBS").has_value());
    CHECK(tx->journal_record().token == 0);
    std::vector<std::vector<std::byte>> m = {message(7, 0, 20), message(7, 1, 20), message(7, 2, 20)};
    std::vector<std::span<const std::byte>> spans(m.begin(), m.end());
    Status why = Status::ok;
    CHECK(tx->send_many_journaled(std::span(spans).subspan(1), Deadline::now(), 0, 7, 1, &why) == 2);
    CHECK(why == Status::ok);
    CHECK(tx->journal_record().token == 7);
    CHECK(tx->journal_record().next == 3);
    auto other = sut->writer();
    REQUIRE(other.has_value());
    auto taken = other->open_journal("in.JOBS");
    REQUIRE_FALSE(taken.has_value());
    CHECK(taken.error().code == Errc::role_taken);  // held by a live writer
    CHECK(other->open_journal("in.OTHER").has_value());
    CHECK(other->open_journal(std::string(64, 'x')).error().code == Errc::invalid_argument);
  }
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  REQUIRE(tx->open_journal("in.JOBS").has_value());  // its holder left: the name is free
  CHECK(tx->journal_record().token == 7);
  CHECK(tx->journal_record().next == 3);
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  Message m;
  std::uint64_t t = 0, i = 0;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK((parse(m.bytes(), t, i) && t == 7 && i == 1));
  m.release();
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK((parse(m.bytes(), t, i) && t == 7 && i == 2));
}

TEST_CASE("queue journal: a writer killed after sealing has its messages delivered, not discarded") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(sut.has_value());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // stops (then is killed) after its seal, before its commit
    auto q = Queue::open(name);
    auto tx = q ? q->writer() : Result<QueueWriter>(Error(Errc::system, "open"));
    if (!tx || !tx->open_journal("in").has_value()) ::_exit(2);
    arm_kill_point(core::KillPoint::sealed, 0);
    std::vector<std::vector<std::byte>> m = {message(3, 0, 20), message(3, 1, 20)};
    std::vector<std::span<const std::byte>> spans(m.begin(), m.end());
    (void)tx->send_many_journaled(spans, Deadline::now(), 0, 3, 0);
    ::_exit(3);
  }
  int status = 0;
  while (::waitpid(pid, &status, WUNTRACED) < 0 && errno == EINTR) {
  }
  REQUIRE(WIFSTOPPED(status));
  ::kill(pid, SIGKILL);
  CHECK(wait_exit(pid) == 128 + SIGKILL);
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  Message m;
  std::uint64_t t = 0, i = 0;
  REQUIRE(rx->recv(m, Deadline::in(2s)) == Status::ok);  // committed by the reader [Q7]
  CHECK((parse(m.bytes(), t, i) && t == 3 && i == 0));
  m.release();
  REQUIRE(rx->recv(m, Deadline::in(2s)) == Status::ok);
  CHECK((parse(m.bytes(), t, i) && t == 3 && i == 1));
  CHECK(sut->stats().recovered.load(std::memory_order_seq_cst) == 0);
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  REQUIRE(tx->open_journal("in").has_value());
  CHECK(tx->journal_record().token == 3);
  CHECK(tx->journal_record().next == 2);
}

TEST_CASE("queue journal: kill -9 gauntlet: every message put exactly once across restarts") {
  // A writer process puts tokens 1, 2, ... (each a run of messages, some spilled) through its
  // journal, resuming each restart from the journal's record; it is killed at every writer kill
  // point and at random times. A reader thread counts what arrives: each message exactly once.
  const int cycles = testing::scaled(200, 40) + 10;
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 32, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 4096, .initial_position = (1ull << 48) - 500});
  REQUIRE(sut.has_value());
  constexpr std::uint64_t kMaxTokens = 1 << 16;
  void* mem = ::mmap(nullptr, sizeof(std::atomic<std::uint64_t>), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* stop_at = new (mem) std::atomic<std::uint64_t>(kMaxTokens);  // the last token to put

  std::vector<std::vector<std::uint8_t>> seen(kMaxTokens);
  std::atomic<bool> reading{true};
  std::atomic<std::uint64_t> bad{0}, doubled{0}, delivered{0};
  std::thread reader([&] {
    auto rx = sut->reader();
    REQUIRE(rx.has_value());
    while (reading.load(std::memory_order_seq_cst)) {
      Message m;
      if (rx->recv(m, Deadline::in(20ms)) != Status::ok) continue;
      std::uint64_t t = 0, i = 0;
      if (!parse(m.bytes(), t, i) || t >= kMaxTokens || i >= messages_of(t)) {
        bad.fetch_add(1, std::memory_order_seq_cst);
        continue;
      }
      if (seen[t].empty()) seen[t].resize(messages_of(t));
      if (++seen[t][i] > 1) doubled.fetch_add(1, std::memory_order_seq_cst);
      delivered.fetch_add(1, std::memory_order_seq_cst);
    }
  });

  auto run_writer = [&](core::KillPoint kp, std::uint64_t skip) {
    auto q = Queue::open(name);
    auto tx = q ? q->writer() : Result<QueueWriter>(Error(Errc::system, "open"));
    if (!tx) ::_exit(2);
    // The previous holder may still be dying: wait for the name.
    for (int tries = 0;; ++tries) {
      if (tx->open_journal("in").has_value()) break;
      if (tries > 2000) ::_exit(4);
      std::this_thread::sleep_for(1ms);
    }
    if (kp != core::KillPoint::none) arm_kill_point(kp, skip);
    auto rec = tx->journal_record();
    std::uint64_t t = rec.token == 0 ? 1 : rec.token;
    std::uint64_t start = rec.token == 0 ? 0 : rec.next;
    for (;; ++t, start = 0) {
      if (start >= messages_of(t)) continue;  // token t was put whole
      if (t > stop_at->load()) ::_exit(0);
      std::vector<std::vector<std::byte>> m;
      for (std::uint64_t i = start; i < messages_of(t); ++i) m.push_back(message(t, i, size_of(t, i)));
      std::vector<std::span<const std::byte>> spans(m.begin(), m.end());
      Status why = Status::ok;
      const std::size_t n = tx->send_many_journaled(spans, Deadline::never(), 0, t, start, &why);
      if (n != spans.size()) ::_exit(40 + static_cast<int>(why));
    }
  };

  const core::KillPoint points[] = {core::KillPoint::mid_claim, core::KillPoint::mid_write,
                                    core::KillPoint::before_commit, core::KillPoint::sealed,
                                    core::KillPoint::after_commit_before_wake,
                                    core::KillPoint::spill_write, core::KillPoint::none};
  std::mt19937_64 rng(777);
  int killed = 0;
  for (int run = 0; run < cycles; ++run) {
    const core::KillPoint kp = points[run % 7];
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) run_writer(kp, rng() % 20);
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(300 + rng() % 5000);
    int status = 0;
    bool exited = false;
    while (std::chrono::steady_clock::now() < until) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG | WUNTRACED);
      if (r == pid) {
        exited = !WIFSTOPPED(status);
        break;
      }
      std::this_thread::sleep_for(100us);
    }
    if (exited) {
      CHECK(WEXITSTATUS(status) == 0);
      continue;
    }
    ::kill(pid, SIGKILL);
    const int code = wait_exit(pid);
    CHECK(code == 128 + SIGKILL);
    ++killed;
    // Half the time the reader finds the dead writer's slots before its successor starts.
    if (rng() % 2 == 0) std::this_thread::sleep_for(5ms);
  }
  // A last writer, never killed, finishes the token the last one was on, then stops.
  {
    auto tx = sut->writer();
    REQUIRE(tx.has_value());
    for (int tries = 0; !tx->open_journal("in").has_value() && tries < 2000; ++tries)
      std::this_thread::sleep_for(1ms);
    const auto rec = tx->journal_record();
    stop_at->store(rec.token == 0 ? 1 : rec.token);
  }
  const pid_t last = ::fork();
  REQUIRE(last >= 0);
  if (last == 0) run_writer(core::KillPoint::none, 0);
  CHECK(wait_exit(last) == 0);
  const std::uint64_t tokens = stop_at->load();
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  std::uint64_t expected = 0;
  for (std::uint64_t t = 1; t <= tokens; ++t) expected += messages_of(t);
  while (delivered.load(std::memory_order_seq_cst) < expected &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(100ms);  // anything late (a double) arrives now
  reading.store(false, std::memory_order_seq_cst);
  reader.join();

  MESSAGE(cycles << " writer runs, " << killed << " killed, " << tokens << " tokens put");
  CHECK(killed >= cycles / 2);
  CHECK(bad.load(std::memory_order_seq_cst) == 0);
  CHECK(doubled.load(std::memory_order_seq_cst) == 0);
  std::uint64_t missing = 0;
  for (std::uint64_t t = 1; t <= tokens; ++t)
    for (std::uint64_t i = 0; i < messages_of(t); ++i)
      if (seen[t].empty() || seen[t][i] == 0) ++missing;
  CHECK(missing == 0);
  ::munmap(mem, sizeof(std::atomic<std::uint64_t>));
}
