// Statistics counters kept in a segment's header, updated with relaxed atomics.
#pragma once

#include <atomic>
#include <cstdint>

#include "shmq/core/layout.hpp"

namespace shmq::core {

// Every counter is a monotonic event count; readers (the CLI, tests) take snapshots that may be
// slightly inconsistent with each other, which is fine for statistics.
struct alignas(kCacheLine) Stats {
  std::atomic<std::uint64_t> sent;            // messages committed
  std::atomic<std::uint64_t> received;        // messages consumed
  std::atomic<std::uint64_t> bytes_sent;
  std::atomic<std::uint64_t> bytes_received;
  std::atomic<std::uint64_t> full_waits;      // a writer went to sleep because the channel was full
  std::atomic<std::uint64_t> empty_waits;     // a reader went to sleep because it was empty
  std::atomic<std::uint64_t> wakes;           // FUTEX_WAKE syscalls issued
  std::atomic<std::uint64_t> abandoned;       // messages held by a reader that died
  std::atomic<std::uint64_t> recovered;       // slots or claims reclaimed from dead writers
  std::atomic<std::uint64_t> fallback_copies; // FlatBuffers messages that outgrew their claim
  std::atomic<std::uint64_t> verify_failures; // FlatBuffers messages rejected by the verifier
  std::atomic<std::uint64_t> corrupt_events;  // shared values found violating invariants
  std::atomic<std::uint64_t> reserved[4];

  // relaxed everywhere: counters order nothing; they are read as guesses.
  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept {
    c.fetch_add(n, std::memory_order_relaxed);
  }
  static std::uint64_t read(const std::atomic<std::uint64_t>& c) noexcept {
    return c.load(std::memory_order_relaxed);
  }
};
static_assert(sizeof(Stats) == kCacheLine, "Stats fills exactly one cache line");

}  // namespace shmq::core
