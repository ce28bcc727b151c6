// Segments: named (/dev/shm/shmq.<name>) or anonymous (memfd) shared mappings with a validated
// header page, a participant table whose liveness the kernel keeps, and statistics.
//
// Liveness: every participant opens its own file description of the segment and holds an OFD
// write lock (F_OFD_SETLK) on one byte reserved for its table slot. The kernel drops the lock the
// moment the holder's last fd on that description closes, including on SIGKILL, so
// F_OFD_GETLK from any other description tells "alive" from "dead" with no timeout and no pid
// reuse problem. Exclusive roles (a pipe's writer, a pipe's reader) are bytes locked the same way.
// A role may also be *held* (RoleHold): a shared lock on the role's hold byte through a
// description of its own, which fork and fd passing share, so a role can outlive the process
// that took the hold for as long as any process keeps a copy of it (multiprocessing's lifetime of
// a Pipe end).
//
// Synchronization
//   [S1] header.state: the creator fills the header and the body, then stores `ready` (release);
//        openers load it (acquire) before reading any other field.
//   [S2] participant slot: a participant first takes the slot's lock (the kernel serializes
//        that), then bumps the slot's generation (release). Survivors read the generation
//        (acquire) to tell a claim made by the current holder from one left by a dead one.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "shmq/core/layout.hpp"
#include "shmq/core/result.hpp"
#include "shmq/core/stats.hpp"

