// The futex synchronization algorithms on process memory, with threads and a fake holder
// registry: FutexMutex, RecursiveFutexMutex, FutexSemaphore, FutexEvent, FutexCondition,
// FutexBarrier. Holder deaths are simulated by the registry; real deaths are tests/shm's.
#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <thread>
#include <vector>

#include "shmq/core/futex_barrier.hpp"
#include "shmq/core/futex_condition.hpp"
#include "shmq/core/futex_event.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/futex_semaphore.hpp"
#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;
using namespace shmq::core;
using namespace std::chrono_literals;
using shmq::testing::scaled;

// The tests' own atomics (counters, flags, start lines) use seq_cst: the simplest order to reason
// about, and nothing here is timed. The code under test states its own orders.

namespace {

// Holder i is make_holder(i, 1); dead[i] says whether it died; indices beyond the table are invalid.
struct FakeRegistry final : HolderRegistry {
  std::array<std::atomic<bool>, kMaxHolders> dead{};
  mutable std::atomic<int> asked{0};
  HolderState holder_state(std::uint32_t h) const noexcept override {
    asked.fetch_add(1, std::memory_order_seq_cst);
    const std::uint32_t i = holder_index(h);
    if (i >= kMaxHolders) return HolderState::invalid;
    return dead[i].load(std::memory_order_seq_cst) ? HolderState::dead : HolderState::alive;
  }
};

std::uint32_t holder(std::uint32_t i) { return make_holder(i, 1); }

// A start line: every thread waits until all have arrived.
struct StartLine {
  explicit StartLine(int n) : left(n) {}
  void arrive_and_wait() {
    left.fetch_sub(1, std::memory_order_seq_cst);
    while (left.load(std::memory_order_seq_cst) > 0) std::this_thread::yield();
  }
  std::atomic<int> left;
};

// Zeroed storage for a shared-memory struct (they are initialized by init(), not constructors).
struct AlignedDelete {
  template <class T>
  void operator()(T* p) const {
    ::operator delete(static_cast<void*>(p), std::align_val_t{64});
  }
};
template <class T>
std::unique_ptr<T, AlignedDelete> zeroed() {
  void* p = ::operator new(sizeof(T), std::align_val_t{64});
  std::memset(p, 0, sizeof(T));
  return std::unique_ptr<T, AlignedDelete>(static_cast<T*>(p));
}

}  // namespace

// ---- FutexMutex --------------------------------------------------------------------------------

TEST_CASE("futex mutex: lock and unlock are one CAS and one exchange when nobody waits") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.init();
  CHECK(sut.lock(holder(1), Deadline::never(), reg) == Status::ok);
  CHECK(sut.held_by(holder(1)));
  CHECK_FALSE(sut.try_lock(holder(2)));
  CHECK(sut.unlock() == (holder(1) | FutexMutex::kLocked));  // no contended bit: no wake
  CHECK(sut.holder_guess() == 0);
  CHECK(sut.unlock() == 0);  // unlocking a free mutex reports it
  // relaxed: read after every call returned, in this thread.
  CHECK(reg.asked.load(std::memory_order_relaxed) == 0);
}

TEST_CASE("futex mutex: a poll or a deadline on a live holder's lock times out") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.init();
  REQUIRE(sut.try_lock(holder(1)));
  CHECK(sut.lock(holder(2), Deadline::now(), reg) == Status::timeout);
  CHECK(sut.lock(holder(2), Deadline::in(30ms), reg) == Status::timeout);
  CHECK(sut.held_by(holder(1)));
  // relaxed: read after the calls returned, in this thread. The holder's liveness was checked,
  // not assumed.
  CHECK(reg.asked.load(std::memory_order_relaxed) >= 1);
}

TEST_CASE("futex mutex: the next acquirer takes a dead holder's lock with owner_died") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.init();
  REQUIRE(sut.try_lock(holder(3)));
  reg.dead[3] = true;
  std::uint32_t dead = 0;
  CHECK(sut.lock(holder(4), Deadline::never(), reg, 16, &dead) == Status::owner_died);
  CHECK(dead == holder(3));
  CHECK(sut.held_by(holder(4)));
  CHECK(sut.unlock() != 0);
  CHECK(sut.lock(holder(5), Deadline::now(), reg) == Status::ok);
}

