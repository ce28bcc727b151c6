// Queue: a multi-producer multi-consumer message queue in a shared-memory segment, for any number
// of writers and readers in any number of processes; any message size.
//
//   auto q = shmq::Queue::create({.name = "jobs", .slots = 4096, .slot_size = 256});
//   auto tx = q->writer();                 // each handle joins a participant slot
//   tx->send(bytes, shmq::Deadline::never());
//   auto rx = q->reader();
//   shmq::Message m;
//   rx->recv(m, shmq::Deadline::in(1s));   // m.bytes() points into shared memory until released
//
// Segment body: QueueBodyHeader, then the core::MpmcRing (core/mpmc_ring.hpp: layout, claim
// protocol, crash recovery, Synchronization tags Q1-Q6).
//
// Messages larger than a slot go to the large-message arena when it has a free chunk big enough:
// `arena_chunks` chunks of `arena_chunk_bytes` (page multiples) after the ring, each with an
// owner word in front of them (0 = free, else arena_tag(the claimed slot position)). The slot
// then holds {u64 length, u64 chunk + 1} with kSlotSpilled. Why this is crash-safe without a
// shared allocator: a chunk is taken with one CAS tagged by the writer's claimed position, so
// whoever recovers that position from a dead writer or reader (core::ClaimRegistry::reclaim)
// frees exactly the chunks tagged with it; a reader frees its chunk before it releases the
// slot, so a reader killed in between leaves nothing to free. The pages are mapped once and
// reused: no syscall and no page fault per message (a file per message cost ~60 us at 64 KiB).
//
// Messages larger than a chunk (or arriving while every chunk is taken) spill into a file of
// their own, /dev/shm/shmq.<tag>.x<position in 16 hex digits> (<tag> is the queue's name, or a
// random "memfd-..." tag for anonymous queues).
// Why a file per message, named by the slot position the writer claimed:
//   - any size, with no allocator shared between processes that a crash could leave inconsistent:
//     the kernel owns the space;
//   - the name follows from the position alone, so whoever recovers a slot from a dead writer or
//     reader (core::ClaimRegistry::reclaim) unlinks exactly the right file without trusting any
//     bytes the dead process may have half-written;
//   - the writer claims the slot before creating the file, so a position, and therefore a name,
//     is never used twice; the reader maps the file and unlinks it at once, so the mapping (zero
//     copy) lives exactly as long as the Message, and a reader killed while holding it leaves
//     nothing behind (the kernel frees an unlinked, unmapped file). The slot stays held until the
//     Message is released, so such a message is counted `abandoned` like any other;
//   - the files of a named queue stay with it (they hold its committed messages) until
//     Queue::unlink() or gc with include_named removes "shmq.<name>.x*" (remove_spill_files());
//   - a generated or anonymous queue's last user removes them when it leaves. "Last" is asked
//     after its own attach lock is gone, through a fresh description (a forked parent and child
//     share one attach description, so asking through it would miss the other and remove the
//     files of unread messages).
//   The cost, a create + fallocate + mmap + unlink and fresh pages per message, is why the arena
//   comes first; for messages above a chunk (megabytes) it is small next to the copy.
//
// Synchronization (beyond the ring's)
//   [J1] unfinished_tasks: tasks_added() increments before the put commits (the commit [Q1] then
//        orders it before any task_done() of a reader); task_done() decrements with acq_rel and
//        notifies tasks_done when it reaches 0; join() loads it with acquire.
//   Spill files are written through their own mapping before the slot commit [Q1]; the reader
//   maps them after its acquire of the slot, so the bytes are visible (same physical pages).
//   [A1] arena chunk owner: a writer takes a chunk with an acquire CAS 0 -> arena_tag(pos)
//        (pairs with [A2], so the previous reader's reads of the chunk happened before we
//        overwrite it); the chunk's bytes reach the reader through the slot commit [Q1].
//   [A2] the reader (or a survivor reclaiming a dead owner's position) frees it with a release
//        store of 0 after it is done with the bytes.
//   Sleep marks (core::SleepMark in the participant slot's `asleep`, generation << 32 | word bit)
//   are read only once their holder is dead; a CAS to 0 makes one taker (the slot's next holder
//   or a sweep) give the dead sleeper's waiter count back.
//
// Threads: a Queue may be shared by threads (handles are created under no lock of ours but
// join() is thread-safe). Each QueueWriter / QueueReader is used by one thread at a time;
// Message::release() of a zero-copy message may run in any thread.
// Fork: handles remember the pid that made them; in another process (a forked child) their
// destructors only close descriptors and unmap.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "shmq/core/fault.hpp"
#include "shmq/core/mpmc_ring.hpp"
#include "shmq/core/result.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/shm/message.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq {

