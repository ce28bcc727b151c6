// MpmcRing: a bounded multi-producer multi-consumer queue of fixed-size slots on caller-supplied
// memory (the Vyukov scheme: one 64-bit sequence number per slot), that survives the death of
// any participant at any instruction.
//
// Layout (all offsets fixed, so two builds agree):
//   MpmcRingHeader   immutable parameters; enqueue_pos, dequeue_pos, two WaitWords and the closed
//                    flag, each on a cache line of its own
//   slots[slots]     {seq u64, length u32, kind u16, flags u8, pad u8} + slot_size payload bytes,
//                    stride rounded up to kSlotAlign
//   Positions are 64-bit and monotonic (they never wrap in practice; the code still uses modular
//   differences, and the tests start them just below 2^64). Slot of position p: p & (slots - 1).
//   Slot seq, for the slot of position p in lap p:
//     seq == p           free: the writer that claims p may fill it
//     seq == p + 1       committed: the reader that claims p may read it
//     seq == p + slots   released: free for the writer of p + slots
//
// Synchronization
//   [Q1] commit: a writer fills a slot, then stores seq = p + 1 (release); a reader loads seq
//        (acquire) before it reads length, kind, flags and payload.
//   [Q2] release: a reader done with a slot stores seq = p + slots (release); a writer loads seq
//        (acquire) before it overwrites the slot.
//   [Q3] claim record: before its CAS on enqueue_pos / dequeue_pos a participant stores what it
//        claims in its own claim word (relaxed), and the CAS is a release. A survivor that loads
//        the position (acquire) and sees the CAS therefore sees the claim word too.
//   [Q4] claim clear: after commit (Q1) or release (Q2) the claim word is cleared (release); a
//        survivor that loads 0 (acquire) and then re-reads seq sees the commit or release.
//   [Q5] sleeping: readers sleep on data_ready, writers notify it after Q1; writers sleep on
//        space_free, readers notify it after Q2 (the Dekker pair of wait.hpp). A wake is issued
//        only when someone is registered as a waiter. Sleeps are sliced (kSleepSlice) so that a
//        waker that died between publish and wake strands nobody, and liveness is re-checked.
//   [Q6] closed: stored with release, loaded with acquire; then every sleeper is woken.
//   Contract for users: send/commit is a release, recv is an acquire: all a writer wrote into a
//   message before commit is visible to the reader that receives it. FIFO per writer; messages of
//   different writers are ordered by their claims.
//
// Crash recovery (the DESIGN promise). Every participant owns kClaimWords claim words in a table
// the host provides (ClaimRegistry; shm uses the segment's participant slots, whose liveness the
// kernel keeps with OFD locks). A claim word holds {48 low bits of the first position, count,
// op} for a claim in flight, 0 when idle.
//   Writer died after its enqueue CAS, before commit: the slot stays at seq == p while
//     enqueue_pos > p. A reader that finds this for longer than kStuckGrace scans the table for
//     claim words covering (enqueue, p). Any live claimant: keep waiting (a live but slow owner is
//     never robbed). None (all dead, or their words reused by new holders): the owner is dead, and
//     since it is dead the slot never changes again; the reader claims p on dequeue_pos (recording
//     its own claim first), releases the slot without delivering it, and counts `recovered`.
//   Reader died after its dequeue CAS, before release: the slot stays at seq == q + 1 (or q, if
//     the dead reader was discarding a dead writer's slot) while dequeue_pos > q. A writer that
//     finds the slot of p = q + slots in that state scans for claims covering (dequeue, q); none
//     alive: it CASes seq to p, counting `abandoned` (a committed message died with its reader)
//     or `recovered`.
//   Why "no live claimant" means "owner dead": the owner stores its claim before its CAS [Q3] and
//     clears it only after commit/release [Q4], so while it lives and has not finished, its word
//     covers p; a survivor re-reads seq after the scan to rule out a finish during the scan.
//     A participant always clears its word on every path that leaves without a claim, so a live
//     participant's stale word cannot keep a dead owner's slot stuck forever.
//   The host's reclaim(p) runs for every recovered slot (shm: unlinks the spill file of p).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "shmq/core/backoff.hpp"
#include "shmq/core/fault.hpp"
#include "shmq/core/layout.hpp"
#include "shmq/core/result.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

inline constexpr std::uint64_t kMpmcMagic = 0x31474E49524D504Dull;  // "MPMRING1" little-endian
inline constexpr std::uint32_t kClaimWords = 4;   // per participant: [0] transient, [1..3] held
inline constexpr std::uint64_t kMaxBatch = (1u << 14) - 1;  // the count field of a claim word
inline constexpr std::uint64_t kMaxSlots = 1ull << 30;
inline constexpr std::uint64_t kMaxSlotSize = 1ull << 30;
inline constexpr std::uint64_t kSlotAlign = 64;  // one x86 line: neighbouring slots belong to
                                                 // different writers; 128 would waste space
inline constexpr auto kSleepSlice = std::chrono::milliseconds(50);
// A slot unfinished for kStuckGrace gets its owner's liveness probed; the interval then doubles
// up to kStuckProbeMax (a live owner holding a message for long costs a syscall per probe). While
// watching, sleeps are capped at the interval, so a dead owner is found well within 100 ms.
inline constexpr auto kStuckGrace = std::chrono::milliseconds(2);
inline constexpr auto kStuckProbeMax = std::chrono::milliseconds(32);

// Slot flags (the host may give kSpilled its own meaning; the ring only carries it).
inline constexpr std::uint8_t kSlotSkip = 1;     // an aborted claim: readers drop it
inline constexpr std::uint8_t kSlotSpilled = 2;  // the payload references a side allocation

