// Bounded spinning before a futex sleep.
#pragma once

#include <chrono>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace shmq::core {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spin with pause for a bounded number of rounds, yielding now and then so that a peer on the
// same core (2-core machines, oversubscription) gets to run. `spin()` returns false once the
// budget is spent: the caller then sleeps on a futex.
class Backoff {
 public:
  explicit Backoff(std::uint32_t budget = kDefaultBudget) noexcept : budget_(budget) {}

  bool spin() noexcept {
    if (round_ >= budget_) return false;
    ++round_;
    if ((round_ & 63) == 0) {
      std::this_thread::yield();
    } else {
      cpu_relax();
    }
    return true;
  }
  void reset() noexcept { round_ = 0; }

  // About 20-50 µs of pause instructions on current x86, then sleep.
  static constexpr std::uint32_t kDefaultBudget = 2048;

 private:
  std::uint32_t budget_;
  std::uint32_t round_ = 0;
};

}  // namespace shmq::core