struct QueueConfig {
  std::string name{};          // "" → a random name, unlinked when the last user leaves
  std::uint64_t slots = 4096;  // power of two, at least 2 (Queue(maxsize=1): slots 2, maxsize 1)
  std::uint64_t slot_size = 256;  // payload bytes per slot (multiple of 8); larger messages spill
  std::uint64_t maxsize = 0;   // bound in messages (Python's Queue(maxsize)); 0 = slots
  // The large-message arena (0 chunks: none). Only the chunks' touched pages take memory.
  std::uint32_t arena_chunks = 8;               // at most kMaxArenaChunks
  std::uint64_t arena_chunk_bytes = 2ull << 20; // a multiple of 4096, at most 1 GiB
  bool anonymous = false;      // memfd: shared by fork only
  // Test hooks: start positions and futex words near their wrap points.
  std::uint64_t initial_position = 0;
  std::uint32_t initial_epoch = 0;
};

inline constexpr std::uint64_t kQueueBodyMagic = 0x3445555551514D53ull;  // "SMQQUEU4"
// An arena chunk's owner word: 0 when free, else the tag of the slot position holding it. Never
// 0 for any position (pos + 1 was 0 at position 2^64 - 1, where a chunk then looked free while
// taken); positions in flight lie far less than 2^63 apart, so tags never collide.
constexpr std::uint64_t arena_tag(std::uint64_t pos) noexcept { return (pos << 1) | 1; }
inline constexpr std::uint32_t kMaxArenaChunks = 512;
inline constexpr std::uint64_t kArenaAlign = 4096;
inline constexpr std::uint64_t kMaxArenaChunkBytes = 1ull << 30;
inline constexpr std::size_t kSpillTagBytes = kMaxNameLength + 8;
inline constexpr std::uint64_t kMaxSpillBytes = 1ull << 40;  // the largest message a queue takes

constexpr bool valid_arena(std::uint64_t chunks, std::uint64_t chunk_bytes) noexcept {
  return chunks <= kMaxArenaChunks &&
         (chunks == 0 || (chunk_bytes != 0 && chunk_bytes % kArenaAlign == 0 &&
                          chunk_bytes <= kMaxArenaChunkBytes));
}

// Where the arena lies: after the ring (ring_end, from the body's start), page-aligned; first
// the owner words (one u64 per chunk) rounded up to a page, then the chunks.
struct ArenaLayout {
  std::uint64_t offset = 0;  // from the body's start
  std::uint64_t owner_bytes = 0;
  std::uint64_t total = 0;   // owners and chunks
};
constexpr ArenaLayout arena_layout(std::uint64_t ring_end, std::uint64_t chunks,
                                   std::uint64_t chunk_bytes) noexcept {
  ArenaLayout l;
  l.offset = core::align_up(ring_end, kArenaAlign);
  if (chunks == 0) return l;
  l.owner_bytes = core::align_up(chunks * sizeof(std::uint64_t), kArenaAlign);
  l.total = l.owner_bytes + chunks * chunk_bytes;  // <= 512 * 1 GiB: no overflow
  return l;
}

// What a slot flagged kSlotSpilled holds: {u64 length, u64 chunk + 1} for a message in an arena
// chunk, {u64 length} for one in a spill file of its own.
struct SpillRef {
  std::uint64_t length = 0;
  std::uint64_t chunk = 0;  // arena chunk index + 1; 0: a spill file
};
// Reads a spilled slot's `payload` (its used bytes) once and checks it against the queue's arena.
inline bool decode_spill_ref(std::span<const std::byte> payload, std::uint64_t arena_chunks,
                             std::uint64_t arena_chunk_bytes, SpillRef& out) noexcept {
  std::uint64_t ref[2] = {0, 0};
  if (payload.size() != sizeof(std::uint64_t) && payload.size() != sizeof ref) return false;
  std::memcpy(ref, payload.data(), payload.size());
  out = {ref[0], ref[1]};
  if (payload.size() == sizeof(std::uint64_t)) return out.length != 0 && out.length <= kMaxSpillBytes;
  return out.chunk != 0 && out.chunk <= arena_chunks && out.length != 0 &&
         out.length <= arena_chunk_bytes;
}

