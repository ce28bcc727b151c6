// Pipe: one writer and one reader per direction (two directions if duplex) over SPSC byte rings
// in a shared segment.
//
//   auto pipe = shmq::Pipe::create({.name = "ticks", .capacity = 1 << 20});
//   auto tx = pipe->writer();                       // in the producer process
//   auto rx = shmq::Pipe::open("ticks")->reader();  // in the consumer process
//   tx->try_send(bytes);  rx->recv(msg, shmq::Deadline::in(1s));
//
// Roles: writer(d) and reader(d) are exclusive per direction d, enforced by kernel locks
// (Segment::acquire_role): a second live holder is refused with Errc::role_taken, and the role
// frees when its holder closes, exits or dies. Duplex: end A = writer(0) + reader(1); end B =
// writer(1) + reader(0). Each handle is used by one thread at a time.
//
// End of stream: when the writer closes or dies, the reader drains what was committed and then
// gets Status::closed (a message the writer had not finished is never delivered). A writer whose
// reader closed or died gets Status::closed. Liveness is a syscall, so it is checked only on slow
// paths: between the slices (<= 50 ms) of a blocking call, and after every
// kLivenessPollInterval-th `empty`/`full` outcome of a try_ call.
//
// Held ends (PipeConfig::held_ends, multiprocessing's lifetime of a Connection): a role is then
// alive while any process holds it (Pipe::hold, a RoleHold shared by fork and fd passing) or has
// it, whether or not it ever attached; it is gone once every holder closed its hold or died. A
// holder that lets go of the role while other holds remain calls leave() instead of close(), so
// the stream goes on for them; the last one closes.
//
// Fork: a handle remembers the pid that made it. In a forked child its destructor only closes
// fds and unmaps: it never flags the peer closed, and the parent keeps the role.
//
// Synchronization: see spsc_ring.hpp ([P1] send is release, recv is acquire; [P2] releasing a
// message is release, the writer's reuse of its space is acquire; [P3] close flags).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "shmq/core/result.hpp"
#include "shmq/core/spsc_ring.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/shm/message.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq {

struct PipeConfig {
  std::string name{};               // "" → a random name, unlinked when no participant is left
  std::uint64_t capacity = 1 << 20; // ring bytes per direction: a power of two, 128 B .. 4 GiB
  bool duplex = false;              // two directions
  bool anonymous = false;           // memfd: shared by fork or fd passing only
  bool held_ends = false;           // roles live as long as their holds (see the top comment)
};

// ChannelParams::flags of a pipe.
inline constexpr std::uint32_t kPipeHeldEnds = 1u << 0;
inline constexpr std::uint32_t kPipeKnownFlags = kPipeHeldEnds;

namespace detail {

inline constexpr std::uint32_t kLivenessPollInterval = 256;

constexpr std::uint32_t pipe_role(unsigned direction, bool reader) noexcept {
  return direction * 2 + (reader ? 1 : 0);
}

// A batch on a closed (or empty) handle: nothing moved, and why.
inline std::size_t closed_batch(Status* why) noexcept {
  if (why != nullptr) *why = Status::closed;
  return 0;
}

// What each end owns besides its ring cursor. Heap-allocated so that handles move freely while
// claims and messages point into it.
struct PipeEnd {
  std::shared_ptr<Segment> segment;
  RoleLock role;
  Participant participant;
  unsigned direction = 0;
  pid_t owner_pid = 0;
  std::uint32_t polls = 0;  // try_ outcomes since the last liveness check
  bool held_ends = false;   // the peer lives while its role is held (kPipeHeldEnds)
};
struct PipeWriterState {
  PipeEnd end;
  core::SpscWriter ring;
};
struct PipeReaderState {
  PipeEnd end;
  core::SpscReader ring;
};

}  // namespace detail

// A zero-copy write in progress: fill bytes(), then commit(used). The destructor aborts. A claim
// points into its writer: commit or abort it before the writer is closed, moved from or destroyed.
class PipeClaim {
 public:
  PipeClaim() = default;
  PipeClaim(PipeClaim&& o) noexcept
      : writer_(std::exchange(o.writer_, nullptr)), data_(o.data_), size_(o.size_), status_(o.status_) {}
  PipeClaim& operator=(PipeClaim&& o) noexcept {
    if (this != &o) {
      abort();
      writer_ = std::exchange(o.writer_, nullptr);
      data_ = o.data_;
      size_ = o.size_;
      status_ = o.status_;
    }
    return *this;
  }
  PipeClaim(const PipeClaim&) = delete;
  PipeClaim& operator=(const PipeClaim&) = delete;
  ~PipeClaim() { abort(); }

  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  // Publishes the first `used` bytes (<= bytes().size()) as one message.
  void commit(std::size_t used) noexcept {
    if (writer_ == nullptr) return;
    std::exchange(writer_, nullptr)->commit(used);
  }
  void abort() noexcept {
    if (writer_ != nullptr) std::exchange(writer_, nullptr)->abort_claim();
  }
  bool valid() const noexcept { return writer_ != nullptr; }
  // Why the claim is invalid: full | too_big | closed | timeout | interrupted | corrupt (ok if valid).
  Status status() const noexcept { return status_; }