TEST_CASE("futex mutex: a sleeper takes over when the holder dies while it sleeps") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.init();
  REQUIRE(sut.try_lock(holder(1)));
  std::atomic<int> got{-1};
  std::thread waiter([&] {
    // relaxed: read after join(), which orders it.
    got.store(static_cast<int>(sut.lock(holder(2), Deadline::in(10s), reg, 0)),
              std::memory_order_relaxed);
  });
  // seq_cst: pairs with the registry's seq_cst count; the waiter checked once and went to sleep.
  while (reg.asked.load(std::memory_order_seq_cst) == 0) std::this_thread::yield();
  // seq_cst: read by the registry's seq_cst load. No wake: only the waiter's next liveness check
  // can notice.
  reg.dead[1].store(true, std::memory_order_seq_cst);
  waiter.join();
  CHECK(got.load(std::memory_order_relaxed) == static_cast<int>(Status::owner_died));  // after join
  CHECK(sut.held_by(holder(2)));
}

TEST_CASE("futex mutex: a word naming a holder out of range is corrupt, never a crash") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.word.store(make_holder(100, 7) | FutexMutex::kLocked, std::memory_order_seq_cst);
  CHECK(sut.lock(holder(1), Deadline::in(50ms), reg, 8) == Status::corrupt);
  sut.word.store(FutexMutex::kContended, std::memory_order_seq_cst);  // bits without kLocked
  CHECK(sut.lock(holder(1), Deadline::in(50ms), reg, 8) == Status::corrupt);
}

TEST_CASE("futex mutex: threads incrementing under the lock lose no increment") {
  FakeRegistry reg;
  FutexMutex sut{};
  sut.init();
  constexpr int kThreads = 4;
  const int per_thread = scaled(50'000, 2'000);
  std::uint64_t counter = 0;  // plain: the mutex is what protects it
  StartLine start(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < per_thread; ++i) {
        // Half the threads spin briefly, half sleep at once: both paths get exercised.
        REQUIRE(sut.lock(holder(static_cast<std::uint32_t>(t)), Deadline::never(), reg, t % 2 ? 0 : 64) == Status::ok);
        ++counter;
        sut.unlock();
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(counter == static_cast<std::uint64_t>(kThreads) * per_thread);
  CHECK(sut.holder_guess() == 0);
}

// ---- RecursiveFutexMutex -----------------------------------------------------------------------

TEST_CASE("recursive futex mutex: the holding thread counts levels; others wait") {
  FakeRegistry reg;
  RecursiveFutexMutex sut{};
  sut.init();
  CHECK(sut.lock(holder(1), 11, Deadline::never(), reg) == Status::ok);
  CHECK(sut.lock(holder(1), 11, Deadline::never(), reg) == Status::ok);
  CHECK(sut.depth.load(std::memory_order_seq_cst) == 2);
  CHECK(sut.lock(holder(1), 12, Deadline::now(), reg) == Status::timeout);  // same process, other thread
  CHECK_FALSE(sut.unlock(holder(1), 12));
  CHECK(sut.unlock(holder(1), 11));
  CHECK(sut.owned_by(holder(1), 11));
  CHECK(sut.unlock(holder(1), 11));
  CHECK_FALSE(sut.owned_by(holder(1), 11));
  CHECK_FALSE(sut.unlock(holder(1), 11));  // released too many times
  CHECK(sut.lock(holder(2), 13, Deadline::now(), reg) == Status::ok);
}

TEST_CASE("recursive futex mutex: a dead holder's levels are gone for the next holder") {
  FakeRegistry reg;
  RecursiveFutexMutex sut{};
  sut.init();
  REQUIRE(sut.lock(holder(1), 11, Deadline::never(), reg) == Status::ok);
  REQUIRE(sut.lock(holder(1), 11, Deadline::never(), reg) == Status::ok);
  reg.dead[1] = true;
  CHECK(sut.lock(holder(2), 21, Deadline::never(), reg) == Status::owner_died);
  CHECK(sut.depth.load(std::memory_order_seq_cst) == 1);
  CHECK(sut.unlock(holder(2), 21));
  CHECK(sut.mutex.holder_guess() == 0);
}

// ---- FutexSemaphore ----------------------------------------------------------------------------

TEST_CASE("futex semaphore: counts units, refuses to pass its bound, and polls") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(2, 2, FutexSemaphore::kTrackUnits);
  CHECK(sut->acquire(holder(1), Deadline::now(), reg) == Status::ok);
  CHECK(sut->acquire(holder(1), Deadline::now(), reg) == Status::ok);
  CHECK(sut->value_guess() == 0);
  CHECK(sut->units_of(holder(1)) == 2);
  CHECK(sut->acquire(holder(2), Deadline::now(), reg) == Status::timeout);
  CHECK(sut->acquire(holder(2), Deadline::in(20ms), reg) == Status::timeout);
  CHECK(sut->release(holder(1), 1, reg) == Status::ok);
  CHECK(sut->release(holder(1), 1, reg) == Status::ok);
  CHECK(sut->release(holder(1), 1, reg) == Status::full);  // a BoundedSemaphore's ValueError
  CHECK(sut->value_guess() == 2);
  CHECK(sut->units_of(holder(1)) == 0);
}