// A queue journal [J2]: a named record of what one writer put, exact across its crashes, for a
// writer that must not put a message twice when it is restarted (shmq.nats's bridge-in, which
// must tell a JetStream redelivery of a batch it already put from one it did not).
// The writer puts with QueueWriter::send_many_journaled: each run of messages is filled, marked
// sealed with this journal's tag, then `seal` is stored (release) covering the run, and only then
// committed. The seal store is the commit point: a writer killed after it has its slots
// committed by the survivors (core [Q7]), one killed before it has them discarded. So the
// journal's record, (token, next) of the last sealed run, is exactly what was put:
//   pending_* are written (plain) before the seal, done_* after it; the record is pending_* if
//   `seal` equals pending_range (the seal happened), else done_* (from the run before).
// A new holder of the name first commits any slot its dead predecessor sealed but left
// uncommitted, then puts its own runs (open_journal).
inline constexpr std::uint32_t kQueueJournals = 8;
inline constexpr std::size_t kJournalNameBytes = 64;
struct alignas(core::kCacheLine) QueueJournal {
  std::atomic<std::uint64_t> owner;  // mpmc::holder_id of the writer holding it; 0 = free
  std::atomic<std::uint64_t> seal;   // [J2] claim word (op enqueue) of the last sealed run
  std::uint64_t pending_range;       // the owner's own words, plain: see above
  std::uint64_t pending_token;
  std::uint64_t pending_next;
  std::uint64_t done_token;
  std::uint64_t done_next;
  std::uint64_t reserved;
  char name[kJournalNameBytes];      // NUL-terminated; empty while free
};
static_assert(sizeof(QueueJournal) == core::kCacheLine, "one cache line");
static_assert(std::is_standard_layout_v<QueueJournal>);

// The first bytes of a queue segment's body.
struct alignas(core::kCacheLine) QueueBodyHeader {
  // ---- immutable after creation
  std::uint64_t magic;
  std::uint64_t slots;
  std::uint64_t slot_size;
  std::uint64_t maxsize;
  std::uint64_t ring_offset;  // from the body's start
  std::uint64_t ring_bytes;
  std::uint64_t arena_offset;       // from the body's start: owner words, then the chunks
  std::uint64_t arena_chunks;
  std::uint64_t arena_chunk_bytes;
  char spill_tag[kSpillTagBytes];  // NUL-terminated; the <tag> of spill file names
  // ---- JoinableQueue
  alignas(core::kCacheLine) std::atomic<std::int64_t> unfinished_tasks;  // [J1]
  alignas(core::kCacheLine) core::WaitWord tasks_done;                    // join() sleeps here
  // ---- journals [J2]
  QueueJournal journals[kQueueJournals];
};
static_assert(std::is_standard_layout_v<QueueBodyHeader>, "shared between processes");
static_assert(sizeof(QueueBodyHeader) % core::kCacheLine == 0, "the ring starts on a cache line");
static_assert(std::atomic<std::int64_t>::is_always_lock_free);

class Queue;
class QueueWriter;
class QueueReader;

namespace detail {
struct QueueShared;
struct QueueWriterState;
struct QueueReaderState;

// A message larger than a slot, as a reader sees it: an arena chunk (chunk != 0) or a spill
// file's mapping (in queue.cpp).
struct SpillMap {
  void* base = nullptr;
  std::size_t length = 0;
  std::uint64_t chunk = 0;  // arena chunk index + 1; 0: a spill file mapping
  std::span<const std::byte> bytes() const noexcept {
    return {static_cast<const std::byte*>(base), length};
  }
};
// `keep`: a leased message's data must outlive this reading (a redelivery reads it again): the
// spill file is not unlinked, and unmap_spill(keep) leaves an arena chunk taken. Both are freed
// when the lease is acknowledged (QueueRegistry::reclaim).
Status map_spill(QueueShared& q, const core::MpmcView& v, SpillMap& out, bool keep = false) noexcept;
void unmap_spill(QueueShared& q, SpillMap& m, bool keep = false) noexcept;
core::MpmcReader& reader_core(QueueReaderState& s) noexcept;
QueueShared& reader_shared(QueueReaderState& s) noexcept;
}  // namespace detail

