// A single-producer single-consumer byte ring on caller-supplied memory (shared between processes).
//
// Layout: a control block (SpscRingControl, kControlBytes) followed by 2^k data bytes. Positions
// are 64-bit and monotonic; offset = position & (capacity - 1). Records are 8-byte aligned:
// {u32 length, u32 tag} + payload, never wrapping: a padding record fills the end of the data
// area when the next record would not fit there. A message of at most max_payload() bytes is one
// `whole` record (read in place: zero copy); a larger one streams as `first`, `middle`..., `last`
// chunks that the reader copies into a buffer, so any size works. A chunked message whose writer
// stops (dies, times out, closes) before `last` is discarded, never delivered: the writer (or the
// next writer) appends an `abort` record, and a reader that sees the writer gone drops it.
//
// Roles: one SpscWriter and one SpscReader at a time, each used by one thread at a time. The
// caller (the Pipe) makes the roles exclusive and tells the ring whether the peer is alive.
//
// Synchronization
//   [P1] tail: the writer writes records, then stores tail (release); the reader loads tail
//        (acquire) before reading any record below it.
//   [P2] head: the reader finishes with the bytes below head, then stores head (release); the
//        writer loads head (acquire) before overwriting them. The reader publishes head in
//        batches (see "Head batching"), as the writer may publish tail once per batch.
//   [P3] close flags: a side publishes its last position, then stores its *_closed flag
//        (release); the peer loads the flag (acquire) and then re-reads the position.
//   [D1] data_wait / [D2] space_wait: the Dekker pairs of wait.hpp. The writer notifies
//        data_wait after [P1]; the reader notifies space_wait after [P2]. FUTEX_WAKE is issued
//        only when a waiter is registered.
//   Crash-recovery words (writer_streaming, read_pos, held, *_attached) are relaxed: they are
//   read by a later holder of the role, after the kernel handed the role lock over.
//
// Head batching
//   Publishing head costs the reader a store to a line the writer reads and, for [D2], a full
//   fence per message; measured across processes it halved the Pipe's small-message rate. So the
//   reader publishes head only when it has read head_batch() bytes past it (1/16 of the ring, at
//   most 16 KiB), when it finds the ring empty (always before it sleeps), on close, and for every
//   chunk of a streamed message. In between it stores its read position in the crash-recovery
//   word read_pos (relaxed, a line only it writes), so a reader killed with unpublished reads
//   never has them delivered again: the next reader skips to read_pos. The cost: a writer may
//   find the ring full while up to head_batch() bytes are read but not yet returned; it gets
//   them back as soon as the reader reads on or runs dry.
//   Contract seen by users: a send/commit is a release; a recv that returns the message is an
//   acquire of everything the writer did before that send.
//
// Shared values are never trusted: each index, length and tag is read once into a local and
// bound-checked; a violation makes the call return Status::corrupt and bumps
// Stats::corrupt_events. Nothing read from the ring is asserted.
#pragma once

#include <atomic>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <utility>
#include <vector>

#include "shmq/core/backoff.hpp"
#include "shmq/core/layout.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

namespace spsc {

inline constexpr std::uint64_t kRingMagic = 0x31474E4952435053ull;  // "SPSCRNG1" little-endian
inline constexpr std::uint64_t kHeaderBytes = 8;                   // {u32 length, u32 tag}
inline constexpr std::uint64_t kMaxMessageBytes = 1ull << 40;      // any larger send is too_big
inline constexpr std::uint32_t kStatsBatch = 64;                   // flush local counters this often
// Blocking calls sleep at most this long before re-checking the peer's liveness.
inline constexpr std::chrono::milliseconds kSleepSlice{50};

enum class RecordKind : std::uint8_t { padding = 1, whole = 2, first = 3, middle = 4, last = 5, abort = 6 };

// tag = kTagMagic << 24 | record kind << 16 | message kind. The magic byte catches garbage.
inline constexpr std::uint32_t kTagMagic = 0xA7;

constexpr std::uint32_t make_tag(RecordKind rk, std::uint16_t kind) noexcept {
  return (kTagMagic << 24) | (static_cast<std::uint32_t>(rk) << 16) | kind;
}
constexpr bool tag_valid(std::uint32_t tag) noexcept {
  const std::uint32_t rk = (tag >> 16) & 0xFF;
  return (tag >> 24) == kTagMagic && rk >= 1 && rk <= 6;
}
constexpr RecordKind tag_record(std::uint32_t tag) noexcept {
  return static_cast<RecordKind>((tag >> 16) & 0xFF);
}
constexpr std::uint16_t tag_kind(std::uint32_t tag) noexcept {
  return static_cast<std::uint16_t>(tag & 0xFFFF);
}
constexpr std::uint64_t record_bytes(std::uint64_t payload) noexcept {
  return align_up(kHeaderBytes + payload, kRecordAlign);
}

// Reads of shared bytes another process may be changing: one atomic load each, so the value
// checked is the value used (no compiler re-load). relaxed: ordering comes from [P1].
inline std::uint32_t load_u32(const std::byte* p) noexcept {
  return __atomic_load_n(reinterpret_cast<const std::uint32_t*>(p), __ATOMIC_RELAXED);
}
inline std::uint64_t load_u64(const std::byte* p) noexcept {
  std::uint64_t v;  // a first chunk's total may sit at any 8-aligned offset; memcpy is enough
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_header(std::byte* p, std::uint32_t length, std::uint32_t tag) noexcept {
  std::memcpy(p, &length, 4);
  std::memcpy(p + 4, &tag, 4);
}

}  // namespace spsc

// The shared control block, grouped by the side that writes each line.
struct SpscRingControl {
  // ---- line 0: written at init, on attach and on close; read-mostly
  std::uint64_t magic;
  std::uint64_t capacity;
  std::atomic<std::uint32_t> writer_closed;    // [P3]
  std::atomic<std::uint32_t> reader_closed;    // [P3]
  std::atomic<std::uint32_t> writer_attached;  // bumped by every writer attach (0: never had one)
  std::atomic<std::uint32_t> reader_attached;
  // ---- line 1: the writer's position, read by the reader
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // [P1]
  // ---- line 2: the reader's position, read by the writer
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // [P2]
  // ---- lines 3, 4: sleeping places
  alignas(kCacheLine) WaitWord data_wait;   // [D1] the reader sleeps, the writer wakes
  alignas(kCacheLine) WaitWord space_wait;  // [D2] the writer sleeps, the reader wakes
  // ---- line 5: the writer's crash-recovery word: 1 while a chunked message is incomplete
  alignas(kCacheLine) std::atomic<std::uint32_t> writer_streaming;
  // ---- line 6: the reader's crash-recovery words: how far it has read past head (messages it
  // holds as zero-copy views, or read but not yet returned by head batching), and how many it
  // holds
  alignas(kCacheLine) std::atomic<std::uint64_t> read_pos;
  std::atomic<std::uint32_t> held;
};
static_assert(std::is_standard_layout_v<SpscRingControl>, "the control block is shared memory");
static_assert(offsetof(SpscRingControl, tail) % kCacheLine == 0, "tail owns its line");
static_assert(offsetof(SpscRingControl, head) - offsetof(SpscRingControl, tail) >= kCacheLine,
              "head and tail must not share a line");

// Layout helpers: required_bytes / init_in / check, for the creator and for open().
class SpscRing {
 public:
  static constexpr std::uint64_t kControlBytes = 1024;
  static constexpr std::uint64_t kMinCapacity = 128;
  static constexpr std::uint64_t kMaxCapacity = 1ull << 32;  // records stay below 2^31 (u32 length)
  static_assert(sizeof(SpscRingControl) <= kControlBytes, "the control block fits its area");
  static_assert(kControlBytes % kCacheLine == 0, "the data area starts on a line");

