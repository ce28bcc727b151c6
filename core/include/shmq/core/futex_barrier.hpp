// FutexBarrier: a reusable barrier for `parties` waiters (threading.Barrier on shared memory)
// that breaks instead of hanging when one of its parties dies.
//
// The state word (the futex word): bits 0..15 how many arrived in this round, bits 16..30 the
// round (mod 2^15), bit 31 broken. The last arrival sets arrived = parties ("tripping"), runs
// the action if any, records the round in `last_trip`, and starts the next round (arrived 0)
// with one store. A round ends either by that trip or by reset(), which starts the next round
// without a trip: a waiter of round r that sees the round move on learns which from last_trip.
// Rounds cannot lap a waiter: round r + 1 cannot trip without it, so last_trip cannot move past
// r before the waiter has looked (resets may move the round again, which it reads as broken).
//
// Parties: a holder registers in `parties_seen[its index]` on its first wait (and deregisters
// when it leaves cleanly, unregister()); a waiter whose slice ends without a wake asks the
// registry about every registered holder, and a dead one breaks the barrier. A party killed
// before its first wait is not known yet: the others wait until their timeout.
//
// Synchronization
//   [B1] arrival: a CAS on the state word (acq_rel): the arrivals of a round are totally ordered,
//        and the last one sees everything the others wrote before they arrived.
//   [B2] trip: last_trip is stored (release) before the state word moves to the next round
//        (release); a waiter loads the state (acquire) and then last_trip (acquire), so it sees
//        the trip's round and all the others' writes before their arrivals.
//   [B3] sleeping: waiters register in `waiters` (seq_cst), fence, re-read the state and sleep
//        while it holds that value; whoever changes the state for others to see (trip, break,
//        reset) fences and wakes everyone if `waiters` is non-zero (the Dekker pair of wait.hpp).
//   [B4] parties_seen entries are hints read by the liveness check (relaxed): a holder id read
//        stale names a party that has since deregistered, which a check may report dead only if
//        it is dead.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <utility>

#include "shmq/core/fault.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

inline constexpr std::uint32_t kBarrierMaxParties = 0xFFFF;

struct BarrierResult {
  Status status;        // ok | broken | timeout (this waiter timed out: the barrier is broken) |
                        // interrupted (the barrier is broken) | corrupt
  std::uint32_t index;  // with ok: the arrival order in the round (0 first, parties - 1 last)
};

// Where an arrival stands: its index, the state word its arrival produced, whether it was last.
struct BarrierTicket {
  std::uint32_t index;
  std::uint32_t state;
  bool last;
};

struct FutexBarrier {
  static constexpr std::uint32_t kArrivedMask = 0xFFFF;
  static constexpr std::uint32_t kRoundShift = 16;
  static constexpr std::uint32_t kRoundMask = 0x7FFF;
  static constexpr std::uint32_t kBroken = 1u << 31;
  static constexpr std::uint32_t kNoParty = 1;  // never a holder id (their bits 0-1 are 0)

  std::atomic<std::uint32_t> state;      // [B1] the futex word
  std::atomic<std::uint32_t> last_trip;  // [B2] the round that tripped last
  std::atomic<std::uint32_t> parties;    // immutable after init
  std::atomic<std::uint32_t> waiters;    // [B3]
  std::atomic<std::uint32_t> parties_seen[kMaxHolders];  // [B4] holder ids, or kNoParty

  static constexpr std::uint32_t arrived(std::uint32_t s) noexcept { return s & kArrivedMask; }
  static constexpr std::uint32_t round(std::uint32_t s) noexcept { return (s >> kRoundShift) & kRoundMask; }
  static constexpr std::uint32_t next_round(std::uint32_t s) noexcept {
    return ((round(s) + 1) & kRoundMask) << kRoundShift;
  }

  // 1 <= n <= kBarrierMaxParties (checked by the caller).
  void init(std::uint32_t n) noexcept {
    // relaxed: init runs before the object is published.
    state.store(0, std::memory_order_relaxed);
    last_trip.store(kRoundMask + 1, std::memory_order_relaxed);  // no round has tripped
    parties.store(n, std::memory_order_relaxed);
    waiters.store(0, std::memory_order_relaxed);
    for (auto& p : parties_seen) p.store(kNoParty, std::memory_order_relaxed);
  }

