// Futex words in shared memory: sleeping and waking without locks, and without a syscall when
// nobody sleeps.
//
// Synchronization
//   The waiter and the waker close a Dekker pair:
//     waiter: waiters += 1  [W1, seq_cst RMW]; fence seq_cst [F1]; re-check the condition; sleep
//             on `epoch` only if it still holds the value read before W1.
//     waker:  publish (release store by the caller); fence seq_cst [F2]; read waiters [R2];
//             if non-zero: epoch += 1, FUTEX_WAKE.
//   With F1 and F2 both seq_cst, either the waker's R2 sees W1 (so it bumps the epoch and wakes,
//   and a waiter that has not yet entered the kernel finds the epoch changed and returns at once),
//   or the waiter's re-check sees the publish (so it does not sleep). No wake-up is lost.
//
//   Light wakers: the sleeper pays. F2 runs on every message while a sleep is rare, so a waker
//   may drop F2 (a compiler barrier keeps its publish before R2 in program order) once its process
//   is registered for membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) and it has set the word's sticky
//   kLightWakers bit [L1, seq_cst RMW on `waiters`] (announce_light_waker(), before its first
//   notify). W1 returns the bit with the old count, and:
//     - bit set: the waiter issues the global barrier [B1] after F1. B1 returns only after
//       every running thread of every registered process has executed a full barrier (a thread
//       not running passed one when it was switched out). A light waker whose R2 ran after its
//       barrier point reads W1 (W1 was visible before B1 began); one whose R2 ran before it also
//       had its earlier publish visible by then, so the re-check sees the publish. A waker that
//       still fences pairs with F1 as before.
//     - bit clear: W1 precedes every L1 in the modification order of `waiters`, and a light
//       waker's R2 comes after its own L1, so by coherence R2 reads W1 or a later value: it
//       wakes. Fencing wakers pair with F1 as above.
//   If B1 fails (a waiter whose process may not call membarrier though a waker's could), the
//   waiter has only F1 and sleeps at most kUnfencedSleepCap at a time: a wake-up it misses costs
//   at most that.
//   Sleeps are always bounded by the caller (slices), so a waker that died between its publish
//   and its FUTEX_WAKE strands nobody for longer than one slice.
//   The futex is shared (no FUTEX_PRIVATE_FLAG): waiter and waker may be different processes.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>

#include "shmq/core/layout.hpp"
#include "shmq/core/membarrier.hpp"

namespace shmq {

// An absolute point on CLOCK_MONOTONIC (std::chrono::steady_clock is CLOCK_MONOTONIC on Linux).
class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static constexpr Deadline never() noexcept { return Deadline(Clock::time_point::max()); }
  // Poll once, do not wait. The clock's epoch (boot) is always past, so checking it costs no
  // clock read: a try_* call on the hot path makes no clock_gettime at all.
  static constexpr Deadline now() noexcept { return Deadline(Clock::time_point{}); }
  static Deadline at(Clock::time_point tp) noexcept { return Deadline(tp); }
  template <class Rep, class Period>
  static Deadline in(std::chrono::duration<Rep, Period> d) noexcept {
    const auto now = Clock::now();
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d);
    if (ns.count() <= 0) return Deadline(now);
    if (ns > Clock::time_point::max() - now) return never();
    return Deadline(now + ns);
  }

  constexpr bool is_never() const noexcept { return tp_ == Clock::time_point::max(); }
  constexpr bool is_poll() const noexcept { return tp_ == Clock::time_point{}; }
  bool expired() const noexcept { return is_poll() || (!is_never() && Clock::now() >= tp_); }
  constexpr Clock::time_point time_point() const noexcept { return tp_; }
  // The earlier of this deadline and now + slice: how blocking calls bound each sleep.
  template <class Rep, class Period>
  Deadline capped(std::chrono::duration<Rep, Period> slice) const noexcept {
    const Deadline s = in(slice);
    return s.tp_ < tp_ ? s : *this;
  }

 private:
  constexpr explicit Deadline(Clock::time_point tp) noexcept : tp_(tp) {}
  Clock::time_point tp_;
};