// SleepMark bits: which of the ring's wait words a participant sleeps on.
inline constexpr std::uint64_t kSleepOnData = 1;   // data_ready (readers)
inline constexpr std::uint64_t kSleepOnSpace = 2;  // space_free (writers)
inline constexpr std::uint32_t kIdleWakesBeforeSweep = 64;

struct MpmcSlotHeader {
  std::atomic<std::uint64_t> seq;  // [Q1] [Q2]
  std::uint32_t length;            // payload bytes used; plain, published by [Q1]
  std::uint16_t kind;
  std::uint8_t flags;
  std::uint8_t reserved;
};
static_assert(sizeof(MpmcSlotHeader) == 16, "slot header is 16 bytes");
static_assert(std::is_standard_layout_v<MpmcSlotHeader>);

struct alignas(kCacheLine) MpmcRingHeader {
  // ---- immutable after init_in(); attach() copies them into locals once and validates them
  std::uint64_t magic;
  std::uint64_t slots;
  std::uint64_t slot_size;
  std::uint64_t stride;
  std::uint64_t maxsize;      // bound in messages; == slots when unbounded
  std::uint64_t total_bytes;  // header + slots * stride
  // ---- written by writers
  alignas(kCacheLine) std::atomic<std::uint64_t> enqueue_pos;
  // ---- written by readers
  alignas(kCacheLine) std::atomic<std::uint64_t> dequeue_pos;
  alignas(kCacheLine) WaitWord data_ready;   // readers sleep here
  alignas(kCacheLine) WaitWord space_free;   // writers sleep here
  alignas(kCacheLine) std::atomic<std::uint32_t> closed;  // [Q6]
};
static_assert(std::is_standard_layout_v<MpmcRingHeader>, "shared between processes");
static_assert(sizeof(MpmcRingHeader) == 6 * kCacheLine, "six cache lines");
static_assert(offsetof(MpmcRingHeader, enqueue_pos) == kCacheLine);
static_assert(offsetof(MpmcRingHeader, dequeue_pos) == 2 * kCacheLine);

struct MpmcConfig {
  std::uint64_t slots = 4096;       // power of two, at least 2
  std::uint64_t slot_size = 256;    // payload bytes per slot, a multiple of 8, at least 8
  std::uint64_t maxsize = 0;        // 0 = slots
  // Test hooks: start positions and futex words near their wrap points.
  std::uint64_t initial_position = 0;
  std::uint32_t initial_epoch = 0;
};

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

enum class ClaimOp : std::uint64_t { enqueue = 1, dequeue = 2 };
inline constexpr std::uint64_t kClaimPosMask = (1ull << 48) - 1;

constexpr std::uint64_t encode_claim(std::uint64_t pos, std::uint64_t count, ClaimOp op) noexcept {
  return ((pos & kClaimPosMask) << 16) | ((count & kMaxBatch) << 2) |
         static_cast<std::uint64_t>(op);
}
// Whether `word` claims `pos` for `op`. Positions in flight lie within 2^48 of each other.
constexpr bool claim_covers(std::uint64_t word, std::uint64_t pos, ClaimOp op) noexcept {
  if ((word & 3) != static_cast<std::uint64_t>(op)) return false;
  const std::uint64_t first = word >> 16;
  const std::uint64_t count = (word >> 2) & kMaxBatch;
  return ((pos - first) & kClaimPosMask) < count;
}
constexpr std::int64_t distance(std::uint64_t from, std::uint64_t to) noexcept {
  return static_cast<std::int64_t>(to - from);
}

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

// A view of a ring in memory. Cheap to copy; every immutable parameter is a local copy.
class MpmcRing {
 public:
  static constexpr std::uint64_t stride_for(std::uint64_t slot_size) noexcept {
    return align_up(sizeof(MpmcSlotHeader) + slot_size, kSlotAlign);
  }

  static Result<std::uint64_t> required_bytes(const MpmcConfig& c) {
    // At least 2: with one slot, "committed in lap p" (seq p + 1) and "free for lap p + 1"
    // (seq p + 1) would be the same state.
    if (!is_pow2(c.slots) || c.slots < 2 || c.slots > kMaxSlots)
      return Error(Errc::invalid_argument, "queue slots must be a power of two from 2 to 2^30, not " +
                                               std::to_string(c.slots));
    if (c.slot_size < 8 || c.slot_size % 8 != 0 || c.slot_size > kMaxSlotSize)
      return Error(Errc::invalid_argument, "queue slot_size must be a multiple of 8 from 8 to 2^30, not " +
                                               std::to_string(c.slot_size));
    if (c.maxsize > c.slots)
      return Error(Errc::invalid_argument, "queue maxsize " + std::to_string(c.maxsize) +
                                               " exceeds its slots (" + std::to_string(c.slots) + ")");
    return sizeof(MpmcRingHeader) + c.slots * stride_for(c.slot_size);
  }

