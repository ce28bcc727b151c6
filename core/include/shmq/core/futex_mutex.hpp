// FutexMutex and RecursiveFutexMutex: mutexes in one 32-bit futex word that record their holder,
// so that a holder killed while holding passes the lock to the next acquirer (owner_died)
// instead of wedging everyone. On caller-supplied (shared) memory; no syscall when uncontended.
//
// The word: 0 when free; else holder | kLocked, plus kContended once someone may sleep on it.
// A holder id (make_holder) is the host's participant index (7 bits) and the low 23 bits of that
// participant's generation: the host (shm: the segment's participant table, whose liveness the
// kernel keeps with OFD locks) tells a live holder from a dead one through HolderRegistry.
//
// Synchronization
//   [M1] lock/unlock: the CAS that takes the word is an acquire; unlock's exchange to 0 is a
//        release: a critical section sees everything the previous holder wrote in its own.
//        Taking a dead holder's word is the same acquire CAS. The dead holder never released:
//        its stores are visible all the same because the kernel reported its death (the
//        process was stopped, a context switch and a full barrier, before its OFD lock went).
//   [M2] sleeping: a waiter sets kContended (CAS) and sleeps while the word still holds the
//        value it set; unlock's exchange returns the old word, and a kContended in it means
//        "wake one". The futex compares the word itself, so a wake cannot be lost; a waiter
//        woken (or timed out) takes the word with kContended kept, since others may still sleep.
//        A holder killed between its exchange and its FUTEX_WAKE strands nobody: sleeps are
//        bounded by kHolderCheckSlice and the word is 0 by then.
//   [M3] liveness: before its first sleep and after every slice that ended without a wake, a
//        waiter asks the registry about the holder in the word. Dead: it CASes that exact word
//        (any contended bit) to itself and returns owner_died. Death is permanent and the id
//        carries the generation, so a CAS on the value that was checked can only take a dead
//        holder's lock; a live but slow holder is never robbed.
//   Recursive mutex: owner_thread and depth are written only by the holding thread (relaxed);
//        another thread of the same process reads owner_thread only to learn that it is not the
//        holder, which a stale value cannot falsify (only the holder stores its own id there).
//   Contract: lock is an acquire and unlock a release, as for std::mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "shmq/core/backoff.hpp"
#include "shmq/core/fault.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// ---- holder ids --------------------------------------------------------------------------------

inline constexpr std::uint32_t kHolderIndexBits = 7;          // room for indices beyond the table
inline constexpr std::uint32_t kHolderGenerationBits = 23;
inline constexpr std::uint32_t kHolderGenerationMask = (1u << kHolderGenerationBits) - 1;
// Tables indexed by holder index (semaphore units, barrier parties) have this many entries; an
// index at or beyond it in a shared word is corrupt.
inline constexpr std::uint32_t kMaxHolders = 64;

constexpr std::uint32_t make_holder(std::uint32_t index, std::uint32_t generation) noexcept {
  return ((generation & kHolderGenerationMask) << 9) | ((index & 127u) << 2);
}
constexpr std::uint32_t holder_index(std::uint32_t holder) noexcept { return (holder >> 2) & 127u; }
constexpr std::uint32_t holder_generation(std::uint32_t holder) noexcept { return holder >> 9; }

enum class HolderState : std::uint8_t { alive, dead, invalid };

// What the host knows about holders. Called on slow paths only (a syscall is fine).
class HolderRegistry {
 public:
  // alive | dead | invalid (an id no participant could have: a corrupt word).
  virtual HolderState holder_state(std::uint32_t holder) const noexcept = 0;

 protected:
  ~HolderRegistry() = default;
};

// How long a waiter sleeps before it asks whether the holder still lives: the bound on the time
// a dead holder's lock stays blocked when its death was not seen before the sleep. Shorter than
// the channels' kSleepSlice (wait.hpp): a lock's promise is recovery within 50 ms of the death,
// the waiter's own wake-up and scheduling included.
inline constexpr auto kHolderCheckSlice = std::chrono::milliseconds(10);

// ---- FutexMutex --------------------------------------------------------------------------------

struct FutexMutex {
  static constexpr std::uint32_t kLocked = 1;
  static constexpr std::uint32_t kContended = 2;
  static constexpr std::uint32_t kHolderMask = ~3u;

  std::atomic<std::uint32_t> word;

