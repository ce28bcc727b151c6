// FutexEvent: a flag that waiters sleep on until it is set (threading.Event on shared memory).
// No owner: a process that dies has either set it or not, so death needs no recovery.
//
// The state word: bit 0 the flag; bits 1..31 count the sets (0 -> 1 transitions), so a waiter
// that sleeps through a set followed by a clear still learns that a set happened.
//
// Synchronization
//   [V1] set: a release CAS raising the flag (and the set count); wait and is_set load the word
//        with acquire: what the setter wrote before set() is visible to whoever sees it set.
//   [V2] sleeping: waiters register in `waiters` (seq_cst RMW), fence, re-read the word and sleep
//        while it holds the value they read; set() fences after its CAS and wakes everyone only
//        if `waiters` is non-zero (the Dekker pair of wait.hpp). The futex word is the state, so
//        a set between the re-read and the sleep makes the sleep return at once.
//   A waiter killed asleep leaves its count in `waiters`: later sets make a FUTEX_WAKE that
//   wakes nobody, which costs a syscall and nothing else.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>

#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

struct FutexEvent {
  std::atomic<std::uint32_t> state;    // bit 0: set; bits 1..31: number of sets
  std::atomic<std::uint32_t> waiters;  // [V2]

  void init() noexcept {
    // relaxed: init runs before the object is published.
    state.store(0, std::memory_order_relaxed);
    waiters.store(0, std::memory_order_relaxed);
  }

  // Raises the flag and wakes every waiter; false if it was set already.
  bool set() noexcept {
    std::uint32_t v = state.load(std::memory_order_relaxed);  // relaxed: the CAS decides
    do {
      if ((v & 1) != 0) return false;
      // [V1] release: publishes what the setter wrote before set().
    } while (!state.compare_exchange_weak(v, (v + 2) | 1, std::memory_order_release,
                                          std::memory_order_relaxed));
    // [V2] seq_cst fence: orders the CAS before reading waiters; pairs with the waiter's fence.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // relaxed: ordered by the fence; the value only gates the syscall.
    if (waiters.load(std::memory_order_relaxed) != 0) futex_wake(&state, INT_MAX);
    return true;
  }

  void clear() noexcept {
    // relaxed: publishes nothing; a later set() is ordered after it on the same word.
    state.fetch_and(~1u, std::memory_order_relaxed);
  }

  bool is_set() const noexcept {
    return (state.load(std::memory_order_acquire) & 1) != 0;  // [V1] acquire
  }

  // ok (set now, or set at some point since the call began) | timeout | interrupted.
  Status wait(Deadline d) noexcept {
    const std::uint32_t first = state.load(std::memory_order_acquire);  // [V1] acquire
    if ((first & 1) != 0) return Status::ok;
    if (d.is_poll()) return Status::timeout;
    // [V2] seq_cst: registers before the re-read below.
    waiters.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // [V2] pairs with set()'s fence
    Status out = Status::timeout;
    for (;;) {
      const std::uint32_t now = state.load(std::memory_order_acquire);  // [V1] acquire
      if ((now & 1) != 0 || (now >> 1) != (first >> 1)) {
        out = Status::ok;
        break;
      }
      const FutexResult r = futex_wait(&state, now, d);
      if (r == FutexResult::interrupted) {
        out = Status::interrupted;
        break;
      }
      if (r == FutexResult::timed_out && d.expired()) {
        // A set may have landed with the timeout: report it rather than the timeout.
        const std::uint32_t last = state.load(std::memory_order_acquire);  // [V1] acquire
        out = ((last & 1) != 0 || (last >> 1) != (first >> 1)) ? Status::ok : Status::timeout;
        break;
      }
    }
    // release: leaving publishes nothing; keeps the decrement after the sleep.
    waiters.fetch_sub(1, std::memory_order_release);
    return out;
  }
};
static_assert(sizeof(FutexEvent) == 8);

}  // namespace shmq::core
