// The MPMC ring's format: what its shared memory looks like, which values are valid, and the
// view (MpmcRing) that places and validates a ring in memory. The writer and reader
// (mpmc_writer.hpp, mpmc_reader.hpp), the crash recovery, the Queue and the CLI's peek judge
// headers, slots and claim words with these names. Protocol and tags: mpmc_ring.hpp.
//
// Layout (all offsets fixed, so two builds agree):
//   MpmcRingHeader   immutable parameters; enqueue_pos, dequeue_pos, two WaitWords, the closed
//                    flag, and the lease line (adoption lock + orphaned leases), each on a cache
//                    line of its own
//   slots[slots]     MpmcSlotHeader {seq u64, length u32, kind u16, flags u8, pad u8} + slot_size
//                    payload bytes, stride rounded up to kSlotAlign
//   Positions are 64-bit and monotonic (they never wrap in practice; the code still uses modular
//   differences, and the tests start them just below 2^64). Slot of position p: p & (slots - 1).
//   Slot seq, for the slot of position p in lap p (seq_free / seq_committed / seq_released):
//     seq == p           free: the writer that claims p may fill it
//     seq == p + 1       committed: the reader that claims p may read it
//     seq == p + slots   released: free for the writer of p + slots
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "shmq/core/layout.hpp"
#include "shmq/core/result.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// Bumped with any change of the header, the slot header or the claim words, so that a process
// of another version refuses the ring (bad_magic) instead of misreading it.
inline constexpr std::uint64_t kMpmcMagic = 0x32474E49524D504Dull;  // "MPMRING2" little-endian
inline constexpr std::uint32_t kClaimWords = 4;   // per participant: [0] transient, [1..3] held
inline constexpr std::uint64_t kMaxBatch = (1u << 14) - 1;  // the count field of a claim word
inline constexpr std::uint64_t kMinSlots = 2;
inline constexpr std::uint64_t kMaxSlots = 1ull << 30;
inline constexpr std::uint64_t kMaxSlotSize = 1ull << 30;
inline constexpr std::uint64_t kSlotAlign = 64;  // one x86 line: neighbouring slots belong to
                                                 // different writers; 128 would waste space
// Leases whose holder died (or gave them back), parked in the ring header until a reader adopts
// them (mpmc_recovery.hpp). More dead leases than this wait in their holders' claim words.
inline constexpr std::uint32_t kOrphanLeases = 8;

// Slot flags (the host may give kSlotSpilled its own meaning; the ring only carries it).
inline constexpr std::uint8_t kSlotSkip = 1;     // an aborted claim: readers drop it
inline constexpr std::uint8_t kSlotSpilled = 2;  // the payload references a side allocation
// A sealed write (MpmcWriter::try_send_many_sealed): the slot's `reserved` byte names the host's
// seal word; a writer that dies after sealing has its slots committed by survivors.
inline constexpr std::uint8_t kSlotSealed = 4;

// SleepMark bits: which of the ring's wait words a participant sleeps on.
inline constexpr std::uint64_t kSleepOnData = 1;   // data_ready (readers)
inline constexpr std::uint64_t kSleepOnSpace = 2;  // space_free (writers)

struct MpmcSlotHeader {
  std::atomic<std::uint64_t> seq;  // [Q1] [Q2]
  std::uint32_t length;            // payload bytes used; plain, published by [Q1]
  std::uint16_t kind;              // the message kind (message_kind.hpp)
  std::uint8_t flags;
  std::uint8_t reserved;           // with kSlotSealed: the host's seal tag (nonzero)
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
  // ---- leases (slow path): [L3] who may move dead leases, and where they wait for adoption
  alignas(kCacheLine) std::atomic<std::uint64_t> adopt_lock;  // 0 or mpmc::holder_id of the holder
  std::atomic<std::uint64_t> orphans[kOrphanLeases];          // lease claim words, 0 = empty
};
static_assert(std::is_standard_layout_v<MpmcRingHeader>, "shared between processes");
static_assert(sizeof(MpmcRingHeader) == 7 * kCacheLine, "seven cache lines");
static_assert(offsetof(MpmcRingHeader, orphans) + sizeof(MpmcRingHeader::orphans) <= 7 * kCacheLine);
static_assert(offsetof(MpmcRingHeader, enqueue_pos) == kCacheLine);
static_assert(offsetof(MpmcRingHeader, dequeue_pos) == 2 * kCacheLine);

