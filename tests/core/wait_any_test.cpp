// wait_any: futex_waitv over several WaitWords.
#include "shmq/core/wait_any.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using shmq::Deadline;
using shmq::core::FutexResult;
using shmq::core::wait_any;
using shmq::core::WaitWord;

namespace {
struct Channel {
  WaitWord word{};
  std::atomic<bool> ready{false};
  Channel() { word.init(); }
  void publish() {
    ready.store(true, std::memory_order_release);
    word.notify();
  }
};
}  // namespace

TEST_CASE("wait_any: returns at once when a channel is already ready") {
  Channel a, b;
  b.publish();
  WaitWord* words[] = {&a.word, &b.word};
  const auto r = wait_any(std::span<WaitWord* const>(words), [&] { return b.ready.load(std::memory_order_seq_cst); },
                          Deadline::never());
  CHECK(r == FutexResult::woken);
  CHECK_FALSE(a.word.has_waiters_guess());
  CHECK_FALSE(b.word.has_waiters_guess());
}

TEST_CASE("wait_any: times out when nothing happens") {
  Channel a, b;
  WaitWord* words[] = {&a.word, &b.word};
  const auto r = wait_any(std::span<WaitWord* const>(words), [] { return false; },
                          Deadline::in(std::chrono::milliseconds(5)));
  CHECK(r == FutexResult::timed_out);
}

TEST_CASE("wait_any: a notify on any word wakes the sleeper, and no wake-up is lost") {
  constexpr int kRounds = 2000;
  std::vector<Channel> chans(3);
  std::atomic<int> turn{-1};
  std::thread waker([&] {
    for (int i = 0; i < kRounds; ++i) {
      while (turn.load(std::memory_order_acquire) != i) std::this_thread::yield();
      chans[static_cast<std::size_t>(i % 3)].publish();
    }
  });
  WaitWord* words[] = {&chans[0].word, &chans[1].word, &chans[2].word};
  int seen = 0;
  for (int i = 0; i < kRounds; ++i) {
    Channel& c = chans[static_cast<std::size_t>(i % 3)];
    turn.store(i, std::memory_order_release);
    // Sleeps without a deadline: a lost wake-up would hang the test (meson's timeout fails it).
    while (!c.ready.load(std::memory_order_acquire)) {
      (void)wait_any(std::span<WaitWord* const>(words),
                     [&] { return c.ready.load(std::memory_order_acquire); }, Deadline::never());
    }
    c.ready.store(false, std::memory_order_relaxed);
    ++seen;
  }
  waker.join();
  CHECK(seen == kRounds);
}

TEST_CASE("wait_any: a word given twice holds one count, and each mark is set only while asleep") {
  Channel a, b;
  std::atomic<std::uint64_t> mark_a{0}, mark_b{0};
  const shmq::core::SleepMark marks[] = {{&mark_a, 0x11}, {&mark_a, 0x11}, {&mark_b, 0x22}};
  WaitWord* words[] = {&a.word, &a.word, &b.word};
  std::thread sleeper([&] {
    (void)wait_any(std::span<WaitWord* const>(words), [&] { return b.ready.load(std::memory_order_seq_cst); },
                   Deadline::never(), std::span<const shmq::core::SleepMark>(marks));
  });
  // The last mark is stored after every count is raised.
  while (mark_b.load(std::memory_order_seq_cst) == 0) std::this_thread::yield();
  CHECK(a.word.waiters.load(std::memory_order_seq_cst) == 1);
  CHECK(mark_a.load(std::memory_order_seq_cst) == 0x11);
  CHECK(mark_b.load(std::memory_order_seq_cst) == 0x22);
  b.publish();
  sleeper.join();
  CHECK(a.word.waiters.load(std::memory_order_seq_cst) == 0);
  CHECK(b.word.waiters.load(std::memory_order_seq_cst) == 0);
  CHECK(mark_a.load(std::memory_order_seq_cst) == 0);
  CHECK(mark_b.load(std::memory_order_seq_cst) == 0);
}
