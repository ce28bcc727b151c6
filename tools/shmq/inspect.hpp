// Read-only inspection of a segment file, for the CLI.
//
// The CLI must show and clean up segments that the library refuses to open (corrupt, truncated,
// half-created), so it does not depend on Segment::open for what it displays. A Probe opens the
// file O_RDONLY, copies the header with pread(2) (a snapshot: no mapping, so a file truncated
// under us cannot raise SIGBUS, and nothing can be written by mistake), validates every field it
// shows, and asks the kernel about the OFD locks that mark live participants.
//
// Synchronization
//   None with the channel's hot path: every value is a snapshot copied by pread. Counters and
//   positions may be mutually inconsistent by the time they are printed; they are guesses.
//   Liveness comes from F_OFD_GETLK (see segment.hpp): a lock is held if and only if its holder's
//   open file description exists, so a dead process is never reported alive.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shmq/core/result.hpp"
#include "shmq/shm/gc.hpp"  // list_segment_names
#include "shmq/shm/segment.hpp"

namespace shmq::cli {

// A violation found in a header. Errors make the segment unusable; warnings (owner, mode) only
// mean the library would refuse to open it without allow_other_users.
struct Problem {
  Errc code = Errc::corrupt;
  bool warning = false;
  std::string what;  // "corrupt header at field kind: 7 is neither 1 (pipe) nor 2 (queue)"
};

struct ParticipantView {
  std::uint32_t index = 0;
  std::uint32_t pid = 0;
  std::uint32_t role = 0;
  std::uint32_t generation = 0;
  std::uint64_t joined_ns = 0;
  bool alive = false;
};

struct Liveness {
  std::uint32_t alive = 0;  // participant slots whose lock is held
  std::uint32_t dead = 0;   // slots marked taken whose lock is gone: left by a dead process
  bool creator_alive = false;  // the creator's lock is held (only meaningful while initializing)
  bool any_lock = false;       // any lock at all in the segment's lock range (roles included)
};

// Statistics of one direction, copied out of the snapshot.
struct StatsView {
  std::uint64_t sent = 0, received = 0, bytes_sent = 0, bytes_received = 0, full_waits = 0,
                empty_waits = 0, wakes = 0, abandoned = 0, recovered = 0, fallback_copies = 0,
                verify_failures = 0, corrupt_events = 0;
  // Messages committed and not yet consumed; 0 if the counters are inconsistent.
  std::uint64_t depth() const noexcept { return sent >= received ? sent - received : 0; }
};

class Probe {
 public:
  // not_found, permission_denied, invalid_name or system. Never fails on the content.
  static Result<Probe> open(std::string_view name);

  Probe() = default;
  Probe(Probe&&) noexcept;
  Probe& operator=(Probe&&) noexcept;
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
  ~Probe();

  // Takes a new snapshot of the file size and header, and re-validates.
  Result<void> refresh();

  const std::string& name() const noexcept { return name_; }
  const std::string& path() const noexcept { return path_; }
  int fd() const noexcept { return fd_; }
  const struct stat& file_stat() const noexcept { return st_; }

  // The header snapshot; nullptr if the file is too small to hold one.
  const SegmentHeader* header() const noexcept;
  // True when no error-level problem was found: every field shown can be trusted to be in range.
  bool sound() const noexcept;
  const std::vector<Problem>& problems() const noexcept { return problems_; }
  // The first error-level problem (or the first warning), as an Error; code ok if none.
  Error first_error() const;

  // Fields that are safe to call only when header() != nullptr (they still return something in
  // range when the header is corrupt, e.g. kind 0 → "unknown").
  std::string kind_name() const;
  std::string state_name() const;
  std::uint64_t capacity() const noexcept;  // pipe: ring bytes per direction; queue: bound in
                                            // messages; arena: blocks
  unsigned directions() const noexcept;     // 1 or 2, clamped
  StatsView stats(unsigned direction) const noexcept;
  // Seconds since creation (header time, or the file's ctime if the header time is absurd).
  double age_seconds() const noexcept;
  // Seconds since the file's status last changed (creation, truncation): for gc's grace period.
  double file_age_seconds() const noexcept;

  // Kernel liveness, queried now (one F_OFD_GETLK per slot).
  bool lock_held(off_t byte, off_t len = 1) const noexcept;
  Liveness liveness() const noexcept;
  std::vector<ParticipantView> participants() const;  // taken or alive slots only

  // Reads `n` bytes at absolute file offset `offset` into `dst`; corrupt if out of the file.
  Result<void> read_at(std::uint64_t offset, void* dst, std::size_t n) const;

 private:
  void validate();

  int fd_ = -1;
  std::string name_;
  std::string path_;
  struct stat st_ {};
  struct alignas(alignof(SegmentHeader)) HeaderBytes {
    std::byte bytes[kHeaderBytes];
  };
  std::unique_ptr<HeaderBytes> snapshot_;  // aligned like the header it holds a copy of
  std::uint64_t snapshot_bytes_ = 0;       // how much of it the file filled
  bool header_ok_ = false;
  std::vector<Problem> problems_;
};

// "1.0 MiB", "512 B".
std::string human_bytes(std::uint64_t n);
// "3s", "5m12s", "2h03m", "4d07h".
std::string human_age(double seconds);
std::string user_name(std::uint32_t uid);
std::string role_name(std::uint32_t role);

}  // namespace shmq::cli