namespace mpmc {

// The slot sequence numbers of position `pos` (see the layout above).
constexpr std::uint64_t seq_free(std::uint64_t pos) noexcept { return pos; }
constexpr std::uint64_t seq_committed(std::uint64_t pos) noexcept { return pos + 1; }
constexpr std::uint64_t seq_released(std::uint64_t pos, std::uint64_t slots) noexcept {
  return pos + slots;
}
// Positions compared modulo 2^64: negative when `to` lies before `from`.
constexpr std::int64_t distance(std::uint64_t from, std::uint64_t to) noexcept {
  return static_cast<std::int64_t>(to - from);
}
// Messages waiting (claimed-but-unfinished writes included) between the two positions; never
// negative, never above maxsize.
constexpr std::uint64_t depth(std::uint64_t dequeue, std::uint64_t enqueue,
                              std::uint64_t maxsize) noexcept {
  const std::int64_t d = distance(dequeue, enqueue);
  return d <= 0 ? 0 : std::min<std::uint64_t>(static_cast<std::uint64_t>(d), maxsize);
}

// At least 2 slots: with one, "committed in lap p" (seq p + 1) and "free for lap p + 1" (seq
// p + 1) would be the same state.
constexpr bool valid_slots(std::uint64_t slots) noexcept {
  return is_pow2(slots) && slots >= kMinSlots && slots <= kMaxSlots;
}
constexpr bool valid_slot_size(std::uint64_t slot_size) noexcept {
  return slot_size >= 8 && slot_size % 8 == 0 && slot_size <= kMaxSlotSize;
}
constexpr std::uint64_t stride_for(std::uint64_t slot_size) noexcept {
  return align_up(sizeof(MpmcSlotHeader) + slot_size, kSlotAlign);
}
constexpr std::uint64_t ring_bytes(std::uint64_t slots, std::uint64_t slot_size) noexcept {
  return sizeof(MpmcRingHeader) + slots * stride_for(slot_size);
}

// The immutable header fields, copied out of shared memory once.
struct Params {
  std::uint64_t magic, slots, slot_size, stride, maxsize, total_bytes;
};
struct BadField {
  const char* name = nullptr;  // nullptr: every field is valid
  std::uint64_t value = 0;
};
// The first header field that breaks the format ("magic", "slots", ...).
constexpr BadField bad_field(const Params& p) noexcept {
  if (p.magic != kMpmcMagic) return {"magic", p.magic};
  if (!valid_slots(p.slots)) return {"slots", p.slots};
  if (!valid_slot_size(p.slot_size)) return {"slot_size", p.slot_size};
  if (p.stride != stride_for(p.slot_size)) return {"stride", p.stride};
  if (p.maxsize == 0 || p.maxsize > p.slots) return {"maxsize", p.maxsize};
  if (p.total_bytes != ring_bytes(p.slots, p.slot_size)) return {"total_bytes", p.total_bytes};
  return {};
}

// What a committed slot's header (read once) says.
enum class SlotCheck : std::uint8_t {
  ok,
  skip,        // an aborted claim: dropped, never delivered
  bad_length,  // longer than a slot
};
constexpr SlotCheck check_slot(std::uint32_t length, std::uint8_t flags,
                               std::uint64_t slot_size) noexcept {
  if ((flags & kSlotSkip) != 0) return SlotCheck::skip;
  return length <= slot_size ? SlotCheck::ok : SlotCheck::bad_length;
}

// A claim word: {48 low bits of the first position, 14-bit count, 2-bit op}; 0 when idle.
// `lease`: a reader's claim that outlives it (MpmcReader::try_lease): if the holder dies, the
// messages are redelivered to another reader instead of being abandoned.
enum class ClaimOp : std::uint64_t { enqueue = 1, dequeue = 2, lease = 3 };
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
constexpr ClaimOp claim_op(std::uint64_t word) noexcept { return static_cast<ClaimOp>(word & 3); }
constexpr std::uint64_t claim_count(std::uint64_t word) noexcept { return (word >> 2) & kMaxBatch; }
// The full first position of a claim word, given any position `near` within 2^47 of it (the
// word keeps only the low 48 bits).
constexpr std::uint64_t claim_first(std::uint64_t word, std::uint64_t near) noexcept {
  const std::uint64_t diff = ((word >> 16) - near) & kClaimPosMask;  // (first - near) mod 2^48
  const std::int64_t signed_diff = static_cast<std::int64_t>(diff << 16) >> 16;
  return near + static_cast<std::uint64_t>(signed_diff);
}
// Who holds the adoption lock: participant index + 1 and the holder's generation (so a reused
// slot's new holder is not taken for its dead predecessor).
constexpr std::uint64_t holder_id(std::uint32_t index, std::uint32_t generation) noexcept {
  return (static_cast<std::uint64_t>(index + 1) << 32) | generation;
}

}  // namespace mpmc

