// Sleeping on several WaitWords at once (Python's shmq.wait(), a reader multiplexing channels),
// with futex_waitv (Linux 5.16+) and a polling fallback for older kernels.
//
// Synchronization
//   The same Dekker pair as WaitWord::wait() (see wait.hpp), once per word:
//     waiter: read every epoch [V1, acquire]; waiters += 1 on every word [V2, seq_cst RMW];
//             fence seq_cst [V3], and the barrier [B1] of wait.hpp if any word has light
//             wakers; re-check readiness; futex_waitv on the epochs with the values read at V1;
//             waiters -= 1 on every word.
//     waker:  WaitWord::notify() unchanged: publish; fence [F2] (wait.hpp; a light waker: a
//             compiler barrier, paired with B1); read waiters; bump epoch; wake.
//   A waker that publishes after our re-check sees our V2 (V3/F2, or B1, order the pair), so it
//   bumps the epoch it guards; futex_waitv then either finds that epoch changed (EAGAIN) or is
//   woken. A waker that published before the re-check is seen by the re-check. No wake-up is
//   lost.
//   Each epoch is read before its waiters count is raised, so a bump between the two is seen as
//   a changed value, never slept through.
//   The futexes are shared (no FUTEX2_PRIVATE): the wakers live in other processes.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <span>

#include "shmq/core/wait.hpp"

