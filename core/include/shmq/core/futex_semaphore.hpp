// FutexSemaphore: a counting semaphore on caller-supplied (shared) memory that knows how many
// units each holder took, so that the units of a holder that died are returned instead of lost.
//
// Layout: a guard (a FutexMutex), the count and its bound, an undo journal, the WaitWord that
// sleepers wait on, and one {holder, units} entry per holder index (kMaxHolders).
// A holder's units: what it acquired minus what it released (never below 0). A semaphore used to
// signal between processes (acquired in one, released in another) should be created without
// kTrackUnits: the units its consumer took were meant to be consumed, and giving them back when
// the consumer dies would invent units.
//
// Synchronization
//   [E1] guard: every change of count and of the holdings happens while holding the guard
//        (FutexMutex [M1]: lock is an acquire, unlock a release), so those fields are plain
//        relaxed atomics; lock-free readers (value_guess, the sleepers' check) only guess.
//   [E2] undo journal: before an update the guard holder records the old count and the old
//        entry it will touch (relaxed, under the guard), sets `active`, updates, clears `active`.
//        A holder killed in between leaves `active` set: the next guard holder gets owner_died
//        from the guard and restores the old values (the dead process never returned from the
//        call, so undoing it is exact). Its stores are visible as for [M1] (a dead holder).
//   [E3] sleeping: sleepers wait on `available` (WaitWord: the Dekker pair of wait.hpp) until
//        count > 0; release raises count under the guard, unlocks, then notifies: either the
//        notify sees the sleeper registered or the sleeper's re-check sees the count.
//   [E4] dead holders: a sleeper whose slice ended without a wake (and every acquirer once,
//        before its first sleep) sweeps the holdings under the guard: the units of an entry
//        whose holder the registry reports dead go back to count, journaled as [E2]. An entry
//        left by the previous holder of one's own index is returned the same way on one's
//        first acquire.
//   Contract: acquire is an acquire and release a release (through the guard).
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>

#include "shmq/core/fault.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// The largest count (multiprocessing's SEM_VALUE_MAX on Linux).
inline constexpr std::uint32_t kSemaphoreMax = 0x7FFFFFFF;

struct SemaphoreHolding {
  std::atomic<std::uint32_t> holder;  // the holder id whose units these are
  std::atomic<std::uint32_t> units;   // 0: nobody holds any
};

struct FutexSemaphore {
  static constexpr std::uint32_t kTrackUnits = 1;  // return a dead holder's units

  FutexMutex guard;                    // [E1]
  std::atomic<std::uint32_t> count;    // units available
  std::atomic<std::uint32_t> max;      // the bound (kSemaphoreMax: unbounded)
  std::atomic<std::uint32_t> flags;
  // [E2] the undo journal of the update in progress
  std::atomic<std::uint32_t> journal_active;
  std::atomic<std::uint32_t> journal_index;
  std::atomic<std::uint32_t> journal_count;
  std::atomic<std::uint32_t> journal_holder;
  std::atomic<std::uint32_t> journal_units;
  std::atomic<std::uint32_t> reserved;
  WaitWord available;                  // [E3]
  SemaphoreHolding holdings[kMaxHolders];

  // value <= bound <= kSemaphoreMax (checked by the caller).
  void init(std::uint32_t value, std::uint32_t bound, std::uint32_t flag_bits) noexcept {
    guard.init();
    available.init();
    // relaxed: init runs before the object is published.
    count.store(value, std::memory_order_relaxed);
    max.store(bound, std::memory_order_relaxed);
    flags.store(flag_bits, std::memory_order_relaxed);
    journal_active.store(0, std::memory_order_relaxed);
    for (auto& h : holdings) {
      h.holder.store(0, std::memory_order_relaxed);
      h.units.store(0, std::memory_order_relaxed);
    }
  }