  // Arrives and waits for the round to trip. `action()` (bool: false breaks the barrier) runs in
  // the last arrival before anyone is released. A timeout or an interruption breaks the barrier
  // (threading.Barrier's rule: the others must not wait for a party that left).
  template <class Action>
  BarrierResult wait(std::uint32_t holder, Deadline d, const HolderRegistry& reg, Action&& action) noexcept {
    BarrierTicket t{};
    Status s = arrive(holder, d, reg, t);
    if (s == Status::ok) s = t.last ? trip(t, std::forward<Action>(action)) : await(t, holder, d, reg);
    if (s == Status::timeout || s == Status::interrupted) abort();
    return {s, t.index};
  }

  // The pieces of wait(), for callers that check for signals between sleeps:
  // arrive: ok (counted in; `t` says where) | broken | corrupt | timeout | interrupted (not
  //   counted: a trip in progress did not finish in time; call again).
  Status arrive(std::uint32_t holder, Deadline d, const HolderRegistry& reg, BarrierTicket& t) noexcept {
    const std::uint32_t n = parties.load(std::memory_order_relaxed);  // relaxed: immutable
    if (n == 0 || n > kBarrierMaxParties) return Status::corrupt;
    register_party(holder);
    std::uint32_t s = state.load(std::memory_order_acquire);  // [B1] acquire
    for (;;) {
      if ((s & kBroken) != 0) return Status::broken;
      const std::uint32_t a = arrived(s);
      if (a > n) return Status::corrupt;
      if (a == n) {  // the previous round is tripping: wait for its next round to open
        if (const Status st = sleep_while(s, holder, d, reg); st != Status::ok) return st;
        s = state.load(std::memory_order_acquire);  // [B1] acquire
        continue;
      }
      // [B1] acq_rel: orders our arrival after the earlier ones and publishes our writes.
      if (!state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;
      t = BarrierTicket{a, s + 1, a + 1 == n};
      return Status::ok;
    }
  }

  // The last arrival (t.last): runs the action, then releases the round. ok | broken (the action
  // returned false, or an abort raced with it).
  template <class Action>
  Status trip(const BarrierTicket& t, Action&& action) noexcept {
    SHMQ_KILL_POINT(KillPoint::sync_updating);
    if (!action()) {
      abort();
      return Status::broken;
    }
    // [B2] release: the trip's round is visible before the round moves on.
    last_trip.store(round(t.state), std::memory_order_release);
    // [B2] release: pairs with the waiters' acquire load; a reset or abort that raced with the
    // action wins (the round it started or the broken bit stays).
    std::uint32_t expected = t.state;
    state.compare_exchange_strong(expected, next_round(t.state), std::memory_order_release,
                                  std::memory_order_relaxed);
    wake_all();
    return (expected == t.state || round(expected) != round(t.state)) ? Status::ok : Status::broken;
  }

  // Another arrival: waits for the round of `t` to end. ok | broken | corrupt | timeout |
  // interrupted (still counted in: call again, or abort()).
  Status await(const BarrierTicket& t, std::uint32_t holder, Deadline d, const HolderRegistry& reg) noexcept {
    const std::uint32_t mine = round(t.state);
    for (;;) {
      const std::uint32_t now = state.load(std::memory_order_acquire);  // [B2] acquire
      if (round(now) != mine) {
        // [B2] acquire: the trip recorded its round before moving on; a reset did not.
        return last_trip.load(std::memory_order_acquire) == mine ? Status::ok : Status::broken;
      }
      if ((now & kBroken) != 0) return Status::broken;
      if (const Status st = sleep_while(now, holder, d, reg); st != Status::ok) return st;
    }
  }

  // Breaks the barrier: every waiter (now and later, until reset) gets `broken`.
  void abort() noexcept {
    // release: pairs with the waiters' acquire load of the state.
    state.fetch_or(kBroken, std::memory_order_release);
    wake_all();
  }

  // Starts a fresh round: current waiters get `broken`, the barrier works again.
  void reset() noexcept {
    std::uint32_t s = state.load(std::memory_order_relaxed);  // relaxed: the CAS decides
    // release: pairs with the waiters' acquire load of the state.
    while (!state.compare_exchange_weak(s, next_round(s), std::memory_order_release,
                                        std::memory_order_relaxed)) {
    }
    wake_all();
  }

  bool broken() const noexcept { return (state.load(std::memory_order_acquire) & kBroken) != 0; }
  // Waiters in the current round (0 while tripping or broken). A guess.
  std::uint32_t waiting_guess() const noexcept {
    const std::uint32_t s = state.load(std::memory_order_relaxed);  // relaxed: a guess
    const std::uint32_t a = arrived(s);
    return ((s & kBroken) != 0 || a >= parties.load(std::memory_order_relaxed)) ? 0 : a;
  }

  // A party that leaves cleanly (it will not wait again) stops being checked for liveness.
  void unregister(std::uint32_t holder) noexcept {
    const std::uint32_t i = holder_index(holder);
    if (i >= kMaxHolders) return;
    std::uint32_t expected = holder;
    // relaxed: [B4] hints.
    parties_seen[i].compare_exchange_strong(expected, kNoParty, std::memory_order_relaxed);
  }

 private:
  void register_party(std::uint32_t holder) noexcept {
    const std::uint32_t i = holder_index(holder);
    if (i >= kMaxHolders) return;
    // relaxed: [B4] hints; only the holder of index i writes entry i while it lives.
    if (parties_seen[i].load(std::memory_order_relaxed) != holder)
      parties_seen[i].store(holder, std::memory_order_relaxed);
  }

  // Sleeps one slice while the state holds `s`; ok (re-check) | broken (a party died) |
  // timeout | interrupted.
  Status sleep_while(std::uint32_t s, std::uint32_t holder, Deadline d, const HolderRegistry& reg) noexcept {
    if (d.expired()) return Status::timeout;
    waiters.fetch_add(1, std::memory_order_seq_cst);      // [B3] seq_cst
    std::atomic_thread_fence(std::memory_order_seq_cst);  // [B3] pairs with wake_all's fence
    FutexResult r = FutexResult::changed;
    if (state.load(std::memory_order_relaxed) == s)       // relaxed: ordered by the fence
      r = futex_wait(&state, s, d.capped(kHolderCheckSlice));
    waiters.fetch_sub(1, std::memory_order_release);      // release: keeps it after the sleep
    if (r == FutexResult::interrupted) return Status::interrupted;
    if (r == FutexResult::timed_out) {
      if (d.expired()) return Status::timeout;
      if (const Status st = check_parties(holder, reg); st != Status::ok) return st;
    }
    return Status::ok;
  }

  // [B4] A dead registered party breaks the barrier.
  Status check_parties(std::uint32_t holder, const HolderRegistry& reg) noexcept {
    for (std::uint32_t i = 0; i < kMaxHolders; ++i) {
      const std::uint32_t h = parties_seen[i].load(std::memory_order_relaxed);  // relaxed: [B4]
      if (h == holder || h == kNoParty) continue;
      if (holder_index(h) != i) return Status::corrupt;
      const HolderState st = reg.holder_state(h);
      if (st == HolderState::invalid) return Status::corrupt;
      if (st == HolderState::dead) {
        // Forgotten, so that the barrier works again after reset().
        std::uint32_t expected = h;
        parties_seen[i].compare_exchange_strong(expected, kNoParty, std::memory_order_relaxed);
        abort();
        return Status::broken;
      }
    }
    return Status::ok;
  }

  void wake_all() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // [B3] pairs with the sleeper's fence
    // relaxed: ordered by the fence; only gates the syscall.
    if (waiters.load(std::memory_order_relaxed) != 0) futex_wake(&state, INT_MAX);
  }
};
static_assert(sizeof(FutexBarrier) == 16 + 4 * kMaxHolders);

}  // namespace shmq::core