  // Formats `mem` (which no one else may use yet). The host publishes it afterwards.
  static Result<MpmcRing> init_in(std::span<std::byte> mem, const MpmcConfig& c) {
    auto need = required_bytes(c);
    if (!need) return std::move(need).error();
    if (mem.size() < *need || reinterpret_cast<std::uintptr_t>(mem.data()) % kCacheLine != 0)
      return Error(Errc::size_mismatch, "ring memory too small or misaligned");
    auto* h = new (mem.data()) MpmcRingHeader;
    h->magic = kMpmcMagic;
    h->slots = c.slots;
    h->slot_size = c.slot_size;
    h->stride = stride_for(c.slot_size);
    h->maxsize = c.maxsize == 0 ? c.slots : c.maxsize;
    h->total_bytes = *need;
    // relaxed (all stores below): the host publishes the whole ring with a release store later.
    h->enqueue_pos.store(c.initial_position, std::memory_order_relaxed);
    h->dequeue_pos.store(c.initial_position, std::memory_order_relaxed);
    h->data_ready.init();
    h->space_free.init();
    h->data_ready.epoch.store(c.initial_epoch, std::memory_order_relaxed);
    h->space_free.epoch.store(c.initial_epoch, std::memory_order_relaxed);
    h->closed.store(0, std::memory_order_relaxed);
    for (std::uint64_t i = 0; i < c.slots; ++i) {
      const std::uint64_t pos = c.initial_position + i;
      auto* s = new (mem.data() + sizeof(MpmcRingHeader) + (pos & (c.slots - 1)) * h->stride)
          MpmcSlotHeader;
      s->seq.store(pos, std::memory_order_relaxed);
      s->length = 0;
      s->kind = 0;
      s->flags = 0;
      s->reserved = 0;
    }
    return attach(mem);
  }

  // Validates a formatted ring; named errors for each violated invariant.
  static Result<MpmcRing> attach(std::span<std::byte> mem) {
    auto bad = [](const char* field, std::uint64_t v) {
      return Error(Errc::corrupt, std::string("queue ring has a corrupt header at field '") + field +
                                      "' (" + std::to_string(v) + ")");
    };
    if (mem.size() < sizeof(MpmcRingHeader) ||
        reinterpret_cast<std::uintptr_t>(mem.data()) % kCacheLine != 0)
      return Error(Errc::truncated, "queue ring memory is smaller than its header");
    const auto* h = reinterpret_cast<const MpmcRingHeader*>(mem.data());
    MpmcRing r;
    // Each shared field read once into a local, then checked.
    const std::uint64_t magic = h->magic;
    r.slots_ = h->slots;
    r.slot_size_ = h->slot_size;
    r.stride_ = h->stride;
    r.maxsize_ = h->maxsize;
    const std::uint64_t total = h->total_bytes;
    if (magic != kMpmcMagic) return Error(Errc::bad_magic, "queue ring has a bad magic number");
    if (!is_pow2(r.slots_) || r.slots_ < 2 || r.slots_ > kMaxSlots) return bad("slots", r.slots_);
    if (r.slot_size_ < 8 || r.slot_size_ % 8 != 0 || r.slot_size_ > kMaxSlotSize)
      return bad("slot_size", r.slot_size_);
    if (r.stride_ != stride_for(r.slot_size_)) return bad("stride", r.stride_);
    if (r.maxsize_ == 0 || r.maxsize_ > r.slots_) return bad("maxsize", r.maxsize_);
    if (total != sizeof(MpmcRingHeader) + r.slots_ * r.stride_) return bad("total_bytes", total);
    if (total > mem.size())
      return Error(Errc::size_mismatch, "queue ring needs " + std::to_string(total) +
                                            " bytes but its segment body has " +
                                            std::to_string(mem.size()));
    r.header_ = reinterpret_cast<MpmcRingHeader*>(mem.data());
    r.slot_base_ = mem.data() + sizeof(MpmcRingHeader);
    r.mask_ = r.slots_ - 1;
    return r;
  }

  MpmcRing() = default;
  bool valid() const noexcept { return header_ != nullptr; }
  std::uint64_t slots() const noexcept { return slots_; }
  std::uint64_t slot_size() const noexcept { return slot_size_; }
  std::uint64_t maxsize() const noexcept { return maxsize_; }
  std::uint64_t capacity() const noexcept { return maxsize_; }
  bool bounded_below_slots() const noexcept { return maxsize_ < slots_; }

  MpmcRingHeader& header() const noexcept { return *header_; }
  MpmcSlotHeader& slot(std::uint64_t pos) const noexcept {
    return *reinterpret_cast<MpmcSlotHeader*>(slot_base_ + (pos & mask_) * stride_);
  }
  std::byte* payload(std::uint64_t pos) const noexcept {
    return slot_base_ + (pos & mask_) * stride_ + sizeof(MpmcSlotHeader);
  }