  static constexpr bool valid_capacity(std::uint64_t capacity) noexcept {
    return is_pow2(capacity) && capacity >= kMinCapacity && capacity <= kMaxCapacity;
  }
  // Bytes one ring occupies (control + data); a multiple of kCacheLine.
  static constexpr std::uint64_t required_bytes(std::uint64_t capacity) noexcept {
    return kControlBytes + capacity;
  }
  // The largest payload of one record: half the ring, so an empty ring always takes one.
  static constexpr std::uint64_t max_payload(std::uint64_t capacity) noexcept {
    return capacity / 2 - spsc::kHeaderBytes;
  }
  // How far the reader reads past head before it publishes head (see "Head batching").
  static constexpr std::uint64_t head_batch(std::uint64_t capacity) noexcept {
    return capacity / 16 < kMaxHeadBatch ? capacity / 16 : kMaxHeadBatch;
  }
  static constexpr std::uint64_t kMaxHeadBatch = 16 * 1024;

  // Places an empty ring in `mem` (before it is shared). False if the arguments are unusable.
  static bool init_in(std::span<std::byte> mem, std::uint64_t capacity) noexcept {
    if (!valid_capacity(capacity) || mem.size() < required_bytes(capacity)) return false;
    if (reinterpret_cast<std::uintptr_t>(mem.data()) % kCacheLine != 0) return false;
    auto* c = new (mem.data()) SpscRingControl{};
    c->magic = spsc::kRingMagic;
    c->capacity = capacity;
    // relaxed: the memory is published later by the segment's ready store (release).
    c->tail.store(0, std::memory_order_relaxed);
    c->head.store(0, std::memory_order_relaxed);
    c->data_wait.init();
    c->space_wait.init();
    return true;
  }

  // Validates a ring found in shared memory: magic, capacity, and the positions
  // (aligned, head <= tail, tail - head <= capacity). ok or corrupt.
  static Status check(std::span<std::byte> mem, std::uint64_t capacity) noexcept {
    if (!valid_capacity(capacity) || mem.size() < required_bytes(capacity)) return Status::corrupt;
    const auto* c = control(mem);
    if (c->magic != spsc::kRingMagic || c->capacity != capacity) return Status::corrupt;
    // acquire: pairs with [P1]/[P2]; we only validate here, each side re-reads on attach.
    const std::uint64_t tail = c->tail.load(std::memory_order_acquire);
    const std::uint64_t head = c->head.load(std::memory_order_acquire);
    return positions_ok(head, tail, capacity) ? Status::ok : Status::corrupt;
  }

  static constexpr bool positions_ok(std::uint64_t head, std::uint64_t tail,
                                     std::uint64_t capacity) noexcept {
    // unsigned: head > tail wraps to a huge distance and fails the same test
    return tail - head <= capacity && head % kRecordAlign == 0 && tail % kRecordAlign == 0;
  }
  // How far the reader has read, from its crash-recovery word read_pos: read_pos when it lies in
  // [head, tail] on a record boundary (views it holds, or reads head batching has not returned
  // yet), else head (a stale word, left behind by a later publish of head).
  static constexpr std::uint64_t read_end(std::uint64_t head, std::uint64_t tail,
                                          std::uint64_t read_pos) noexcept {
    return read_pos - head <= tail - head && read_pos % kRecordAlign == 0 ? read_pos : head;
  }

  static SpscRingControl* control(std::span<std::byte> mem) noexcept {
    return std::launder(reinterpret_cast<SpscRingControl*>(mem.data()));
  }
};

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

// Code shared by both ends: the attached ring and its local counters.
class SpscEnd {
 public:
  bool attached() const noexcept { return ctl_ != nullptr; }
  std::uint64_t capacity() const noexcept { return capacity_; }
  std::size_t max_payload() const noexcept { return static_cast<std::size_t>(max_payload_); }
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