struct MpmcConfig {
  std::uint64_t slots = 4096;       // power of two, at least 2
  std::uint64_t slot_size = 256;    // payload bytes per slot, a multiple of 8, at least 8
  std::uint64_t maxsize = 0;        // 0 = slots
  // Test hooks: start positions and futex words near their wrap points.
  std::uint64_t initial_position = 0;
  std::uint32_t initial_epoch = 0;
};

// A view of a ring in memory. Cheap to copy; every immutable parameter is a local copy.
class MpmcRing {
 public:
  static constexpr std::uint64_t stride_for(std::uint64_t slot_size) noexcept {
    return mpmc::stride_for(slot_size);
  }

  static Result<std::uint64_t> required_bytes(const MpmcConfig& c) {
    if (!mpmc::valid_slots(c.slots))
      return Error(Errc::invalid_argument, "queue slots must be a power of two from 2 to 2^30, not " +
                                               std::to_string(c.slots));
    if (!mpmc::valid_slot_size(c.slot_size))
      return Error(Errc::invalid_argument, "queue slot_size must be a multiple of 8 from 8 to 2^30, not " +
                                               std::to_string(c.slot_size));
    if (c.maxsize > c.slots)
      return Error(Errc::invalid_argument, "queue maxsize " + std::to_string(c.maxsize) +
                                               " exceeds its slots (" + std::to_string(c.slots) + ")");
    return mpmc::ring_bytes(c.slots, c.slot_size);
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
    h->adopt_lock.store(0, std::memory_order_relaxed);
    for (auto& o : h->orphans) o.store(0, std::memory_order_relaxed);
    for (std::uint64_t i = 0; i < c.slots; ++i) {
      const std::uint64_t pos = c.initial_position + i;
      auto* s = new (mem.data() + sizeof(MpmcRingHeader) + (pos & (c.slots - 1)) * h->stride)
          MpmcSlotHeader;
      s->seq.store(mpmc::seq_free(pos), std::memory_order_relaxed);
      s->length = 0;
      s->kind = 0;
      s->flags = 0;
      s->reserved = 0;
    }
    return attach(mem);
  }

  // Validates a formatted ring; named errors for each violated invariant.
  static Result<MpmcRing> attach(std::span<std::byte> mem) {
    if (mem.size() < sizeof(MpmcRingHeader) ||
        reinterpret_cast<std::uintptr_t>(mem.data()) % kCacheLine != 0)
      return Error(Errc::truncated, "queue ring memory is smaller than its header");
    const auto* h = reinterpret_cast<const MpmcRingHeader*>(mem.data());
    // Each shared field read once into a local, then checked.
    const mpmc::Params p{h->magic, h->slots, h->slot_size, h->stride, h->maxsize, h->total_bytes};
    if (p.magic != kMpmcMagic) return Error(Errc::bad_magic, "queue ring has a bad magic number");
    if (const mpmc::BadField bad = mpmc::bad_field(p); bad.name != nullptr)
      return Error(Errc::corrupt, std::string("queue ring has a corrupt header at field '") +
                                      bad.name + "' (" + std::to_string(bad.value) + ")");
    if (p.total_bytes > mem.size())
      return Error(Errc::size_mismatch, "queue ring needs " + std::to_string(p.total_bytes) +
                                            " bytes but its segment body has " +
                                            std::to_string(mem.size()));
    MpmcRing r;
    r.slots_ = p.slots;
    r.slot_size_ = p.slot_size;
    r.stride_ = p.stride;
    r.maxsize_ = p.maxsize;
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
  std::byte* payload(std::uint64_t pos) const noexcept { return payload_of(slot(pos)); }
  static std::byte* payload_of(MpmcSlotHeader& s) noexcept {
    return reinterpret_cast<std::byte*>(&s) + sizeof(MpmcSlotHeader);
  }
  static MpmcSlotHeader& header_of(const std::byte* payload) noexcept {
    return *reinterpret_cast<MpmcSlotHeader*>(const_cast<std::byte*>(payload) -
                                              sizeof(MpmcSlotHeader));
  }

  // Messages waiting (claimed-but-unfinished writes included); never negative, never above
  // capacity().
  std::size_t size_guess() const noexcept {
    // acquire (both): dequeue_pos first; every reader CAS that produced it happened after the
    // writer CAS it consumed, so the enqueue_pos loaded next is not older than it.
    const std::uint64_t deq = header_->dequeue_pos.load(std::memory_order_acquire);
    const std::uint64_t enq = header_->enqueue_pos.load(std::memory_order_acquire);
    return static_cast<std::size_t>(mpmc::depth(deq, enq, maxsize_));
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

}  // namespace shmq::core