  // Messages waiting (claimed-but-unfinished writes included); never negative, never above
  // capacity().
  std::size_t size_guess() const noexcept {
    // acquire (both): dequeue_pos first; every reader CAS that produced it happened after the
    // writer CAS it consumed, so the enqueue_pos loaded next is not older than it.
    const std::uint64_t deq = header_->dequeue_pos.load(std::memory_order_acquire);
    const std::uint64_t enq = header_->enqueue_pos.load(std::memory_order_acquire);
    const std::int64_t d = detail::distance(deq, enq);
    if (d <= 0) return 0;
    return static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(d), maxsize_));
  }

  bool closed() const noexcept {
    // acquire: [Q6] pairs with the release in close().
    return header_->closed.load(std::memory_order_acquire) != 0;
  }
  void close() noexcept {
    // release: [Q6] pairs with the acquire in closed().
    header_->closed.store(1, std::memory_order_release);
    header_->data_ready.notify();
    header_->space_free.notify();
  }

 private:
  MpmcRingHeader* header_ = nullptr;
  std::byte* slot_base_ = nullptr;
  std::uint64_t slots_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t slot_size_ = 0;
  std::uint64_t stride_ = 0;
  std::uint64_t maxsize_ = 0;
};

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
  bool live_claimant(std::uint64_t pos, detail::ClaimOp op) const noexcept {
    const std::uint32_t n = registry_->participants();
    for (std::uint32_t i = 0; i < n; ++i) {
      std::atomic<std::uint64_t>* words = registry_->claim_words(i);
      for (std::uint32_t w = 0; w < kClaimWords; ++w) {
        // acquire: [Q4] a cleared word implies the commit/release is visible to the re-check
        // of seq that follows the scan.
        if (detail::claim_covers(words[w].load(std::memory_order_acquire), pos, op)) {
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
    if (registry_ == nullptr || live_claimant(pos, detail::ClaimOp::enqueue)) return false;
    MpmcSlotHeader& s = ring_.slot(pos);
    // acquire: [Q1] a commit during the scan is seen here and wins.
    if (s.seq.load(std::memory_order_acquire) != pos) return false;
    // The owner is dead, so seq stays `pos` until the winner of the CAS below releases it.
    // relaxed + release CAS: [Q3], so writers checking this slot later see us as its claimant.
    word.store(detail::encode_claim(pos, 1, detail::ClaimOp::dequeue), std::memory_order_relaxed);
    std::uint64_t expected = pos;
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
    s.seq.store(pos + ring_.slots(), std::memory_order_release);
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
    if (seen != q + 1 && seen != q) return false;  // q + 1: committed and taken; q: see below
    // acquire: [Q3] if a reader's CAS took q, its claim word is visible to a later scan.
    const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_acquire);
    return detail::distance(q, deq) > 0;
  }

  // Writer side, after read_in_flight(pos, seen): true if the slot was recovered from a dead
  // reader.
  bool recover_unreleased_read(std::uint64_t pos, std::uint64_t seen) noexcept {
    const std::uint64_t q = pos - ring_.slots();
    if (live_claimant(q, detail::ClaimOp::dequeue)) return false;
    // The dead reader's resources are freed and its message counted *before* the CAS that frees
    // the slot: once the slot is free nobody would find them again, so a survivor killed between
    // the CAS and these steps used to leak a spill file or chunk and leave a lost message
    // uncounted. Now the next survivor redoes them (reclaim is idempotent; a double fault may
    // count one message twice, never zero times). Reclaiming first is safe when the CAS then
    // fails: no live claimant means the reader is dead or has released the slot, and a reader
    // frees its chunk and spill file before it releases its slot.
    std::atomic<std::uint64_t>* counter =
        stats_ == nullptr ? nullptr : (seen == q + 1 ? &stats_->abandoned : &stats_->recovered);
    registry_->reclaim(q);
    if (counter != nullptr) Stats::bump(*counter);
    std::uint64_t expected = seen;
    // Cases: 1. success: the slot is free for lap pos.
    //        2. failure: the (slow, live after all) reader or another survivor released it:
    //           take our count back.
    // acq_rel: acquire orders our reading of nothing in the slot; release publishes the free
    // slot to the next writer [Q2].
    if (!ring_.slot(pos).seq.compare_exchange_strong(expected, pos, std::memory_order_acq_rel,
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

// A slot claimed for writing in place. Plain data; MpmcWriter::commit/abort finish it.
struct MpmcClaim {
  std::uint64_t pos = 0;
  std::byte* data = nullptr;
  std::size_t capacity = 0;  // slot_size
  std::uint32_t word = 0;    // the claim word in use (1..3); 0 = invalid claim
  Status status = Status::full;
  bool valid() const noexcept { return word != 0; }
};

// A received message still occupying its slot until MpmcReader::release().
struct MpmcView {
  std::uint64_t pos = 0;
  const std::byte* data = nullptr;
  std::uint32_t length = 0;
  std::uint16_t kind = 0;
  std::uint8_t flags = 0;
  std::uint8_t word = 0;  // the claim word holding it (0 = transient, in recv_many)
  std::span<const std::byte> bytes() const noexcept { return {data, length}; }
};

// Counters kept locally and flushed in batches: a shared counter bumped per message would make
// every writer and reader of every process fight over one cache line.
class LocalCounters {
 public:
  static constexpr std::uint64_t kFlushEvery = 256;
  LocalCounters(Stats* s, bool sent) noexcept : stats_(s), sent_(sent) {}
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

// The blocking loop shared by writers (waiting out `full` on space_free) and readers (waiting out
// `empty` on data_ready): retry `attempt`, spin, then sleep on `word` in slices bounded by the
// stuck-slot watch. `waits` counts the first sleep of the call; local counts are flushed before
// sleeping so a statistics reader is not misled by a sleeping handle.
template <class Attempt, class Ready>
Status block_on(Attempt&& attempt, Status waiting_out, Deadline d, WaitWord& word, Ready&& ready,
                std::atomic<std::uint64_t>* waits, LocalCounters& counters,
                const detail::StuckWatch& watch, SleepMark mark) noexcept {
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
    counters.flush();
    const FutexResult r = word.wait(
        [&] {
          SHMQ_KILL_POINT(KillPoint::asleep);
          return ready();
        },
        d.capped(watch.sleep_cap()), mark);
    if (r == FutexResult::interrupted) return Status::interrupted;
  }
}

// One writer participant. Not thread-safe: one thread at a time (any number of writers).
class MpmcWriter {
 public:
  MpmcWriter() noexcept : recovery_({}, nullptr, nullptr), counters_(nullptr, true) {}
  // `words`: this participant's kClaimWords claim words (zeroed here). `registry` may be null
  // (no crash recovery, e.g. threads of one process that cannot die separately).
  // `mark`: where this participant records its sleeps (SleepMark; value without the word bit).
  MpmcWriter(MpmcRing ring, std::atomic<std::uint64_t>* words, ClaimRegistry* registry,
             Stats* stats, SleepMark mark = {}) noexcept
      : ring_(ring), words_(words), recovery_(ring, registry, stats), stats_(stats),
        counters_(stats, true), mark_{mark.word, mark.value | kSleepOnSpace} {
    // relaxed: nothing is claimed yet; a survivor reading a stale word only waits one probe.
    for (std::uint32_t w = 0; w < kClaimWords; ++w) words_[w].store(0, std::memory_order_relaxed);
  }
  MpmcWriter(const MpmcWriter&) = delete;
  MpmcWriter& operator=(const MpmcWriter&) = delete;
  MpmcWriter(MpmcWriter&&) noexcept = default;
  MpmcWriter& operator=(MpmcWriter&&) noexcept = default;
  ~MpmcWriter() { counters_.flush(); }

  const MpmcRing& ring() const noexcept { return ring_; }

  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept {
    if (msg.size() > ring_.slot_size()) return Status::too_big;
    std::uint64_t pos = 0;
    const Status st = claim(1, words_[0], pos);
    if (st != Status::ok) return st;
    fill(pos, msg, kind, 0);
    commit_range(pos, 1, words_[0]);
    counters_.add(1, msg.size());
    return Status::ok;
  }

  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d,
                            std::uint16_t kind = 0) noexcept {
    if (msg.size() > ring_.slot_size()) return Status::too_big;
    return block([&] { return try_send(msg, kind); }, d);
  }

  // Claims one slot for writing in place (slot_size bytes). Up to kClaimWords - 1 claims may be
  // outstanding per writer; beyond that the claim fails with `full`.
  [[nodiscard]] MpmcClaim try_claim() noexcept {
    MpmcClaim c;
    const std::uint32_t w = free_hold_word();
    if (w == 0) return c;
    std::uint64_t pos = 0;
    c.status = claim(1, words_[w], pos);
    if (c.status != Status::ok) return c;
    c.pos = pos;
    c.data = ring_.payload(pos);
    c.capacity = ring_.slot_size();
    c.word = w;
    SHMQ_KILL_POINT(KillPoint::mid_write);
    return c;
  }

  [[nodiscard]] MpmcClaim claim(Deadline d) noexcept {
    MpmcClaim c;
    const Status st = block(
        [&] {
          c = try_claim();
          return c.status;
        },
        d);
    c.status = st;
    return c;
  }

  // Publishes a claim: `used` payload bytes (<= slot_size), `flags` for the host (kSlotSpilled).
  void commit(MpmcClaim& c, std::size_t used, std::uint16_t kind, std::uint8_t flags = 0) noexcept {
    if (!c.valid()) return;
    MpmcSlotHeader& s = ring_.slot(c.pos);
    s.length = static_cast<std::uint32_t>(std::min<std::size_t>(used, ring_.slot_size()));
    s.kind = kind;
    s.flags = flags;
    SHMQ_KILL_POINT(KillPoint::before_commit);
    commit_range(c.pos, 1, words_[c.word]);
    if ((flags & kSlotSkip) == 0) counters_.add(1, used);
    c.word = 0;
    c.status = Status::closed;
  }
  // A claimed position cannot be given back (later ones may be taken): it is committed as a
  // skip record that readers drop.
  void abort(MpmcClaim& c) noexcept { commit(c, 0, 0, kSlotSkip); }

  // Sends a prefix of `msgs` with one claim (one CAS); returns how many were sent. Stops at the
  // first message larger than a slot (*why = too_big) or when nothing is free (*why = full).
  std::size_t try_send_many(std::span<const std::span<const std::byte>> msgs, std::uint16_t kind,
                            Status* why = nullptr) noexcept {
    std::size_t fit = 0;
    while (fit < msgs.size() && fit < kMaxBatch && msgs[fit].size() <= ring_.slot_size()) ++fit;
    Status st = fit == 0 && !msgs.empty() ? Status::too_big : Status::ok;
    std::uint64_t pos = 0, n = 0;
    if (fit != 0) {
      st = claim(fit, words_[0], pos, &n);
      if (st == Status::ok) {
        std::uint64_t bytes = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
          fill(pos + i, msgs[i], kind, 0);
          bytes += msgs[i].size();
        }
        commit_range(pos, n, words_[0]);
        counters_.add(n, bytes);
        if (n < msgs.size() && msgs[n].size() > ring_.slot_size()) st = Status::too_big;
      }
    }
    if (why != nullptr) *why = st;
    return static_cast<std::size_t>(n);
  }

  // Sends all of `msgs` unless the deadline passes or a message is too big; returns the count.
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind, Status* why = nullptr) noexcept {
    std::size_t done = 0;
    Status st = Status::ok;
    while (done < msgs.size()) {
      st = block(
          [&] {
            Status s = Status::ok;
            const std::size_t n = try_send_many(msgs.subspan(done), kind, &s);
            done += n;
            return n != 0 ? Status::ok : s;
          },
          d);
      if (st != Status::ok) break;
    }
    if (why != nullptr) *why = st;
    return done;
  }

  // True if a send would find room now (a guess).
  bool writable_guess() const noexcept {
    // relaxed: a guess; the claim re-validates everything.
    const std::uint64_t pos = ring_.header().enqueue_pos.load(std::memory_order_relaxed);
    // acquire: [Q2]
    if (ring_.slot(pos).seq.load(std::memory_order_acquire) != pos) return ring_.closed();
    if (ring_.bounded_below_slots() && !room_below_maxsize(pos)) return ring_.closed();
    return true;
  }

  void flush_stats() noexcept { counters_.flush(); }
  // For a copy of the handle inherited by a forked child: its counts belong to the parent.
  void discard_stats() noexcept { counters_.discard(); }

 private:
  // Retries `attempt` while it reports `full`: spin, then sleep on space_free in slices.
  template <class Attempt>
  Status block(Attempt&& attempt, Deadline d) noexcept {
    return block_on(attempt, Status::full, d, ring_.header().space_free,
                    [this] { return writable_guess(); },
                    stats_ != nullptr ? &stats_->full_waits : nullptr, counters_, watch_, mark_);
  }

  bool room_below_maxsize(std::uint64_t pos) const noexcept {
    // relaxed: dequeue_pos only grows, so an old value only makes the bound stricter.
    const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    return detail::distance(deq, pos) < static_cast<std::int64_t>(ring_.maxsize());
  }

  std::uint32_t free_hold_word() const noexcept {
    for (std::uint32_t w = 1; w < kClaimWords; ++w)
      // relaxed: only this writer sets its words; commit clears them in this thread.
      if (words_[w].load(std::memory_order_relaxed) == 0) return w;
    return 0;
  }

  // Claims up to `want` consecutive free slots; *got receives how many (1 when got == null).
  Status claim(std::uint64_t want, std::atomic<std::uint64_t>& word, std::uint64_t& pos_out,
               std::uint64_t* got = nullptr) noexcept {
    // acquire: [Q6]
    if (ring_.closed()) return Status::closed;
    // relaxed: a starting hint; the CAS below validates it.
    std::uint64_t pos = ring_.header().enqueue_pos.load(std::memory_order_relaxed);
    // Each round:
    //  1. the slot of pos is free (seq == pos): count free slots from pos (bounded by maxsize),
    //     record the claim, CAS enqueue_pos pos -> pos + n.
    //     1a. CAS wins: we own [pos, pos + n).
    //     1b. CAS loses: another writer moved it; pos is reloaded by the CAS; retry.
    //  2. seq < pos: the slot still holds the previous lap (unread, being read, or being
    //     written by a dead or slow writer): full. A reader that died holding it is recovered
    //     after kStuckGrace, and then we retry.
    //  3. seq > pos: another writer claimed pos since we loaded it; reload enqueue_pos. If it
    //     has not moved, the slot's seq is impossible: corrupt.
    for (;;) {
      MpmcSlotHeader& s = ring_.slot(pos);
      // acquire: [Q2] pairs with the release of the reader of the previous lap.
      const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      const std::int64_t diff = detail::distance(pos, seq);
      if (diff == 0) {  // case 1
        std::uint64_t n = 1;
        while (n < want &&
               ring_.slot(pos + n).seq.load(std::memory_order_acquire) == pos + n)  // [Q2]
          ++n;
        if (ring_.bounded_below_slots()) {
          // relaxed: see room_below_maxsize.
          const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
          const std::int64_t room = static_cast<std::int64_t>(ring_.maxsize()) - detail::distance(deq, pos);
          if (room <= 0) {
            word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
            watch_.clear();  // readers recover a dead writer at the head, not us
            return Status::full;
          }
          n = std::min<std::uint64_t>(n, static_cast<std::uint64_t>(room));
        }
        // relaxed: [Q3] published by the release CAS below.
        word.store(detail::encode_claim(pos, n, detail::ClaimOp::enqueue), std::memory_order_relaxed);
        SHMQ_KILL_POINT(KillPoint::mid_claim);
        // release: [Q3] publishes the claim word with the new position. relaxed on failure.
        if (ring_.header().enqueue_pos.compare_exchange_weak(pos, pos + n, std::memory_order_release,
                                                              std::memory_order_relaxed)) {
          watch_.clear();
          pos_out = pos;
          if (got != nullptr) *got = n;
          return Status::ok;  // case 1a
        }
        continue;  // case 1b
      }
      if (diff < 0) {  // case 2
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        if (!recovery_.read_in_flight(pos, seq)) {
          watch_.clear();
        } else if (watch_.probe_due(pos) && recovery_.recover_unreleased_read(pos, seq)) {
          continue;
        }
        return Status::full;
      }
      // case 3
      // relaxed: the acquire on seq above ordered the claiming CAS before this load.
      const std::uint64_t next = ring_.header().enqueue_pos.load(std::memory_order_relaxed);
      if (next == pos) {
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        if (stats_ != nullptr) Stats::bump(stats_->corrupt_events);
        return Status::corrupt;
      }
      pos = next;
    }
  }

  void fill(std::uint64_t pos, std::span<const std::byte> msg, std::uint16_t kind,
            std::uint8_t flags) noexcept {
    MpmcSlotHeader& s = ring_.slot(pos);
    std::byte* dst = ring_.payload(pos);
    const std::size_t half = msg.size() / 2;
    if (half != 0) std::memcpy(dst, msg.data(), half);
    SHMQ_KILL_POINT(KillPoint::mid_write);
    if (msg.size() != half) std::memcpy(dst + half, msg.data() + half, msg.size() - half);
    s.length = static_cast<std::uint32_t>(msg.size());
    s.kind = kind;
    s.flags = flags;
    SHMQ_KILL_POINT(KillPoint::before_commit);
  }

  void commit_range(std::uint64_t pos, std::uint64_t n, std::atomic<std::uint64_t>& word) noexcept {
    for (std::uint64_t i = 0; i < n; ++i)
      // release: [Q1] pairs with the acquire of seq by the reader of pos + i.
      ring_.slot(pos + i).seq.store(pos + i + 1, std::memory_order_release);
    // release: [Q4] a survivor that reads 0 sees the commits above.
    word.store(0, std::memory_order_release);
    SHMQ_KILL_POINT(KillPoint::after_commit_before_wake);
    recovery_.notify(ring_.header().data_ready, static_cast<int>(n));  // [Q5] one reader per message
  }

  MpmcRing ring_;
  std::atomic<std::uint64_t>* words_ = nullptr;
  MpmcRecovery recovery_;
  Stats* stats_ = nullptr;
  LocalCounters counters_;
  SleepMark mark_;
  detail::StuckWatch watch_;
};

// One reader participant. Not thread-safe (one thread at a time), except release(), which may run
// in any thread.
class MpmcReader {
 public:
  MpmcReader() noexcept : recovery_({}, nullptr, nullptr), counters_(nullptr, false) {}
  MpmcReader(MpmcRing ring, std::atomic<std::uint64_t>* words, ClaimRegistry* registry,
             Stats* stats, SleepMark mark = {}) noexcept
      : ring_(ring), words_(words), recovery_(ring, registry, stats), stats_(stats),
        counters_(stats, false), mark_{mark.word, mark.value | kSleepOnData} {
    // relaxed: as in MpmcWriter.
    for (std::uint32_t w = 0; w < kClaimWords; ++w) words_[w].store(0, std::memory_order_relaxed);
  }
  MpmcReader(const MpmcReader&) = delete;
  MpmcReader& operator=(const MpmcReader&) = delete;
  MpmcReader(MpmcReader&&) noexcept = default;
  MpmcReader& operator=(MpmcReader&&) noexcept = default;
  ~MpmcReader() { counters_.flush(); }

  const MpmcRing& ring() const noexcept { return ring_; }

  // Takes the oldest committed message; it occupies its slot until release(out). Up to
  // kClaimWords - 1 views may be held; with all held, returns `full` (release one first).
  // Returns ok | empty | closed (closed and drained) | corrupt | full.
  [[nodiscard]] Status try_recv(MpmcView& out) noexcept {
    const std::uint32_t w = free_hold_word();
    if (w == 0) return Status::full;
    for (;;) {
      std::uint64_t pos = 0;
      const Status st = claim(1, words_[w], pos);
      if (st != Status::ok) return st;
      SHMQ_KILL_POINT(KillPoint::holding_read);
      const Status v = view(pos, w, out);
      if (v == Status::ok) {
        counters_.add(1, out.length);
        return v;
      }
      release_slot(pos, words_[w]);  // a skip record or a corrupt one: drop it
      if (v == Status::corrupt) return v;
    }
  }

  [[nodiscard]] Status recv(MpmcView& out, Deadline d) noexcept {
    return block([&] { return try_recv(out); }, d);
  }

  // Gives a view's slot back to writers. Any thread; once per view.
  void release(MpmcView& v) noexcept {
    if (v.data == nullptr) return;
    release_slot(v.pos, words_[v.word]);
    v.data = nullptr;
  }

  // Takes up to `max` committed messages with one claim and calls fn(const MpmcView&) for each,
  // releasing each slot after fn returns. fn must not throw. Returns how many were delivered;
  // *why says why none were (empty, closed, corrupt).
  template <class F>
  std::size_t try_recv_many(F&& fn, std::size_t max, Status* why = nullptr) noexcept {
    std::size_t delivered = 0;
    Status st = Status::ok;
    while (delivered == 0 && max != 0) {
      std::uint64_t pos = 0, n = 0;
      st = claim(std::min<std::uint64_t>(max, kMaxBatch), words_[0], pos, &n);
      if (st != Status::ok) break;
      SHMQ_KILL_POINT(KillPoint::holding_read);
      std::uint64_t bytes = 0;
      for (std::uint64_t i = 0; i < n; ++i) {
        MpmcView v;
        if (view(pos + i, 0, v) == Status::ok) {
          fn(static_cast<const MpmcView&>(v));
          ++delivered;
          bytes += v.length;
        }
        // release: [Q2] pairs with the writer of the next lap.
        ring_.slot(pos + i).seq.store(pos + i + ring_.slots(), std::memory_order_release);
      }
      words_[0].store(0, std::memory_order_release);  // [Q4]
      recovery_.notify(ring_.header().space_free, static_cast<int>(n));
      counters_.add(delivered, bytes);
    }
    if (why != nullptr) *why = delivered != 0 ? Status::ok : st;
    return delivered;
  }

  // Blocks until at least one message arrives (or the deadline passes), then takes up to `max`.
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max, Deadline d, Status* why = nullptr) noexcept {
    std::size_t n = 0;
    const Status st = block(
        [&] {
          Status s = Status::ok;
          n = try_recv_many(fn, max, &s);
          return n != 0 ? Status::ok : s;
        },
        d);
    if (why != nullptr) *why = st;
    return n;
  }

  // Where this reader marks a sleep on data_ready (for wait_any, which sleeps on it too).
  SleepMark data_sleep_mark() const noexcept { return mark_; }

  // True if a message (or `closed`) is waiting (a guess).
  bool readable_guess() const noexcept {
    // relaxed: a guess; the claim re-validates everything.
    const std::uint64_t pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    // acquire: [Q1]
    return ring_.slot(pos).seq.load(std::memory_order_acquire) == pos + 1 || ring_.closed();
  }

  bool can_hold() const noexcept { return free_hold_word() != 0; }
  void flush_stats() noexcept { counters_.flush(); }
  // For a copy of the handle inherited by a forked child: its counts belong to the parent.
  void discard_stats() noexcept { counters_.discard(); }

 private:
  // Retries `attempt` while it reports `empty`: spin, then sleep on data_ready in slices.
  template <class Attempt>
  Status block(Attempt&& attempt, Deadline d) noexcept {
    return block_on(attempt, Status::empty, d, ring_.header().data_ready,
                    [this] { return readable_guess(); },
                    stats_ != nullptr ? &stats_->empty_waits : nullptr, counters_, watch_, mark_);
  }

  std::uint32_t free_hold_word() const noexcept {
    for (std::uint32_t w = 1; w < kClaimWords; ++w)
      // acquire: release() may run in another thread; pairs with its release clear [Q4] so that
      // whatever that thread did with the view happens before we reuse the word.
      if (words_[w].load(std::memory_order_acquire) == 0) return w;
    return 0;
  }

  // Reads the slot header of a claimed position once into locals and validates it.
  Status view(std::uint64_t pos, std::uint32_t w, MpmcView& out) noexcept {
    const MpmcSlotHeader& s = ring_.slot(pos);
    const std::uint32_t length = s.length;
    const std::uint16_t kind = s.kind;
    const std::uint8_t flags = s.flags;
    if ((flags & kSlotSkip) != 0) return Status::empty;
    if (length > ring_.slot_size()) {
      if (stats_ != nullptr) Stats::bump(stats_->corrupt_events);
      return Status::corrupt;
    }
    out.pos = pos;
    out.data = ring_.payload(pos);
    out.length = length;
    out.kind = kind;
    out.flags = flags;
    out.word = static_cast<std::uint8_t>(w);
    return Status::ok;
  }

  void release_slot(std::uint64_t pos, std::atomic<std::uint64_t>& word) noexcept {
    // release: [Q2] pairs with the acquire of seq by the writer of pos + slots.
    ring_.slot(pos).seq.store(pos + ring_.slots(), std::memory_order_release);
    word.store(0, std::memory_order_release);  // [Q4]
    recovery_.notify(ring_.header().space_free, 1);  // [Q5]
  }

  // Claims up to `want` consecutive committed slots; *got receives how many.
  Status claim(std::uint64_t want, std::atomic<std::uint64_t>& word, std::uint64_t& pos_out,
               std::uint64_t* got = nullptr) noexcept {
    // relaxed: a starting hint; the CAS validates it.
    std::uint64_t pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    // Each round:
    //  1. the slot of pos is committed (seq == pos + 1): count committed slots from pos, record
    //     the claim, CAS dequeue_pos pos -> pos + n.
    //     1a. CAS wins: we own [pos, pos + n).
    //     1b. CAS loses: another reader took pos; pos is reloaded by the CAS; retry.
    //  2. seq < pos + 1: nothing committed at pos.
    //     2a. enqueue_pos == pos: empty (or closed, if the queue is closed).
    //     2b. enqueue_pos > pos: a writer claimed pos and has not committed. Empty for now;
    //         after kStuckGrace, if no live participant claims pos, its writer is dead: the slot
    //         is recovered and we retry.
    //  3. seq > pos + 1: another reader took pos since we loaded it; reload dequeue_pos. If it
    //     has not moved, the slot's seq is impossible: corrupt.
    for (;;) {
      // acquire: [Q1] pairs with the writer's commit.
      const std::uint64_t seq = ring_.slot(pos).seq.load(std::memory_order_acquire);
      const std::int64_t diff = detail::distance(pos + 1, seq);
      if (diff == 0) {  // case 1
        std::uint64_t n = 1;
        while (n < want &&
               ring_.slot(pos + n).seq.load(std::memory_order_acquire) == pos + n + 1)  // [Q1]
          ++n;
        // relaxed: [Q3] published by the release CAS below.
        word.store(detail::encode_claim(pos, n, detail::ClaimOp::dequeue), std::memory_order_relaxed);
        // release: [Q3]; the data was acquired through seq above. relaxed on failure.
        if (ring_.header().dequeue_pos.compare_exchange_weak(pos, pos + n, std::memory_order_release,
                                                              std::memory_order_relaxed)) {
          watch_.clear();
          pos_out = pos;
          if (got != nullptr) *got = n;
          return Status::ok;  // case 1a
        }
        continue;  // case 1b
      }
      if (diff < 0) {  // case 2
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        // acquire: [Q3] if we see a writer's claim of pos, its claim word is visible too.
        const std::uint64_t enq = ring_.header().enqueue_pos.load(std::memory_order_acquire);
        if (detail::distance(pos, enq) <= 0) {  // case 2a
          watch_.clear();
          return ring_.closed() ? Status::closed : Status::empty;
        }
        if (seq != pos) {
          watch_.clear();  // impossible unless corrupt: writers claim only free slots
        } else if (watch_.probe_due(pos) && recovery_.recover_unfinished_write(pos, words_[0])) {  // 2b
          pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);  // relaxed: a hint
          continue;
        }
        return Status::empty;
      }
      // case 3
      // relaxed: the acquire on seq above ordered the claiming CAS before this load.
      const std::uint64_t next = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
      if (next == pos) {
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        if (stats_ != nullptr) Stats::bump(stats_->corrupt_events);
        return Status::corrupt;
      }
      pos = next;
    }
  }

  MpmcRing ring_;
  std::atomic<std::uint64_t>* words_ = nullptr;
  MpmcRecovery recovery_;
  Stats* stats_ = nullptr;
  LocalCounters counters_;
  SleepMark mark_;
  detail::StuckWatch watch_;
};

}  // namespace shmq::core