namespace shmq::core {

// The kernel ABI of futex_waitv, spelled out here so that older kernel headers (Debian 12 ships
// 6.1 headers, which call the size flag FUTEX_32) compile the same code.
inline constexpr long kSysFutexWaitv = 449;
inline constexpr std::uint32_t kFutex2SizeU32 = 0x02;  // FUTEX2_SIZE_U32; no FUTEX2_PRIVATE
inline constexpr std::size_t kWaitAnyMax = 128;          // FUTEX_WAITV_MAX

struct FutexWaitv {
  std::uint64_t val;
  std::uint64_t uaddr;
  std::uint32_t flags;
  std::uint32_t reserved;
};
static_assert(sizeof(FutexWaitv) == 24, "struct futex_waitv is 24 bytes");

// How long the fallback (a kernel without futex_waitv) sleeps on the first word before it polls
// the others again.
inline constexpr std::chrono::milliseconds kWaitAnyPollSlice{1};

namespace detail {

inline std::atomic<bool>& futex_waitv_missing() noexcept {
  // relaxed: a sticky hint; a stale `false` costs one ENOSYS syscall.
  static std::atomic<bool> missing{false};
  return missing;
}

// One futex_waitv call; `unsupported` is set when the kernel lacks it (ENOSYS).
inline FutexResult futex_waitv_call(FutexWaitv* waiters, std::size_t n, Deadline deadline,
                                    bool* unsupported) noexcept {
  timespec ts{};
  const timespec* tsp = nullptr;
  if (!deadline.is_never()) {
    ts = to_timespec(deadline);
    tsp = &ts;
  }
  const long rc = ::syscall(kSysFutexWaitv, waiters, static_cast<unsigned>(n), 0u, tsp,
                            static_cast<int>(CLOCK_MONOTONIC));
  if (rc >= 0) return FutexResult::woken;
  switch (errno) {
    case EAGAIN: return FutexResult::changed;
    case ETIMEDOUT: return FutexResult::timed_out;
    case EINTR: return FutexResult::interrupted;
    case ENOSYS: *unsupported = true; return FutexResult::changed;
    default: return FutexResult::woken;  // EFAULT/EINVAL: callers re-check readiness anyway
  }
}

}  // namespace detail

// Sleeps until `ready()` holds, `deadline` passes, or a signal arrives, where ready() is true
// when any of the channels behind `words` can make progress (the caller decides which). Each
// notify() on any of the words wakes the sleeper; the caller re-checks readiness after every
// return, as with WaitWord::wait(). At most kWaitAnyMax words; null entries and repeats are
// skipped. `marks`, if given, holds one SleepMark per entry of `words` (as WaitWord::wait()
// takes one): each is set while its count is held, so a survivor can take back the count of a
// sleeper killed here. Returns woken also when ready() held without sleeping.
template <class Ready>
FutexResult wait_any(std::span<WaitWord* const> words, Ready&& ready, Deadline deadline,
                     std::span<const SleepMark> marks = {}) noexcept {
  FutexWaitv waiters[kWaitAnyMax];
  WaitWord* registered[kWaitAnyMax];
  SleepMark mark_of[kWaitAnyMax];
  std::size_t n = 0;
  for (std::size_t k = 0; k < words.size(); ++k) {
    WaitWord* w = words[k];
    if (w == nullptr || n == kWaitAnyMax) continue;
    bool repeat = false;  // one count per word: a mark stands for exactly one
    for (std::size_t i = 0; i < n && !repeat; ++i) repeat = registered[i] == w;
    if (repeat) continue;
    // [V1] acquire: pairs with the release increment in notify(); the value is only compared.
    const std::uint32_t seen = w->epoch.load(std::memory_order_acquire);
    waiters[n] = FutexWaitv{seen, reinterpret_cast<std::uintptr_t>(&w->epoch), kFutex2SizeU32, 0};
    mark_of[n] = k < marks.size() ? marks[k] : SleepMark{};
    registered[n++] = w;
  }
  std::uint32_t bits = 0;  // kLightWakers if any word has light wakers
  for (std::size_t i = 0; i < n; ++i) {
    // [V2] seq_cst: first half of each word's Dekker pair (as [W1] in wait.hpp).
    bits |= registered[i]->waiters.fetch_add(1, std::memory_order_seq_cst);
    // relaxed: after V2, as after W1 in WaitWord::wait(); read only after its writer died.
    if (mark_of[i].word != nullptr)
      mark_of[i].word->store(mark_of[i].value, std::memory_order_relaxed);
  }
  // [V3] seq_cst (+ [B1] if a word has light wakers): orders every V2 before the re-check; pairs
  // with [F2] in WaitWord::notify() or with its light wakers (wait.hpp).
  if (!WaitWord::waiter_barrier(bits)) deadline = deadline.capped(kUnfencedSleepCap);
  FutexResult r = FutexResult::woken;
  if (n != 0 && !ready()) {
    bool unsupported = false;
    // relaxed: a hint only (see futex_waitv_missing()).
    if (!detail::futex_waitv_missing().load(std::memory_order_relaxed)) {
      r = detail::futex_waitv_call(waiters, n, deadline, &unsupported);
    } else {
      unsupported = true;
    }
    if (unsupported) {
      // relaxed: see above.
      detail::futex_waitv_missing().store(true, std::memory_order_relaxed);
      // Old kernel: sleep on the first word in short slices; the caller polls the others.
      r = futex_wait(&registered[0]->epoch, static_cast<std::uint32_t>(waiters[0].val),
                     deadline.capped(kWaitAnyPollSlice));
      if (r == FutexResult::timed_out && !deadline.expired()) r = FutexResult::changed;
    }
  } else if (n == 0 && !ready()) {
    // Nothing to sleep on: a plain timed sleep, so callers still honour their deadline.
    const Deadline slice = deadline.capped(kWaitAnyPollSlice);
    const timespec ts = to_timespec(slice);
    const int rc = ::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
    r = rc == EINTR ? FutexResult::interrupted
                    : (deadline.expired() ? FutexResult::timed_out : FutexResult::changed);
  }
  for (std::size_t i = 0; i < n; ++i) {
    // relaxed: before the release decrement below, so a mark never outlives its count.
    if (mark_of[i].word != nullptr) mark_of[i].word->store(0, std::memory_order_relaxed);
    // release: no data is published by leaving; release keeps the decrement after the sleep.
    registered[i]->waiters.fetch_sub(1, std::memory_order_release);
  }
  return r;
}

}  // namespace shmq::core
