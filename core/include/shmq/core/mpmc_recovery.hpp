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
  // The generation of participant `index`'s current holder (mpmc::holder_id); 0 if the host does
  // not reuse participants.
  virtual std::uint32_t generation(std::uint32_t /*index*/) const noexcept { return 0; }
  // Frees host resources tied to position `pos` of a slot recovered from a dead participant.
  virtual void reclaim(std::uint64_t /*pos*/) noexcept {}
  // Whether a sealed write covers `pos` (kSlotSealed, `tag` from the slot): the host loads the
  // seal word named by `tag` with acquire [Q7] and checks that it covers exactly `pos`.
  virtual bool sealed(std::uint64_t /*pos*/, std::uint8_t /*tag*/) const noexcept { return false; }
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

  // How this participant's notify() orders its publish: light once it announced itself on the
  // word it wakes (WaitWord::announce_light_waker(), wait.hpp).
  void set_wake_fence(WakeFence f) noexcept { fence_ = f; }

  // Wakes `w` for up to `n` sleepers; a wake syscall that woke nobody hints at a count left by a
  // dead sleeper, and every kIdleWakesBeforeSweep of them the host sweeps (slow path).
  void notify(WaitWord& w, int n) noexcept {
    int woken = 1;
    if (!w.notify(n, &woken, fence_)) return;
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
    // [Q7] A sealed write is committed on its dead writer's behalf, not discarded. The seal is
    // loaded (acquire, in sealed()) before seq is re-read below: a new seal seen there means the
    // sealed owner's successor committed its predecessor's slots first (commit_on_behalf), so
    // the re-read sees them committed and nothing is discarded that a seal covers.
    const std::uint8_t flags = s.flags;     // plain: the writer is dead; a stale value from an
    const std::uint8_t tag = s.reserved;    // earlier lap fails sealed()'s exact position check
    if ((flags & kSlotSealed) != 0 && tag != 0 && registry_->sealed(pos, tag))
      return commit_on_behalf(ring_, pos);
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
  // reader. A leased slot is never recovered: its message waits for a reader to adopt it [L4].
  bool recover_unreleased_read(std::uint64_t pos, std::uint64_t seen, std::uint64_t self) noexcept {
    const std::uint64_t q = pos - ring_.slots();
    if (live_claimant(q, mpmc::ClaimOp::dequeue)) return false;
    if (leased(q)) {
      resolve_dead_leases(self, nullptr);  // a stale lease word must not keep the slot forever
      if (leased(q)) return false;
    }
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

  // [Q7] Commits the slot of `pos`, filled and sealed by a writer that died before its commit.
  // Several survivors may try; the CAS makes one commit. True if the slot is committed now.
  static bool commit_on_behalf(const MpmcRing& ring, std::uint64_t pos) noexcept {
    std::uint64_t expected = mpmc::seq_free(pos);
    // acq_rel: acquire pairs with the sealing writer's release of its seal through the host's
    // seal word (loaded before us); release publishes the commit to readers [Q1].
    const bool ours = ring.slot(pos).seq.compare_exchange_strong(
        expected, mpmc::seq_committed(pos), std::memory_order_acq_rel, std::memory_order_relaxed);
    if (ours) ring.header().data_ready.notify(1);
    return ours || expected == mpmc::seq_committed(pos);
  }

  // ---- leases [L1]-[L5] (mpmc_ring.hpp, "Leases"). All of it is slow path.

  // True if a lease (a participant's claim word of op lease, alive or dead, or an orphan) covers
  // position q.
  bool leased(std::uint64_t q) const noexcept {
    for (auto& o : ring_.header().orphans)
      // acquire: [L3] an orphan published under the adoption lock.
      if (mpmc::claim_covers(o.load(std::memory_order_acquire), q, mpmc::ClaimOp::lease)) return true;
    if (registry_ == nullptr) return false;
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      for (std::uint32_t w = 0; w < kClaimWords; ++w)
        // acquire: [Q3] as in live_claimant.
        if (mpmc::claim_covers(words[w].load(std::memory_order_acquire), q, mpmc::ClaimOp::lease))
          return true;
    }
    return false;
  }

  // Moves the leases of dead holders into the orphan table and drops stale lease words, under
  // the adoption lock [L3]. `inherited`: the kClaimWords words a new participant took over with
  // its slot (dead, though the slot's holder is alive); null otherwise. Returns false if the lock
  // is held by a live participant (try again later).
  bool resolve_dead_leases(std::uint64_t self, std::atomic<std::uint64_t>* inherited) noexcept {
    if (registry_ == nullptr || !lock_adoption(self)) return false;
    resolve_locked(inherited);
    unlock_adoption();
    return true;
  }

  // Reader side [L2]: takes one orphaned lease (after resolving dead holders' leases) into `mine`
  // (a free claim word of the caller). Returns its claim word, or 0 if none is waiting.
  std::uint64_t adopt(std::atomic<std::uint64_t>& mine, std::uint64_t self) noexcept {
    if (registry_ == nullptr || !lease_waiting() || !lock_adoption(self)) return 0;
    resolve_locked(nullptr);
    std::uint64_t got = 0;
    for (auto& o : ring_.header().orphans) {
      // relaxed: under the lock.
      const std::uint64_t word = o.load(std::memory_order_relaxed);
      if (word == 0) continue;
      // [L2] ours first, then the orphan cleared: a crash in between leaves two identical words,
      // which resolve_locked() merges into one.
      mine.store(word, std::memory_order_relaxed);  // relaxed: published by the unlock (release)
      SHMQ_KILL_POINT(KillPoint::adopting);
      o.store(0, std::memory_order_relaxed);
      got = word;
      break;
    }
    unlock_adoption();
    return got;
  }

  // Reader side: parks the lease in `mine` as an orphan (given back without an ack), so that
  // another reader adopts it. False if the table is full or the lock busy: keep it and retry.
  bool park(std::atomic<std::uint64_t>& mine, std::uint64_t self) noexcept {
    if (registry_ == nullptr || !lock_adoption(self)) return false;
    // relaxed: our own word.
    const std::uint64_t word = mine.load(std::memory_order_relaxed);
    const bool ok = word == 0 || to_orphan(word);
    if (ok) mine.store(0, std::memory_order_relaxed);  // relaxed: published by the unlock
    unlock_adoption();
    return ok;
  }

 private:
  // Whether some lease may wait for adoption: an orphan, or a lease word of a dead participant.
  // Costs a liveness probe (a syscall) per participant holding a lease.
  bool lease_waiting() const noexcept {
    for (auto& o : ring_.header().orphans)
      if (o.load(std::memory_order_relaxed) != 0) return true;  // relaxed: a hint, re-read under lock
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      for (std::uint32_t w = 0; w < kClaimWords; ++w) {
        const std::uint64_t word = words[w].load(std::memory_order_relaxed);  // relaxed: a hint
        if (word != 0 && mpmc::claim_op(word) == mpmc::ClaimOp::lease) {
          if (!registry_->alive(i)) return true;
          break;
        }
      }
    }
    return false;
  }

  // [L3] the adoption lock: a CAS from 0 (or from a dead holder's id) to ours.
  bool lock_adoption(std::uint64_t self) noexcept {
    std::atomic<std::uint64_t>& lock = ring_.header().adopt_lock;
    for (int tries = 0; tries < 4; ++tries) {
      // acquire: pairs with the release in unlock_adoption(): the previous holder's moves are
      // visible.
      std::uint64_t held = lock.load(std::memory_order_acquire);
      if (held != 0) {
        const std::uint32_t index = static_cast<std::uint32_t>(held >> 32) - 1;
        const std::uint32_t gen = static_cast<std::uint32_t>(held);
        if (index < registry_->participants() && registry_->alive(index) &&
            registry_->generation(index) == gen)
          return false;  // a live holder: it finishes soon; the caller tries again later
      }
      // Cases: 1. held == 0: take a free lock. 2. a dead holder's id: break it; what it left half
      // done is redone by us (resolve_locked() merges identical words). 3. CAS fails: someone else took
      // or broke it first; look again.
      // acquire on success: as the load above. relaxed on failure.
      if (lock.compare_exchange_strong(held, self, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
    }
    return false;
  }
  void unlock_adoption() noexcept {
    // release: [L3] publishes our moves to the next holder and to leased() (acquire).
    ring_.header().adopt_lock.store(0, std::memory_order_release);
  }

  void resolve_locked(std::atomic<std::uint64_t>* inherited) noexcept {
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      const bool dead_slot = words == inherited;
      bool alive_known = false, alive = false;
      for (std::uint32_t w = 0; w < kClaimWords; ++w) {
        // relaxed: under the lock; a dead holder's stores are visible once the kernel says dead.
        const std::uint64_t word = words[w].load(std::memory_order_relaxed);
        if (word == 0 || mpmc::claim_op(word) != mpmc::ClaimOp::lease) continue;
        if (!dead_slot) {
          if (!alive_known) {
            alive = registry_->alive(i);
            alive_known = true;
          }
          if (alive) break;
        }
        // A dead lease becomes an orphan, or is dropped if stale; with the table full it waits
        // where it is.
        if (valid_dead_lease(word, &words[w], inherited) && !to_orphan(word)) continue;
        SHMQ_KILL_POINT(KillPoint::adopting);
        words[w].store(0, std::memory_order_relaxed);  // relaxed: published by the unlock
      }
    }
  }

  // Under the lock: `word` into a free orphan entry (true), or true at once if an identical
  // orphan exists (the duplicate a crash between two steps of a move leaves).
  bool to_orphan(std::uint64_t word) noexcept {
    for (auto& o : ring_.header().orphans)
      if (o.load(std::memory_order_relaxed) == word) return true;  // relaxed: under the lock
    for (auto& o : ring_.header().orphans)
      if (o.load(std::memory_order_relaxed) == 0) {
        o.store(word, std::memory_order_relaxed);  // relaxed: published by the unlock
        return true;
      }
    return false;
  }

  // [L5] Whether a dead holder's lease word `word` (in `where`) stands for messages it really
  // holds. A word is written before the claiming CAS [Q3], so a holder killed before (or after
  // losing) its CAS leaves a word for positions it never took. Such a word is stale if
  // dequeue_pos never passed its end, if any of its slots is not held (committed, unreleased),
  // or if another claim covers its first position: a live reader's (it holds them), a copy of the
  // same lease held by a live adopter, or a dead reader's plain claim (ambiguous: the writers'
  // abandon path takes the slot, as for any dead reader). Identical words of dead participants
  // are one lease left twice by a move cut short (L2): they merge into one orphan.
  bool valid_dead_lease(std::uint64_t word, const std::atomic<std::uint64_t>* where,
                        const std::atomic<std::uint64_t>* inherited) const noexcept {
    // acquire: [Q3] a claim CAS seen here makes the claimant's word visible to the scan below.
    const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_acquire);
    const std::uint64_t count = mpmc::claim_count(word);
    const std::uint64_t first = mpmc::claim_first(word, deq);
    if (count == 0 || mpmc::distance(first + count, deq) < 0) return false;
    for (std::uint64_t i = 0; i < count; ++i)
      // acquire: [Q2] a release by another reader is seen.
      if (ring_.slot(first + i).seq.load(std::memory_order_acquire) != mpmc::seq_committed(first + i))
        return false;
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      for (std::uint32_t w = 0; w < kClaimWords; ++w) {
        if (&words[w] == where) continue;
        const std::uint64_t other = words[w].load(std::memory_order_acquire);  // [Q3]
        if (mpmc::claim_covers(other, first, mpmc::ClaimOp::dequeue)) return false;
        if (mpmc::claim_covers(other, first, mpmc::ClaimOp::lease) && words != inherited &&
            registry_->alive(i))
          return false;
      }
    }
    return true;
  }

 public:

 private:
  MpmcRing ring_;
  ClaimRegistry* registry_;
  Stats* stats_;
  std::uint32_t idle_wakes_ = 0;
  WakeFence fence_ = WakeFence::full;
};

}  // namespace shmq::core