 protected:
  Status attach_common(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (stats == nullptr) return Status::corrupt;
    if (SpscRing::check(mem, capacity) != Status::ok) {
      Stats::bump(stats->corrupt_events);
      return Status::corrupt;
    }
    ctl_ = SpscRing::control(mem);
    data_ = mem.data() + SpscRing::kControlBytes;
    stats_ = stats;
    capacity_ = capacity;
    mask_ = capacity - 1;
    max_payload_ = SpscRing::max_payload(capacity);
    return Status::ok;
  }
  Status corrupt() noexcept {
    Stats::bump(stats_->corrupt_events);
    return last_ = Status::corrupt;
  }
  void count(std::uint64_t bytes) noexcept {
    unflushed_bytes_ += bytes;
    if (++unflushed_msgs_ >= spsc::kStatsBatch) flush_counts();
  }
  void flush_counts() noexcept {
    if (unflushed_msgs_ == 0) return;
    Stats::bump(*msgs_counter_, unflushed_msgs_);
    Stats::bump(*bytes_counter_, unflushed_bytes_);
    unflushed_msgs_ = 0;
    unflushed_bytes_ = 0;
  }
  void notify(WaitWord& w) noexcept {
    if (w.notify()) Stats::bump(stats_->wakes);
  }

  SpscRingControl* ctl_ = nullptr;
  std::byte* data_ = nullptr;
  Stats* stats_ = nullptr;
  std::atomic<std::uint64_t>* msgs_counter_ = nullptr;
  std::atomic<std::uint64_t>* bytes_counter_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t max_payload_ = 0;
  std::uint64_t unflushed_msgs_ = 0;
  std::uint64_t unflushed_bytes_ = 0;
  std::uint32_t spin_budget_ = Backoff::kDefaultBudget;
  Status last_ = Status::ok;
};

// ------------------------------------------------------------------------------------------------
// The writer. One thread at a time. A claim must be committed or aborted before the next call.
class SpscWriter : public SpscEnd {
 public:
  // Attaches to a ring placed by init_in. ok | corrupt. Clears writer_closed (a new stream).
  Status attach(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (attach_common(mem, capacity, stats) != Status::ok) return Status::corrupt;
    msgs_counter_ = &stats->sent;
    bytes_counter_ = &stats->bytes_sent;
    // acquire: pairs with [P1]/[P2]; check() validated the pair, read them once more here.
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (!SpscRing::positions_ok(head, tail, capacity)) return corrupt();
    tail_ = pending_ = tail;
    cached_head_ = head;
    // relaxed: crash-recovery word of the previous writer (see the Synchronization block).
    pending_abort_ = ctl_->writer_streaming.load(std::memory_order_relaxed) != 0;
    // relaxed: only the writer sleeps on space_wait and we are the writer now, so a count left
    // there is a predecessor's killed asleep; without this every release would make a syscall.
    ctl_->space_wait.waiters.store(0, std::memory_order_relaxed);
    // relaxed: a counter for liveness decisions, no data behind it.
    ctl_->writer_attached.fetch_add(1, std::memory_order_relaxed);
    // release: a reader that sees the flag cleared also sees our attach state.
    ctl_->writer_closed.store(0, std::memory_order_release);
    return last_ = Status::ok;
  }

  std::size_t max_claim() const noexcept { return max_payload(); }

  // True if the reader closed, or was declared gone by set_reader_gone() and none came since.
  bool reader_gone() const noexcept {
    // relaxed: flags that gate a decision; no data is read because of them.
    if (ctl_->reader_closed.load(std::memory_order_relaxed) != 0) return true;
    return reader_gone_ &&
           ctl_->reader_attached.load(std::memory_order_relaxed) == reader_gone_epoch_;
  }
  // The caller found the reader dead (its liveness check): sends now report closed.
  void set_reader_gone() noexcept {
    reader_gone_ = true;
    // relaxed: compared later to tell a new reader from the dead one.
    reader_gone_epoch_ = ctl_->reader_attached.load(std::memory_order_relaxed);
  }

  // ok | full | too_big | closed | corrupt. Never blocks.
  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept {
    assert(!claim_open_ && "commit or abort the claim first");
    if (reader_gone()) return last_ = Status::closed;
    if (pending_abort_ && write_abort_now() != Status::ok) return last_;
    if (msg.size() > max_payload_) return try_send_chunked(msg, kind);
    const std::uint64_t rec = spsc::record_bytes(msg.size());
    if (reserve(need_for(rec)) != Status::ok) return full_or_corrupt();
    write_record(place(rec), spsc::RecordKind::whole, kind, msg);
    count(msg.size());
    publish();
    return last_ = Status::ok;
  }

  // ok | timeout | interrupted | closed | too_big | corrupt. Any size up to kMaxMessageBytes.
  template <class PeerAlive>
  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d, std::uint16_t kind,
                            PeerAlive&& alive) noexcept {
    assert(!claim_open_ && "commit or abort the claim first");
    Status s = prepare(d, alive);
    if (s != Status::ok) return last_ = s;
    if (msg.size() > max_payload_) return send_chunked(msg, d, kind, alive);
    const std::uint64_t rec = spsc::record_bytes(msg.size());
    if ((s = wait_room(need_for(rec), d, alive)) != Status::ok) return last_ = s;
    write_record(place(rec), spsc::RecordKind::whole, kind, msg);
    count(msg.size());
    publish();
    return last_ = Status::ok;
  }

