// What both ends of an SPSC ring share: the attached ring, the local statistics batch, the spin
// budget and the last outcome. Protocol and tags: spsc_ring.hpp; format: spsc_format.hpp.
#pragma once

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>

#include "shmq/core/backoff.hpp"
#include "shmq/core/spsc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// One received message: a view in place (zero_copy) or into the reader's reassembly buffer.
struct RecvView {
  std::span<const std::byte> bytes;
  std::uint16_t kind = 0;
  bool zero_copy = false;
  std::uint64_t end = 0;  // position after the record (a token for release)
};

// A liveness callback for tests and in-process use: the peer is always alive.
struct AlwaysAlive {
  bool operator()() const noexcept { return true; }
};

class SpscEnd {
 public:
  // Local message and byte counts reach the shared Stats this often (and whenever the end waits,
  // runs dry or closes): a shared counter bumped per message would cost a contended line.
  static constexpr std::uint32_t kStatsBatch = 64;

  bool attached() const noexcept { return ctl_ != nullptr; }
  std::uint64_t capacity() const noexcept { return capacity_; }
  std::size_t max_payload() const noexcept { return static_cast<std::size_t>(max_payload_); }
  // The outcome of the last call; for a failed claim it is the only place that says why.
  Status last_status() const noexcept { return last_; }
  // Records an outcome decided by the caller (e.g. a liveness check); returns it.
  Status note(Status s) noexcept { return last_ = s; }
  SpscRingControl* control() const noexcept { return ctl_; }
  // Forget the ring without touching shared memory (a handle inherited by a forked child).
  void detach() noexcept { ctl_ = nullptr; }
  // Pause rounds a blocking call (recv, send, claim, send_many) spins on the ring before it
  // sleeps on the futex; 0 sleeps at once. Local to this end; Backoff::kDefaultBudget by default.
  void set_spin_budget(std::uint32_t rounds) noexcept { spin_budget_ = rounds; }
  std::uint32_t spin_budget() const noexcept { return spin_budget_; }
  void flush_stats() noexcept { flush_counts(); }

 protected:
  Status attach_common(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (stats == nullptr) return Status::corrupt;
    if (SpscRing::check(mem, capacity) != Status::ok) {
      Stats::bump(stats->corrupt_events);
      return Status::corrupt;
    }
    ctl_ = SpscRing::control(mem);
    data_ = SpscRing::data(mem);
    stats_ = stats;
    capacity_ = capacity;
    mask_ = capacity - 1;
    shift_ = SpscRing::capacity_shift(capacity);
    max_payload_ = SpscRing::max_payload(capacity);
    return Status::ok;
  }
  Status corrupt() noexcept {
    Stats::bump(stats_->corrupt_events);
    return last_ = Status::corrupt;
  }
  // Ends a batch: remembers why it stopped and tells the caller if it asked.
  Status stopped(Status s, Status* why) noexcept {
    if (why != nullptr) *why = s;
    return last_ = s;
  }
  void count(std::uint64_t bytes) noexcept {
    unflushed_bytes_ += bytes;
    if (++unflushed_msgs_ >= kStatsBatch) flush_counts();
  }
  void flush_counts() noexcept {
    if (unflushed_msgs_ == 0) return;
    add_own(*msgs_counter_, unflushed_msgs_);
    add_own(*bytes_counter_, unflushed_bytes_);
    unflushed_msgs_ = 0;
    unflushed_bytes_ = 0;
  }
  // A counter only this end's role writes (sent or received of its direction): a load and a
  // store, no locked RMW (a reader that runs dry flushes on every message of a ping-pong).
  static void add_own(std::atomic<std::uint64_t>& c, std::uint64_t n) noexcept {
    // relaxed: statistics order nothing; one writer, so nothing is lost between load and store.
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // After a publish: wakes the peer if it sleeps on `w`, the word this end announced itself on.
  void notify(WaitWord& w) noexcept {
    if (w.notify(INT_MAX, nullptr, fence_)) Stats::bump(stats_->wakes);
  }

  SpscRingControl* ctl_ = nullptr;
  std::byte* data_ = nullptr;
  Stats* stats_ = nullptr;
  std::atomic<std::uint64_t>* msgs_counter_ = nullptr;
  std::atomic<std::uint64_t>* bytes_counter_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t max_payload_ = 0;
  unsigned shift_ = 0;                     // capacity = 2^shift_
  WakeFence fence_ = WakeFence::full;      // how notify() orders the publish (wait.hpp)
  std::uint64_t unflushed_msgs_ = 0;
  std::uint64_t unflushed_bytes_ = 0;
  std::uint32_t spin_budget_ = Backoff::kDefaultBudget;
  Status last_ = Status::ok;
};

}  // namespace shmq::core
