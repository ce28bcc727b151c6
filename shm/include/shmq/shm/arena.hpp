// Arenas: segments that hold many small synchronization objects (mutexes, semaphores, events,
// conditions, barriers, shared values), so that 10,000 of them cost a few segments rather than
// 10,000 files. An object is a block of the arena; other processes reach it through a SyncHandle
// (the arena's name, the block index and the generation of that allocation).
//
//   auto a = shmq::Arena::create({.name = "app", .block_bytes = 64, .blocks = 1024});
//   auto b = a->allocate(shmq::SyncType::value, 8);        // a SyncBlock: 8 zeroed bytes
//   shmq::SyncHandle h = b->handle();                        // "app@0.1": send it anywhere
//   auto same = shmq::Arena::open_block(h, shmq::SyncType::value);   // in another process
//
// Segment body: ArenaBodyHeader, a table of ArenaEntry (one per block), then the blocks
// (block_bytes each, a power of two from 64 bytes).
// Who holds a block: ArenaEntry::refs has one bit per participant slot of the segment that holds
// at least one handle of it; the block is free when refs is 0. A process joins each arena it uses
// once, as one participant; its handles count in process memory, and its bit goes when its last
// handle of that block does. Bits of participants that died stay until a sweep clears them: the
// next process that takes the dead one's slot clears that slot's bits everywhere (its bits are
// stale by definition), and an allocation that finds no free block first sweeps every dead
// participant's bits.
//
// Synchronization
//   [A1] guard: allocation, opening a block, dropping a process's last handle and sweeps run
//        under the arena's guard (a core::FutexMutex: [M1] acquire/release, owner_died when a
//        process died holding it), so entry fields are relaxed atomics. Each of those updates
//        commits with one store: an allocation writes generation, type, bytes, name and the
//        object's initial bytes, then refs (the commit); a process killed before that store
//        leaves a free block, one killed after it leaves a block that a sweep frees. So a guard
//        taken over from a dead holder needs no repair.
//   [A2] objects: a handle is usable once open/allocate returned (the guard's release published
//        the initial bytes); the objects' own synchronization is theirs (core/futex_*.hpp).
//   [A3] participants: as Segment's [S2]; the holder id of a participant is
//        core::make_holder(slot index, generation). A participant is dead when the kernel no
//        longer holds its slot's lock or the slot's generation moved on.
//
// Fork: a forked child must not act as its parent. pthread_atfork closes the child's copies of
// its parent's participant descriptors (so the parent's death stays visible) and marks every
// arena; the child's first use of an arena joins it as a new participant and takes a reference
// on every block its inherited handles name (rejoin_arenas_after_fork() does that at once for
// every arena). Joining on first use keeps participant slots for the children that use the arena.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/layout.hpp"
#include "shmq/core/result.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq {

// What a block holds; stored in its entry so that opening checks it.
enum class SyncType : std::uint32_t {
  free = 0,
  mutex = 1,
  recursive_mutex = 2,
  semaphore = 3,
  event = 4,
  condition = 5,
  barrier = 6,
  value = 7,  // raw bytes (Python's Value/Array payloads, optionally after a recursive mutex)
};
std::string_view sync_type_name(SyncType t) noexcept;

inline constexpr std::uint64_t kArenaBodyMagic = 0x31414E4552414D53ull;  // "SMARENA1"
inline constexpr std::uint64_t kMinArenaBlockBytes = 64;
inline constexpr std::uint64_t kMaxArenaBlockBytes = 1ull << 30;
inline constexpr std::uint32_t kMaxArenaBlocks = 1u << 20;
inline constexpr std::size_t kSyncNameBytes = 40;  // object names: up to 39 characters

struct alignas(core::kCacheLine) ArenaBodyHeader {
  // ---- immutable after creation
  std::uint64_t magic;
  std::uint64_t block_bytes;   // power of two, >= kMinArenaBlockBytes
  std::uint64_t blocks;
  std::uint64_t table_offset;  // from the body's start
  std::uint64_t data_offset;   // from the body's start, a multiple of 4096
  // ---- mutable
  alignas(core::kCacheLine) core::FutexMutex guard;  // [A1]
  std::atomic<std::uint32_t> rotor;                  // where the next search for a free block starts
  std::atomic<std::uint32_t> live;                   // blocks in use
  std::atomic<std::uint32_t> reserved;
  std::atomic<std::uint64_t> allocations;            // since creation
};
static_assert(std::is_standard_layout_v<ArenaBodyHeader>, "shared between processes");
static_assert(sizeof(ArenaBodyHeader) == 2 * core::kCacheLine);

struct ArenaEntry {
  std::atomic<std::uint64_t> refs;        // participant slots holding handles; 0 = free [A1]
  std::atomic<std::uint32_t> generation;  // bumped by every allocation
  std::atomic<std::uint32_t> type;        // SyncType
  std::atomic<std::uint32_t> bytes;       // bytes the creator asked for (<= block_bytes)
  std::atomic<std::uint32_t> reserved;
  char name[kSyncNameBytes];              // NUL-terminated; "" for unnamed objects
};
static_assert(sizeof(ArenaEntry) == 64);
static_assert(kMaxParticipants <= 64, "refs has one bit per participant slot");