  // ok | timeout | interrupted | corrupt. Deadline::now(): one attempt (after one sweep of dead
  // holders if none is available).
  Status acquire(std::uint32_t holder, Deadline d, const HolderRegistry& reg) noexcept {
    bool swept = false;
    for (;;) {
      if (const Status s = enter(holder, d, reg); s != Status::ok) return s;
      const std::uint32_t c = count.load(std::memory_order_relaxed);  // relaxed: [E1]
      if (c > bound()) return leave(Status::corrupt);
      if (adopt_stale(holder) > 0 || c > 0) return leave(take_one(holder));
      guard.unlock();
      if (!swept) {
        swept = true;
        if (const Status s = sweep(holder, d, reg); s != Status::ok) return s;
        continue;
      }
      if (d.is_poll()) return Status::timeout;
      // relaxed: a guess re-checked under the guard; [E3] orders it against release's notify.
      const FutexResult r = available.wait(
          [this] { return count.load(std::memory_order_relaxed) != 0; }, d.capped(kHolderCheckSlice));
      if (r == FutexResult::interrupted) return Status::interrupted;
      if (r == FutexResult::timed_out) {
        if (d.expired()) return Status::timeout;
        swept = false;
      }
    }
  }

  // ok | full (the count would pass its bound; nothing changes) | corrupt | interrupted.
  Status release(std::uint32_t holder, std::uint32_t n, const HolderRegistry& reg) noexcept {
    Status s;
    while ((s = enter(holder, Deadline::never(), reg)) == Status::interrupted) {
    }
    if (s != Status::ok) return s;
    const std::uint32_t c = count.load(std::memory_order_relaxed);  // relaxed: [E1]
    if (c > bound()) return leave(Status::corrupt);
    if (n > bound() - c) return leave(Status::full);
    const std::uint32_t i = holder_index(holder);
    if (i >= kMaxHolders) return leave(Status::corrupt);
    begin(i);
    count.store(c + n, std::memory_order_relaxed);  // relaxed: [E1]
    SHMQ_KILL_POINT(KillPoint::sync_updating);
    if (tracking() && holdings[i].holder.load(std::memory_order_relaxed) == holder) {
      const std::uint32_t u = holdings[i].units.load(std::memory_order_relaxed);
      holdings[i].units.store(u > n ? u - n : 0, std::memory_order_relaxed);
    }
    commit();
    guard.unlock();
    available.notify(static_cast<int>(n > INT_MAX ? INT_MAX : n));  // [E3]
    return Status::ok;
  }

  // Returns the units of dead holders (and of the stale entry of `holder`'s own index): ok |
  // timeout (the guard was busy past d) | interrupted | corrupt.
  Status sweep(std::uint32_t holder, Deadline d, const HolderRegistry& reg) noexcept {
    if (!tracking()) return Status::ok;
    if (const Status s = enter(holder, d, reg); s != Status::ok) return s;
    std::uint32_t returned = 0;
    for (std::uint32_t i = 0; i < kMaxHolders; ++i) {
      // relaxed (both): [E1]
      const std::uint32_t u = holdings[i].units.load(std::memory_order_relaxed);
      const std::uint32_t h = holdings[i].holder.load(std::memory_order_relaxed);
      if (u == 0 || h == holder) continue;
      if (holder_index(h) != i) return leave(Status::corrupt);
      const HolderState st = reg.holder_state(h);
      if (st == HolderState::invalid) return leave(Status::corrupt);
      if (st == HolderState::alive) continue;
      const std::uint32_t c = count.load(std::memory_order_relaxed);
      if (c > bound() || u > bound() - c) return leave(Status::corrupt);
      begin(i);
      count.store(c + u, std::memory_order_relaxed);
      SHMQ_KILL_POINT(KillPoint::sync_updating);
      holdings[i].units.store(0, std::memory_order_relaxed);
      commit();
      returned += u;
    }
    guard.unlock();
    if (returned != 0) available.notify(static_cast<int>(returned > INT_MAX ? INT_MAX : returned));
    return Status::ok;
  }

