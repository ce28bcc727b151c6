// FutexCondition: a condition variable on caller-supplied (shared) memory, used with a mutex
// that the caller holds around wait and notify (a FutexMutex or a RecursiveFutexMutex: the
// mutex is the caller's business; this structure only needs it held where marked).
//
// Every waiter takes a record of its own (kConditionWaiters of them), stamped with a sequence
// number, and sleeps on the record's word. notify(n) marks the n oldest records notified and
// wakes exactly those sleepers (no thundering herd, no notification taken by a waiter that came
// later, first come first served); notify_all marks every record. A waiter that gives up
// (timeout, signal) frees its record under the mutex, so a later notify never spends itself on
// it. A record whose holder died is freed by the next notify that picks it (a liveness check per
// record of another process) or by a waiter that finds no free record.
//
// Synchronization
//   [C1] records are claimed, stamped and freed only under the caller's mutex (relaxed stores;
//        the mutex's [M1] orders them); `next_seq` likewise.
//   [C2] notify stores kNotified into a record's word with release, then FUTEX_WAKEs it; the
//        waiter loads the word with acquire: the notifier's writes before notify are visible.
//   [C3] sleeping: the futex word is the record's state, compared with the waiting stamp the
//        waiter read, so a notify between the read and the sleep makes the sleep return at once.
//   Death: a waiter killed while waiting leaves its record stamped; the liveness check frees it
//   (see above). The mutex follows FutexMutex's rules (owner_died).
#pragma once

#include <atomic>
#include <cstdint>

#include "shmq/core/fault.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// At most this many waiters at a time on one condition (across every process and thread).
inline constexpr std::uint32_t kConditionWaiters = 120;

struct ConditionRecord {
  std::atomic<std::uint32_t> state;   // kFree | kNotified | (sequence << 1), the futex word [C3]
  std::atomic<std::uint32_t> holder;  // the waiter's holder id
};

struct FutexCondition {
  static constexpr std::uint32_t kFree = 0;
  static constexpr std::uint32_t kNotified = 1;

  std::atomic<std::uint32_t> next_seq;  // [C1] stamps of waiting records; never 0
  std::atomic<std::uint32_t> waiting;   // [C1] records stamped and not yet notified
  ConditionRecord records[kConditionWaiters];

  void init() noexcept {
    // relaxed: init runs before the object is published.
    next_seq.store(1, std::memory_order_relaxed);
    waiting.store(0, std::memory_order_relaxed);
    for (auto& r : records) {
      r.state.store(kFree, std::memory_order_relaxed);
      r.holder.store(0, std::memory_order_relaxed);
    }
  }

