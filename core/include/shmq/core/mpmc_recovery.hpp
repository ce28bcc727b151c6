// Crash recovery of the MPMC ring (slow path only): what the ring needs from its host
// (ClaimRegistry), when to probe a stuck slot's owner (StuckWatch), and the recoveries of a dead
// writer's and a dead reader's slot (MpmcRecovery). Why they are safe: "Crash recovery" in
// mpmc_ring.hpp; tags there too.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "shmq/core/fault.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// A slot unfinished for kStuckGrace gets its owner's liveness probed; the interval then doubles
// up to kStuckProbeMax (a live owner holding a message for long costs a syscall per probe). While
// watching, sleeps are capped at the interval, so a dead owner is found well within 100 ms.
inline constexpr auto kStuckGrace = std::chrono::milliseconds(2);
inline constexpr auto kStuckProbeMax = std::chrono::milliseconds(32);
// Wake syscalls that woke nobody before the host sweeps for sleepers killed asleep.
inline constexpr std::uint32_t kIdleWakesBeforeSweep = 64;

// What the ring needs from its host to recover claims of dead participants. Slow path only.
class ClaimRegistry {
 public:
  virtual std::uint32_t participants() const noexcept = 0;
  // kClaimWords words of participant `index`.
  virtual std::atomic<std::uint64_t>* claim_words(std::uint32_t index) const noexcept = 0;
  virtual bool alive(std::uint32_t index) const noexcept = 0;
  // Frees host resources tied to position `pos` of a slot recovered from a dead participant.
  virtual void reclaim(std::uint64_t /*pos*/) noexcept {}
  // Takes back the wait counts of participants killed asleep (their SleepMarks). Called after
  // kIdleWakesBeforeSweep wake syscalls that woke nobody.
  virtual void sweep_sleepers() noexcept {}

 protected:
  ~ClaimRegistry() = default;
};


namespace detail {

// Tracks one position that stays unfinished, so liveness is probed only after kStuckGrace and
// then at doubling intervals (each probe costs a syscall per claimant).
class StuckWatch {
 public:
  using Duration = std::chrono::steady_clock::duration;
  bool probe_due(std::uint64_t pos) noexcept {
    const auto now = std::chrono::steady_clock::now();
    if (!watching_ || pos != pos_) {
      watching_ = true;
      pos_ = pos;
      last_ = now;
      interval_ = kStuckGrace;
      return false;
    }
    if (now - last_ < interval_) return false;
    last_ = now;
    interval_ = std::min<Duration>(interval_ * 2, kStuckProbeMax);
    return true;
  }
  void clear() noexcept { watching_ = false; }
  // How long a blocked caller may sleep before its next look.
  Duration sleep_cap() const noexcept { return watching_ ? interval_ : Duration(kSleepSlice); }

 private:
  std::chrono::steady_clock::time_point last_{};
  Duration interval_ = kStuckGrace;
  std::uint64_t pos_ = 0;
  bool watching_ = false;
};

}  // namespace detail

// Recovery shared by both sides (slow path).
class MpmcRecovery {
 public:
  MpmcRecovery(MpmcRing ring, ClaimRegistry* registry, Stats* stats) noexcept
      : ring_(ring), registry_(registry), stats_(stats) {}

  // Wakes `w` for up to `n` sleepers; a wake syscall that woke nobody hints at a count left by a
  // dead sleeper, and every kIdleWakesBeforeSweep of them the host sweeps (slow path).
  void notify(WaitWord& w, int n) noexcept {
    int woken = 1;
    if (!w.notify(n, &woken)) return;
    if (stats_ != nullptr) Stats::bump(stats_->wakes);
    if (woken != 0 || registry_ == nullptr) return;
    if (++idle_wakes_ < kIdleWakesBeforeSweep) return;
    idle_wakes_ = 0;
    registry_->sweep_sleepers();
  }

