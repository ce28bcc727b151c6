// WaitWord: the Dekker pair of wait.hpp, with full and light wakers.
#include "shmq/core/wait.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "shmq/core/backoff.hpp"
#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;
using namespace shmq::core;
using namespace std::chrono_literals;
using shmq::testing::scaled;

namespace {

// One direction of a ping-pong: a counter published by the waker, a word the sleeper waits on.
struct Lane {
  WaitWord word;
  std::atomic<std::uint64_t> value;
};
struct Court {
  Lane lanes[2];
  std::atomic<std::uint32_t> lost;  // sleeps that ran out their (long) deadline: a lost wake-up
};

// Sleeps (never spinning) until lane.value >= want. A wake-up lost by the protocol leaves the
// sleeper waiting for its whole deadline, which is then counted; the peer waits for us, so the
// run stalls there, not elsewhere.
void await(Court& c, Lane& lane, std::uint64_t want) {
  while (lane.value.load(std::memory_order_seq_cst) < want) {
    const FutexResult r = lane.word.wait(
        [&] { return lane.value.load(std::memory_order_seq_cst) >= want; }, Deadline::in(20s));
    if (r == FutexResult::timed_out) c.lost.fetch_add(1, std::memory_order_seq_cst);
  }
}
void post(Lane& lane, std::uint64_t v, WakeFence fence) {
  lane.value.store(v, std::memory_order_release);
  lane.word.notify(INT_MAX, nullptr, fence);
}

// `rounds` round trips between this process and a forked child, each side announcing itself as a
// light waker on the word it wakes (or not). Returns the number of lost wake-ups.
std::uint32_t ping_pong(long rounds, bool light) {
  testing::SharedArray<Court> shared(1);
  Court& c = shared.data[0];
  for (Lane& l : c.lanes) l.word.init();
  // lanes[0]: parent -> child; lanes[1]: child -> parent. Each side announces itself (or not)
  // on the word it wakes.
  const pid_t child = testing::spawn([&] {
    const WakeFence fence = light ? c.lanes[1].word.announce_light_waker() : WakeFence::full;
    for (long i = 1; i <= rounds; ++i) {
      await(c, c.lanes[0], static_cast<std::uint64_t>(i));
      post(c.lanes[1], static_cast<std::uint64_t>(i), fence);
    }
    return 0;
  });
  const WakeFence fence = light ? c.lanes[0].word.announce_light_waker() : WakeFence::full;
  for (long i = 1; i <= rounds; ++i) {
    post(c.lanes[0], static_cast<std::uint64_t>(i), fence);
    await(c, c.lanes[1], static_cast<std::uint64_t>(i));
  }
  CHECK(testing::wait_exit(child) == 0);
  return c.lost.load(std::memory_order_seq_cst);
}

// The Dekker pair itself, as a store-buffer litmus test between two processes: in each round the
// waker publishes and notifies while the waiter registers (W1, then F1/B1 as wait() does) and
// re-checks. At least one of them must see the other: the notify sees the count, or the re-check
// sees the publish. Returns the rounds where neither did (a wake-up wait() would have lost).
struct Litmus {
  WaitWord word;
  std::atomic<std::uint64_t> value;
  std::atomic<std::uint64_t> go;     // round number, bumped by the parent
  std::atomic<std::uint64_t> ready;  // rounds the child is ready for
  std::atomic<std::uint64_t> saw_publish;  // rounds whose re-check saw the publish
  std::atomic<std::uint64_t> done;
  std::atomic<std::uint64_t> notified;  // rounds whose notify is over
};
// Spins until `flag` reaches `r`, yielding now and then (the peer may share our core).
void await_flag(const std::atomic<std::uint64_t>& flag, std::uint64_t r) {
  for (unsigned n = 1; flag.load(std::memory_order_seq_cst) < r; ++n) {
    if (n % 64 == 0) std::this_thread::yield(); else cpu_relax();
  }
}

long both_missed(long rounds, bool light) {
  testing::SharedArray<Litmus> shared(1);
  Litmus& t = shared.data[0];
  t.word.init();
  const WakeFence fence = light ? t.word.announce_light_waker() : WakeFence::full;
  const pid_t child = testing::spawn([&] {  // the waiter
    for (long i = 1; i <= rounds; ++i) {
      const auto r = static_cast<std::uint64_t>(i);
      t.ready.store(r, std::memory_order_seq_cst);
      await_flag(t.go, r);
      // W1, then F1 (+ B1), then the re-check, as WaitWord::wait() does them.
      const std::uint32_t before = t.word.waiters.fetch_add(1, std::memory_order_seq_cst);
      (void)WaitWord::waiter_barrier(before);
      const bool seen = t.value.load(std::memory_order_seq_cst) >= r;
      t.saw_publish.store(seen ? r : 0, std::memory_order_seq_cst);
      t.done.store(r, std::memory_order_seq_cst);
      // Registered until the waker's notify is over, as a sleeper would be.
      await_flag(t.notified, r);
      t.word.waiters.fetch_sub(1, std::memory_order_seq_cst);
    }
    return 0;
  });
  long missed = 0;
  for (long i = 1; i <= rounds; ++i) {  // the waker
    const auto r = static_cast<std::uint64_t>(i);
    await_flag(t.ready, r);
    t.go.store(r, std::memory_order_seq_cst);
    // A delay that varies by round, so some rounds overlap the waiter's W1 with the publish
    // still in flight (the window is about one cache-line transfer).
    for (std::uint64_t k = (r * 7919) % 97; k != 0; --k) cpu_relax();
    t.value.store(r, std::memory_order_release);  // the publish
    const bool saw_waiter = t.word.notify(INT_MAX, nullptr, fence);
    await_flag(t.done, r);
    if (!saw_waiter && t.saw_publish.load(std::memory_order_seq_cst) != r) ++missed;
    t.notified.store(r, std::memory_order_seq_cst);
  }
  CHECK(testing::wait_exit(child) == 0);
  return missed;
}

}  // namespace