TEST_CASE("futex semaphore: a dead holder's units come back to a waiter") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(3, kSemaphoreMax, FutexSemaphore::kTrackUnits);
  for (int i = 0; i < 3; ++i) REQUIRE(sut->acquire(holder(5), Deadline::now(), reg) == Status::ok);
  std::atomic<int> got{-1};
  std::thread waiter([&] { got = static_cast<int>(sut->acquire(holder(6), Deadline::in(10s), reg)); });
  std::this_thread::sleep_for(20ms);
  reg.dead[5] = true;
  waiter.join();
  CHECK(got.load(std::memory_order_seq_cst) == static_cast<int>(Status::ok));
  CHECK(sut->value_guess() == 2);  // 3 returned, 1 taken
  CHECK(sut->units_of(holder(5)) == 0);
}

TEST_CASE("futex semaphore: without unit tracking a dead acquirer's units stay consumed") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(1, kSemaphoreMax, 0);
  REQUIRE(sut->acquire(holder(5), Deadline::now(), reg) == Status::ok);
  reg.dead[5] = true;
  CHECK(sut->acquire(holder(6), Deadline::in(30ms), reg) == Status::timeout);
  CHECK(sut->value_guess() == 0);
}

TEST_CASE("futex semaphore: an update left half done by a dead guard holder is undone") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(4, kSemaphoreMax, FutexSemaphore::kTrackUnits);
  // Holder 7 died inside acquire: guard held, journal written, count already lowered.
  REQUIRE(sut->guard.try_lock(holder(7)));
  sut->journal_index.store(7, std::memory_order_seq_cst);
  sut->journal_count.store(4, std::memory_order_seq_cst);
  sut->journal_holder.store(0, std::memory_order_seq_cst);
  sut->journal_units.store(0, std::memory_order_seq_cst);
  sut->journal_active.store(1, std::memory_order_seq_cst);
  sut->count.store(3, std::memory_order_seq_cst);
  reg.dead[7] = true;
  CHECK(sut->acquire(holder(8), Deadline::now(), reg) == Status::ok);
  CHECK(sut->value_guess() == 3);  // 4 restored, then one taken by holder 8
  CHECK(sut->units_of(holder(7)) == 0);
  CHECK(sut->journal_active.load(std::memory_order_seq_cst) == 0);
}

TEST_CASE("futex semaphore: a count beyond its bound is corrupt") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(1, 1, FutexSemaphore::kTrackUnits);
  sut->count.store(5, std::memory_order_seq_cst);
  CHECK(sut->acquire(holder(1), Deadline::now(), reg) == Status::corrupt);
  CHECK(sut->release(holder(1), 1, reg) == Status::corrupt);
  sut->count.store(0, std::memory_order_seq_cst);
  // names another index
  sut->holdings[9].holder.store(holder(9) + 1000, std::memory_order_seq_cst);
  sut->holdings[9].units.store(1, std::memory_order_seq_cst);
  CHECK(sut->acquire(holder(1), Deadline::now(), reg) == Status::corrupt);
}

TEST_CASE("futex semaphore: producers and consumers move every unit exactly once") {
  FakeRegistry reg;
  auto sut = zeroed<FutexSemaphore>();
  sut->init(0, kSemaphoreMax, 0);
  const int per = scaled(20'000, 1'000);
  std::atomic<int> consumed{0};
  StartLine start(4);
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < per; ++i) REQUIRE(sut->release(holder(static_cast<std::uint32_t>(t)), 1, reg) == Status::ok);
    });
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < per; ++i) {
        REQUIRE(sut->acquire(holder(static_cast<std::uint32_t>(10 + t)), Deadline::in(30s), reg) == Status::ok);
        consumed.fetch_add(1, std::memory_order_seq_cst);
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(consumed.load(std::memory_order_seq_cst) == 2 * per);
  CHECK(sut->value_guess() == 0);
}

// ---- FutexEvent --------------------------------------------------------------------------------