// Messages a reader holds under a lease (QueueReader::lease; the protocol: core/mpmc_ring.hpp,
// "Leases"): they stay in the queue until ack(); if the holder dies or gives them back they are
// delivered again, to the next reader that takes a lease, instead of being abandoned. Each
// message's id is its queue position (first_id() + i): unique and increasing. Move-only;
// destroying a lease that was not acked gives it back. Used by the thread of its reader.
class QueueLease {
 public:
  QueueLease() = default;
  QueueLease(QueueLease&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)), lease_(std::exchange(o.lease_, {})) {}
  QueueLease& operator=(QueueLease&& o) noexcept {
    if (this != &o) {
      (void)give_back();
      owner_ = std::exchange(o.owner_, nullptr);
      lease_ = std::exchange(o.lease_, {});
    }
    return *this;
  }
  QueueLease(const QueueLease&) = delete;
  QueueLease& operator=(const QueueLease&) = delete;
  ~QueueLease() { (void)give_back(); }

  bool valid() const noexcept { return owner_ != nullptr && lease_.valid(); }
  std::uint64_t first_id() const noexcept { return lease_.pos; }
  // Positions held, aborted claims (never delivered) included.
  std::uint64_t size() const noexcept { return lease_.count; }
  bool redelivered() const noexcept { return lease_.redelivered; }
  // Calls fn(std::uint64_t id, std::span<const std::byte> bytes, std::uint16_t kind) for each
  // message in order; bytes are valid during the call only; fn must not throw. ok, or corrupt
  // if a message was unreadable (skipped, counted in the stats).
  template <class F>
  Status for_each(F&& fn) const noexcept;
  // The messages are done: their slots (and arena chunks, spill files) go back to the writers.
  void ack() noexcept;
  // Gives the messages back unacknowledged (redelivered). False if the queue's table of orphaned
  // leases is full or busy: the lease is kept; try again (or leave the queue, which hands it on).
  bool give_back() noexcept;
  // Drops the lease without touching the queue, for a handle whose reader is gone (closed, or a
  // copy in a forked child): the lease stayed in the reader's claim word, and went with its
  // participant slot to the next reader that adopts it.
  void forget() noexcept {
    owner_ = nullptr;
    lease_ = {};
  }

 private:
  friend class QueueReader;
  detail::QueueReaderState* owner_ = nullptr;
  core::MpmcLease lease_{};
};

// A claimed place for one message of n bytes, written in place. Move-only; destruction aborts.
class QueueClaim {
 public:
  QueueClaim() = default;
  QueueClaim(QueueClaim&& o) noexcept;
  QueueClaim& operator=(QueueClaim&& o) noexcept;
  QueueClaim(const QueueClaim&) = delete;
  QueueClaim& operator=(const QueueClaim&) = delete;
  ~QueueClaim() { abort(); }

  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  // Publishes the first `used` bytes (<= bytes().size()).
  void commit(std::size_t used) noexcept;
  void abort() noexcept;
  bool valid() const noexcept { return owner_ != nullptr; }
  Status status() const noexcept { return status_; }

 private:
  friend class QueueWriter;
  detail::QueueWriterState* owner_ = nullptr;
  core::MpmcClaim claim_{};
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  void* spill_base_ = nullptr;  // the spill file's mapping, for a message larger than a slot
  std::size_t spill_len_ = 0;
  std::uint64_t chunk_ = 0;     // or the arena chunk index + 1 holding it
  std::uint16_t kind_ = 0;
  Status status_ = Status::closed;
};

// A writer handle. Move-only; one thread at a time.
class QueueWriter {
 public:
  QueueWriter() = default;
  QueueWriter(QueueWriter&&) noexcept;
  QueueWriter& operator=(QueueWriter&&) noexcept;
  ~QueueWriter();