namespace shmq {

enum class SegmentKind : std::uint32_t { pipe = 1, queue = 2, arena = 3 };

enum SegmentFlags : std::uint32_t {
  kUnlinkWhenUnused = 1u << 0,  // a generated name: the last process to detach unlinks it
  kAnonymous = 1u << 1,         // a memfd, never reachable by name
};

enum class SegmentState : std::uint32_t { initializing = 0x494E4954, ready = 0x52454459, closed = 0x434C5344 };

inline constexpr std::uint64_t kSegmentMagic = 0x31474553514D4853ull;  // "SHMQSEG1" little-endian
inline constexpr std::uint32_t kLayoutVersion = 3;
inline constexpr std::size_t kMaxNameLength = 200;           // name without the "shmq." prefix
inline constexpr std::uint32_t kMaxParticipants = 64;
inline constexpr std::size_t kHeaderBytes = 16384;           // the header area; the body follows
inline constexpr std::uint64_t kMaxSegmentBytes = 1ull << 40;
// Named segments are files kShmDirectory/kSegmentFilePrefix<name> (segment_path()); a Queue's
// spill files sit beside them (queue.hpp).
inline constexpr std::string_view kShmDirectory = "/dev/shm";
inline constexpr std::string_view kSegmentFilePrefix = "shmq.";

// Roles a participant declares (for `shmq ls` and for queue bookkeeping).
enum class Role : std::uint32_t { none = 0, writer = 1, reader = 2, both = 3, observer = 4 };

enum class SlotState : std::uint32_t { free = 0, taken = 1 };

// One participant slot. `lock byte` = kParticipantLockBase + index.
struct alignas(core::kCacheLine) ParticipantSlot {
  std::atomic<std::uint32_t> state;       // SlotState; a hint only: the lock is the truth
  std::atomic<std::uint32_t> generation;  // [S2] bumped by every new holder; never 0 once taken
  std::atomic<std::uint32_t> pid;         // the holder's pid, for display
  std::atomic<std::uint32_t> role;        // Role, for display
  std::atomic<std::uint64_t> joined_ns;   // CLOCK_REALTIME ns, for display
  // Words a channel uses to record claims in flight (the Queue's crash recovery); 0 when idle.
  std::atomic<std::uint64_t> claim[4];
  // The holder's core::SleepMark while it is counted as a futex waiter: generation << 32 | the
  // word's bit; 0 when awake. Left set by a holder killed asleep (the Queue's sweep).
  std::atomic<std::uint64_t> asleep;
};
static_assert(sizeof(ParticipantSlot) == core::kCacheLine);

// Kind-specific parameters, written by the creator and validated by the channel's open().
struct ChannelParams {
  std::uint64_t capacity;   // pipe: ring bytes per direction (power of two); queue: slots (power of two)
  std::uint64_t slot_size;  // queue: payload bytes per slot; pipe: 0
  std::uint64_t maxsize;    // queue: bound in messages (0 = slots); pipe: 0
  std::uint32_t directions; // pipe: 1 or 2 (duplex); queue: 1
  std::uint32_t flags;
  std::uint64_t reserved[4];
};

struct alignas(core::kCacheLine) SegmentHeader {
  // ---- identity: written once by the creator before [S1]
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t kind;               // SegmentKind
  std::atomic<std::uint32_t> state; // SegmentState [S1]
  std::uint32_t owner_uid;
  std::uint32_t creator_pid;
  std::uint32_t header_bytes;       // kHeaderBytes
  std::uint32_t flags;              // SegmentFlags
  std::uint32_t reserved0;
  std::uint64_t total_bytes;        // the file size
  std::uint64_t body_offset;        // == header_bytes
  std::uint64_t body_bytes;         // total_bytes - body_offset
  std::uint64_t created_ns;         // CLOCK_REALTIME
  ChannelParams params;
  char name[kMaxNameLength + 8];    // NUL-terminated, without the "shmq." prefix; empty for memfd
  // ---- participants
  alignas(core::kCacheLine) ParticipantSlot participants[kMaxParticipants];
  // ---- statistics: [0] the queue or a pipe's first direction, [1] a duplex pipe's second
  core::Stats stats[2];
};
static_assert(sizeof(SegmentHeader) <= kHeaderBytes, "the header must fit its area");
static_assert(std::is_standard_layout_v<SegmentHeader>, "the header is shared between processes");

// Byte offsets of the OFD locks. Locks may lie beyond EOF; they never touch the data.
// Attachment is a shared (read) lock every Segment mapping holds through its own fd: a probe for
// a write lock on that byte tells whether any other process still has the segment open.
inline constexpr off_t kCreatorLockByte = 1ll << 40;
inline constexpr off_t kAttachLockByte = (1ll << 40) + 1;
inline constexpr off_t kRoleLockBase = (1ll << 40) + 64;          // + role index
inline constexpr std::uint32_t kRoleHoldOffset = 8;  // a role's hold byte: kRoleLockBase + 8 + role
inline constexpr std::uint32_t kMaxHeldRole = 7;     // roles 0..7 can be held
inline constexpr off_t kParticipantLockBase = (1ll << 40) + 1024; // + slot index

struct SegmentConfig {
  std::string name;              // "" → a random 128-bit name, unlinked when the last participant leaves
  SegmentKind kind = SegmentKind::pipe;
  ChannelParams params{};
  std::uint64_t body_bytes = 0;  // bytes the channel needs after the header
  bool anonymous = false;        // memfd: shared only by fork or fd passing, never by name;
                                 // a valid `name` then only labels the memfd "shmq.<name>" (as
                                 // /proc/<pid>/maps shows it), and the segment has no name
  bool unlink_when_unused = false; // set for generated names: the last participant out unlinks
};

struct OpenOptions {
  bool allow_other_users = false;   // accept a segment owned by another uid or with group/world bits
  int initializing_wait_ms = 1000;  // how long to wait for a creator that is still setting up
};

bool valid_segment_name(std::string_view name) noexcept;
std::string random_segment_name();
std::string segment_path(std::string_view name);  // "/dev/shm/shmq.<name>"

// Whether any process has the named segment attached or is still creating it, read from the
// kernel's locks alone: it trusts no byte of the file, so it also answers for corrupt segments
// (what `shmq gc` needs). not_found if there is no such file.
Result<bool> segment_in_use(std::string_view name);

// What a segment file says about itself, read with pread (no mapping: a file truncated under us
// cannot raise SIGBUS, nothing can be written) and checked like open() checks it.
struct SegmentFileInfo {
  Error problem;             // code ok: the header is sound (kind and flags can be trusted)
  SegmentKind kind{};
  std::uint32_t flags = 0;   // SegmentFlags
  double age_seconds = 0;    // since the file's status last changed (creation, truncation)
};
// invalid_name, not_found, permission_denied or system; never fails on the content.
Result<SegmentFileInfo> inspect_segment_file(std::string_view name);

// A participant's claim of one table slot. Move-only; releasing closes its own fd, which drops
// the kernel lock.
class Participant {
 public:
  Participant() = default;
  Participant(Participant&&) noexcept;
  Participant& operator=(Participant&&) noexcept;
  Participant(const Participant&) = delete;
  Participant& operator=(const Participant&) = delete;
  ~Participant();

  bool valid() const noexcept { return fd_ >= 0; }
  std::uint32_t index() const noexcept { return index_; }
  std::uint32_t generation() const noexcept { return generation_; }
  // The slot in the header. join() leaves its claim[] words as the previous (dead) holder left
  // them: the channel must resolve those claims before reusing the words.
  ParticipantSlot* slot() const noexcept { return slot_; }
  void release() noexcept;