  // True if a live participant's claim word covers (op, pos).
  bool live_claimant(std::uint64_t pos, mpmc::ClaimOp op) const noexcept {
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      for (std::uint32_t w = 0; w < kClaimWords; ++w) {
        // acquire: [Q4] a cleared word implies the commit/release is visible to the re-check
        // of seq that follows the scan.
        if (mpmc::claim_covers(words[w].load(std::memory_order_acquire), pos, op)) {
          if (registry_->alive(i)) return true;
          break;
        }
      }
    }
    return false;
  }

  // Reader side: position `pos` is claimed by a writer (enqueue_pos > pos) but not committed.
  // `word` is the caller's free transient claim word. True if the slot was recovered.
  bool recover_unfinished_write(std::uint64_t pos, std::atomic<std::uint64_t>& word) noexcept {
    if (registry_ == nullptr || live_claimant(pos, mpmc::ClaimOp::enqueue)) return false;
    MpmcSlotHeader& s = ring_.slot(pos);
    // acquire: [Q1] a commit during the scan is seen here and wins.
    if (s.seq.load(std::memory_order_acquire) != mpmc::seq_free(pos)) return false;
    // The owner is dead, so seq stays `pos` until the winner of the CAS below releases it.
    // relaxed + release CAS: [Q3], so writers checking this slot later see us as its claimant.
    word.store(mpmc::encode_claim(pos, 1, mpmc::ClaimOp::dequeue), std::memory_order_relaxed);
    std::uint64_t expected = pos;  // dequeue_pos
    // Cases: 1. success: we own position pos and release it below.
    //        2. failure: another survivor (or a normal reader after another recovery) moved
    //           dequeue_pos first; nothing to do.
    if (!ring_.header().dequeue_pos.compare_exchange_strong(expected, pos + 1,
                                                            std::memory_order_release,
                                                            std::memory_order_relaxed)) {
      word.store(0, std::memory_order_relaxed);  // relaxed: we claimed nothing
      return false;
    }
    registry_->reclaim(pos);
    // release: [Q2] pairs with the writer of pos + slots.
    s.seq.store(mpmc::seq_released(pos, ring_.slots()), std::memory_order_release);
    word.store(0, std::memory_order_release);  // [Q4]
    if (stats_ != nullptr) Stats::bump(stats_->recovered);
    ring_.header().space_free.notify(1);
    return true;
  }

  // Writer side: whether the slot of `pos`, holding lap q = pos - slots with seq `seen`, was
  // taken by a reader (dequeue_pos > q) and not released. Otherwise the queue is simply full.
  bool read_in_flight(std::uint64_t pos, std::uint64_t seen) const noexcept {
    if (registry_ == nullptr) return false;
    const std::uint64_t q = pos - ring_.slots();
    // committed and taken, or free in lap q (a dead reader discarding a dead writer's slot)
    if (seen != mpmc::seq_committed(q) && seen != mpmc::seq_free(q)) return false;
    // acquire: [Q3] if a reader's CAS took q, its claim word is visible to a later scan.
    const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_acquire);
    return mpmc::distance(q, deq) > 0;
  }

  // Writer side, after read_in_flight(pos, seen): true if the slot was recovered from a dead
  // reader.
  bool recover_unreleased_read(std::uint64_t pos, std::uint64_t seen) noexcept {
    const std::uint64_t q = pos - ring_.slots();
    if (live_claimant(q, mpmc::ClaimOp::dequeue)) return false;
    // The dead reader's resources are freed and its message counted *before* the CAS that frees
    // the slot: once the slot is free nobody would find them again, so a survivor killed between
    // the CAS and these steps would leak a spill file or chunk and leave a lost message
    // uncounted; done first, the next survivor redoes them (reclaim is idempotent; a double fault
    // may count one message twice, never zero times). Reclaiming first is safe when the CAS then
    // fails: no live claimant means the reader is dead or has released the slot, and a reader
    // frees its chunk and spill file before it releases its slot.
    std::atomic<std::uint64_t>* counter =
        stats_ == nullptr ? nullptr
                          : (seen == mpmc::seq_committed(q) ? &stats_->abandoned : &stats_->recovered);
    registry_->reclaim(q);
    if (counter != nullptr) Stats::bump(*counter);
    std::uint64_t expected = seen;
    // Cases: 1. success: the slot is free for lap pos.
    //        2. failure: the (slow, live after all) reader or another survivor released it:
    //           take our count back.
    // acq_rel: acquire orders our reading of nothing in the slot; release publishes the free
    // slot to the next writer [Q2].
    if (!ring_.slot(pos).seq.compare_exchange_strong(expected, mpmc::seq_free(pos),
                                                     std::memory_order_acq_rel,
                                                     std::memory_order_relaxed)) {
      // relaxed: a statistic, as Stats::bump.
      if (counter != nullptr) counter->fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    SHMQ_KILL_POINT(KillPoint::recovering_read);
    ring_.header().space_free.notify(1);
    return true;
  }

 private:
  MpmcRing ring_;
  ClaimRegistry* registry_;
  Stats* stats_;
  std::uint32_t idle_wakes_ = 0;
};

}  // namespace shmq::core