  // ok | full | too_big (only if a spill file cannot be created) | closed | corrupt.
  // Never blocks; allocation-free for messages that fit a slot.
  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept;
  // ok | timeout | interrupted | closed | too_big | corrupt.
  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d,
                            std::uint16_t kind = 0) noexcept;
  // Zero-copy write of up to n bytes (any n: beyond slot_size the claim is a spill mapping).
  // At most 3 claims outstanding per writer. !valid() if there is no room; status() says why.
  [[nodiscard]] QueueClaim try_claim(std::size_t n, std::uint16_t kind = 0) noexcept;
  [[nodiscard]] QueueClaim claim(std::size_t n, Deadline d, std::uint16_t kind = 0) noexcept;
  // Sends msgs in order, one claim (one CAS) per run of slot-sized messages; returns how many
  // were sent before the deadline (Deadline::now(): no waiting). *why: the reason for stopping.
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind = 0, Status* why = nullptr) noexcept;
  // Journals (QueueJournal): takes the journal `name` for this writer, creating it if new.
  // Errors: invalid_argument (empty, or 64 bytes or more), role_taken (a live writer holds it),
  // exists (every journal entry is held by another name). Its record is then what the name's
  // previous holder put last.
  Result<void> open_journal(std::string_view name);
  struct JournalRecord {
    std::uint64_t token = 0;  // the caller's token of the last run put (0: none yet)
    std::uint64_t next = 0;   // first_index + messages put of that token's messages
  };
  JournalRecord journal_record() const noexcept;
  // send_many, recording each run in the open journal as (token, first_index + messages of
  // `msgs` put so far). Spilled messages go one by one, sealed the same way. *why as send_many;
  // `closed` if no journal is open.
  std::size_t send_many_journaled(std::span<const std::span<const std::byte>> msgs, Deadline d,
                                  std::uint16_t kind, std::uint64_t token,
                                  std::uint64_t first_index, Status* why = nullptr) noexcept;
  std::size_t max_claim() const noexcept;  // the largest n try_claim can satisfy (any)
  std::uint64_t slot_size() const noexcept;
  bool valid() const noexcept { return s_ != nullptr; }
  core::WaitWord* space_wait_word() noexcept;
  bool writable_guess() const noexcept;
  void close() noexcept;  // leaves the queue (frees the participant slot); the queue stays open

 private:
  friend class Queue;
  friend class QueueClaim;
  Status send_spilled(std::span<const std::byte> msg, std::uint16_t kind, Deadline d) noexcept;
  std::unique_ptr<detail::QueueWriterState> s_;
};

// A reader handle. Move-only; one thread at a time. Zero-copy messages must be released before
// the handle is destroyed.
class QueueReader {
 public:
  QueueReader() = default;
  QueueReader(QueueReader&&) noexcept;
  QueueReader& operator=(QueueReader&&) noexcept;
  ~QueueReader();

  // ok | empty | closed (closed and drained) | corrupt. Up to 3 messages are held zero copy at a
  // time; beyond that a message is copied into a buffer the Message owns.
  [[nodiscard]] Status try_recv(Message& out) noexcept;
  // ok | timeout | interrupted | closed | corrupt.
  [[nodiscard]] Status recv(Message& out, Deadline d) noexcept;
  // Up to `max` messages as one lease (QueueLease): a lease left by a dead holder first, if any
  // waits, else the oldest messages. ok | empty | closed | corrupt | full (this reader already
  // holds 3 leases or views). lease(): ok | timeout | interrupted | closed | corrupt | full.
  [[nodiscard]] Status try_lease(std::size_t max, QueueLease& out) noexcept;
  [[nodiscard]] Status lease(std::size_t max, Deadline d, QueueLease& out) noexcept;
  // Calls fn(std::span<const std::byte>, std::uint16_t kind) for up to `max` messages taken
  // with one claim; the bytes are valid only during the call; fn must not throw. try_: never
  // waits; the other waits until at least one message arrives or the deadline passes.
  template <class F>
  std::size_t try_recv_many(F&& fn, std::size_t max, Status* why = nullptr) noexcept;
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max, Deadline d, Status* why = nullptr) noexcept;

  bool valid() const noexcept { return s_ != nullptr; }
  core::WaitWord* data_wait_word() noexcept;  // for wait_any
  // The SleepMark to pass to wait_any with data_wait_word(), so a survivor can take back the
  // count of this reader killed asleep there.
  core::SleepMark data_sleep_mark() const noexcept;
  bool ready_guess() const noexcept;          // a message (or closed) is waiting
  void close() noexcept;                      // leaves the queue; the queue stays open

 private:
  friend class Queue;
  template <class F>
  auto deliver(F& fn) noexcept;
  std::unique_ptr<detail::QueueReaderState> s_;
};

class Queue {
 public:
  static Result<Queue> create(const QueueConfig& config);
  static Result<Queue> open(std::string_view name, const OpenOptions& options = {});
  static Result<Queue> from_fd(int fd, const OpenOptions& options = {});  // anonymous queues
  // Removes a named queue and its spill files.
  static Result<void> unlink(std::string_view name);
  // Removes "shmq.<name>.x<16 hex>" files in /dev/shm; returns how many. For gc and rm.
  static Result<std::size_t> remove_spill_files(std::string_view name);
  // Whether a /dev/shm file name ("shmq.jobs.x00000000000000a1") is a spill file; if so and
  // queue_name is given, stores the queue's name there.
  static bool is_spill_file_name(std::string_view file_name, std::string* queue_name = nullptr);
  // The path of the spill file of slot position `pos` of the queue whose spill tag is `tag` (a
  // valid segment name: the queue's name, or an anonymous queue's "memfd-..." tag).
  static std::string spill_file_path(std::string_view tag, std::uint64_t pos);