 private:
  friend class Segment;
  int fd_ = -1;
  std::uint32_t index_ = 0;
  std::uint32_t generation_ = 0;
  std::uint32_t owner_pid_ = 0;
  ParticipantSlot* slot_ = nullptr;
};

// A shared hold on some roles (Segment::hold_roles). Move-only. The kernel drops it
// when the last fd of its description closes: this one, a forked child's copy or one passed over
// a Unix socket; exit and SIGKILL included.
class RoleHold {
 public:
  RoleHold() = default;
  RoleHold(RoleHold&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  RoleHold& operator=(RoleHold&& o) noexcept;
  RoleHold(const RoleHold&) = delete;
  RoleHold& operator=(const RoleHold&) = delete;
  ~RoleHold() { release(); }
  bool valid() const noexcept { return fd_ >= 0; }
  // The description's fd, to pass to another process (which then shares the hold).
  int fd() const noexcept { return fd_; }
  // Closes this fd; the hold lasts while other copies of the description are open.
  void release() noexcept;

 private:
  friend class Segment;
  int fd_ = -1;
};

// An exclusive role lock (e.g. "writer of direction 0"). Move-only; freed on close or death.
class RoleLock {
 public:
  RoleLock() = default;
  RoleLock(RoleLock&&) noexcept;
  RoleLock& operator=(RoleLock&&) noexcept;
  RoleLock(const RoleLock&) = delete;
  RoleLock& operator=(const RoleLock&) = delete;
  ~RoleLock();
  bool valid() const noexcept { return fd_ >= 0; }
  void release() noexcept;

 private:
  friend class Segment;
  int fd_ = -1;
};

// A mapping of one segment. Move-only. Several Segment objects (in one or many processes) may map
// the same segment.
class Segment {
 public:
  // Creates the file, the header and (through `init_body`, called while the segment is still
  // `initializing` and no opener can use it) the channel's body; then publishes `ready` [S1].
  static Result<Segment> create(const SegmentConfig& config,
                                const std::function<void(Segment&)>& init_body = {});
  static Result<Segment> open(std::string_view name, SegmentKind expected,
                              const OpenOptions& options = {});
  // Opens by name without checking the kind (the CLI).
  static Result<Segment> open_any(std::string_view name, const OpenOptions& options = {});
  // Maps an anonymous segment from an inherited or passed fd (validates like open()).
  static Result<Segment> from_fd(int fd, SegmentKind expected, const OpenOptions& options = {});
  static Result<void> unlink(std::string_view name);

  Segment() = default;
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();  // unmaps; for a generated name (kUnlinkWhenUnused), the last one out unlinks
  // At process exit, while another thread may still be inside a call on this mapping (or an
  // object in it may still be touched): gives up the attach lock (unlinking a generated name if
  // this was its last user) but leaves the memory mapped for the exit to unmap. The Segment is then only fit for destruction, which
  // unmaps: do not destroy it while such a thread runs.
  void leave_mapped() noexcept;

  bool valid() const noexcept { return base_ != nullptr; }
  SegmentHeader& header() const noexcept { return *reinterpret_cast<SegmentHeader*>(base_); }
  std::byte* body() const noexcept { return base_ + kHeaderBytes; }
  std::uint64_t body_bytes() const noexcept { return size_ - kHeaderBytes; }
  std::byte* base() const noexcept { return base_; }
  std::uint64_t size() const noexcept { return size_; }
  const std::string& name() const noexcept { return name_; }
  int fd() const noexcept { return fd_; }
  core::Stats& stats(unsigned direction = 0) const noexcept { return header().stats[direction & 1]; }

  // Claims a free participant slot, holding its kernel lock through a new file description.
  Result<Participant> join(Role role);
  // Takes an exclusive role byte; fails with role_taken if a live holder has it.
  Result<RoleLock> acquire_role(std::uint32_t role_index);
  // Holds the given roles (each <= kMaxHeldRole) through a new description.
  Result<RoleHold> hold_roles(std::span<const std::uint32_t> roles);
  // Adopts `fd` (owned from here, closed on failure) as a hold received from another process:
  // invalid_argument unless it is a description of this segment's file.
  Result<RoleHold> adopt_hold(int fd) const;
  // Whether any description (this process's holds included) holds the role. One syscall.
  bool role_hold_present(std::uint32_t role_index) const noexcept;
  // Whether a role byte / participant slot is held by a live process (F_OFD_GETLK). A slow-path
  // call: one syscall. Never call it for a lock held through this process's own description.
  bool role_held(std::uint32_t role_index) const noexcept;
  bool participant_alive(std::uint32_t index) const noexcept;
  // Number of live participants (one F_OFD_GETLK per taken slot).
  std::uint32_t live_participants() const noexcept;
  // Whether the creator still holds its creation lock (only while state == initializing).
  bool creator_alive() const noexcept;

  // Opens a new file description of this segment (for a lock that must not be shared with
  // other handles in this process).
  Result<int> reopen_fd() const;

 private:
  // Gives up the attach lock; for a generated name, the last one out unlinks.
  void release_attach() noexcept;
  static Result<Segment> map_and_validate(int fd, std::string name, std::string_view shown,
                                          const SegmentKind* expected, const OpenOptions& options);
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  int fd_ = -1;
  std::string name_;
  int attach_fd_ = -1;  // holds the shared attach lock; its own description, never dup'ed
  bool unlink_when_unused_ = false;
};

}  // namespace shmq