TEST_CASE("futex event: set, clear, and waits that time out or see a set") {
  FutexEvent sut{};
  sut.init();
  CHECK_FALSE(sut.is_set());
  CHECK(sut.wait(Deadline::now()) == Status::timeout);
  CHECK(sut.wait(Deadline::in(10ms)) == Status::timeout);
  CHECK(sut.set());
  CHECK_FALSE(sut.set());  // already set
  CHECK(sut.is_set());
  CHECK(sut.wait(Deadline::now()) == Status::ok);
  sut.clear();
  CHECK_FALSE(sut.is_set());
  CHECK(sut.waiters.load(std::memory_order_seq_cst) == 0);
}

TEST_CASE("futex event: a set wakes every waiter, even one that a quick clear would hide") {
  FutexEvent sut{};
  sut.init();
  constexpr int kWaiters = 4;
  std::atomic<int> ok{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < kWaiters; ++i)
    ts.emplace_back([&] { ok += sut.wait(Deadline::in(10s)) == Status::ok ? 1 : 0; });
  while (sut.waiters.load(std::memory_order_seq_cst) < kWaiters) std::this_thread::yield();
  sut.set();
  sut.clear();
  for (auto& t : ts) t.join();
  CHECK(ok.load(std::memory_order_seq_cst) == kWaiters);
  CHECK(sut.waiters.load(std::memory_order_seq_cst) == 0);
}

// ---- FutexCondition ----------------------------------------------------------------------------

namespace {
struct CondFixture {
  FakeRegistry reg;
  FutexMutex m{};
  std::unique_ptr<FutexCondition, AlignedDelete> c = zeroed<FutexCondition>();
  CondFixture() {
    m.init();
    c->init();
  }
  // One waiter: lock, wait up to `d`, relock; returns whether it was notified.
  bool wait(std::uint32_t h, Deadline d) {
    REQUIRE(m.lock(h, Deadline::never(), reg) == Status::ok);
    const int rec = c->enter_wait(h, reg);
    REQUIRE(rec >= 0);
    m.unlock();
    (void)c->await(rec, d);
    REQUIRE(m.lock(h, Deadline::never(), reg) == Status::ok);
    const bool notified = c->leave_wait(rec);
    m.unlock();
    return notified;
  }
};
}  // namespace

TEST_CASE("futex condition: notify(n) wakes exactly the n oldest sleepers, notify_all the rest") {
  CondFixture f;
  constexpr int kWaiters = 5;
  std::array<std::atomic<bool>, kWaiters> woken{};
  std::vector<std::thread> ts;
  for (int i = 0; i < kWaiters; ++i) {
    ts.emplace_back([&, i] {
      woken[static_cast<std::size_t>(i)] = f.wait(holder(static_cast<std::uint32_t>(i)), Deadline::in(30s));
    });
    while (f.c->waiting_guess() < static_cast<std::uint32_t>(i + 1)) std::this_thread::yield();  // in order
  }
  REQUIRE(f.m.lock(holder(40), Deadline::never(), f.reg) == Status::ok);
  CHECK(f.c->notify(2, holder(40), f.reg) == 2);
  f.m.unlock();
  ts[0].join();
  ts[1].join();
  std::this_thread::sleep_for(20ms);
  CHECK(woken[0].load(std::memory_order_seq_cst));
  CHECK(woken[1].load(std::memory_order_seq_cst));
  for (int i = 2; i < kWaiters; ++i)  // not one more
    CHECK_FALSE(woken[static_cast<std::size_t>(i)].load(std::memory_order_seq_cst));
  CHECK(f.c->waiting_guess() == 3);
  REQUIRE(f.m.lock(holder(40), Deadline::never(), f.reg) == Status::ok);
  CHECK(f.c->notify_all(holder(40), f.reg) == 3);
  f.m.unlock();
  for (std::size_t i = 2; i < ts.size(); ++i) ts[i].join();
  for (auto& w : woken) CHECK(w.load(std::memory_order_seq_cst));
  CHECK(f.c->waiting_guess() == 0);
  CHECK(f.m.holder_guess() == 0);
}

