// The SPSC byte ring's format: what its shared memory looks like and which bytes are valid. Pure
// data and constexpr checks, no algorithm: the writer and reader (spsc_writer.hpp,
// spsc_reader.hpp), the CLI's peek and the Pipe's validation all judge records with these names.
//
// Layout: a control block (SpscRingControl, kControlBytes) followed by 2^k data bytes. Positions
// are 64-bit and monotonic; offset = position & (capacity - 1); lap = position >> k. Records are
// kRecordAlign-aligned: an 8-byte header {u32 length, u32 tag} + payload, never wrapping: a
// padding record fills the end of the data area when the next record would not fit there. The
// tag carries a check byte (kTagMagic + lap, mod 256), the record kind and the message kind
// (message_kind.hpp). A message of at most max_payload() bytes is one `whole` record; a larger one
// is a `first` chunk ({u64 total} + data), `middle` chunks of max_payload() bytes and a `last`
// chunk with the rest. An `abort` record discards the chunked message in progress.
//
// The header is the commit: the writer stores it last, as one 64-bit word, and a record exists
// only when the header at its position is committed(): non-zero, with the check byte of the
// position's lap. The 8 bytes at the end of the committed records (the frontier) never look
// committed: the writer zeroes them before each commit when they are free, and when they are not
// (the ring is exactly full) they hold the header of the record one lap back, whose check byte
// is the previous lap's. So a reader polls one word, the next header, and never mistakes an old
// lap's header or payload bytes for a record.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <type_traits>

#include "shmq/core/detail/copy.hpp"
#include "shmq/core/layout.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