TEST_CASE("wait word: the waker sees the waiter or the waiter sees the publish, every time") {
  const long rounds = scaled(20'000, 1'000);
  CHECK(both_missed(rounds, true) == 0);
  CHECK(both_missed(rounds / 10, false) == 0);
}

TEST_CASE("wait word: a light waker sets a sticky bit the waiter count ignores") {
  WaitWord sut{};
  sut.init();
  const WakeFence f = sut.announce_light_waker();
  const bool bit = (sut.waiters.load(std::memory_order_seq_cst) & WaitWord::kLightWakers) != 0;
  // Light exactly when this process could register for the waiters' barrier.
  CHECK((f == WakeFence::light) == bit);
  CHECK((f == WakeFence::light) == register_for_global_barrier());
  CHECK(sut.waiter_count() == 0);
  CHECK_FALSE(sut.has_waiters_guess());
  CHECK_FALSE(sut.notify(INT_MAX, nullptr, f));  // nobody registered: no syscall
  sut.waiters.fetch_add(2, std::memory_order_seq_cst);  // two sleepers killed asleep
  CHECK(sut.waiter_count() == 2);
  sut.drop_dead_waiter();
  CHECK(sut.waiter_count() == 1);
  sut.clear_waiters();
  CHECK(sut.waiter_count() == 0);
  sut.drop_dead_waiter();  // never below 0
  CHECK(sut.waiter_count() == 0);
  CHECK(((sut.waiters.load(std::memory_order_seq_cst) & WaitWord::kLightWakers) != 0) == bit);
}

TEST_CASE("wait word: a sleeper is woken by a light waker in another thread") {
  WaitWord word{};
  word.init();
  std::atomic<bool> ready{false};
  const WakeFence f = word.announce_light_waker();
  std::thread sleeper([&] {
    while (!ready.load(std::memory_order_seq_cst))
      (void)word.wait([&] { return ready.load(std::memory_order_seq_cst); }, Deadline::never());
  });
  while (!word.has_waiters_guess()) std::this_thread::sleep_for(1ms);
  ready.store(true, std::memory_order_release);
  CHECK(word.notify(INT_MAX, nullptr, f));  // the sleeper is registered: a wake syscall
  sleeper.join();
  CHECK(word.waiter_count() == 0);
}

TEST_CASE("wait word: no wake-up is lost between processes, with light or fenced wakers") {
  const long rounds = scaled(20'000, 500);
  CHECK(ping_pong(rounds, true) == 0);
  CHECK(ping_pong(rounds / 4, false) == 0);
}