namespace core {

// The longest a blocking call sleeps at a time. After each slice it re-checks what no wake-up
// announces: the peer's liveness (a dead peer never wakes anyone), a waker that died between its
// publish and its wake, and (in the Python binding) pending signals, so Ctrl-C is seen within
// one slice.
inline constexpr std::chrono::milliseconds kSleepSlice{50};

// How long a waiter whose barrier B1 failed sleeps at a time (see the Synchronization block).
inline constexpr std::chrono::milliseconds kUnfencedSleepCap{1};

enum class FutexResult : std::uint8_t {
  woken,        // FUTEX_WAKE reached us (or a spurious wake: callers always re-check)
  changed,      // the word no longer held the expected value (EAGAIN)
  timed_out,
  interrupted,  // a signal handler ran (EINTR)
};

inline timespec to_timespec(Deadline d) noexcept {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      d.time_point().time_since_epoch())
                      .count();
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  return ts;
}

// Sleeps while *word == expected, until `deadline` (absolute, CLOCK_MONOTONIC).
inline FutexResult futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                              Deadline deadline) noexcept {
  // FUTEX_WAIT_BITSET takes an absolute timeout; plain FUTEX_WAIT takes a relative one.
  timespec ts{};
  const timespec* tsp = nullptr;
  if (!deadline.is_never()) {
    ts = to_timespec(deadline);
    tsp = &ts;
  }
  const long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET,
                            expected, tsp, nullptr, FUTEX_BITSET_MATCH_ANY);
  if (rc == 0) return FutexResult::woken;
  switch (errno) {
    case EAGAIN: return FutexResult::changed;
    case ETIMEDOUT: return FutexResult::timed_out;
    case EINTR: return FutexResult::interrupted;
    default: return FutexResult::woken;  // EFAULT/EINVAL cannot happen on a mapped, aligned word
  }
}