TEST_CASE("futex condition: a waiter that times out frees its record; notify skips it") {
  CondFixture f;
  CHECK_FALSE(f.wait(holder(1), Deadline::in(20ms)));
  CHECK(f.c->waiting_guess() == 0);
  REQUIRE(f.m.lock(holder(2), Deadline::never(), f.reg) == Status::ok);
  CHECK(f.c->notify(1, holder(2), f.reg) == 0);  // nobody waits: nothing spent
  f.m.unlock();
  std::atomic<bool> later{false};
  std::thread t([&] { later = f.wait(holder(3), Deadline::in(30s)); });
  while (f.c->waiting_guess() == 0) std::this_thread::yield();
  REQUIRE(f.m.lock(holder(2), Deadline::never(), f.reg) == Status::ok);
  CHECK(f.c->notify(1, holder(2), f.reg) == 1);
  f.m.unlock();
  t.join();
  CHECK(later.load(std::memory_order_seq_cst));
}

TEST_CASE("futex condition: a dead waiter's record is freed, not notified in a live one's place") {
  CondFixture f;
  REQUIRE(f.m.lock(holder(9), Deadline::never(), f.reg) == Status::ok);
  REQUIRE(f.c->enter_wait(holder(9), f.reg) >= 0);  // holder 9 then dies waiting
  f.m.unlock();
  f.reg.dead[9] = true;
  std::atomic<bool> live{false};
  std::thread t([&] { live = f.wait(holder(3), Deadline::in(30s)); });
  while (f.c->waiting_guess() < 2) std::this_thread::yield();
  REQUIRE(f.m.lock(holder(2), Deadline::never(), f.reg) == Status::ok);
  CHECK(f.c->notify(1, holder(2), f.reg) == 1);  // the live one, although the dead one is older
  f.m.unlock();
  t.join();
  CHECK(live.load(std::memory_order_seq_cst));
  CHECK(f.c->waiting_guess() == 0);
}

TEST_CASE("futex condition: every record taken by live waiters is full; dead ones are reclaimed") {
  CondFixture f;
  for (std::uint32_t i = 0; i < kConditionWaiters; ++i) REQUIRE(f.c->enter_wait(holder(i % 2), f.reg) >= 0);
  CHECK(f.c->enter_wait(holder(5), f.reg) == -1);
  f.reg.dead[1] = true;
  CHECK(f.c->enter_wait(holder(5), f.reg) >= 0);
  CHECK(f.c->waiting_guess() == kConditionWaiters / 2 + 1);
}

