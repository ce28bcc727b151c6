// Layout constants shared by every structure placed in shared memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmq::core {

// A fixed constant, not std::hardware_destructive_interference_size: that value changes with
// compiler flags, and two builds must agree on the layout of one segment. 128 covers the
// adjacent-line prefetcher of x86 and the 128-byte lines of some arm64 parts.
inline constexpr std::size_t kCacheLine = 128;

// Records in rings are aligned to this; a record header is {u32 length, u32 tag}.
inline constexpr std::size_t kRecordAlign = 8;

static_assert(std::atomic<std::uint32_t>::is_always_lock_free,
              "futex words and flags shared between processes must be lock-free");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "64-bit positions shared between processes must be lock-free");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8, "atomics must have the size of their value");
static_assert(sizeof(std::atomic<std::uint32_t>) == 4, "atomics must have the size of their value");

constexpr bool is_pow2(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept {
  return (v + a - 1) & ~(a - 1);
}

}  // namespace shmq::core