  // [mutex held] Claims and stamps a record for the calling waiter: its index, or -1 when every
  // record is taken by a live waiter (Status::full for the caller).
  int enter_wait(std::uint32_t holder, const HolderRegistry& reg) noexcept {
    int i = free_record();
    if (i < 0) {
      free_dead(holder, reg);
      i = free_record();
      if (i < 0) return -1;
    }
    // relaxed (all): [C1]
    std::uint32_t seq = next_seq.load(std::memory_order_relaxed) & 0x7FFFFFFF;
    if (seq == 0) seq = 1;
    next_seq.store(seq + 1, std::memory_order_relaxed);
    records[i].holder.store(holder, std::memory_order_relaxed);
    records[i].state.store(seq << 1, std::memory_order_relaxed);
    waiting.store(waiting.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    SHMQ_KILL_POINT(KillPoint::cond_waiting);
    return i;
  }

  // [mutex released] Sleeps until record `i` is notified: ok | timeout | interrupted. Call again
  // to keep waiting; leave_wait() afterwards in every case.
  Status await(int i, Deadline d) noexcept {
    if (i < 0 || i >= static_cast<int>(kConditionWaiters)) return Status::corrupt;
    ConditionRecord& r = records[i];
    for (;;) {
      const std::uint32_t s = r.state.load(std::memory_order_acquire);  // [C2] acquire
      if (s == kNotified) return Status::ok;
      if ((s & 1) != 0 || s == kFree) return Status::corrupt;  // not a waiting stamp
      if (d.expired()) return Status::timeout;
      if (futex_wait(&r.state, s, d) == FutexResult::interrupted) return Status::interrupted;
    }
  }

  // [mutex held again] Frees record `i`; whether it was notified (a waiter that gave up may have
  // been notified meanwhile: it counts as notified).
  bool leave_wait(int i) noexcept {
    if (i < 0 || i >= static_cast<int>(kConditionWaiters)) return false;
    ConditionRecord& r = records[i];
    const bool notified = r.state.load(std::memory_order_acquire) == kNotified;  // [C2] acquire
    if (!notified) drop_waiting();
    r.state.store(kFree, std::memory_order_relaxed);  // relaxed: [C1]
    return notified;
  }

  // [mutex held] Wakes the n oldest waiters; returns how many it woke. `holder`: the caller's,
  // whose own records need no liveness check.
  std::uint32_t notify(std::uint32_t n, std::uint32_t holder, const HolderRegistry& reg) noexcept {
    std::uint32_t woken = 0;
    while (woken < n) {
      const int i = oldest_waiting();
      if (i < 0) break;
      ConditionRecord& r = records[i];
      const std::uint32_t h = r.holder.load(std::memory_order_relaxed);  // relaxed: [C1]
      if (h != holder && reg.holder_state(h) != HolderState::alive) {
        r.state.store(kFree, std::memory_order_relaxed);  // relaxed: [C1] a dead waiter's record
        drop_waiting();
        continue;
      }
      // [C2] release: pairs with the waiter's acquire load in await().
      r.state.store(kNotified, std::memory_order_release);
      drop_waiting();
      futex_wake(&r.state, 1);
      ++woken;
    }
    return woken;
  }
  std::uint32_t notify_all(std::uint32_t holder, const HolderRegistry& reg) noexcept {
    return notify(kConditionWaiters, holder, reg);
  }

  std::uint32_t waiting_guess() const noexcept {
    return waiting.load(std::memory_order_relaxed);  // relaxed: display and tests
  }

 private:
  int free_record() const noexcept {
    for (std::uint32_t i = 0; i < kConditionWaiters; ++i) {
      // relaxed: [C1]
      if (records[i].state.load(std::memory_order_relaxed) == kFree) return static_cast<int>(i);
    }
    return -1;
  }
  // The stamped record that waited longest (stamps compare modulo 2^31 from next_seq).
  int oldest_waiting() const noexcept {
    const std::uint32_t now = next_seq.load(std::memory_order_relaxed);  // relaxed: [C1]
    int best = -1;
    std::uint32_t best_age = 0;
    for (std::uint32_t i = 0; i < kConditionWaiters; ++i) {
      const std::uint32_t s = records[i].state.load(std::memory_order_relaxed);  // relaxed: [C1]
      if (s == kFree || s == kNotified || (s & 1) != 0) continue;
      const std::uint32_t age = (now - (s >> 1)) & 0x7FFFFFFF;
      if (best < 0 || age > best_age) {
        best = static_cast<int>(i);
        best_age = age;
      }
    }
    return best;
  }
  void free_dead(std::uint32_t holder, const HolderRegistry& reg) noexcept {
    for (auto& r : records) {
      // relaxed (all): [C1]
      const std::uint32_t s = r.state.load(std::memory_order_relaxed);
      if (s == kFree) continue;
      const std::uint32_t h = r.holder.load(std::memory_order_relaxed);
      if (h == holder || reg.holder_state(h) == HolderState::alive) continue;
      if (s != kNotified) drop_waiting();
      r.state.store(kFree, std::memory_order_relaxed);
    }
  }
  void drop_waiting() noexcept {
    const std::uint32_t w = waiting.load(std::memory_order_relaxed);  // relaxed: [C1]
    waiting.store(w == 0 ? 0 : w - 1, std::memory_order_relaxed);
  }
};
static_assert(sizeof(FutexCondition) == 8 + 8 * kConditionWaiters, "layout shared between processes");

}  // namespace shmq::core
