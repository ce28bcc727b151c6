#include "inspect.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <fmt/core.h>

#include "shmq/core/layout.hpp"
#include "shmq/shm/arena.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::cli {
namespace {

double realtime_seconds() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

Error os_error(std::string_view what, std::string_view name, int err) {
  Errc code = Errc::system;
  std::string text;
  switch (err) {
    case ENOENT:
      code = Errc::not_found;
      text = "no segment named '" + std::string(name) + "'";
      break;
    case EACCES:
    case EPERM:
      code = Errc::permission_denied;
      text = "permission denied for segment '" + std::string(name) + "'";
      break;
    default:
      text = std::string(what) + " segment '" + std::string(name) + "': " + std::strerror(err);
  }
  return Error(code, std::move(text), err);
}

}  // namespace

Result<Probe> Probe::open(std::string_view name) {
  if (!valid_segment_name(name)) {
    return Error(Errc::invalid_name,
                 "invalid segment name '" + std::string(name) +
                     "': use 1 to 200 characters from A-Z a-z 0-9 . _ -");
  }
  Probe p;
  p.name_ = std::string(name);
  p.path_ = segment_path(p.name_);
  // O_NOFOLLOW: a symlink planted in /dev/shm must not make us read another file.
  // O_NONBLOCK: never hang on a FIFO planted under a segment name.
  p.fd_ = ::open(p.path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (p.fd_ < 0) {
    const int err = errno;
    if (err == ELOOP) return Error(Errc::corrupt, "'" + p.path_ + "' is a symbolic link", err);
    return os_error("cannot open", name, err);
  }
  p.snapshot_ = std::make_unique<HeaderBytes>();
  if (auto r = p.refresh(); !r) return std::move(r).error();
  return p;
}

Probe::Probe(Probe&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      name_(std::move(o.name_)),
      path_(std::move(o.path_)),
      st_(o.st_),
      snapshot_(std::move(o.snapshot_)),
      snapshot_bytes_(o.snapshot_bytes_),
      header_ok_(o.header_ok_),
      problems_(std::move(o.problems_)) {}

Probe& Probe::operator=(Probe&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    name_ = std::move(o.name_);
    path_ = std::move(o.path_);
    st_ = o.st_;
    snapshot_ = std::move(o.snapshot_);
    snapshot_bytes_ = o.snapshot_bytes_;
    header_ok_ = o.header_ok_;
    problems_ = std::move(o.problems_);
  }
  return *this;
}

Probe::~Probe() {
  if (fd_ >= 0) ::close(fd_);
}

Result<void> Probe::refresh() {
  if (::fstat(fd_, &st_) != 0) return os_error("cannot stat", name_, errno);
  if (!S_ISREG(st_.st_mode)) {
    return Error(Errc::corrupt, "'" + path_ + "' is not a regular file");
  }
  std::memset(snapshot_->bytes, 0, sizeof snapshot_->bytes);
  std::uint64_t got = 0;
  while (got < sizeof snapshot_->bytes) {
    const ssize_t n = ::pread(fd_, snapshot_->bytes + got, sizeof snapshot_->bytes - got,
                              static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return os_error("cannot read", name_, errno);
    if (n == 0) break;
    got += static_cast<std::uint64_t>(n);
  }
  snapshot_bytes_ = got;
  validate();
  return {};
}

const SegmentHeader* Probe::header() const noexcept {
  return header_ok_ ? reinterpret_cast<const SegmentHeader*>(snapshot_->bytes) : nullptr;
}

bool Probe::sound() const noexcept {
  if (!header_ok_) return false;
  return std::none_of(problems_.begin(), problems_.end(), [](const Problem& p) { return !p.warning; });
}

Error Probe::first_error() const {
  for (const auto& p : problems_) {
    if (!p.warning) return Error(p.code, p.what);
  }
  if (!problems_.empty()) return Error(problems_.front().code, problems_.front().what);
  return Error();
}

void Probe::validate() {
  problems_.clear();
  header_ok_ = false;
  auto add = [this](Errc c, std::string what, bool warning = false) {
    problems_.push_back(Problem{c, warning, std::move(what)});
  };
  const auto file_bytes = static_cast<std::uint64_t>(st_.st_size);
  if (snapshot_bytes_ < sizeof(SegmentHeader)) {
    if (file_bytes == 0) {
      add(Errc::truncated, "empty file: its creator died before sizing it, or is sizing it now");
    } else {
      add(Errc::truncated, fmt::format("truncated: the file has {}"
                                   " bytes, fewer than a segment header ({})",
                                   file_bytes, sizeof(SegmentHeader)));
    }
    return;
  }
  header_ok_ = true;
  const SegmentHeader& h = *header();
  if (h.magic != kSegmentMagic) {
    add(Errc::bad_magic, fmt::format("not a shmq segment: bad magic 0x{:016x}", h.magic));
    return;  // nothing else in it means anything
  }
  if (h.layout_version != kLayoutVersion) {
    add(Errc::bad_version, fmt::format("layout version {}, this tool reads version {}",
                                   h.layout_version, kLayoutVersion));
    return;
  }
  // relaxed: a snapshot copy; no other process writes this memory.
  const auto state = h.state.load(std::memory_order_relaxed);
  if (state == static_cast<std::uint32_t>(SegmentState::initializing)) {
    add(Errc::initializing, lock_held(kCreatorLockByte)
                                ? "being created: its creator is still setting it up"
                                : "half-created: its creator died while setting it up");
    return;  // the creator may not have filled the other fields yet
  }
  if (state != static_cast<std::uint32_t>(SegmentState::ready) &&
      state != static_cast<std::uint32_t>(SegmentState::closed)) {
    add(Errc::corrupt, fmt::format("corrupt header at field state: 0x{:08x}", state));
  }
  const bool is_pipe = h.kind == static_cast<std::uint32_t>(SegmentKind::pipe);
  const bool is_queue = h.kind == static_cast<std::uint32_t>(SegmentKind::queue);
  const bool is_arena = h.kind == static_cast<std::uint32_t>(SegmentKind::arena);
  if (!is_pipe && !is_queue && !is_arena) {
    add(Errc::corrupt, fmt::format("corrupt header at field kind: {} is none of 1 (pipe), 2 (queue)"
                                   " and 3 (arena)", h.kind));
  }
  if (h.header_bytes != kHeaderBytes) {
    add(Errc::corrupt, fmt::format("corrupt header at field header_bytes: {}, expected {}",
                               h.header_bytes, kHeaderBytes));
  }
  if (h.total_bytes != file_bytes) {
    add(Errc::size_mismatch, fmt::format("corrupt header at field total_bytes: {}"
                                     " bytes, but the file has {}",
                                     h.total_bytes, file_bytes));
  }
  if (h.total_bytes > kMaxSegmentBytes) {
    add(Errc::size_mismatch, fmt::format("corrupt header at field total_bytes: {}"
                                     " exceeds the 1 TiB limit", h.total_bytes));
  }
  if (h.body_offset != kHeaderBytes) {
    add(Errc::corrupt, fmt::format("corrupt header at field body_offset: {}, expected {}",
                               h.body_offset, kHeaderBytes));
  }
  if (h.total_bytes < kHeaderBytes || h.body_bytes != h.total_bytes - kHeaderBytes) {
    add(Errc::size_mismatch, fmt::format("corrupt header at field body_bytes: {}"
                                     " does not match total_bytes {}",
                                     h.body_bytes, h.total_bytes));
  }
  const ChannelParams& p = h.params;
  if (is_arena) {  // capacity: blocks (any count); slot_size: bytes per block
    if (p.capacity == 0 || p.capacity > kMaxArenaBlocks || p.slot_size < kMinArenaBlockBytes ||
        p.slot_size > kMaxArenaBlockBytes || p.capacity * p.slot_size > h.body_bytes) {
      add(Errc::corrupt, fmt::format("corrupt header at field params: {} blocks of {} bytes in a body"
                                     " of {}", p.capacity, p.slot_size, h.body_bytes));
    }
  } else if (!core::is_pow2(p.capacity) || p.capacity > kMaxSegmentBytes) {
    add(Errc::corrupt, fmt::format("corrupt header at field params.capacity: {}"
                               " is not a power of two", p.capacity));
  } else if (is_pipe) {
    if (p.directions != 1 && p.directions != 2) {
      add(Errc::corrupt, fmt::format("corrupt header at field params.directions: {}", p.directions));
    } else if (p.capacity * p.directions > h.body_bytes) {
      add(Errc::size_mismatch, fmt::format("corrupt header at field params.capacity: {} ring(s) of {}"
                                       " bytes do not fit a body of {}",
                                       p.directions, p.capacity, h.body_bytes));
    }
  } else if (is_queue) {
    if (p.directions != 1) {
      add(Errc::corrupt, fmt::format("corrupt header at field params.directions: {}, a queue has 1",
                                 p.directions));
    }
    if (p.slot_size == 0 || p.slot_size > kMaxSegmentBytes) {
      add(Errc::corrupt, fmt::format("corrupt header at field params.slot_size: {}", p.slot_size));
    } else if (p.capacity > kMaxSegmentBytes / p.slot_size ||
               p.capacity * p.slot_size > h.body_bytes) {
      add(Errc::size_mismatch, fmt::format("corrupt header at field params.capacity: {}"
                                       " slots of {} bytes do not fit a body of {}",
                                       p.capacity, p.slot_size, h.body_bytes));
    }
    if (p.maxsize > p.capacity) {
      add(Errc::corrupt, fmt::format("corrupt header at field params.maxsize: {}"
                                 " exceeds {} slots", p.maxsize, p.capacity));
    }
  }
  const void* nul = std::memchr(h.name, '\0', sizeof h.name);
  if (nul == nullptr) {
    add(Errc::corrupt, "corrupt header at field name: not NUL-terminated");
  } else if (name_ != h.name) {
    add(Errc::corrupt, "corrupt header at field name: says '" +
                           std::string(h.name).substr(0, 64) + "', the file is '" + name_ + "'");
  }
  if (h.owner_uid != st_.st_uid) {
    add(Errc::wrong_owner, fmt::format("header owner uid {} differs from the file's uid {}",
                                   h.owner_uid, static_cast<unsigned>(st_.st_uid)),
        true);
  } else if (st_.st_uid != ::geteuid()) {
    add(Errc::wrong_owner, "owned by " + user_name(st_.st_uid) + ", not by you", true);
  }
  if ((st_.st_mode & 077) != 0) {
    add(Errc::insecure_mode, fmt::format("the file mode {:03o} gives access to group or others",
                                     static_cast<unsigned>(st_.st_mode & 0777)),
        true);
  }
}

std::string Probe::kind_name() const {
  const SegmentHeader* h = header();
  if (h == nullptr || h->magic != kSegmentMagic) return "?";
  switch (h->kind) {
    case static_cast<std::uint32_t>(SegmentKind::pipe): return "pipe";
    case static_cast<std::uint32_t>(SegmentKind::queue): return "queue";
    case static_cast<std::uint32_t>(SegmentKind::arena): return "arena";
    default: return "?";
  }
}

std::string Probe::state_name() const {
  const SegmentHeader* h = header();
  if (h == nullptr || h->magic != kSegmentMagic || h->layout_version != kLayoutVersion) {
    return lock_held(kCreatorLockByte) ? "creating" : "corrupt";
  }
  // relaxed: a snapshot copy.
  switch (h->state.load(std::memory_order_relaxed)) {
    case static_cast<std::uint32_t>(SegmentState::initializing):
      return lock_held(kCreatorLockByte) ? "creating" : "half-created";
    case static_cast<std::uint32_t>(SegmentState::ready): return sound() ? "ready" : "corrupt";
    case static_cast<std::uint32_t>(SegmentState::closed): return sound() ? "closed" : "corrupt";
    default: return "corrupt";
  }
}

std::uint64_t Probe::capacity() const noexcept {
  const SegmentHeader* h = header();
  if (h == nullptr) return 0;
  if (h->kind == static_cast<std::uint32_t>(SegmentKind::queue) && h->params.maxsize != 0) {
    return h->params.maxsize;
  }
  return h->params.capacity;
}

unsigned Probe::directions() const noexcept {
  const SegmentHeader* h = header();
  return h != nullptr && h->params.directions == 2 ? 2 : 1;
}

StatsView Probe::stats(unsigned direction) const noexcept {
  StatsView v;
  const SegmentHeader* h = header();
  if (h == nullptr) return v;
  const core::Stats& s = h->stats[direction & 1];
  using S = core::Stats;
  v.sent = S::read(s.sent);
  v.received = S::read(s.received);
  v.bytes_sent = S::read(s.bytes_sent);
  v.bytes_received = S::read(s.bytes_received);
  v.full_waits = S::read(s.full_waits);
  v.empty_waits = S::read(s.empty_waits);
  v.wakes = S::read(s.wakes);
  v.abandoned = S::read(s.abandoned);
  v.recovered = S::read(s.recovered);
  v.fallback_copies = S::read(s.fallback_copies);
  v.verify_failures = S::read(s.verify_failures);
  v.corrupt_events = S::read(s.corrupt_events);
  return v;
}

double Probe::file_age_seconds() const noexcept {
  const double ctime = static_cast<double>(st_.st_ctim.tv_sec) +
                       static_cast<double>(st_.st_ctim.tv_nsec) * 1e-9;
  return std::max(0.0, realtime_seconds() - ctime);
}

double Probe::age_seconds() const noexcept {
  const SegmentHeader* h = header();
  const double now = realtime_seconds();
  if (h != nullptr && h->magic == kSegmentMagic && h->created_ns != 0) {
    const double created = static_cast<double>(h->created_ns) * 1e-9;
    if (created <= now + 1.0) return std::max(0.0, now - created);
  }
  return file_age_seconds();
}

bool Probe::lock_held(off_t byte, off_t len) const noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = len;
  fl.l_pid = 0;  // required for OFD locks
  // We hold no lock on this description, so any lock reported belongs to someone else.
  if (::fcntl(fd_, F_OFD_GETLK, &fl) != 0) return false;
  return fl.l_type != F_UNLCK;
}

Liveness Probe::liveness() const noexcept {
  Liveness l;
  const SegmentHeader* h = header();
  const bool trusted_table = h != nullptr && h->magic == kSegmentMagic;
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    const bool held = lock_held(kParticipantLockBase + static_cast<off_t>(i));
    // relaxed: a snapshot copy; the state is a hint, the lock is the truth.
    const bool taken = trusted_table && h->participants[i].state.load(std::memory_order_relaxed) ==
                                            static_cast<std::uint32_t>(SlotState::taken);
    if (held) {
      ++l.alive;
    } else if (taken) {
      ++l.dead;
    }
  }
  l.creator_alive = lock_held(kCreatorLockByte);
  l.any_lock = lock_held(kCreatorLockByte,
                         kParticipantLockBase + static_cast<off_t>(kMaxParticipants) - kCreatorLockByte);
  return l;
}