  // Writes as many of `msgs` as it can before the deadline, publishing the tail once per run of
  // records that fit (a batch that fits is one publish). Returns how many were sent; why it
  // stopped early is last_status().
  template <class PeerAlive>
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind, PeerAlive&& alive) noexcept {
    Status s = prepare(d, alive);
    std::size_t sent = 0;
    for (; s == Status::ok && sent < msgs.size(); ++sent) {
      const auto msg = msgs[sent];
      if (msg.size() > max_payload_) {
        s = send(msg, d, kind, alive);  // publishes what is pending before it waits
        if (s != Status::ok) break;
        continue;
      }
      const std::uint64_t rec = spsc::record_bytes(msg.size());
      if ((s = wait_room(need_for(rec), d, alive)) != Status::ok) break;
      write_record(place(rec), spsc::RecordKind::whole, kind, msg);
      count(msg.size());
    }
    publish();
    last_ = s;
    return sent;
  }

  // Zero-copy write: returns `n` writable bytes in the ring, or nullptr (why: last_status():
  // full | too_big | closed | corrupt). Then commit(used) or abort_claim().
  [[nodiscard]] std::byte* try_claim(std::size_t n, std::uint16_t kind = 0) noexcept {
    if (const Status s = claim_precheck(n); s != Status::ok) return fail(s);
    if (pending_abort_ && write_abort_now() != Status::ok) return nullptr;
    const std::uint64_t rec = spsc::record_bytes(n);
    if (reserve(need_for(rec)) != Status::ok) {
      full_or_corrupt();
      return nullptr;
    }
    return open_claim(rec, n, kind);
  }

  // Like try_claim but waits for room until `d`: nullptr with timeout | interrupted | closed |
  // too_big | corrupt.
  template <class PeerAlive>
  [[nodiscard]] std::byte* claim(std::size_t n, Deadline d, std::uint16_t kind,
                                 PeerAlive&& alive) noexcept {
    if (const Status s = claim_precheck(n); s != Status::ok) return fail(s);
    if (const Status s = prepare(d, alive); s != Status::ok) return fail(s);
    const std::uint64_t rec = spsc::record_bytes(n);
    if (const Status s = wait_room(need_for(rec), d, alive); s != Status::ok) return fail(s);
    return open_claim(rec, n, kind);
  }

  // Publishes the first `used` bytes of the open claim as one message (used <= claimed size).
  void commit(std::size_t used) noexcept {
    assert(claim_open_ && used <= claim_size_);
    if (!claim_open_) return;
    if (used > claim_size_) used = claim_size_;
    spsc::store_header(claim_ptr_, static_cast<std::uint32_t>(used),
                       spsc::make_tag(spsc::RecordKind::whole, claim_kind_));
    pending_ = claim_pos_ + spsc::record_bytes(used);
    claim_open_ = false;
    count(used);
    publish();
  }
  void abort_claim() noexcept {
    if (!claim_open_) return;
    pending_ = claim_rollback_;  // the padding written for it, if any, was never published
    claim_open_ = false;
  }
  bool claim_open() const noexcept { return claim_open_; }

  // Publishes everything, flags the stream closed and wakes a sleeping reader.
  void close() noexcept {
    if (ctl_ == nullptr) return;
    abort_claim();
    publish();
    flush_counts();
    // [P3] release: the final tail is visible to a reader that sees the flag; pairs with the
    // acquire in SpscReader::poll_empty().
    ctl_->writer_closed.store(1, std::memory_order_release);
    notify(ctl_->data_wait);
    ctl_ = nullptr;
  }

  void flush_stats() noexcept { flush_counts(); }
  WaitWord* space_wait_word() const noexcept { return &ctl_->space_wait; }
  // Free bytes as this writer last saw them (a guess: the reader may have freed more).
  std::uint64_t free_guess() const noexcept { return capacity_ - (pending_ - cached_head_); }

 private:
  using RK = spsc::RecordKind;

  // Bytes needed to place a record of `rec` bytes at pending_: the record, plus padding if it
  // would cross the end of the data area.
  std::uint64_t need_for(std::uint64_t rec) const noexcept {
    const std::uint64_t contiguous = capacity_ - (pending_ & mask_);
    return contiguous >= rec ? rec : contiguous + rec;
  }

  // ok if `need` bytes are free after pending_ (refreshing the cached head once), full if not,
  // corrupt if the shared head violates cached_head <= head <= pending.
  Status reserve(std::uint64_t need) noexcept {
    if (capacity_ - (pending_ - cached_head_) >= need) return Status::ok;
    // [P2] acquire: pairs with the release store of head in SpscReader::publish_head(); the
    // reader is done with the bytes below it before we overwrite them.
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (head - cached_head_ > pending_ - cached_head_) return corrupt();
    cached_head_ = head;
    return capacity_ - (pending_ - cached_head_) >= need ? Status::ok : Status::full;
  }

  // Places a record of `rec` bytes at pending_ (after padding if needed); reserve() said yes.
  std::byte* place(std::uint64_t rec) noexcept {
    std::uint64_t offset = pending_ & mask_;
    const std::uint64_t contiguous = capacity_ - offset;
    if (contiguous < rec) {
      spsc::store_header(data_ + offset, static_cast<std::uint32_t>(contiguous - spsc::kHeaderBytes),
                         spsc::make_tag(RK::padding, 0));
      pending_ += contiguous;
      offset = 0;
    }
    pending_ += rec;
    return data_ + offset;
  }

  void write_record(std::byte* p, RK rk, std::uint16_t kind,
                    std::span<const std::byte> payload) noexcept {
    spsc::store_header(p, static_cast<std::uint32_t>(payload.size()), spsc::make_tag(rk, kind));
    if (!payload.empty()) std::memcpy(p + spsc::kHeaderBytes, payload.data(), payload.size());
  }

  void publish() noexcept {
    if (pending_ == tail_) return;
    tail_ = pending_;
    // [P1] release: publishes the records below tail; pairs with the acquire in
    // SpscReader::poll_tail().
    ctl_->tail.store(tail_, std::memory_order_release);
    notify(ctl_->data_wait);  // [D1]
  }

  Status full_or_corrupt() noexcept {
    if (last_ != Status::corrupt) last_ = Status::full;
    flush_counts();  // a lagging reader: a good moment to make the statistics exact
    return last_;
  }
  std::byte* fail(Status s) noexcept {
    last_ = s;
    return nullptr;
  }

  Status claim_precheck(std::size_t n) noexcept {
    assert(!claim_open_ && "one claim at a time");
    if (claim_open_) return Status::full;
    if (n > max_payload_) return Status::too_big;
    if (reader_gone()) return Status::closed;
    return Status::ok;
  }

  std::byte* open_claim(std::uint64_t rec, std::size_t n, std::uint16_t kind) noexcept {
    claim_rollback_ = pending_;
    std::byte* p = place(rec);
    claim_pos_ = pending_ - rec;
    pending_ = claim_pos_;  // nothing of the claim counts as written until commit
    claim_ptr_ = p;
    claim_size_ = n;
    claim_kind_ = kind;
    claim_open_ = true;
    last_ = Status::ok;
    return p + spsc::kHeaderBytes;
  }

  // Before a blocking write: the reader must be there, and a half-sent message must be aborted.
  template <class PeerAlive>
  Status prepare(Deadline d, PeerAlive& alive) noexcept {
    if (reader_gone()) return Status::closed;
    if (!pending_abort_) return Status::ok;
    const Status s = wait_room(need_for(spsc::kHeaderBytes), d, alive);
    if (s == Status::ok) write_abort();
    return s;
  }

  Status write_abort_now() noexcept {
    if (reserve(need_for(spsc::kHeaderBytes)) != Status::ok) return full_or_corrupt();
    write_abort();
    return Status::ok;
  }
  void write_abort() noexcept {
    write_record(place(spsc::kHeaderBytes), RK::abort, 0, {});
    publish();
    pending_abort_ = false;
    // relaxed: crash-recovery word (see the Synchronization block).
    ctl_->writer_streaming.store(0, std::memory_order_relaxed);
  }

  // ---- chunked messages: first = {u64 total} + data, then middle..., last.
  struct Chunk {
    RK rk;
    std::size_t take;  // message bytes in this chunk
    std::uint64_t payload;
  };
  Chunk next_chunk(std::size_t done, std::size_t total) const noexcept {
    if (done == 0) return {RK::first, max_payload_ - 8, max_payload_};
    const std::size_t left = total - done;
    if (left > max_payload_) return {RK::middle, max_payload_, max_payload_};
    return {RK::last, left, left};
  }
  void write_chunk(const Chunk& c, std::span<const std::byte> msg, std::size_t done,
                   std::uint16_t kind) noexcept {
    std::byte* p = place(spsc::record_bytes(c.payload));
    spsc::store_header(p, static_cast<std::uint32_t>(c.payload), spsc::make_tag(c.rk, kind));
    std::byte* out = p + spsc::kHeaderBytes;
    if (c.rk == RK::first) {
      const std::uint64_t total = msg.size();
      std::memcpy(out, &total, sizeof total);
      out += sizeof total;
    }
    std::memcpy(out, msg.data() + done, c.take);
  }
  // Bytes the whole chunk sequence needs when placed from `pos`.
  std::uint64_t chunked_need(std::uint64_t pos, std::size_t total) const noexcept {
    const std::uint64_t start = pos;
    for (std::size_t done = 0; done < total;) {
      const Chunk c = next_chunk(done, total);
      const std::uint64_t rec = spsc::record_bytes(c.payload);
      const std::uint64_t contiguous = capacity_ - (pos & mask_);
      if (contiguous < rec) pos += contiguous;
      pos += rec;
      done += c.take;
    }
    return pos - start;
  }

  Status try_send_chunked(std::span<const std::byte> msg, std::uint16_t kind) noexcept {
    // A message above the capacity can never be try-sent; below it, the loop is ~3 records.
    if (msg.size() > capacity_ || chunked_need(0, msg.size()) > capacity_) {
      return last_ = Status::too_big;
    }
    const std::uint64_t need = chunked_need(pending_, msg.size());
    if (need > capacity_) return pad_to_end();
    if (reserve(need) != Status::ok) return full_or_corrupt();
    for (std::size_t done = 0; done < msg.size();) {
      const Chunk c = next_chunk(done, msg.size());
      write_chunk(c, msg, done, kind);
      done += c.take;
    }
    count(msg.size());
    publish();  // all chunks at once: never a partial message
    return last_ = Status::ok;
  }

  // From this offset the chunks would need more than the ring even when empty: publish a padding
  // record up to the end, so that a later try starts at offset 0 (where it fits). Returns full.
  Status pad_to_end() noexcept {
    const std::uint64_t contiguous = capacity_ - (pending_ & mask_);
    if (reserve(contiguous) != Status::ok) return full_or_corrupt();
    spsc::store_header(data_ + (pending_ & mask_),
                       static_cast<std::uint32_t>(contiguous - spsc::kHeaderBytes),
                       spsc::make_tag(RK::padding, 0));
    pending_ += contiguous;
    publish();
    return last_ = Status::full;
  }

  template <class PeerAlive>
  Status send_chunked(std::span<const std::byte> msg, Deadline d, std::uint16_t kind,
                      PeerAlive& alive) noexcept {
    if (msg.size() > spsc::kMaxMessageBytes) return last_ = Status::too_big;
    // relaxed: crash-recovery word; it is stored before the release that publishes a chunk.
    ctl_->writer_streaming.store(1, std::memory_order_relaxed);
    Status s = Status::ok;
    std::size_t done = 0;
    while (done < msg.size()) {
      const Chunk c = next_chunk(done, msg.size());
      s = wait_room(need_for(spsc::record_bytes(c.payload)), d, alive);
      if (s != Status::ok) break;
      write_chunk(c, msg, done, kind);
      done += c.take;
      publish();  // chunk by chunk: the reader copies one while we write the next
    }
    if (s != Status::ok) {
      pending_abort_ = done != 0;  // the reader holds a partial message: abort it next time
      if (done == 0) ctl_->writer_streaming.store(0, std::memory_order_relaxed);  // relaxed: as above
      return last_ = s;
    }
    ctl_->writer_streaming.store(0, std::memory_order_relaxed);  // relaxed: as above
    count(msg.size());
    return last_ = Status::ok;
  }

  // Waits until `need` bytes are free: spins (spin_budget() rounds), then sleeps on space_wait
  // in slices, checking the reader's liveness after each slice that ends without a wake.
  // ok | timeout | interrupted | closed | corrupt.
  template <class PeerAlive>
  Status wait_room(std::uint64_t need, Deadline d, PeerAlive& alive) noexcept {
    if (const Status s = reserve(need); s != Status::full) return s;
    publish();  // the reader must see everything we wrote before we wait for it
    Backoff backoff(spin_budget_);
    for (;;) {
      const Status s = reserve(need);
      if (s != Status::full) return s;
      if (reader_gone()) return Status::closed;
      if (d.expired()) return Status::timeout;
      if (backoff.spin()) continue;
      flush_counts();
      Stats::bump(stats_->full_waits);
      const FutexResult r = ctl_->space_wait.wait(  // [D2]
          [&] { return reserve(need) != Status::full || reader_gone(); },
          d.capped(spsc::kSleepSlice));
      if (r == FutexResult::interrupted) return Status::interrupted;
      if (r == FutexResult::timed_out && !alive()) set_reader_gone();
    }
  }

  std::uint64_t tail_ = 0;         // published tail
  std::uint64_t pending_ = 0;      // end of what is written, published or not (>= tail_)
  std::uint64_t cached_head_ = 0;  // the reader's head as last seen; never above the real one
  std::uint64_t claim_rollback_ = 0;
  std::uint64_t claim_pos_ = 0;
  std::byte* claim_ptr_ = nullptr;
  std::size_t claim_size_ = 0;
  std::uint32_t reader_gone_epoch_ = 0;
  std::uint16_t claim_kind_ = 0;
  bool claim_open_ = false;
  bool pending_abort_ = false;
  bool reader_gone_ = false;
};