  std::uint32_t value_guess() const noexcept {
    return count.load(std::memory_order_relaxed);  // relaxed: a guess (display, get_value)
  }
  std::uint32_t bound() const noexcept {
    return max.load(std::memory_order_relaxed);  // relaxed: immutable after init
  }
  bool tracking() const noexcept {
    return (flags.load(std::memory_order_relaxed) & kTrackUnits) != 0;  // relaxed: immutable
  }
  // Units held by `holder` (its own entry; 0 if the entry is another's). A guess.
  std::uint32_t units_of(std::uint32_t holder) const noexcept {
    const std::uint32_t i = holder_index(holder);
    if (i >= kMaxHolders) return 0;
    // relaxed: a guess for display and tests.
    if (holdings[i].holder.load(std::memory_order_relaxed) != holder) return 0;
    return holdings[i].units.load(std::memory_order_relaxed);
  }

 private:
  // Takes the guard; a guard whose holder died is repaired from the journal first.
  Status enter(std::uint32_t holder, Deadline d, const HolderRegistry& reg) noexcept {
    const Status s = guard.lock(holder, d, reg, 256);
    if (s == Status::owner_died) {
      undo();
      return Status::ok;
    }
    return s;
  }
  Status leave(Status s) noexcept {
    guard.unlock();
    return s;
  }
  void begin(std::uint32_t i) noexcept {
    // relaxed (all): [E2], under the guard.
    journal_index.store(i, std::memory_order_relaxed);
    journal_count.store(count.load(std::memory_order_relaxed), std::memory_order_relaxed);
    journal_holder.store(holdings[i].holder.load(std::memory_order_relaxed), std::memory_order_relaxed);
    journal_units.store(holdings[i].units.load(std::memory_order_relaxed), std::memory_order_relaxed);
    journal_active.store(1, std::memory_order_relaxed);
  }
  void commit() noexcept { journal_active.store(0, std::memory_order_relaxed); }  // relaxed: [E2]
  void undo() noexcept {
    // relaxed (all): [E2], under the guard; the writer is dead.
    if (journal_active.load(std::memory_order_relaxed) == 0) return;
    const std::uint32_t i = journal_index.load(std::memory_order_relaxed);
    if (i < kMaxHolders) {
      count.store(journal_count.load(std::memory_order_relaxed), std::memory_order_relaxed);
      holdings[i].holder.store(journal_holder.load(std::memory_order_relaxed), std::memory_order_relaxed);
      holdings[i].units.store(journal_units.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    commit();
  }
  // Under the guard: returns the units a previous holder of our own index left (it is gone:
  // we hold its index now); the count they add back.
  std::uint32_t adopt_stale(std::uint32_t holder) noexcept {
    const std::uint32_t i = holder_index(holder);
    if (!tracking() || i >= kMaxHolders) return 0;
    // relaxed (all): [E1]
    const std::uint32_t h = holdings[i].holder.load(std::memory_order_relaxed);
    const std::uint32_t u = holdings[i].units.load(std::memory_order_relaxed);
    if (h == holder || u == 0) return 0;
    const std::uint32_t c = count.load(std::memory_order_relaxed);
    if (u > bound() - c) return 0;  // corrupt units: left for take_one to report
    begin(i);
    count.store(c + u, std::memory_order_relaxed);
    holdings[i].holder.store(holder, std::memory_order_relaxed);
    holdings[i].units.store(0, std::memory_order_relaxed);
    commit();
    return u;
  }
  // Under the guard with count > 0: one unit to `holder`.
  Status take_one(std::uint32_t holder) noexcept {
    const std::uint32_t c = count.load(std::memory_order_relaxed);  // relaxed: [E1]
    if (c == 0) return Status::corrupt;  // adopt_stale refused a corrupt entry
    const std::uint32_t i = holder_index(holder);
    if (i >= kMaxHolders) return Status::corrupt;
    begin(i);
    count.store(c - 1, std::memory_order_relaxed);
    SHMQ_KILL_POINT(KillPoint::sync_updating);
    if (tracking()) {
      const bool mine = holdings[i].holder.load(std::memory_order_relaxed) == holder;
      const std::uint32_t u = mine ? holdings[i].units.load(std::memory_order_relaxed) : 0;
      holdings[i].holder.store(holder, std::memory_order_relaxed);
      holdings[i].units.store(u + 1, std::memory_order_relaxed);
    }
    commit();
    return Status::ok;
  }
};
static_assert(sizeof(FutexSemaphore) == 48 + 8 * kMaxHolders, "layout shared between processes");

}  // namespace shmq::core