namespace spsc {

// Bumped with any change of the control block or the record format, so that a process of another
// version refuses the ring (Pipe::open reports it as corrupt) instead of misreading it.
inline constexpr std::uint64_t kRingMagic = 0x32474E4952435053ull;  // "SPSCRNG2" little-endian
inline constexpr std::uint64_t kHeaderBytes = 8;                   // {u32 length, u32 tag}
inline constexpr std::uint64_t kMaxMessageBytes = 1ull << 40;      // any larger send is too_big
inline constexpr std::uint64_t kChunkTotalBytes = 8;  // a first chunk opens with the u64 total

enum class RecordKind : std::uint8_t { padding = 1, whole = 2, first = 3, middle = 4, last = 5, abort = 6 };

// tag = check byte << 24 | record kind << 16 | message kind. The check byte is kTagMagic plus
// the lap of the record's position: it tells this lap's records from older laps' bytes.
inline constexpr std::uint32_t kTagMagic = 0xA7;

constexpr std::uint8_t lap_check(std::uint64_t pos, unsigned capacity_shift) noexcept {
  return static_cast<std::uint8_t>(kTagMagic + (pos >> capacity_shift));
}
constexpr std::uint32_t make_tag(RecordKind rk, std::uint16_t kind, std::uint8_t check) noexcept {
  return (static_cast<std::uint32_t>(check) << 24) | (static_cast<std::uint32_t>(rk) << 16) | kind;
}
constexpr std::uint8_t tag_check(std::uint32_t tag) noexcept {
  return static_cast<std::uint8_t>(tag >> 24);
}
// A known record kind (the check byte is judged by committed()).
constexpr bool tag_valid(std::uint32_t tag) noexcept {
  const std::uint32_t rk = (tag >> 16) & 0xFF;
  return rk >= 1 && rk <= 6;
}
constexpr RecordKind tag_record(std::uint32_t tag) noexcept {
  return static_cast<RecordKind>((tag >> 16) & 0xFF);
}
constexpr std::uint16_t tag_kind(std::uint32_t tag) noexcept {
  return static_cast<std::uint16_t>(tag & 0xFFFF);
}

// The header as the one 64-bit word the writer stores (little-endian: length, then tag).
constexpr std::uint64_t header_word(std::uint32_t length, std::uint32_t tag) noexcept {
  return static_cast<std::uint64_t>(tag) << 32 | length;
}
constexpr std::uint32_t word_length(std::uint64_t word) noexcept {
  return static_cast<std::uint32_t>(word);
}
constexpr std::uint32_t word_tag(std::uint64_t word) noexcept {
  return static_cast<std::uint32_t>(word >> 32);
}
// True if `word`, found at a record position whose lap gives `check`, is a record of this lap.
// False: the zeroed frontier, or an older lap's bytes (the record is not written yet).
constexpr bool committed(std::uint64_t word, std::uint8_t check) noexcept {
  return word != 0 && tag_check(word_tag(word)) == check;
}

// The later of two positions (modulo 2^64, as positions are compared everywhere).
constexpr std::uint64_t later(std::uint64_t a, std::uint64_t b) noexcept {
  return static_cast<std::int64_t>(b - a) > 0 ? b : a;
}

// Bytes a record with `payload` bytes occupies. For a padding record (payload = the rest of the
// data area after its header) that is exactly the rest of the data area.
constexpr std::uint64_t record_bytes(std::uint64_t payload) noexcept {
  return align_up(kHeaderBytes + payload, kRecordAlign);
}
// The length field of a padding record that fills the `contiguous` bytes left before the end.
constexpr std::uint32_t padding_length(std::uint64_t contiguous) noexcept {
  return static_cast<std::uint32_t>(contiguous - kHeaderBytes);
}

// Why a committed record header is invalid where it was found.
enum class RecordCheck : std::uint8_t {
  ok,
  bad_tag,      // an unknown record kind
  bad_padding,  // a padding record that does not end exactly at the end of the data area
  bad_length,   // longer than max_payload, crossing the end of the data area, or out of reach
};

// Checks a committed record header {length, tag} read (once) at an offset with `contiguous`
// bytes left before the end of the data area and `avail` bytes the writer may have written from
// it (head + capacity - position for the reader; what it published, for a reader of tail).
constexpr RecordCheck check_record(std::uint32_t length, std::uint32_t tag,
                                   std::uint64_t contiguous, std::uint64_t avail,
                                   std::uint64_t max_payload) noexcept {
  if (!tag_valid(tag)) return RecordCheck::bad_tag;
  if (tag_record(tag) == RecordKind::padding) {
    const bool fills = length == contiguous - kHeaderBytes && contiguous <= avail;
    return fills ? RecordCheck::ok : RecordCheck::bad_padding;
  }
  const std::uint64_t rec = record_bytes(length);
  const bool fits = length <= max_payload && rec <= contiguous && rec <= avail;
  return fits ? RecordCheck::ok : RecordCheck::bad_length;
}

// A first chunk fills a whole record and announces a message that really needs chunks.
constexpr bool first_chunk_ok(std::uint32_t length, std::uint64_t total,
                              std::uint64_t max_payload) noexcept {
  return length == max_payload && total > max_payload && total <= kMaxMessageBytes;
}
// A middle or last chunk (tag) of a message of `message_kind` with `room` bytes still to come:
// the same message kind, a middle fills a whole record, the last brings exactly the rest.
constexpr bool next_chunk_ok(std::uint32_t tag, std::uint32_t length, std::uint16_t message_kind,
                             std::uint64_t room, std::uint64_t max_payload) noexcept {
  if (tag_kind(tag) != message_kind || length > room) return false;
  return tag_record(tag) == RecordKind::last ? length == room : length == max_payload;
}

// Header words: one aligned 64-bit atomic access each, so the value checked is the value used (no
// compiler re-load) and a header is never seen half stored. Tags: spsc_ring.hpp.
inline std::uint64_t load_header(const std::byte* p) noexcept {
  // [P1] acquire: pairs with the release in store_header_release(); the payload is complete.
  return __atomic_load_n(reinterpret_cast<const std::uint64_t*>(p), __ATOMIC_ACQUIRE);
}
inline void store_header_release(std::byte* p, std::uint64_t word) noexcept {
  // [P1] release: commits the record (and every record stored after it, see the writer's
  // groups); pairs with the acquire in load_header().
  __atomic_store_n(reinterpret_cast<std::uint64_t*>(p), word, __ATOMIC_RELEASE);
}
inline void store_header_relaxed(std::byte* p, std::uint64_t word) noexcept {
  // relaxed: beyond the frontier; the release of the frontier's header publishes it.
  __atomic_store_n(reinterpret_cast<std::uint64_t*>(p), word, __ATOMIC_RELAXED);
}
inline std::uint64_t load_u64(const std::byte* p) noexcept {
  std::uint64_t v;  // a first chunk's total, ordered by [P1]; memcpy is enough
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace spsc

// The shared control block, grouped by the side that writes each line. Tags: spsc_ring.hpp.
struct SpscRingControl {
  // ---- line 0: written at init, on attach and on close; read-mostly
  std::uint64_t magic;
  std::uint64_t capacity;
  std::atomic<std::uint32_t> writer_closed;    // [P3]
  std::atomic<std::uint32_t> reader_closed;    // [P3]
  std::atomic<std::uint32_t> writer_attached;  // bumped by every writer attach (0: never had one)
  std::atomic<std::uint32_t> reader_attached;
  // ---- line 1: the writer's position, published after the headers below it; read by a reader
  // about to sleep, by guesses and on attach, never on the reader's polling path
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // [P4]
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
  static constexpr std::uint64_t kMaxHeadBatch = 16 * 1024;
  static_assert(sizeof(SpscRingControl) <= kControlBytes, "the control block fits its area");
  static_assert(kControlBytes % kCacheLine == 0, "the data area starts on a line");

  static constexpr bool valid_capacity(std::uint64_t capacity) noexcept {
    return is_pow2(capacity) && capacity >= kMinCapacity && capacity <= kMaxCapacity;
  }
  // k for a capacity of 2^k: lap = position >> k.
  static constexpr unsigned capacity_shift(std::uint64_t capacity) noexcept {
    return static_cast<unsigned>(std::countr_zero(capacity));
  }
  // Bytes one ring occupies (control + data); a multiple of kCacheLine.
  static constexpr std::uint64_t required_bytes(std::uint64_t capacity) noexcept {
    return kControlBytes + capacity;
  }
  // The largest payload of one record: half the ring, so an empty ring always takes one.
  static constexpr std::uint64_t max_payload(std::uint64_t capacity) noexcept {
    return capacity / 2 - spsc::kHeaderBytes;
  }
  // How far the reader reads past head before it publishes head ("Head batching" in
  // spsc_ring.hpp).
  static constexpr std::uint64_t head_batch(std::uint64_t capacity) noexcept {
    return capacity / 16 < kMaxHeadBatch ? capacity / 16 : kMaxHeadBatch;
  }

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
    // The first frontier; the writer keeps every later one (see the format above).
    spsc::store_header_relaxed(data(mem), 0);
    return true;
  }

  // Validates a ring found in shared memory: magic, capacity, and the positions (see
  // positions_ok). ok or corrupt.
  static Status check(std::span<std::byte> mem, std::uint64_t capacity) noexcept {
    if (!valid_capacity(capacity) || mem.size() < required_bytes(capacity)) return Status::corrupt;
    const auto* c = control(mem);
    if (c->magic != spsc::kRingMagic || c->capacity != capacity) return Status::corrupt;
    // acquire: pairs with [P1]/[P2]; we only validate here, each side re-reads on attach.
    const std::uint64_t tail = c->tail.load(std::memory_order_acquire);
    const std::uint64_t head = c->head.load(std::memory_order_acquire);
    return positions_ok(head, tail, capacity) ? Status::ok : Status::corrupt;
  }

  // Both positions aligned and within one ring of each other. The headers commit records and
  // tail follows them, so a reader may run (and publish head) up to a ring's worth past a tail
  // not yet stored, or left behind by a writer killed between its commit and its tail store.
  static constexpr bool positions_ok(std::uint64_t head, std::uint64_t tail,
                                     std::uint64_t capacity) noexcept {
    // unsigned: whichever is ahead, the other difference wraps to a huge value
    return (tail - head <= capacity || head - tail <= capacity) && head % kRecordAlign == 0 &&
           tail % kRecordAlign == 0;
  }
  // How far the reader has read, from its crash-recovery word read_pos: read_pos when it lies
  // within a ring past head on a record boundary (views it holds, or reads head batching has not
  // returned yet), else head (a stale word, left behind by a later publish of head). The reader
  // also checks that it lies on the record chain from head (SpscReader::attach).
  static constexpr std::uint64_t read_end(std::uint64_t head, std::uint64_t read_pos,
                                          std::uint64_t capacity) noexcept {
    return read_pos - head <= capacity && read_pos % kRecordAlign == 0 ? read_pos : head;
  }

  static SpscRingControl* control(std::span<std::byte> mem) noexcept {
    return std::launder(reinterpret_cast<SpscRingControl*>(mem.data()));
  }
  static std::byte* data(std::span<std::byte> mem) noexcept { return mem.data() + kControlBytes; }
};

}  // namespace shmq::core