  void init() noexcept {
    // relaxed: init runs before the object is published to anyone.
    word.store(0, std::memory_order_relaxed);
  }

  // One CAS; never sleeps, never asks about a dead holder.
  bool try_lock(std::uint32_t holder) noexcept {
    std::uint32_t expected = 0;
    // [M1] acquire: pairs with the release exchange in unlock().
    return word.compare_exchange_strong(expected, holder | kLocked, std::memory_order_acquire,
                                        std::memory_order_relaxed);
  }

  // ok | owner_died (we hold it; the previous holder died holding it: *dead gets its id) |
  // timeout | interrupted | corrupt (the word names a holder no participant could be).
  Status lock(std::uint32_t holder, Deadline d, const HolderRegistry& reg,
              std::uint32_t spin_budget = Backoff::kDefaultBudget,
              std::uint32_t* dead = nullptr) noexcept {
    if (try_lock(holder)) {
      SHMQ_KILL_POINT(KillPoint::lock_acquired);
      return Status::ok;
    }
    return lock_slow(holder, d, reg, spin_budget, dead);
  }

  // Frees the word whoever holds it; returns the word it cleared (0: it was not locked).
  std::uint32_t unlock() noexcept {
    // [M1] release: publishes the critical section; pairs with the acquire CAS in lock().
    const std::uint32_t prev = word.exchange(0, std::memory_order_release);
    if ((prev & kContended) != 0) {
      SHMQ_KILL_POINT(KillPoint::lock_released);
      futex_wake(&word, 1);  // [M2]
    }
    return prev;
  }

  // The holder id in the word (0 with no kLocked: free). A guess: it may change at once.
  std::uint32_t holder_guess() const noexcept {
    // relaxed: display and ownership checks by the holder itself (its own store is visible).
    return word.load(std::memory_order_relaxed);
  }
  bool held_by(std::uint32_t holder) const noexcept {
    const std::uint32_t w = holder_guess();
    return (w & kLocked) != 0 && (w & kHolderMask) == holder;
  }

 private:
  Status lock_slow(std::uint32_t holder, Deadline d, const HolderRegistry& reg,
                   std::uint32_t spin_budget, std::uint32_t* dead) noexcept;
  // [M3] After `seen` held the word for a while: ok (keep waiting), owner_died (taken), corrupt.
  Status check_holder(std::uint32_t& seen, std::uint32_t holder, const HolderRegistry& reg,
                      std::uint32_t* dead) noexcept;
};
static_assert(sizeof(FutexMutex) == 4, "a mutex is one futex word");

inline Status FutexMutex::check_holder(std::uint32_t& seen, std::uint32_t holder,
                                       const HolderRegistry& reg, std::uint32_t* dead) noexcept {
  const std::uint32_t owner = seen & kHolderMask;
  if ((seen & kLocked) == 0) return Status::corrupt;  // bits set but not locked: not ours
  if (owner == holder) return Status::ok;             // another thread of this process
  switch (reg.holder_state(owner)) {
    case HolderState::alive: return Status::ok;
    case HolderState::invalid: return Status::corrupt;
    case HolderState::dead: break;
  }
  // Dead: take exactly that holder's word, whatever contended bit it carries now.
  while ((seen & kHolderMask) == owner && (seen & kLocked) != 0) {
    // [M1][M3] acquire: as in try_lock; kContended kept, as other waiters may sleep.
    if (word.compare_exchange_weak(seen, holder | kLocked | kContended, std::memory_order_acquire,
                                   std::memory_order_relaxed)) {
      if (dead != nullptr) *dead = owner;
      SHMQ_KILL_POINT(KillPoint::lock_recovering);
      return Status::owner_died;
    }
  }
  return Status::ok;  // the word changed: released or taken by someone else
}