 private:
  friend class PipeWriter;
  PipeClaim(core::SpscWriter* w, std::byte* data, std::size_t size) noexcept
      : writer_(w), data_(data), size_(size), status_(Status::ok) {}
  explicit PipeClaim(Status why) noexcept : status_(why) {}

  core::SpscWriter* writer_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  Status status_ = Status::closed;
};

class PipeWriter {
 public:
  PipeWriter() = default;
  PipeWriter(PipeWriter&&) noexcept = default;
  PipeWriter& operator=(PipeWriter&& o) noexcept {
    if (this != &o) {
      close();
      st_ = std::move(o.st_);
    }
    return *this;
  }
  PipeWriter(const PipeWriter&) = delete;
  PipeWriter& operator=(const PipeWriter&) = delete;
  ~PipeWriter() { close(); }

  // ok | full | too_big | closed | corrupt. Never blocks, never allocates.
  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept {
    if (!st_) return Status::closed;
    const Status s = st_->ring.try_send(msg, kind);
    return s == Status::full && reader_check_due() ? check_reader() : s;
  }
  // ok | timeout | interrupted | closed | too_big | corrupt. Any size (large ones stream).
  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d,
                            std::uint16_t kind = 0) noexcept {
    if (!st_) return Status::closed;
    return st_->ring.send(msg, d, kind, [this] { return reader_alive(); });
  }
  // Up to max_claim() bytes in the ring; !valid() (status() says why) if there is no room now.
  [[nodiscard]] PipeClaim try_claim(std::size_t n, std::uint16_t kind = 0) noexcept {
    if (!st_) return PipeClaim(Status::closed);
    std::byte* p = st_->ring.try_claim(n, kind);
    if (p != nullptr) return PipeClaim(&st_->ring, p, n);
    const Status s = st_->ring.last_status();
    return PipeClaim(s == Status::full && reader_check_due() ? check_reader() : s);
  }
  [[nodiscard]] PipeClaim claim(std::size_t n, Deadline d, std::uint16_t kind = 0) noexcept {
    if (!st_) return PipeClaim(Status::closed);
    std::byte* p = st_->ring.claim(n, d, kind, [this] { return reader_alive(); });
    if (p != nullptr) return PipeClaim(&st_->ring, p, n);
    return PipeClaim(st_->ring.last_status());
  }
  // Sends msgs in order, one tail publish per run that fits; returns how many were sent. *why
  // (if given): ok when all were sent, else timeout | interrupted | closed | too_big | corrupt.
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind = 0, Status* why = nullptr) noexcept {
    if (!st_) return detail::closed_batch(why);
    return st_->ring.send_many(msgs, d, kind, [this] { return reader_alive(); }, why);
  }

  // Pause rounds send/claim/send_many spin on a full ring before they sleep on the futex
  // (0: sleep at once). Default core::Backoff::kDefaultBudget. Applies to this handle only.
  void set_spin_budget(std::uint32_t rounds) noexcept {
    if (st_) st_->ring.set_spin_budget(rounds);
  }
  std::uint32_t spin_budget() const noexcept { return st_ ? st_->ring.spin_budget() : 0; }

  std::size_t max_claim() const noexcept { return st_ ? st_->ring.max_claim() : 0; }
  Status last_status() const noexcept { return st_ ? st_->ring.last_status() : Status::closed; }
  bool valid() const noexcept { return st_ != nullptr; }
  unsigned direction() const noexcept { return st_ ? st_->end.direction : 0; }
  // Where this writer sleeps when the ring is full (for wait_any).
  core::WaitWord* space_wait_word() noexcept { return st_ ? st_->ring.space_wait_word() : nullptr; }
  // Free bytes as last seen (a guess).
  std::uint64_t free_guess() const noexcept { return st_ ? st_->ring.free_guess() : 0; }

  // False once the reader closed or died; true while none has attached yet. A syscall.
  bool reader_alive() const noexcept;
  // For a thread that watches this writer's ring while the writer's thread sends (a readiness
  // fd): the reader's published head and its close flag. Shared words only; any thread.
  std::uint64_t published_head() const noexcept;
  bool reader_closed_flag() const noexcept;
  // Publishes everything and flags the stream closed (the reader drains, then gets closed);
  // frees the role. In a forked child: only drops this process's fds and mapping.
  void close() noexcept;
  // Publishes everything and frees the role without ending the stream (held ends: another
  // holder of this end may take the role and carry on).
  void leave() noexcept;

 private:
  friend class Pipe;
  bool reader_check_due() noexcept { return ++st_->end.polls >= detail::kLivenessPollInterval; }
  // After many `full` in a row: full if the reader lives, else closed (and marks it gone).
  Status check_reader() noexcept;

  std::unique_ptr<detail::PipeWriterState> st_;
};