std::vector<ParticipantView> Probe::participants() const {
  std::vector<ParticipantView> out;
  const SegmentHeader* h = header();
  const bool trusted_table = h != nullptr && h->magic == kSegmentMagic;
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    const bool held = lock_held(kParticipantLockBase + static_cast<off_t>(i));
    ParticipantView v;
    v.index = i;
    v.alive = held;
    if (trusted_table) {
      const ParticipantSlot& s = h->participants[i];
      // relaxed: snapshot copies, for display.
      const bool taken =
          s.state.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(SlotState::taken);
      if (!held && !taken) continue;
      v.pid = s.pid.load(std::memory_order_relaxed);
      v.role = s.role.load(std::memory_order_relaxed);
      v.generation = s.generation.load(std::memory_order_relaxed);
      v.joined_ns = s.joined_ns.load(std::memory_order_relaxed);
    } else if (!held) {
      continue;
    }
    out.push_back(v);
  }
  return out;
}

Result<void> Probe::read_at(std::uint64_t offset, void* dst, std::size_t n) const {
  const auto file_bytes = static_cast<std::uint64_t>(st_.st_size);
  if (offset > file_bytes || n > file_bytes - offset) {
    return Error(Errc::corrupt, fmt::format("corrupt: a read of {} bytes at offset {}"
                                        " falls outside the {}-byte file",
                                        n, offset, file_bytes));
  }
  auto* out = static_cast<std::byte*>(dst);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd_, out + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return os_error("cannot read", name_, errno);
    if (r == 0) {
      return Error(Errc::truncated, "truncated: the file shrank while it was being read");
    }
    got += static_cast<std::size_t>(r);
  }
  return {};
}


std::string human_bytes(std::uint64_t n) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (n < 1024) return fmt::format("{} B", n);
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return v < 10 ? fmt::format("{:.1f} {}", v, kUnits[u]) : fmt::format("{:.0f} {}", v, kUnits[u]);
}

std::string human_age(double seconds) {
  const auto s = static_cast<std::uint64_t>(seconds < 0 ? 0 : seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02}h", s / 86400, (s % 86400) / 3600);
}

std::string user_name(std::uint32_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  char buf[1024];
  if (::getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    return found->pw_name;
  }
  return std::to_string(uid);
}

std::string role_name(std::uint32_t role) {
  switch (role) {
    case static_cast<std::uint32_t>(Role::none): return "none";
    case static_cast<std::uint32_t>(Role::writer): return "writer";
    case static_cast<std::uint32_t>(Role::reader): return "reader";
    case static_cast<std::uint32_t>(Role::both): return "both";
    case static_cast<std::uint32_t>(Role::observer): return "observer";
    default: return "?";
  }
}

}  // namespace shmq::cli
