// Kill points: named places on the hot path where a crash test can stop a process, so that a
// supervisor kills it with SIGKILL exactly there. Always compiled in; when nothing is armed a
// kill point costs one relaxed load of a global and a compare.
//
// Synchronization
//   None that orders data: g_armed, g_skip and g_handler are set by a test before the code under
//   test runs (in the same thread, or before fork), and read with relaxed loads.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

namespace shmq::core {

enum class KillPoint : std::uint32_t {
  none = 0,
  mid_claim,                 // a claim recorded in the participant slot, the position CAS not yet done
  mid_write,                 // a slot claimed, its payload half written
  before_commit,             // the payload written, the slot not yet committed
  after_commit_before_wake,  // committed, the sleeping readers not yet woken
  holding_read,              // a slot claimed by a reader, not yet released
  asleep,                    // registered as a futex waiter, about to sleep
  creating,                  // a segment being initialized (state `initializing`)
  spill_write,               // a spill file created and half written, the slot not yet committed
  recovering_read,           // a writer has just freed the slot of a reader that died holding it
  holding_lease,             // a lease taken by a reader, not yet acknowledged
  acking_lease,              // a lease being acknowledged: its claim downgraded, slots not all released
  adopting,                  // a dead lease being moved under the adoption lock, half moved
  sealed,                    // a sealed write's slots filled and sealed, not yet committed
  lock_acquired,             // a mutex word just taken (the holder's critical section begins)
  lock_released,             // a mutex word cleared, its sleeping waiters not yet woken
  lock_waiting,              // a mutex marked contended, about to sleep on it
  lock_recovering,           // a dead holder's mutex just taken over, owner_died not yet returned
  sync_updating,             // inside a semaphore's or barrier's guarded update, half done
  cond_waiting,              // registered as a condition's sleeper, its mutex released, not asleep
  count_,
};

constexpr std::string_view kill_point_name(KillPoint kp) noexcept {
  switch (kp) {
    case KillPoint::none: return "none";
    case KillPoint::mid_claim: return "mid_claim";
    case KillPoint::mid_write: return "mid_write";
    case KillPoint::before_commit: return "before_commit";
    case KillPoint::after_commit_before_wake: return "after_commit_before_wake";
    case KillPoint::holding_read: return "holding_read";
    case KillPoint::asleep: return "asleep";
    case KillPoint::creating: return "creating";
    case KillPoint::spill_write: return "spill_write";
    case KillPoint::recovering_read: return "recovering_read";
    case KillPoint::holding_lease: return "holding_lease";
    case KillPoint::acking_lease: return "acking_lease";
    case KillPoint::adopting: return "adopting";
    case KillPoint::sealed: return "sealed";
    case KillPoint::lock_acquired: return "lock_acquired";
    case KillPoint::lock_released: return "lock_released";
    case KillPoint::lock_waiting: return "lock_waiting";
    case KillPoint::lock_recovering: return "lock_recovering";
    case KillPoint::sync_updating: return "sync_updating";
    case KillPoint::cond_waiting: return "cond_waiting";
    case KillPoint::count_: break;
  }
  return "unknown";
}

namespace fault {

using Handler = void (*)(KillPoint) noexcept;

inline std::atomic<std::uint32_t> g_armed{0};        // the armed KillPoint; 0 = none
inline std::atomic<std::uint64_t> g_skip{0};         // hits to let pass before firing
inline std::atomic<Handler> g_handler{nullptr};      // what firing does (shm: raise(SIGSTOP))

// Fires at most once per arm(): the point disarms itself before calling the handler.
inline void fire(KillPoint kp) noexcept {
  // relaxed (all three): test set-up values, written before the code under test ran.
  const std::uint64_t left = g_skip.load(std::memory_order_relaxed);
  if (left != 0) {
    g_skip.store(left - 1, std::memory_order_relaxed);
    return;
  }
  g_armed.store(0, std::memory_order_relaxed);
  if (Handler h = g_handler.load(std::memory_order_relaxed); h != nullptr) h(kp);
}

inline void arm(KillPoint kp, std::uint64_t skip, Handler handler) noexcept {
  // relaxed: see the Synchronization block; the armed point is stored last so that a concurrent
  // kill point never sees it armed with a stale handler in the single-threaded tests.
  g_handler.store(handler, std::memory_order_relaxed);
  g_skip.store(skip, std::memory_order_relaxed);
  g_armed.store(static_cast<std::uint32_t>(kp), std::memory_order_relaxed);
}

inline void disarm() noexcept { g_armed.store(0, std::memory_order_relaxed); }  // relaxed: as arm

// True if `kp` is armed: for code that does its work differently when a test will stop it there.
inline bool armed(KillPoint kp) noexcept {
  // relaxed: see the Synchronization block.
  return g_armed.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(kp);
}

}  // namespace fault
}  // namespace shmq::core

// One relaxed load and a compare when unarmed.
#define SHMQ_KILL_POINT(kp)                                                                  \
  do {                                                                                       \
    if (::shmq::core::fault::g_armed.load(std::memory_order_relaxed) ==                      \
        static_cast<std::uint32_t>(kp)) [[unlikely]]                                         \
      ::shmq::core::fault::fire(kp);                                                         \
  } while (0)