struct ArenaConfig {
  std::string name;                  // "" → a generated name, unlinked when the last user leaves
  std::uint64_t block_bytes = 64;    // power of two in [64, 1 GiB]
  std::uint32_t blocks = 256;        // 1 to kMaxArenaBlocks
};

// An object's address, valid in any process: "<arena>@<block>.<generation>" as text.
struct SyncHandle {
  std::string arena;
  std::uint32_t block = 0;
  std::uint32_t generation = 0;

  std::string to_string() const;
  static Result<SyncHandle> parse(std::string_view text);
  bool operator==(const SyncHandle&) const = default;
};

namespace detail {
struct ArenaShared;
}

class Arena;

// One block held by this process: its bytes stay valid (and the block allocated) while it lives.
// Move-only; several SyncBlocks of one block share one reference of this process.
class SyncBlock {
 public:
  SyncBlock() = default;
  SyncBlock(SyncBlock&&) noexcept;
  SyncBlock& operator=(SyncBlock&&) noexcept;
  SyncBlock(const SyncBlock&) = delete;
  SyncBlock& operator=(const SyncBlock&) = delete;
  ~SyncBlock();

  bool valid() const noexcept { return arena_ != nullptr; }
  std::byte* data() const noexcept { return data_; }
  std::uint32_t bytes() const noexcept { return bytes_; }  // what the creator asked for
  std::uint32_t index() const noexcept { return index_; }
  std::uint32_t generation() const noexcept { return generation_; }
  SyncType type() const noexcept { return type_; }
  SyncHandle handle() const;
  // Another reference to the same block (one more handle of this process).
  SyncBlock share() const;
  detail::ArenaShared* arena() const noexcept { return arena_.get(); }
  // This process's holder id in the block's arena (joins again first after a fork); kNoHolder
  // if it cannot join (every participant slot taken).
  std::uint32_t holder() const noexcept;
  const core::HolderRegistry& registry() const noexcept;
  void reset() noexcept;

 private:
  friend class Arena;
  friend struct detail::ArenaShared;
  std::shared_ptr<detail::ArenaShared> arena_;
  std::byte* data_ = nullptr;
  std::uint32_t index_ = 0;
  std::uint32_t generation_ = 0;
  std::uint32_t bytes_ = 0;
  SyncType type_ = SyncType::free;
};

// Never a holder id (their bits 0-1 are 0): "this process has no participant slot".
inline constexpr std::uint32_t kNoHolder = 1;

class Arena {
 public:
  static Result<Arena> create(const ArenaConfig& config);
  // Opens by name; within one process every open of a name shares one participant.
  static Result<Arena> open(std::string_view name, const OpenOptions& options = {});
  static Result<void> unlink(std::string_view name);

  // A block for an object of `bytes` bytes (zeroed), from this process's arenas of the smallest
  // block size that fits, creating one when all are full. Objects above 64 KiB get an arena of
  // their own.
  static Result<SyncBlock> allocate_anywhere(SyncType type, std::uint64_t bytes);
  // Opens the block a handle names; wrong_kind if it holds another type, not_found if it was
  // freed (or reused: another generation).
  static Result<SyncBlock> open_block(const SyncHandle& h, SyncType type, const OpenOptions& options = {});

  Arena() = default;

  // A block of this arena (bytes <= block_bytes), zeroed; `name` (optional, < 40 characters)
  // lets others find it with find(). too_big: no free block even after a sweep.
  Result<SyncBlock> allocate(SyncType type, std::uint64_t bytes, std::string_view name = {});
  Result<SyncBlock> find(std::string_view name, SyncType type);
  Result<SyncBlock> open_block(std::uint32_t block, std::uint32_t generation, SyncType type);

  bool valid() const noexcept { return shared_ != nullptr; }
  const std::string& name() const noexcept;
  std::uint64_t block_bytes() const noexcept;
  std::uint32_t blocks() const noexcept;
  std::uint32_t live_guess() const noexcept;
  const Segment& segment() const noexcept;

 private:
  explicit Arena(std::shared_ptr<detail::ArenaShared> s) : shared_(std::move(s)) {}
  std::shared_ptr<detail::ArenaShared> shared_;
};

// After fork() in a child: join every arena this process maps as a new participant and take a
// reference on every block its handles name (done lazily on first use otherwise). Returns how
// many blocks could not be taken again (freed meanwhile by their last other holder).
std::size_t rejoin_arenas_after_fork();
// At exit: leave every arena cleanly (barriers stop counting this process as a party) and
// unlink generated arenas this process is the last to use, keeping the mappings valid for
// whatever runs later in this process.
void leave_arenas_at_exit() noexcept;

}  // namespace shmq
