// FutexCondition: a condition variable on caller-supplied (shared) memory, used with a
// FutexMutex (or the mutex inside a RecursiveFutexMutex) that the caller holds around wait and
// notify. notify(n) wakes at most n waiters that were waiting when it was called (no
// thundering herd: one FUTEX_WAKE of n); notify_all requeues the sleepers onto the mutex word,
// so they wake one at a time as the mutex is passed on, instead of all at once to fight for it.
//
// The counts: `sleepers` waiters registered and not yet notified; `signals` notifications granted
// and not yet taken (the futex word). A waiter takes one signal with a CAS; one that gives up
// (timeout, signal) deregisters under the mutex, or takes a signal that was granted to it.
//   waiter:  [mutex held] enter_wait(): sleepers += 1; caller unlocks the mutex;
//            await_signal(d): take a signal (CAS signals s -> s-1), sleeping on `signals` while
//            it is 0; the caller relocks the mutex (FutexMutex::lock with contended = true);
//            [mutex held] leave_wait(got).
//   notifier [mutex held]: k = min(n, sleepers); signals += k; sleepers -= k; wake k.
// The invariant sleepers + signals >= waiters between enter_wait and leave_wait holds at every
// step, so a waiter that gives up always finds either a registration to withdraw or a signal.
//
// Synchronization
//   [C1] sleepers is written only under the caller's mutex (relaxed; [M1] orders it).
//   [C2] notify raises `signals` with a release RMW; a waiter takes one with an acquire CAS:
//        the notifier's writes before notify (under the mutex) are visible to the woken waiter,
//        which relocks the mutex anyway.
//   [C3] sleeping: the futex word is `signals` itself, compared with the 0 the waiter read, so
//        a notify between the read and the sleep makes the sleep return at once.
//   [C4] notify_all sets kContended on the mutex word the caller holds (relaxed RMW; the caller's
//        unlock is the release), then FUTEX_CMP_REQUEUE moves the sleepers from `signals` to the
//        mutex word: the mutex's unlock wakes one of them, which takes its signal and relocks
//        with kContended, so the next unlock wakes the next.
//   Death: a notifier killed between its two updates has raised `signals` first, so the worst
//   is an extra wake-up, never a lost one. A waiter killed while registered leaves its count in
//   `sleepers`: a later notify may grant it a signal that another waiter then takes (one
//   spurious wake-up). The mutex follows FutexMutex's rules (owner_died).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>

#include "shmq/core/fault.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

struct FutexCondition {
  std::atomic<std::uint32_t> signals;   // [C2][C3] the futex word
  std::atomic<std::uint32_t> sleepers;  // [C1]

  void init() noexcept {
    // relaxed: init runs before the object is published.
    signals.store(0, std::memory_order_relaxed);
    sleepers.store(0, std::memory_order_relaxed);
  }

  // [mutex held] Registers the caller as a waiter; the caller then releases the mutex.
  void enter_wait() noexcept {
    // relaxed: [C1]
    sleepers.store(sleepers.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    SHMQ_KILL_POINT(KillPoint::cond_waiting);
  }

  // [mutex released] Takes one signal: ok | timeout | interrupted. Call again after a timeout or
  // an interruption to keep waiting; leave_wait() afterwards in every case.
  Status await_signal(Deadline d) noexcept {
    for (;;) {
      std::uint32_t s = signals.load(std::memory_order_relaxed);  // relaxed: the CAS acquires
      while (s != 0) {
        // [C2] acquire: pairs with notify's release.
        if (signals.compare_exchange_weak(s, s - 1, std::memory_order_acquire,
                                          std::memory_order_relaxed))
          return Status::ok;
      }
      if (d.expired()) return Status::timeout;
      const FutexResult r = futex_wait(&signals, 0, d);  // [C3]
      if (r == FutexResult::interrupted) return Status::interrupted;
    }
  }

  // [mutex held again] After await_signal: `got` is whether it returned ok. Returns whether the
  // waiter was notified (a waiter that gave up takes a signal granted to it meanwhile).
  bool leave_wait(bool got) noexcept {
    if (got) return true;
    // relaxed: [C1]
    const std::uint32_t n = sleepers.load(std::memory_order_relaxed);
    if (n != 0) {
      sleepers.store(n - 1, std::memory_order_relaxed);
      return false;
    }
    // No registration left: a notify counted us and granted a signal; take it.
    std::uint32_t s = signals.load(std::memory_order_relaxed);  // relaxed: the CAS acquires
    while (s != 0) {
      // [C2] acquire: as in await_signal.
      if (signals.compare_exchange_weak(s, s - 1, std::memory_order_acquire,
                                        std::memory_order_relaxed))
        return true;
    }
    return false;  // counts disturbed by a dead waiter: nothing to take
  }

  // [mutex held] Wakes up to n waiters; returns how many were granted a signal.
  std::uint32_t notify(std::uint32_t n) noexcept {
    const std::uint32_t k = grant(n);
    if (k != 0) futex_wake(&signals, static_cast<int>(k > INT_MAX ? INT_MAX : k));
    return k;
  }

  // [mutex held: `mutex` is the word the caller holds] Wakes every waiter, one at a time through
  // the mutex [C4]. Returns how many were granted a signal.
  std::uint32_t notify_all(FutexMutex& mutex) noexcept {
    const std::uint32_t k = grant(UINT32_MAX);
    if (k == 0) return 0;
    // [C4] relaxed: the caller holds the word; its unlock (release) wakes a requeued sleeper.
    mutex.word.fetch_or(FutexMutex::kContended, std::memory_order_relaxed);
    const std::uint32_t expected = signals.load(std::memory_order_relaxed);  // relaxed: compared only
    const long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&signals),
                              FUTEX_CMP_REQUEUE, 1, reinterpret_cast<void*>(long{INT_MAX}),
                              reinterpret_cast<std::uint32_t*>(&mutex.word), expected);
    if (rc < 0) futex_wake(&signals, INT_MAX);  // the word moved (a waiter took a signal): wake all
    return k;
  }

  std::uint32_t sleepers_guess() const noexcept {
    return sleepers.load(std::memory_order_relaxed);  // relaxed: display and tests
  }
  std::uint32_t signals_guess() const noexcept {
    return signals.load(std::memory_order_relaxed);  // relaxed: display and tests
  }

 private:
  std::uint32_t grant(std::uint32_t n) noexcept {
    const std::uint32_t waiting = sleepers.load(std::memory_order_relaxed);  // relaxed: [C1]
    const std::uint32_t k = n < waiting ? n : waiting;
    if (k == 0) return 0;
    // [C2] release: pairs with the waiter's acquire CAS. Raised before sleepers drops (Death).
    signals.fetch_add(k, std::memory_order_release);
    sleepers.store(waiting - k, std::memory_order_relaxed);  // relaxed: [C1]
    return k;
  }
};
static_assert(sizeof(FutexCondition) == 8);

}  // namespace shmq::core