TEST_CASE("futex condition: no notification is lost between a waiter's check and its sleep") {
  CondFixture f;
  const int rounds = scaled(2'000, 200);
  int state = 0;  // protected by f.m
  std::thread consumer([&] {
    for (int i = 1; i <= rounds; ++i) {
      REQUIRE(f.m.lock(holder(1), Deadline::never(), f.reg) == Status::ok);
      while (state < i) {
        const int rec = f.c->enter_wait(holder(1), f.reg);
        REQUIRE(rec >= 0);
        f.m.unlock();
        REQUIRE(f.c->await(rec, Deadline::in(30s)) == Status::ok);
        REQUIRE(f.m.lock(holder(1), Deadline::never(), f.reg) == Status::ok);
        CHECK(f.c->leave_wait(rec));
      }
      f.m.unlock();
    }
  });
  for (int i = 1; i <= rounds; ++i) {
    REQUIRE(f.m.lock(holder(2), Deadline::never(), f.reg) == Status::ok);
    state = i;
    f.c->notify(1, holder(2), f.reg);
    f.m.unlock();
  }
  consumer.join();
  CHECK(state == rounds);
}

// ---- FutexBarrier ------------------------------------------------------------------------------

TEST_CASE("futex barrier: parties pass in lockstep round after round, one of each index") {
  FakeRegistry reg;
  auto sut = zeroed<FutexBarrier>();
  constexpr std::uint32_t kParties = 4;
  sut->init(kParties);
  const int rounds = scaled(300, 30);
  std::atomic<int> arrived{0};
  std::atomic<int> bad{0};
  std::atomic<int> actions{0};
  std::vector<std::vector<std::uint32_t>> indices(kParties);
  std::vector<std::thread> ts;
  for (std::uint32_t t = 0; t < kParties; ++t) {
    ts.emplace_back([&, t] {
      for (int r = 0; r < rounds; ++r) {
        arrived.fetch_add(1, std::memory_order_seq_cst);
        const BarrierResult res = sut->wait(holder(t), Deadline::in(30s), reg, [&] {
          actions.fetch_add(1, std::memory_order_seq_cst);
          return true;
        });
        if (res.status != Status::ok) bad.fetch_add(1, std::memory_order_seq_cst);
        // Nobody leaves round r before everyone arrived in it.
        if (arrived.load(std::memory_order_seq_cst) < static_cast<int>(kParties) * (r + 1))
          bad.fetch_add(1, std::memory_order_seq_cst);
        indices[t].push_back(res.index);
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(bad.load(std::memory_order_seq_cst) == 0);
  CHECK(actions.load(std::memory_order_seq_cst) == rounds);
  for (int r = 0; r < rounds; ++r) {
    std::set<std::uint32_t> seen;
    for (std::uint32_t t = 0; t < kParties; ++t) seen.insert(indices[t][static_cast<std::size_t>(r)]);
    CHECK(seen.size() == kParties);
  }
  CHECK_FALSE(sut->broken());
}

TEST_CASE("futex barrier: abort, a failed action, a timeout and reset") {
  FakeRegistry reg;
  auto sut = zeroed<FutexBarrier>();
  sut->init(2);
  auto no_action = [] { return true; };
  CHECK(sut->wait(holder(1), Deadline::in(20ms), reg, no_action).status == Status::timeout);
  CHECK(sut->broken());  // a timeout breaks it (threading.Barrier's rule)
  CHECK(sut->wait(holder(2), Deadline::now(), reg, no_action).status == Status::broken);
  sut->reset();
  CHECK_FALSE(sut->broken());
  std::thread t([&] { CHECK(sut->wait(holder(1), Deadline::in(10s), reg, no_action).status == Status::broken); });
  while (sut->waiting_guess() != 1) std::this_thread::yield();
  CHECK(sut->wait(holder(2), Deadline::in(10s), reg, [] { return false; }).status == Status::broken);
  t.join();
  sut->reset();
  std::thread u([&] { CHECK(sut->wait(holder(1), Deadline::in(10s), reg, no_action).status == Status::broken); });
  while (sut->waiting_guess() != 1) std::this_thread::yield();
  sut->abort();
  u.join();
}

TEST_CASE("futex barrier: reset releases the current waiters as broken and works again") {
  FakeRegistry reg;
  auto sut = zeroed<FutexBarrier>();
  sut->init(3);
  auto no_action = [] { return true; };
  std::atomic<int> broken{0};
  std::vector<std::thread> ts;
  for (std::uint32_t i = 0; i < 2; ++i)
    ts.emplace_back([&, i] {
      broken += sut->wait(holder(i), Deadline::in(10s), reg, no_action).status == Status::broken;
    });
  while (sut->waiting_guess() != 2) std::this_thread::yield();
  sut->reset();
  for (auto& t : ts) t.join();
  CHECK(broken.load(std::memory_order_seq_cst) == 2);
  CHECK_FALSE(sut->broken());
  ts.clear();
  std::atomic<int> ok{0};
  for (std::uint32_t i = 0; i < 3; ++i)
    ts.emplace_back([&, i] { ok += sut->wait(holder(i), Deadline::in(10s), reg, no_action).status == Status::ok; });
  for (auto& t : ts) t.join();
  CHECK(ok.load(std::memory_order_seq_cst) == 3);
}

TEST_CASE("futex barrier: a registered party that dies breaks the barrier for the others") {
  FakeRegistry reg;
  auto sut = zeroed<FutexBarrier>();
  sut->init(3);
  auto no_action = [] { return true; };
  // Parties 1 and 2 pass a first round with party 3, then party 3 dies before the second.
  {
    std::vector<std::thread> ts;
    for (std::uint32_t i = 1; i <= 3; ++i)
      ts.emplace_back([&, i] { CHECK(sut->wait(holder(i), Deadline::in(10s), reg, no_action).status == Status::ok); });
    for (auto& t : ts) t.join();
  }
  reg.dead[3] = true;
  std::atomic<int> broken{0};
  std::vector<std::thread> ts;
  for (std::uint32_t i = 1; i <= 2; ++i)
    ts.emplace_back([&, i] {
      broken += sut->wait(holder(i), Deadline::in(30s), reg, no_action).status == Status::broken;
    });
  for (auto& t : ts) t.join();
  CHECK(broken.load(std::memory_order_seq_cst) == 2);
  CHECK(sut->broken());
}

TEST_CASE("futex barrier: an arrival count beyond the parties is corrupt") {
  FakeRegistry reg;
  auto sut = zeroed<FutexBarrier>();
  sut->init(2);
  sut->state.store(7, std::memory_order_seq_cst);
  CHECK(sut->wait(holder(1), Deadline::now(), reg, [] { return true; }).status == Status::corrupt);
  sut->parties.store(0, std::memory_order_seq_cst);
  CHECK(sut->wait(holder(1), Deadline::now(), reg, [] { return true; }).status == Status::corrupt);
}