class PipeReader {
 public:
  PipeReader() = default;
  PipeReader(PipeReader&&) noexcept = default;
  PipeReader& operator=(PipeReader&& o) noexcept {
    if (this != &o) {
      close();
      st_ = std::move(o.st_);
    }
    return *this;
  }
  PipeReader(const PipeReader&) = delete;
  PipeReader& operator=(const PipeReader&) = delete;
  ~PipeReader() { close(); }

  // ok | empty | closed | corrupt. Never blocks. `out` is released first. A message that fit
  // the ring is zero copy: its space is held until `out` is released. Never allocates for those.
  // While any zero-copy message is held the head cannot move past it, so the writer may fill the
  // ring and wait: release held messages before waiting for more.
  [[nodiscard]] Status try_recv(Message& out) noexcept {
    out.release();
    if (!st_) return Status::closed;
    core::RecvView v;
    Status s = st_->ring.try_recv(v);
    // After many `empty` in a row, ask whether the writer lives; if not, drain or report closed.
    if (s == Status::empty && writer_check_due() && !check_writer()) s = st_->ring.try_recv(v);
    if (s == Status::ok) deliver(out, v);
    return s;
  }
  // ok | timeout | interrupted | closed | corrupt.
  [[nodiscard]] Status recv(Message& out, Deadline d) noexcept {
    out.release();
    if (!st_) return Status::closed;
    core::RecvView v;
    const Status s = st_->ring.recv(v, d, [this] { return writer_alive(); });
    if (s == Status::ok) deliver(out, v);
    return s;
  }
  // fn(std::span<const std::byte> bytes, std::uint16_t kind) for up to `max` messages waiting
  // now; one head publish per batch. The span is valid during the call only; fn must not throw.
  // *why (if given): ok when it delivered `max`, else empty | closed | corrupt.
  template <class F>
  std::size_t try_recv_many(F&& fn, std::size_t max, Status* why = nullptr) noexcept {
    if (!st_) return detail::closed_batch(why);
    Status s = Status::ok;
    std::size_t n = st_->ring.recv_many(fn, max, &s);
    if (n == 0 && s == Status::empty && writer_check_due() && !check_writer())
      n = st_->ring.recv_many(fn, max, &s);
    if (why != nullptr) *why = s;
    return n;
  }
  // As above, but waits until `d` for the first message. *why as above, or timeout |
  // interrupted.
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max, Deadline d, Status* why = nullptr) noexcept {
    if (!st_) return detail::closed_batch(why);
    core::Backoff backoff(st_->ring.spin_budget());
    for (;;) {
      Status s = Status::ok;
      const std::size_t n = try_recv_many(fn, max, &s);
      if (n == 0 && s == Status::empty) s = wait_data(d, backoff);
      if (s != Status::ok || n != 0 || max == 0) {
        if (why != nullptr) *why = st_->ring.note(s);
        return n;
      }
    }
  }

  // Pause rounds recv/recv_many(.., d) spin on an empty ring before they sleep on the futex
  // (0: sleep at once). Default core::Backoff::kDefaultBudget. Applies to this handle only.
  void set_spin_budget(std::uint32_t rounds) noexcept {
    if (st_) st_->ring.set_spin_budget(rounds);
  }
  std::uint32_t spin_budget() const noexcept { return st_ ? st_->ring.spin_budget() : 0; }

  // Bytes waiting, record headers included (a guess).
  std::size_t size_guess() const noexcept { return st_ ? st_->ring.size_guess() : 0; }
  // A message (or a close) is waiting (a guess; a dead writer is seen only by recv/try_recv).
  bool ready_guess() const noexcept { return st_ && st_->ring.ready_guess(); }
  core::WaitWord* data_wait_word() noexcept { return st_ ? st_->ring.data_wait_word() : nullptr; }
  Status last_status() const noexcept { return st_ ? st_->ring.last_status() : Status::closed; }
  bool valid() const noexcept { return st_ != nullptr; }
  unsigned direction() const noexcept { return st_ ? st_->end.direction : 0; }

  // False once the writer closed or died; true while none has attached yet. A syscall.
  bool writer_alive() const noexcept;
  // True if the writer lives; else marks it gone, so that reads drain what was committed and
  // then report closed (what try_recv does by itself after many `empty`s). A syscall.
  bool check_writer() noexcept;
  // For a thread that watches this reader's ring while the reader's thread reads (a readiness
  // fd): the writer's published tail and its close flag. Shared words only; any thread.
  std::uint64_t published_tail() const noexcept;
  bool writer_closed_flag() const noexcept;
  // Flags the reader closed (the writer then gets closed); frees the role. Messages still held
  // must be released before the handle is destroyed. In a forked child: only drops fds/mapping.
  void close() noexcept;
  // Returns the space read and frees the role without flagging the reader closed (held ends).
  void leave() noexcept;

 private:
  friend class Pipe;
  static void release_hook(void* ring, std::uint64_t token) noexcept {
    static_cast<core::SpscReader*>(ring)->release(token);
  }
  void deliver(Message& out, const core::RecvView& v) noexcept {
    st_->end.polls = 0;
    if (v.zero_copy) {
      out.set_borrowed(v.bytes.data(), v.bytes.size(), v.kind, &release_hook, &st_->ring, v.end);
    } else {
      out.set_owned(st_->ring.take_assembled(), v.kind);
    }
  }
  bool writer_check_due() noexcept { return ++st_->end.polls >= detail::kLivenessPollInterval; }
  // One step of a wait for data: spin, then sleep a slice. ok to retry, or why to stop.
  Status wait_data(Deadline d, core::Backoff& backoff) noexcept;

  std::unique_ptr<detail::PipeReaderState> st_;
};