  Queue() = default;
  Queue(Queue&&) noexcept = default;
  Queue& operator=(Queue&&) noexcept = default;
  ~Queue();

  Result<QueueWriter> writer();
  Result<QueueReader> reader();

  std::size_t size_guess() const noexcept;  // never negative, never above capacity()
  std::uint64_t capacity() const noexcept;  // maxsize if set, else slots
  std::uint64_t slots() const noexcept;
  std::uint64_t slot_size() const noexcept;
  std::uint64_t maxsize() const noexcept;   // 0 if unbounded (== slots)

  // JoinableQueue support [J1].
  void tasks_added(std::int64_t n) noexcept;  // call before the put becomes visible
  Result<void> task_done() noexcept;          // invalid_argument if it would go below 0
  Status join(Deadline d) noexcept;           // ok | timeout | interrupted
  std::int64_t unfinished_tasks_guess() const noexcept;

  // Shuts the whole queue down: writers get `closed`, readers drain and then get `closed`.
  void close() noexcept;
  bool closed() const noexcept;
  // See Segment::leave_mapped(): at exit, while a thread may still be inside a call. Spill files
  // of unread messages are left to gc.
  void leave_mapped() noexcept;

  bool valid() const noexcept { return shared_ != nullptr; }
  const std::string& name() const noexcept;
  const Segment& segment() const noexcept;
  core::Stats& stats() const noexcept;
  core::WaitWord* data_wait_word() noexcept;

 private:
  static Result<Queue> attach(Segment seg);
  std::shared_ptr<detail::QueueShared> shared_;
};

// Fault injection for crash tests: stop this process (SIGSTOP) the next time it passes `kp`
// (after letting `skip` passes go). Also armed at load time from the environment:
// SHMQ_KILL_POINT=<name>[:<skip>], e.g. SHMQ_KILL_POINT=before_commit:100.
void arm_kill_point(core::KillPoint kp, std::uint64_t skip = 0) noexcept;
void disarm_kill_point() noexcept;

// ---- templates

template <class F>
auto QueueReader::deliver(F& fn) noexcept {
  return [this, &fn](const core::MpmcView& v) {
    if ((v.flags & core::kSlotSpilled) == 0) {
      fn(v.bytes(), v.kind);
      return;
    }
    detail::SpillMap m;
    if (detail::map_spill(detail::reader_shared(*s_), v, m) == Status::ok) {
      fn(m.bytes(), v.kind);
      detail::unmap_spill(detail::reader_shared(*s_), m);
    }
  };
}

template <class F>
Status QueueLease::for_each(F&& fn) const noexcept {
  if (!valid()) return Status::closed;
  core::MpmcReader& core = detail::reader_core(*owner_);
  detail::QueueShared& shared = detail::reader_shared(*owner_);
  Status result = Status::ok;
  for (std::uint64_t i = 0; i < lease_.count; ++i) {
    core::MpmcView v;
    const Status st = core.lease_view(lease_, i, v);
    if (st == Status::empty) continue;  // an aborted claim
    if (st != Status::ok) {
      result = st;
      continue;
    }
    if ((v.flags & core::kSlotSpilled) == 0) {
      fn(v.pos, v.bytes(), v.kind);
      continue;
    }
    detail::SpillMap m;
    if (detail::map_spill(shared, v, m, true) != Status::ok) {
      result = Status::corrupt;
      continue;
    }
    fn(v.pos, m.bytes(), v.kind);
    detail::unmap_spill(shared, m, true);
  }
  return result;
}

template <class F>
std::size_t QueueReader::try_recv_many(F&& fn, std::size_t max, Status* why) noexcept {
  if (!s_) {
    if (why != nullptr) *why = Status::closed;
    return 0;
  }
  return detail::reader_core(*s_).try_recv_many(deliver(fn), max, why);
}

template <class F>
std::size_t QueueReader::recv_many(F&& fn, std::size_t max, Deadline d, Status* why) noexcept {
  if (!s_) {
    if (why != nullptr) *why = Status::closed;
    return 0;
  }
  return detail::reader_core(*s_).recv_many(deliver(fn), max, d, why);
}

}  // namespace shmq
