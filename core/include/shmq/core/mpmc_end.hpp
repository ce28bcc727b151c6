// What an MPMC writer and reader share: the ring view, the participant's claim words, recovery,
// local statistics, the sleep mark and the blocking loop. Protocol and tags: mpmc_ring.hpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

#include "shmq/core/backoff.hpp"
#include "shmq/core/fault.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/mpmc_recovery.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// Counters kept locally and flushed in batches: a shared counter bumped per message would make
// every writer and reader of every process fight over one cache line.
class LocalCounters {
 public:
  static constexpr std::uint64_t kFlushEvery = 256;
  LocalCounters(Stats* s, bool sent) noexcept : stats_(s), sent_(sent) {}
  // A moved-from handle has nothing left to flush: its counts went with the move.
  LocalCounters(LocalCounters&& o) noexcept
      : stats_(o.stats_), sent_(o.sent_), msgs_(std::exchange(o.msgs_, 0)),
        bytes_(std::exchange(o.bytes_, 0)) {}
  LocalCounters& operator=(LocalCounters&& o) noexcept {
    if (this != &o) {
      flush();
      stats_ = o.stats_;
      sent_ = o.sent_;
      msgs_ = std::exchange(o.msgs_, 0);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void add(std::uint64_t msgs, std::uint64_t bytes) noexcept {
    msgs_ += msgs;
    bytes_ += bytes;
    if (msgs_ >= kFlushEvery) flush();
  }
  void discard() noexcept { msgs_ = bytes_ = 0; }
  void flush() noexcept {
    if (msgs_ == 0 || stats_ == nullptr) return;
    Stats::bump(sent_ ? stats_->sent : stats_->received, msgs_);
    Stats::bump(sent_ ? stats_->bytes_sent : stats_->bytes_received, bytes_);
    msgs_ = 0;
    bytes_ = 0;
  }

 private:
  Stats* stats_;
  bool sent_;
  std::uint64_t msgs_ = 0;
  std::uint64_t bytes_ = 0;
};

class MpmcEnd {
 public:
  MpmcEnd(const MpmcEnd&) = delete;
  MpmcEnd& operator=(const MpmcEnd&) = delete;
  MpmcEnd(MpmcEnd&&) noexcept = default;
  MpmcEnd& operator=(MpmcEnd&&) noexcept = default;
  ~MpmcEnd() { counters_.flush(); }

  const MpmcRing& ring() const noexcept { return ring_; }
  void flush_stats() noexcept { counters_.flush(); }
  // For a copy of the handle inherited by a forked child: its counts belong to the parent.
  void discard_stats() noexcept { counters_.discard(); }

 protected:
  explicit MpmcEnd(bool writer) noexcept
      : recovery_({}, nullptr, nullptr), counters_(nullptr, writer) {}
  // `words`: this participant's kClaimWords claim words (zeroed here). `registry` may be null
  // (no crash recovery, e.g. threads of one process that cannot die separately).
  // `mark`: where this participant records its sleeps (SleepMark; value without the word bit).
  // `self`: mpmc::holder_id of this participant (for the adoption lock of leases).
  MpmcEnd(MpmcRing ring, std::atomic<std::uint64_t>* words, ClaimRegistry* registry,
          Stats* stats, SleepMark mark, bool writer, std::uint64_t self) noexcept
      : ring_(ring), words_(words), recovery_(ring, registry, stats), stats_(stats),
        counters_(stats, writer),
        mark_{mark.word, mark.value | (writer ? kSleepOnSpace : kSleepOnData)}, self_(self) {
    // [L4] Leases left in these words by the slot's dead previous holder are moved to the orphan
    // table first (zeroing them would lose their messages). One that finds no room stays.
    if (inherited_lease()) {
      // A live holder of the adoption lock moves a few words and leaves: spin, bounded. If it
      // stays busy, the lease words stay in our slot (not zeroed below) for a later move.
      for (int tries = 0; tries < (1 << 20) && !recovery_.resolve_dead_leases(self_, words_); ++tries)
        cpu_relax();
    }
    for (std::uint32_t w = 0; w < kClaimWords; ++w) {
      // relaxed: nothing is claimed yet; a survivor reading a stale word only waits one probe.
      if (mpmc::claim_op(words_[w].load(std::memory_order_relaxed)) != mpmc::ClaimOp::lease)
        words_[w].store(0, std::memory_order_relaxed);
    }
    // [Q5] before our first notify: writers wake readers on data_ready, readers writers on
    // space_free.
    if (ring.valid()) {
      WaitWord& wakes = writer ? ring.header().data_ready : ring.header().space_free;
      recovery_.set_wake_fence(wakes.announce_light_waker());
    }
  }

  bool inherited_lease() const noexcept {
    for (std::uint32_t w = 0; w < kClaimWords; ++w) {
      // relaxed: the previous holder is dead (we hold its slot); its stores are visible.
      const std::uint64_t word = words_[w].load(std::memory_order_relaxed);
      if (word != 0 && mpmc::claim_op(word) == mpmc::ClaimOp::lease) return true;
    }
    return false;
  }

  // The blocking loop of both sides: retry `attempt` while it reports `waiting_out` (full for a
  // writer, empty for a reader), spin, then sleep on `word` in slices bounded by the stuck-slot
  // watch. `waits` counts the first sleep of the call; local counts are flushed before sleeping
  // so a statistics reader is not misled by a sleeping handle.
  template <class Attempt, class Ready>
  Status block_on(Attempt&& attempt, Status waiting_out, Deadline d, WaitWord& word,
                  Ready&& ready, std::atomic<std::uint64_t>* waits) noexcept {
    Backoff backoff;
    bool counted = false;
    for (;;) {
      const Status st = attempt();
      if (st != waiting_out) return st;
      if (d.expired()) return Status::timeout;
      if (backoff.spin()) continue;
      if (!counted && waits != nullptr) {
        Stats::bump(*waits);
        counted = true;
      }
      counters_.flush();
      const FutexResult r = word.wait(
          [&] {
            SHMQ_KILL_POINT(KillPoint::asleep);
            return ready();
          },
          d.capped(watch_.sleep_cap()), mark_);
      if (r == FutexResult::interrupted) return Status::interrupted;
    }
  }

  // A claim word (1..kClaimWords - 1) free to hold a claim or a view, or 0 if all are taken.
  std::uint32_t free_hold_word() const noexcept {
    for (std::uint32_t w = 1; w < kClaimWords; ++w)
      // acquire: a reader's release() may run in another thread; pairs with its release clear
      // [Q4], so what that thread did with the view happens before we reuse the word. (A
      // writer's words are cleared by its own thread; the acquire costs it nothing.)
      if (words_[w].load(std::memory_order_acquire) == 0) return w;
    return 0;
  }

  // Case 1 of both claim loops, from `pos` whose slot the caller found claimable: how many
  // consecutive slots, up to `want`, hold seq_of(their position) (free for a writer, committed
  // for a reader). acquire (each): [Q2] for a writer, [Q1] for a reader, as the caller's own load.
  template <class SeqOf>
  std::uint64_t run_length(std::uint64_t pos, std::uint64_t want, SeqOf&& seq_of) const noexcept {
    std::uint64_t n = 1;
    while (n < want && ring_.slot(pos + n).seq.load(std::memory_order_acquire) == seq_of(pos + n)) ++n;
    return n;
  }

  // Case 1, continued: records the claim of [pos, pos + n) in `word` [Q3], runs `before_cas` (a
  // kill point), then CASes `position` (enqueue_pos or dequeue_pos) from pos to pos + n. True: the
  // run is ours. False (case 1b): another participant moved `position` first; `pos` holds its
  // new value.
  template <class BeforeCas>
  bool take_run(std::atomic<std::uint64_t>& position, std::uint64_t& pos, std::uint64_t n,
                mpmc::ClaimOp op, std::atomic<std::uint64_t>& word, BeforeCas&& before_cas) noexcept {
    // relaxed: [Q3] published by the release CAS below.
    word.store(mpmc::encode_claim(pos, n, op), std::memory_order_relaxed);
    before_cas();
    // release: [Q3] publishes the claim word with the new position (a reader acquired the data
    // through seq already). relaxed on failure: the reloaded pos is only a new starting point.
    if (!position.compare_exchange_weak(pos, pos + n, std::memory_order_release,
                                        std::memory_order_relaxed))
      return false;
    watch_.clear();
    return true;
  }

  // Case 3 of both claim loops: the slot of `pos` is a lap ahead of `pos`, so another participant
  // took `pos` since we loaded it. Reloads `position` (enqueue_pos or dequeue_pos) into `pos`;
  // if it has not moved, the slot's seq is impossible: clears `word` and returns false (corrupt).
  bool reload_or_corrupt(std::atomic<std::uint64_t>& position, std::uint64_t& pos,
                         std::atomic<std::uint64_t>& word) noexcept {
    // relaxed: the acquire on seq by the caller ordered the claiming CAS before this load.
    const std::uint64_t next = position.load(std::memory_order_relaxed);
    if (next != pos) {
      pos = next;
      return true;
    }
    word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
    if (stats_ != nullptr) Stats::bump(stats_->corrupt_events);
    return false;
  }

  MpmcRing ring_;
  std::atomic<std::uint64_t>* words_ = nullptr;
  MpmcRecovery recovery_;
  Stats* stats_ = nullptr;
  LocalCounters counters_;
  SleepMark mark_;
  std::uint64_t self_ = 0;
  detail::StuckWatch watch_;
};

}  // namespace shmq::core