class Pipe {
 public:
  // Creates the segment (kind pipe) with empty rings. Errors: invalid_argument (capacity),
  // invalid_name, exists, permission_denied, system.
  static Result<Pipe> create(const PipeConfig& config);
  // Opens by name and validates the pipe's parameters and ring positions: wrong_kind,
  // size_mismatch, corrupt, and the errors of Segment::open.
  static Result<Pipe> open(std::string_view name, const OpenOptions& options = {});
  // Maps an anonymous pipe from an inherited or passed fd, validated like open().
  static Result<Pipe> from_fd(int fd, const OpenOptions& options = {});
  // Removes a named pipe: new opens fail, processes that have it open keep using it. A named
  // pipe lives like a file until this (or `shmq rm`); wrong_kind if the name is a queue's.
  static Result<void> unlink(std::string_view name);
  // Maps the pipe a received role hold `fd` is a description of, through a description of its
  // own (a mapping must never keep a hold alive): for a pipe whose name is already removed.
  static Result<Pipe> from_hold(int fd, const OpenOptions& options = {});

  Pipe() = default;
  Pipe(Pipe&&) noexcept = default;
  Pipe& operator=(Pipe&&) noexcept = default;
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  // The writer / reader of one direction (0, or 1 if duplex). role_taken if a live one exists.
  Result<PipeWriter> writer(unsigned direction = 0);
  Result<PipeReader> reader(unsigned direction = 0);

  // Held ends: holds the roles detail::pipe_role(direction, reader) of `roles` (one end's
  // writer and reader) until the RoleHold and every copy of its fd are closed.
  Result<RoleHold> hold(std::span<const std::uint32_t> roles);
  // Adopts a hold received from another process (its fd, owned from here).
  Result<RoleHold> adopt_hold(int fd) const { return seg_->adopt_hold(fd); }
  // Whether any process (this one included) holds the role. One syscall.
  bool role_hold_present(std::uint32_t role) const noexcept { return seg_->role_hold_present(role); }
  bool held_ends() const noexcept { return held_ends_; }
  // See Segment::leave_mapped(): at exit, while a thread may still be inside a call.
  void leave_mapped() noexcept { seg_->leave_mapped(); }

  const std::string& name() const noexcept { return seg_->name(); }
  std::uint64_t capacity() const noexcept { return capacity_; }
  bool duplex() const noexcept { return directions_ == 2; }
  unsigned directions() const noexcept { return directions_; }
  const Segment& segment() const noexcept { return *seg_; }
  bool valid() const noexcept { return seg_ != nullptr; }
  // Messages committed in `direction` and not yet handed to its reader, counted by walking the
  // records (exact when nobody writes or reads; a guess otherwise). A streamed message counts
  // once its last chunk is written. For tools and gc, not for the hot path.
  std::uint64_t waiting_guess(unsigned direction = 0) const noexcept;

  // Body bytes a pipe needs (before page rounding): one ring per direction.
  static constexpr std::uint64_t body_bytes_for(std::uint64_t capacity, unsigned directions) noexcept {
    return core::SpscRing::required_bytes(capacity) * directions;
  }

 private:
  static Result<Pipe> adopt(Result<Segment> seg);
  std::span<std::byte> ring_memory(unsigned direction) const noexcept;

  std::shared_ptr<Segment> seg_;
  std::uint64_t capacity_ = 0;
  unsigned directions_ = 0;
  bool held_ends_ = false;
};

}  // namespace shmq