// ------------------------------------------------------------------------------------------------
// The reader. One thread at a time. A zero-copy view returned by try_recv/recv holds its ring
// space until release(); the head advances only when no view is held.
class SpscReader : public SpscEnd {
 public:
  // Attaches to a ring placed by init_in. ok | corrupt. If the previous reader died holding
  // messages, they are skipped and counted in Stats::abandoned. Clears reader_closed.
  Status attach(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (attach_common(mem, capacity, stats) != Status::ok) return Status::corrupt;
    msgs_counter_ = &stats->received;
    bytes_counter_ = &stats->bytes_received;
    // acquire: pairs with [P1]/[P2].
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (!SpscRing::positions_ok(head, tail, capacity)) return corrupt();
    head_ = read_pos_ = cached_tail_ = head;
    head_batch_ = SpscRing::head_batch(capacity);
    skip_abandoned(tail);
    resync_ = true;  // we may start in the middle of a chunked message
    // relaxed: as in SpscWriter::attach, for data_wait, where only the reader sleeps.
    ctl_->data_wait.waiters.store(0, std::memory_order_relaxed);
    // relaxed: a counter for liveness decisions, no data behind it.
    ctl_->reader_attached.fetch_add(1, std::memory_order_relaxed);
    // release: as in SpscWriter::attach.
    ctl_->reader_closed.store(0, std::memory_order_release);
    return last_ = Status::ok;
  }