inline Status FutexMutex::lock_slow(std::uint32_t holder, Deadline d, const HolderRegistry& reg,
                                    std::uint32_t spin_budget, std::uint32_t* dead) noexcept {
  Backoff spin(d.is_poll() ? 0 : spin_budget);
  std::uint32_t take = holder | kLocked;
  bool checked = false;  // asked the registry since the last slice that timed out
  // relaxed: only a CAS below (an acquire) takes the lock.
  std::uint32_t v = word.load(std::memory_order_relaxed);
  for (;;) {
    if (v == 0) {
      // [M1] acquire: as in try_lock.
      if (word.compare_exchange_weak(v, take, std::memory_order_acquire, std::memory_order_relaxed)) {
        SHMQ_KILL_POINT(KillPoint::lock_acquired);
        return Status::ok;
      }
      continue;
    }
    if (spin.spin()) {
      v = word.load(std::memory_order_relaxed);  // relaxed: as above
      continue;
    }
    if (!checked) {
      checked = true;
      const Status s = check_holder(v, holder, reg, dead);
      if (s != Status::ok) return s;
      v = word.load(std::memory_order_relaxed);  // relaxed: as above
      if (v == 0) continue;
    }
    if (d.is_poll()) return Status::timeout;
    if ((v & kContended) == 0) {
      // [M2] relaxed: the flag only asks the holder's exchange to wake; no data rides on it.
      if (!word.compare_exchange_weak(v, v | kContended, std::memory_order_relaxed,
                                      std::memory_order_relaxed))
        continue;
      v |= kContended;
    }
    take = holder | kLocked | kContended;  // [M2] we slept: others may sleep too
    SHMQ_KILL_POINT(KillPoint::lock_waiting);
    const FutexResult r = futex_wait(&word, v, d.capped(kHolderCheckSlice));
    if (r == FutexResult::interrupted) return Status::interrupted;
    if (r == FutexResult::timed_out) {
      if (d.expired()) return Status::timeout;
      checked = false;
    }
    v = word.load(std::memory_order_relaxed);  // relaxed: as above
  }
}

// ---- RecursiveFutexMutex -----------------------------------------------------------------------

struct RecursiveFutexMutex {
  FutexMutex mutex;
  std::atomic<std::uint32_t> owner_thread;  // the holding thread's id in its process (0: none)
  std::atomic<std::uint32_t> depth;         // times the holding thread locked it

  void init() noexcept {
    mutex.init();
    // relaxed: as FutexMutex::init.
    owner_thread.store(0, std::memory_order_relaxed);
    depth.store(0, std::memory_order_relaxed);
  }

  bool owned_by(std::uint32_t holder, std::uint32_t thread) const noexcept {
    // relaxed: see the Synchronization block (only the holder stores its own id).
    return mutex.held_by(holder) && owner_thread.load(std::memory_order_relaxed) == thread;
  }

  // As FutexMutex::lock; a thread that holds it already just counts one more level. A corrupt
  // depth (at its maximum) is `corrupt`.
  Status lock(std::uint32_t holder, std::uint32_t thread, Deadline d, const HolderRegistry& reg,
              std::uint32_t spin_budget = Backoff::kDefaultBudget,
              std::uint32_t* dead = nullptr) noexcept {
    if (owned_by(holder, thread)) {
      const std::uint32_t n = depth.load(std::memory_order_relaxed);  // relaxed: holder only
      if (n == UINT32_MAX || n == 0) return Status::corrupt;
      depth.store(n + 1, std::memory_order_relaxed);
      return Status::ok;
    }
    const Status s = mutex.lock(holder, d, reg, spin_budget, dead);
    if (s == Status::ok || s == Status::owner_died) adopt(thread, 1);
    return s;
  }

  // false if the calling thread does not hold it.
  bool unlock(std::uint32_t holder, std::uint32_t thread) noexcept {
    if (!owned_by(holder, thread)) return false;
    const std::uint32_t n = depth.load(std::memory_order_relaxed);  // relaxed: holder only
    if (n > 1) {
      depth.store(n - 1, std::memory_order_relaxed);
      return true;
    }
    release_all();
    return true;
  }

  // For a condition's wait: gives the lock up at every level; returns the depth to restore.
  std::uint32_t release_all() noexcept {
    const std::uint32_t n = depth.load(std::memory_order_relaxed);  // relaxed: holder only
    depth.store(0, std::memory_order_relaxed);
    owner_thread.store(0, std::memory_order_relaxed);
    mutex.unlock();
    return n;
  }
  // Records the calling thread as the holder after mutex.lock() succeeded.
  void adopt(std::uint32_t thread, std::uint32_t levels) noexcept {
    // relaxed: see the Synchronization block.
    owner_thread.store(thread, std::memory_order_relaxed);
    depth.store(levels == 0 ? 1 : levels, std::memory_order_relaxed);
  }
};
static_assert(sizeof(RecursiveFutexMutex) == 12);

}  // namespace shmq::core