// Wakes up to `count` waiters of `word`; returns how many were woken.
inline int futex_wake(std::atomic<std::uint32_t>* word, int count) noexcept {
  const long rc =
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count, nullptr,
                nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

// Where a sleeper records, for crash recovery, that it holds one count of a WaitWord: `value`
// (non-zero: the host's tag and a bit naming the word) is stored in `*word` while the count is
// held. A process killed asleep leaves its mark, so a survivor that finds the marker dead can
// take the count back (the Queue's sweep); without it every later notify would make a syscall.
struct SleepMark {
  std::atomic<std::uint64_t>* word = nullptr;
  std::uint64_t value = 0;
};

// How a waker orders its publish before it reads the waiter count (see the Synchronization block).
enum class WakeFence : std::uint8_t {
  full,   // F2: a seq_cst fence per notify
  light,  // a compiler barrier only; the word's waiters pay B1 (announce_light_waker() first)
};

// A sleeping place for one condition ("data available", "space available"), 8 bytes, placed in
// shared memory by its owner on a cache line of its own.
struct WaitWord {
  // The top bit of `waiters`: some waker of this word may skip F2, so waiters must issue B1. The
  // other bits count the waiters.
  static constexpr std::uint32_t kLightWakers = 1u << 31;
  static constexpr std::uint32_t kCountMask = kLightWakers - 1;

  std::atomic<std::uint32_t> epoch;    // bumped by every wake; the futex word
  std::atomic<std::uint32_t> waiters;  // kLightWakers | how many are between W1 and their decrement

  void init() noexcept {
    // relaxed: init runs before the segment is published (the publish is a release store).
    epoch.store(0, std::memory_order_relaxed);
    waiters.store(0, std::memory_order_relaxed);
  }

  // Registers this process for the waiters' barrier and sets kLightWakers. Returns the fence the
  // caller's notify() may use from now on: light if both worked, else full. Cold path (attach).
  WakeFence announce_light_waker() noexcept {
    if (!register_for_global_barrier()) return WakeFence::full;
    // [L1] seq_cst: an RMW on the word W1 modifies, so W1 either sees the bit or precedes it in
    // the modification order (see the Synchronization block). The bit is never cleared.
    waiters.fetch_or(kLightWakers, std::memory_order_seq_cst);
    return WakeFence::light;
  }

  // Sleeps until `ready()` holds, `deadline` passes, or a signal arrives. `ready` is re-checked
  // after registering as a waiter, so a concurrent notify() cannot be missed. Returns the last
  // futex result (woken also when ready() held without sleeping).
  template <class Ready>
  FutexResult wait(Ready&& ready, Deadline deadline, SleepMark mark = {}) noexcept {
    // acquire: pairs with the release increment in notify(); the value is only compared.
    const std::uint32_t seen = epoch.load(std::memory_order_acquire);
    // [W1] seq_cst: first half of the Dekker pair (see the Synchronization block).
    const std::uint32_t before = waiters.fetch_add(1, std::memory_order_seq_cst);
    // relaxed: after W1 (an acquire RMW), so a mark always stands for a count; it is read only
    // after its writer died.
    if (mark.word != nullptr) mark.word->store(mark.value, std::memory_order_relaxed);
    // [F1] (+ [B1]): orders W1 before the re-check below; pairs with [F2] / the light wakers.
    if (!waiter_barrier(before)) deadline = deadline.capped(kUnfencedSleepCap);
    FutexResult r = FutexResult::woken;
    if (!ready()) r = futex_wait(&epoch, seen, deadline);
    // relaxed: before the release decrement below, so a mark never outlives its count.
    if (mark.word != nullptr) mark.word->store(0, std::memory_order_relaxed);
    // release: no data is published by leaving; release keeps the decrement after the sleep.
    waiters.fetch_sub(1, std::memory_order_release);
    return r;
  }

  // Called after the caller's release store that made the condition true. Issues FUTEX_WAKE only
  // if someone registered as a waiter. Returns true if a wake syscall was issued; *woken (if
  // given) receives how many it woke (0 with a count left by a dead waiter). `fence`: light only
  // after announce_light_waker() said so.
  bool notify(int count = INT_MAX, int* woken = nullptr,
              WakeFence fence = WakeFence::full) noexcept {
    if (fence == WakeFence::full) {
      // [F2] seq_cst: orders the caller's publish before R2; pairs with [F1] in wait().
      std::atomic_thread_fence(std::memory_order_seq_cst);
    } else {
      // Program order only (the waiters' B1 does the rest); see the Synchronization block.
      std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    // [R2] relaxed: the fence above (or B1) gives the ordering; the value only gates the syscall.
    if ((waiters.load(std::memory_order_relaxed) & kCountMask) == 0) return false;
    // release: a waiter that reads the new epoch (acquire) also sees the caller's publish.
    epoch.fetch_add(1, std::memory_order_release);
    const int n = futex_wake(&epoch, count);
    if (woken != nullptr) *woken = n;
    return true;
  }

  // Forgets counts left by waiters killed asleep (keeps kLightWakers). Only for a caller that
  // knows no waiter is registered (the only waiter of the word is itself, attaching).
  void clear_waiters() noexcept {
    // relaxed: see the callers; the bit is kept, so the light wakers' pairing is unchanged.
    waiters.fetch_and(kLightWakers, std::memory_order_relaxed);
  }

  // Takes back one count of a waiter killed asleep (a host that found its SleepMark dead); never
  // below 0, whatever count a hostile segment holds. Keeps kLightWakers.
  void drop_dead_waiter() noexcept {
    // relaxed load + release CAS: as a leaving waiter's decrement.
    std::uint32_t n = waiters.load(std::memory_order_relaxed);
    while ((n & kCountMask) != 0 &&
           !waiters.compare_exchange_weak(n, n - 1, std::memory_order_release,
                                          std::memory_order_relaxed)) {
    }
  }

  // How many are registered as waiters (a guess: it may change at once).
  std::uint32_t waiter_count() const noexcept {
    // relaxed: statistics, recovery decisions made by the caller, and tests.
    return waiters.load(std::memory_order_relaxed) & kCountMask;
  }
  // True if anyone is registered as a waiter (a guess: it may change at once).
  bool has_waiters_guess() const noexcept { return waiter_count() != 0; }

  // F1, and B1 if W1 (which returned `before`) found light wakers. False if B1 was due and failed.
  static bool waiter_barrier(std::uint32_t before) noexcept {
    // [F1] seq_cst: orders W1 before the re-check; pairs with [F2] in notify().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return (before & kLightWakers) == 0 || global_barrier();  // [B1]
  }
};
static_assert(sizeof(WaitWord) == 8, "WaitWord is two 32-bit words");

}  // namespace core
}  // namespace shmq