  // True if the writer closed, or was declared gone by set_writer_gone() and none came since.
  bool writer_gone() const noexcept {
    // [P3] acquire: pairs with the release in SpscWriter::close(); the caller re-reads tail.
    if (ctl_->writer_closed.load(std::memory_order_acquire) != 0) return true;
    // relaxed: compared only.
    return writer_gone_ &&
           ctl_->writer_attached.load(std::memory_order_relaxed) == writer_gone_epoch_;
  }
  // The caller found the writer dead: once drained, reads report closed.
  void set_writer_gone() noexcept {
    writer_gone_ = true;
    // relaxed: compared later to tell a new writer from the dead one.
    writer_gone_epoch_ = ctl_->writer_attached.load(std::memory_order_relaxed);
  }

  // ok | empty | closed | corrupt. Never blocks. On ok, `out` is zero copy (release() it) or a
  // view of the reassembly buffer, valid until the next call (or take it: take_assembled()).
  [[nodiscard]] Status try_recv(RecvView& out) noexcept {
    drop_assembled();
    const Status s = read_one(out, true);
    publish_head(s != Status::ok);  // running dry: return the space at once
    if (s == Status::empty) flush_counts();
    return last_ = s;
  }

  // ok | timeout | interrupted | closed | corrupt. Spins (spin_budget() rounds), then sleeps on
  // data_wait in slices, checking the writer's liveness after each slice that ends without a wake.
  template <class PeerAlive>
  [[nodiscard]] Status recv(RecvView& out, Deadline d, PeerAlive&& alive) noexcept {
    Backoff backoff(spin_budget_);
    for (;;) {
      const Status s = try_recv(out);
      if (s != Status::empty) return s;
      if (d.expired()) return last_ = Status::timeout;
      if (backoff.spin()) continue;
      const FutexResult r = sleep(d);
      if (r == FutexResult::interrupted) return last_ = Status::interrupted;
      if (r == FutexResult::timed_out && !alive()) set_writer_gone();
    }
  }

  // Sleeps once (at most one slice) unless data or a close is already there. For wait loops
  // built by callers (recv_many with a deadline, wait_any).
  FutexResult sleep(Deadline d) noexcept {
    Stats::bump(stats_->empty_waits);
    return ctl_->data_wait.wait([&] { return ready_guess(); },  // [D1]
                                d.capped(spsc::kSleepSlice));
  }

  // Calls fn(std::span<const std::byte>, std::uint16_t kind) for up to `max` messages available
  // now, in order, and publishes the head once at the end. The span is valid only during the
  // call. fn must not throw and must not call back into this reader. Why it stopped: last_status().
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max) noexcept {
    drop_assembled();
    std::size_t n = 0;
    Status s = Status::ok;
    while (n < max) {
      RecvView v;
      if ((s = read_one(v, false)) != Status::ok) break;
      fn(v.bytes, v.kind);
      if (!v.zero_copy) drop_assembled();
      ++n;
    }
    last_ = n == max ? Status::ok : s;
    save_recovery();
    publish_head(n < max);
    if (s == Status::empty) flush_counts();
    return n;
  }

  // The holder of a zero-copy view is done with it.
  void release(std::uint64_t /*token*/) noexcept {
    assert(held_ > 0);
    if (held_ == 0 || ctl_ == nullptr) return;
    --held_;
    // relaxed: crash-recovery word.
    ctl_->held.store(held_, std::memory_order_relaxed);
    publish_head(false);
  }

  // Moves the reassembled message just returned out of the reader (its size = the message's).
  std::vector<std::byte> take_assembled() noexcept {
    delivered_ = false;
    return std::exchange(assembly_, {});
  }

  // Bytes waiting, headers included (a guess).
  std::size_t size_guess() const noexcept {
    // relaxed: a guess.
    const std::uint64_t d = ctl_->tail.load(std::memory_order_relaxed) - read_pos_;
    return static_cast<std::size_t>(d > capacity_ ? 0 : d);
  }
  // A record or a close is waiting (a guess; a dead writer is not seen here).
  bool ready_guess() const noexcept {
    // acquire: pairs with [P1]; also the re-check of the Dekker pair [D1].
    return ctl_->tail.load(std::memory_order_acquire) != read_pos_ || writer_gone();
  }
  WaitWord* data_wait_word() const noexcept { return &ctl_->data_wait; }
  std::uint32_t held() const noexcept { return held_; }

  // Flags the reader closed (the writer then gets closed) and wakes a sleeping writer.
  void close() noexcept {
    if (ctl_ == nullptr) return;
    publish_head(true);
    flush_counts();
    // [P3] release: pairs with the relaxed flag check in SpscWriter::reader_gone(), which
    // needs no data from us.
    ctl_->reader_closed.store(1, std::memory_order_release);
    notify(ctl_->space_wait);
    ctl_ = nullptr;
  }
  void flush_stats() noexcept { flush_counts(); }

 private:
  using RK = spsc::RecordKind;

  struct Header {
    std::uint64_t offset;
    std::uint32_t length;
    std::uint32_t tag;
  };

  // If the previous reader died holding views or with reads it had not yet published (head
  // batching), its read_pos is ahead of head: skip to it.
  void skip_abandoned(std::uint64_t tail) noexcept {
    // relaxed: crash-recovery words, written by the previous holder of the role.
    const std::uint64_t pos = ctl_->read_pos.load(std::memory_order_relaxed);
    const std::uint32_t held = ctl_->held.load(std::memory_order_relaxed);
    if (SpscRing::read_end(head_, tail, pos) != head_) {
      Stats::bump(stats_->abandoned, held);
      read_pos_ = pos;
      cached_tail_ = tail;  // known published (acquire in attach) and >= pos: never read past it
    }
    ctl_->held.store(0, std::memory_order_relaxed);  // relaxed: as above
    ctl_->read_pos.store(read_pos_, std::memory_order_relaxed);
    publish_head(true);
  }
  void save_recovery() noexcept {
    if (held_ == 0) return;
    // relaxed: crash-recovery words.
    ctl_->read_pos.store(read_pos_, std::memory_order_relaxed);
    ctl_->held.store(held_, std::memory_order_relaxed);
  }

  // Publishes head when forced or a batch is complete (see "Head batching"); otherwise records
  // the read position for a later reader. Never past a held view.
  void publish_head(bool force) noexcept {
    if (read_pos_ == head_) return;
    if (held_ != 0 || (!force && read_pos_ - head_ < head_batch_)) {
      // relaxed: crash-recovery word, read only by a later holder of the role.
      ctl_->read_pos.store(read_pos_, std::memory_order_relaxed);
      return;
    }
    head_ = read_pos_;
    // [P2] release: we are done with the bytes below head; pairs with the acquire in
    // SpscWriter::reserve().
    ctl_->head.store(head_, std::memory_order_release);
    notify(ctl_->space_wait);  // [D2]
  }

  Status poll_tail() noexcept {
    // [P1] acquire: pairs with the release in SpscWriter::publish(); the records below are
    // complete.
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    if (tail - read_pos_ > capacity_ || tail % kRecordAlign != 0) return corrupt();
    cached_tail_ = tail;
    return Status::ok;
  }

  // Nothing cached: re-read tail; if still nothing, empty, or closed when the writer is gone.
  Status poll_empty() noexcept {
    if (poll_tail() != Status::ok) return Status::corrupt;
    if (cached_tail_ != read_pos_) return Status::ok;
    if (!writer_gone()) return Status::empty;
    // [P3]: the flag was read (acquire) after the writer's final tail; read tail once more.
    if (poll_tail() != Status::ok) return Status::corrupt;
    if (cached_tail_ != read_pos_) return Status::ok;
    discard_partial();  // a chunked message the writer never finished is never delivered
    return Status::closed;
  }

  // Reads and validates the header at read_pos_. ok | empty | closed | corrupt.
  Status next_header(Header& h) noexcept {
    if (cached_tail_ == read_pos_) {
      if (const Status s = poll_empty(); s != Status::ok) return s;
    }
    const std::uint64_t avail = cached_tail_ - read_pos_;
    h.offset = read_pos_ & mask_;
    const std::byte* p = data_ + h.offset;
    h.length = spsc::load_u32(p);
    h.tag = spsc::load_u32(p + 4);
    const std::uint64_t contiguous = capacity_ - h.offset;
    if (!spsc::tag_valid(h.tag)) return corrupt();
    if (spsc::tag_record(h.tag) == RK::padding) {
      const bool ok = h.length == contiguous - spsc::kHeaderBytes && contiguous <= avail;
      return ok ? Status::ok : corrupt();
    }
    const std::uint64_t rec = spsc::record_bytes(h.length);
    const bool ok = h.length <= max_payload_ && rec <= contiguous && rec <= avail;
    return ok ? Status::ok : corrupt();
  }

  // Consumes records until one message is complete. hold: count a zero-copy view as held.
  Status read_one(RecvView& out, bool hold) noexcept {
    for (;;) {
      Header h;
      if (const Status s = next_header(h); s != Status::ok) return s;
      const std::byte* payload = data_ + h.offset + spsc::kHeaderBytes;
      const std::uint64_t rec = spsc::record_bytes(h.length);
      switch (spsc::tag_record(h.tag)) {
        case RK::padding:
          consume(capacity_ - h.offset);
          continue;
        case RK::whole:
          if (assembling_) return corrupt();
          resync_ = false;
          read_pos_ += rec;
          out = {{payload, h.length}, spsc::tag_kind(h.tag), true, read_pos_};
          count(h.length);
          if (hold) hold_one();
          return Status::ok;
        case RK::abort:
          discard_partial();
          consume(rec);
          continue;
        default:
          break;
      }
      const Chunk c = take_chunk(h, payload);
      if (c == Chunk::corrupt) return Status::corrupt;
      consume(rec);
      if (c == Chunk::completed) return finish_assembly(out);
    }
  }

  void consume(std::uint64_t bytes) noexcept {
    read_pos_ += bytes;
    // Chunks are copied and padding is empty: nothing of them is held. A chunk is half the ring,
    // so this publishes for chunks (the writer streaming a message waits for that space).
    publish_head(false);
  }
  void hold_one() noexcept {
    ++held_;
    save_recovery();
  }

  enum class Chunk : std::uint8_t { more, completed, corrupt };

  // Appends one chunk to the reassembly buffer.
  Chunk take_chunk(const Header& h, const std::byte* payload) noexcept {
    const RK rk = spsc::tag_record(h.tag);
    const std::uint16_t kind = spsc::tag_kind(h.tag);
    if (rk == RK::first) {
      return begin_assembly(h.length, kind, payload) == Status::ok ? Chunk::more : Chunk::corrupt;
    }
    if (!assembling_) {
      // After attach we may see the rest of a message whose start a previous reader consumed.
      if (resync_) return Chunk::more;
      corrupt();
      return Chunk::corrupt;
    }
    const std::uint64_t room = expected_total_ - assembly_.size();
    bool ok = kind == assembly_kind_ && h.length <= room;
    ok = ok && (rk == RK::last ? h.length == room : h.length == max_payload_);
    if (!ok) {
      corrupt();
      return Chunk::corrupt;
    }
    assembly_.insert(assembly_.end(), payload, payload + h.length);
    return rk == RK::last ? Chunk::completed : Chunk::more;
  }

  Status begin_assembly(std::uint32_t length, std::uint16_t kind, const std::byte* payload) noexcept {
    if (assembling_) return corrupt();
    resync_ = false;
    if (length != max_payload_) return corrupt();
    const std::uint64_t total = spsc::load_u64(payload);
    if (total <= max_payload_ || total > spsc::kMaxMessageBytes) return corrupt();
    drop_assembled();
    assembly_.clear();
    // Never trust `total` for the allocation: grow with the data that really arrives.
    assembly_.reserve(static_cast<std::size_t>(total < kReserveCap ? total : kReserveCap));
    assembly_.insert(assembly_.end(), payload + 8, payload + length);
    expected_total_ = total;
    assembly_kind_ = kind;
    assembling_ = true;
    return Status::ok;
  }

  Status finish_assembly(RecvView& out) noexcept {
    assembling_ = false;
    delivered_ = true;
    out = {{assembly_.data(), assembly_.size()}, assembly_kind_, false, read_pos_};
    count(assembly_.size());
    return Status::ok;
  }

  void discard_partial() noexcept {
    if (!assembling_) return;
    assembling_ = false;
    assembly_.clear();
  }
  // The reassembled message handed out last time was not taken: reuse or free the buffer.
  void drop_assembled() noexcept {
    if (!delivered_) return;
    delivered_ = false;
    if (assembly_.capacity() > kReserveCap) {
      std::vector<std::byte>().swap(assembly_);
    } else {
      assembly_.clear();
    }
  }

  static constexpr std::uint64_t kReserveCap = 16u << 20;

  std::uint64_t read_pos_ = 0;     // records below are consumed (held views included)
  std::uint64_t head_ = 0;         // published head
  std::uint64_t head_batch_ = 0;   // publish head after reading this far past it
  std::uint64_t cached_tail_ = 0;  // the writer's tail as last seen
  std::uint64_t expected_total_ = 0;
  std::vector<std::byte> assembly_;
  std::uint32_t held_ = 0;
  std::uint32_t writer_gone_epoch_ = 0;
  std::uint16_t assembly_kind_ = 0;
  bool assembling_ = false;
  bool delivered_ = false;
  bool resync_ = false;
  bool writer_gone_ = false;
};

}  // namespace shmq::core
