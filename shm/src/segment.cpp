// Segments: creation, validation on open, kernel-backed liveness (OFD locks).
#include "shmq/shm/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

namespace shmq {
namespace {

constexpr std::uint32_t kRoleBytes = 16;  // role and hold bytes probed by in-use checks
static_assert(kRoleHoldOffset + kMaxHeldRole < kRoleBytes, "in-use checks must see every hold");
constexpr std::uint64_t kPage = 4096;

std::string sys_text(int err) { return std::strerror(err); }

std::string quoted(std::string_view name) {
  if (name.empty()) return "anonymous segment";
  std::string s = "segment '";
  s.append(name);
  s += "'";
  return s;
}

std::uint64_t realtime_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

Error sys_error(int err, std::string what) {
  Errc code = Errc::system;
  if (err == EACCES || err == EPERM) code = Errc::permission_denied;
  if (err == ENOENT) code = Errc::not_found;
  if (err == EEXIST) code = Errc::exists;
  return Error(code, what + ": " + sys_text(err), err);
}

// OFD locks: owned by the open file description, released by the kernel when its last fd
// closes (exit and SIGKILL included), never confused by pid reuse.
bool lock_byte(int fd, off_t byte, short type) noexcept {
  struct flock fl{};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  return ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

// True if a description other than `fd`'s holds a lock on `byte` that conflicts with `type`.
bool byte_locked(int fd, off_t byte, short type = F_WRLCK) noexcept {
  if (fd < 0) return false;
  struct flock fl{};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return false;
  return fl.l_type != F_UNLCK;
}

void close_fd(int& fd) noexcept {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Opens a new description of the same file: /proc/self/fd works for memfds and named files alike.
int reopen(int fd) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return ::open(path, O_RDWR | O_CLOEXEC);
}

// The header's copy of the identity fields, read once: another process controls the shared bytes.
struct HeaderSnapshot {
  std::uint64_t magic, total_bytes, body_offset, body_bytes;
  std::uint32_t layout_version, kind, state, owner_uid, header_bytes;
};

HeaderSnapshot snapshot(const SegmentHeader& h) noexcept {
  HeaderSnapshot s{};
  std::memcpy(&s.magic, &h.magic, sizeof s.magic);
  std::memcpy(&s.total_bytes, &h.total_bytes, sizeof s.total_bytes);
  std::memcpy(&s.body_offset, &h.body_offset, sizeof s.body_offset);
  std::memcpy(&s.body_bytes, &h.body_bytes, sizeof s.body_bytes);
  std::memcpy(&s.layout_version, &h.layout_version, sizeof s.layout_version);
  std::memcpy(&s.kind, &h.kind, sizeof s.kind);
  std::memcpy(&s.owner_uid, &h.owner_uid, sizeof s.owner_uid);
  std::memcpy(&s.header_bytes, &h.header_bytes, sizeof s.header_bytes);
  // acquire: [S1] pairs with the creator's release store of `ready`; everything the creator
  // wrote before it (header and body) is visible once we read `ready`.
  s.state = h.state.load(std::memory_order_acquire);
  return s;
}

const char* kind_name(std::uint32_t k) {
  switch (static_cast<SegmentKind>(k)) {
    case SegmentKind::pipe: return "pipe";
    case SegmentKind::queue: return "queue";
    case SegmentKind::arena: return "arena";
  }
  return "unknown kind";
}

Result<void> check_header(const HeaderSnapshot& h, std::uint64_t file_size, std::string_view shown,
                          const SegmentKind* expected) {
  const std::string who = quoted(shown);
  if (h.magic != kSegmentMagic)
    return Error(Errc::bad_magic, who + " is not a shmq segment (bad magic number)");
  if (h.layout_version != kLayoutVersion)
    return Error(Errc::bad_version, who + " has layout version " + std::to_string(h.layout_version) +
                                        "; this build reads version " + std::to_string(kLayoutVersion));
  if (h.kind != static_cast<std::uint32_t>(SegmentKind::pipe) &&
      h.kind != static_cast<std::uint32_t>(SegmentKind::queue) &&
      h.kind != static_cast<std::uint32_t>(SegmentKind::arena))
    return Error(Errc::corrupt, who + " has a corrupt header at field 'kind' (" +
                                    std::to_string(h.kind) + ")");
  if (expected && h.kind != static_cast<std::uint32_t>(*expected))
    return Error(Errc::wrong_kind, who + " is a " + kind_name(h.kind) + ", not a " +
                                       kind_name(static_cast<std::uint32_t>(*expected)));
  if (h.header_bytes != kHeaderBytes || h.body_offset != kHeaderBytes)
    return Error(Errc::size_mismatch, who + " has a corrupt header at field 'header_bytes' or "
                                            "'body_offset' (they must both be " +
                                            std::to_string(kHeaderBytes) + ")");
  if (h.total_bytes > file_size)
    return Error(Errc::truncated, who + " is truncated: its header says (field 'total_bytes') " +
                                      std::to_string(h.total_bytes) + " bytes but the file has " +
                                      std::to_string(file_size));
  if (h.total_bytes != file_size)
    return Error(Errc::size_mismatch, who + " has a corrupt header at field 'total_bytes' (" +
                                          std::to_string(h.total_bytes) + ", the file has " +
                                          std::to_string(file_size) + ")");
  if (h.body_bytes != h.total_bytes - h.body_offset)
    return Error(Errc::size_mismatch,
                 who + " has a corrupt header at field 'body_bytes' (" + std::to_string(h.body_bytes) +
                     ", expected " + std::to_string(h.total_bytes - h.body_offset) + ")");
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names

bool valid_segment_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (name.front() == '.' || name.front() == '-') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string random_segment_name() {
  unsigned char raw[16];
  std::size_t got = 0;
  while (got < sizeof raw) {
    const ssize_t n = ::getrandom(raw + got, sizeof raw - got, 0);
    if (n > 0) got += static_cast<std::size_t>(n);
  }
  static const char* hex = "0123456789abcdef";
  std::string name = "anon-";
  for (unsigned char b : raw) {
    name += hex[b >> 4];
    name += hex[b & 15];
  }
  return name;
}

std::string segment_path(std::string_view name) {
  std::string p(kShmDirectory);
  p += '/';
  p += kSegmentFilePrefix;
  p.append(name);
  return p;
}

Result<bool> segment_in_use(std::string_view name) {
  if (!valid_segment_name(name))
    return Error(Errc::invalid_name, "invalid segment name '" + std::string(name) + "'");
  const int fd = ::open(segment_path(name).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return sys_error(errno, "cannot open " + quoted(name));
  bool used = byte_locked(fd, kAttachLockByte) || byte_locked(fd, kCreatorLockByte);
  for (std::uint32_t i = 0; !used && i < kMaxParticipants; ++i)
    used = byte_locked(fd, kParticipantLockBase + i);
  for (std::uint32_t r = 0; !used && r < kRoleBytes; ++r) used = byte_locked(fd, kRoleLockBase + r);
  ::close(fd);
  return used;
}

namespace {

// The header's verdict on a snapshot read from the file at `fd` (`got` bytes of it).
Error header_problem(const SegmentHeader& copy, std::uint64_t got, std::uint64_t file_size, int fd,
                     std::string_view name) {
  if (got < sizeof(SegmentHeader))
    return Error(Errc::truncated, file_size == 0
                                      ? quoted(name) + " is an empty file: its creator died before "
                                                       "sizing it, or is sizing it now"
                                      : quoted(name) + " is truncated: " + std::to_string(file_size) +
                                            " bytes, smaller than a segment header");
  const HeaderSnapshot h = snapshot(copy);
  if (h.magic == kSegmentMagic && h.state == static_cast<std::uint32_t>(SegmentState::initializing))
    return Error(Errc::initializing, byte_locked(fd, kCreatorLockByte)
                                         ? quoted(name) + " is being created"
                                         : quoted(name) + " was left half-created by a process "
                                                          "that died");
  if (h.magic == kSegmentMagic && h.state != static_cast<std::uint32_t>(SegmentState::ready) &&
      h.state != static_cast<std::uint32_t>(SegmentState::closed))
    return Error(Errc::corrupt, quoted(name) + " has a corrupt header at field 'state'");
  if (auto ok = check_header(h, file_size, name, nullptr); !ok) return std::move(ok).error();
  return Error();
}

}  // namespace

Result<SegmentFileInfo> inspect_segment_file(std::string_view name) {
  if (!valid_segment_name(name))
    return Error(Errc::invalid_name, "invalid segment name '" + std::string(name) + "'");
  // O_NONBLOCK: never hang on a FIFO planted under a segment name.
  const int fd = ::open(segment_path(name).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return sys_error(errno, "cannot open " + quoted(name));
  SegmentFileInfo info;
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return sys_error(err, "cannot stat " + quoted(name));
  }
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const double ctime = static_cast<double>(st.st_ctim.tv_sec) + static_cast<double>(st.st_ctim.tv_nsec) * 1e-9;
  info.age_seconds = std::max(0.0, std::chrono::duration<double>(now).count() - ctime);
  if (!S_ISREG(st.st_mode)) {
    info.problem = Error(Errc::bad_magic, quoted(name) + " is not a regular file");
    ::close(fd);
    return info;
  }
  // A copy aligned like the header, so its atomics may be read as such.
  auto copy = std::make_unique<SegmentHeader>();
  std::uint64_t got = 0;
  auto* bytes = reinterpret_cast<char*>(copy.get());
  while (got < sizeof(SegmentHeader)) {
    const ssize_t n = ::pread(fd, bytes + got, sizeof(SegmentHeader) - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::uint64_t>(n);
  }
  info.problem = header_problem(*copy, got, static_cast<std::uint64_t>(st.st_size), fd, name);
  if (info.problem.code == Errc::ok) {
    info.kind = static_cast<SegmentKind>(copy->kind);
    info.flags = copy->flags;
  }
  ::close(fd);
  return info;
}

// ---------------------------------------------------------------------------------------------
// Participant and RoleLock

Participant::Participant(Participant&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      index_(o.index_),
      generation_(o.generation_),
      owner_pid_(o.owner_pid_),
      slot_(std::exchange(o.slot_, nullptr)) {}

Participant& Participant::operator=(Participant&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
    index_ = o.index_;
    generation_ = o.generation_;
    owner_pid_ = o.owner_pid_;
    slot_ = std::exchange(o.slot_, nullptr);
  }
  return *this;
}

Participant::~Participant() { release(); }

void Participant::release() noexcept {
  if (fd_ < 0) return;
  // A forked child that drops an inherited participant must not mark its parent's slot free.
  if (slot_ != nullptr && static_cast<std::uint32_t>(::getpid()) == owner_pid_) {
    // relaxed: a display hint; the lock dropped by close() below is what survivors trust.
    slot_->state.store(static_cast<std::uint32_t>(SlotState::free), std::memory_order_relaxed);
  }
  close_fd(fd_);
  slot_ = nullptr;
}

RoleHold& RoleHold::operator=(RoleHold&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}
void RoleHold::release() noexcept { close_fd(fd_); }

RoleLock::RoleLock(RoleLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
RoleLock& RoleLock::operator=(RoleLock&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}
RoleLock::~RoleLock() { release(); }
void RoleLock::release() noexcept { close_fd(fd_); }

// ---------------------------------------------------------------------------------------------
// Segment

Segment::Segment(Segment&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      fd_(std::exchange(o.fd_, -1)),
      name_(std::move(o.name_)),
      attach_fd_(std::exchange(o.attach_fd_, -1)),
      unlink_when_unused_(o.unlink_when_unused_) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    this->~Segment();
    new (this) Segment(std::move(o));
  }
  return *this;
}

void Segment::release_attach() noexcept {
  // While we decide, the creator byte marks the segment in use, so that a gc scan
  // (segment_in_use) does not take it for an orphan between our attach lock going and our unlink.
  const bool decide = unlink_when_unused_ && !name_.empty() && fd_ >= 0 && attach_fd_ >= 0;
  const bool marked = decide && lock_byte(fd_, kCreatorLockByte, F_WRLCK);
  close_fd(attach_fd_);  // drops our attach lock before the probe below
  if (decide && !byte_locked(fd_, kAttachLockByte)) {
    ::unlink(segment_path(name_).c_str());  // ENOENT: another last one beat us to it
  }
  if (marked) lock_byte(fd_, kCreatorLockByte, F_UNLCK);  // fd_ may be shared with a forked child
}

void Segment::leave_mapped() noexcept { release_attach(); }

Segment::~Segment() {
  if (base_ != nullptr) ::munmap(base_, size_);
  base_ = nullptr;
  release_attach();
  close_fd(fd_);
}

Result<Segment> Segment::create(const SegmentConfig& config,
                                const std::function<void(Segment&)>& init_body) {
  const bool anonymous = config.anonymous;
  std::string name = anonymous ? std::string() : config.name;
  bool generated = false;
  if (!anonymous && name.empty()) {
    name = random_segment_name();
    generated = true;
  }
  if (!anonymous && !valid_segment_name(name))
    return Error(Errc::invalid_name,
                 "invalid segment name '" + name + "': use 1 to " + std::to_string(kMaxNameLength) +
                     " characters from [A-Za-z0-9._-], not starting with '.' or '-'");
  if (config.body_bytes == 0 || config.body_bytes > kMaxSegmentBytes)
    return Error(Errc::invalid_argument, "segment body size " + std::to_string(config.body_bytes) +
                                             " is out of range (1 byte to 1 TiB)");
  const std::uint64_t total = kHeaderBytes + core::align_up(config.body_bytes, kPage);

  int fd = -1;
  if (anonymous) {
    const std::string label = valid_segment_name(config.name) ? "shmq." + config.name : "shmq";
    fd = ::memfd_create(label.c_str(), MFD_CLOEXEC);
    if (fd < 0) return sys_error(errno, "cannot create an anonymous segment (memfd_create)");
  } else {
    const std::string path = segment_path(name);
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      const int err = errno;
      if (err == EEXIST)
        return Error(Errc::exists, quoted(name) + " already exists (" + path +
                                       "); open it, or remove it with `shmq rm " + name + "`",
                     err);
      return sys_error(err, "cannot create " + quoted(name) + " at " + path);
    }
  }
  Segment seg;
  seg.fd_ = fd;
  seg.name_ = name;
  auto fail = [&](int err, const std::string& what) -> Error {
    if (!anonymous) ::unlink(segment_path(name).c_str());
    return sys_error(err, what);
  };
  // The creator lock lives on the mapping fd until `ready`: openers that find `initializing`
  // tell a creator still at work from one that died.
  if (!lock_byte(fd, kCreatorLockByte, F_WRLCK)) return fail(errno, "cannot lock the new segment");
  if (::fchmod(fd, 0600) != 0) return fail(errno, "cannot set the mode of " + quoted(name));
  // fallocate reserves the pages now: a full /dev/shm fails here with ENOSPC instead of raising
  // SIGBUS at the first touch of a page on the hot path.
  if (int err = ::posix_fallocate(fd, 0, static_cast<off_t>(total)); err != 0)
    return fail(err, "cannot size " + quoted(name) + " to " + std::to_string(total) + " bytes");
  void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail(errno, "cannot map " + quoted(name));
  seg.base_ = static_cast<std::byte*>(p);
  seg.size_ = total;

  SegmentHeader& h = seg.header();
  // relaxed: nobody may use the segment before the release store of `ready` below.
  h.state.store(static_cast<std::uint32_t>(SegmentState::initializing), std::memory_order_relaxed);
  h.magic = kSegmentMagic;
  h.layout_version = kLayoutVersion;
  h.kind = static_cast<std::uint32_t>(config.kind);
  h.owner_uid = ::geteuid();
  h.creator_pid = static_cast<std::uint32_t>(::getpid());
  h.header_bytes = kHeaderBytes;
  h.flags = (generated ? kUnlinkWhenUnused : 0u) | (anonymous ? kAnonymous : 0u) |
            (config.unlink_when_unused ? kUnlinkWhenUnused : 0u);
  h.total_bytes = total;
  h.body_offset = kHeaderBytes;
  h.body_bytes = total - kHeaderBytes;
  h.created_ns = realtime_ns();
  h.params = config.params;
  std::memcpy(h.name, name.data(), name.size());
  seg.unlink_when_unused_ = (h.flags & kUnlinkWhenUnused) != 0;

  seg.attach_fd_ = reopen(fd);
  if (seg.attach_fd_ < 0 || !lock_byte(seg.attach_fd_, kAttachLockByte, F_RDLCK))
    return fail(errno, "cannot attach to " + quoted(name));
  if (init_body) init_body(seg);
  // release: [S1] publishes the header and the body to openers (acquire in snapshot()).
  h.state.store(static_cast<std::uint32_t>(SegmentState::ready), std::memory_order_release);
  lock_byte(fd, kCreatorLockByte, F_UNLCK);
  return seg;
}

Result<Segment> Segment::open(std::string_view name, SegmentKind expected,
                              const OpenOptions& options) {
  if (!valid_segment_name(name))
    return Error(Errc::invalid_name, "invalid segment name '" + std::string(name) +
                                         "': use characters from [A-Za-z0-9._-]");
  const std::string path = segment_path(name);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return Error(Errc::not_found, "no " + quoted(name) + " (" + path + " does not exist)", err);
    if (err == EACCES || err == EPERM)
      return Error(Errc::permission_denied,
                   "permission denied opening " + quoted(name) + " (" + path +
                       "); it belongs to another user",
                   err);
    return sys_error(err, "cannot open " + quoted(name));
  }
  return map_and_validate(fd, std::string(name), name, &expected, options);
}

Result<Segment> Segment::open_any(std::string_view name, const OpenOptions& options) {
  if (!valid_segment_name(name))
    return Error(Errc::invalid_name, "invalid segment name '" + std::string(name) + "'");
  const std::string path = segment_path(name);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return Error(Errc::not_found, "no " + quoted(name), err);
    return sys_error(err, "cannot open " + quoted(name));
  }
  return map_and_validate(fd, std::string(name), name, nullptr, options);
}

Result<Segment> Segment::from_fd(int fd, SegmentKind expected, const OpenOptions& options) {
  const int own = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return sys_error(errno, "cannot duplicate the segment fd");
  return map_and_validate(own, std::string(), "", &expected, options);
}

Result<Segment> Segment::map_and_validate(int fd, std::string name, std::string_view shown,
                                          const SegmentKind* expected,
                                          const OpenOptions& options) {
  Segment seg;  // owns fd from here: every early return closes it
  seg.fd_ = fd;
  seg.name_ = std::move(name);
  const std::string who = quoted(shown);

  struct stat st{};
  if (::fstat(fd, &st) != 0) return sys_error(errno, "cannot stat " + who);
  if (!S_ISREG(st.st_mode)) return Error(Errc::bad_magic, who + " is not a regular file");
  if (!options.allow_other_users && st.st_uid != ::geteuid())
    return Error(Errc::wrong_owner, who + " was created by uid " + std::to_string(st.st_uid) +
                                        "; open it as that user or pass allow_other_users");
  if (!options.allow_other_users && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error(Errc::insecure_mode, who + " has mode " + mode +
                                          " (group or world access); shmq segments must be 0600 "
                                          "unless allow_other_users is given");
  }
  // A creator still at work: the file may be empty or the state `initializing` for a moment.
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(options.initializing_wait_ms);
  auto creator_at_work = [&] { return byte_locked(fd, kCreatorLockByte); };
  while (static_cast<std::uint64_t>(st.st_size) < kHeaderBytes) {
    if (!creator_at_work())
      return Error(Errc::truncated, who + " is truncated: " + std::to_string(st.st_size) +
                                        " bytes, smaller than a segment header (" +
                                        std::to_string(kHeaderBytes) + ")");
    if (std::chrono::steady_clock::now() > give_up)
      return Error(Errc::initializing, who + " is still being created; try again");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (::fstat(fd, &st) != 0) return sys_error(errno, "cannot stat " + who);
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size > kMaxSegmentBytes)
    return Error(Errc::size_mismatch, who + " is larger than any shmq segment (" +
                                          std::to_string(file_size) + " bytes)");
  void* p = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error(errno, "cannot map " + who);
  seg.base_ = static_cast<std::byte*>(p);
  seg.size_ = file_size;

  HeaderSnapshot h = snapshot(seg.header());
  // Between posix_fallocate and the first header store the file is all zeros: while the creator
  // holds its lock, that too means "initializing".
  auto unfinished = [&] {
    return h.state == static_cast<std::uint32_t>(SegmentState::initializing) ||
           (h.magic == 0 && h.state == 0 && creator_at_work());
  };
  while (unfinished()) {
    if (!creator_at_work())
      return Error(Errc::initializing, who + " was left half-created by a process that died; "
                                             "remove it with `shmq gc` or `shmq rm`");
    if (std::chrono::steady_clock::now() > give_up)
      return Error(Errc::initializing, who + " is still being created; try again");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    h = snapshot(seg.header());
  }
  if (h.magic == kSegmentMagic && h.state != static_cast<std::uint32_t>(SegmentState::ready) &&
      h.state != static_cast<std::uint32_t>(SegmentState::closed))
    return Error(Errc::corrupt, who + " has a corrupt header at field 'state'");
  if (auto ok = check_header(h, file_size, shown, expected); !ok) return std::move(ok).error();
  if (!options.allow_other_users && h.owner_uid != st.st_uid)
    return Error(Errc::corrupt, who + " has a corrupt header at field 'owner_uid' (" +
                                    std::to_string(h.owner_uid) + ", the file belongs to uid " +
                                    std::to_string(st.st_uid) + ")");
  // The name field must be NUL-terminated inside its array.
  const SegmentHeader& hdr = seg.header();
  if (std::memchr(hdr.name, 0, sizeof hdr.name) == nullptr)
    return Error(Errc::corrupt, who + " has a corrupt header at field 'name' (not terminated)");
  std::uint32_t flags = 0;
  std::memcpy(&flags, &hdr.flags, sizeof flags);
  seg.unlink_when_unused_ = (flags & kUnlinkWhenUnused) != 0;

  seg.attach_fd_ = reopen(fd);
  if (seg.attach_fd_ < 0 || !lock_byte(seg.attach_fd_, kAttachLockByte, F_RDLCK))
    return sys_error(errno, "cannot attach to " + who);
  // A last user may have unlinked the name between our open() and our attach lock: then the
  // name now leads elsewhere (or nowhere) and this mapping would be an orphan.
  if (!seg.name_.empty()) {
    struct stat now{};
    if (::stat(segment_path(seg.name_).c_str(), &now) != 0 || now.st_ino != st.st_ino ||
        now.st_dev != st.st_dev) {
      seg.unlink_when_unused_ = false;
      return Error(Errc::not_found, who + " was removed while it was being opened", ENOENT);
    }
  }
  return seg;
}

Result<void> Segment::unlink(std::string_view name) {
  if (!valid_segment_name(name))
    return Error(Errc::invalid_name, "invalid segment name '" + std::string(name) + "'");
  if (::unlink(segment_path(name).c_str()) != 0) {
    const int err = errno;
    if (err == ENOENT) return Error(Errc::not_found, "no " + quoted(name), err);
    return sys_error(err, "cannot remove " + quoted(name));
  }
  return {};
}

Result<int> Segment::reopen_fd() const {
  const int fd = reopen(fd_);
  if (fd < 0) return sys_error(errno, "cannot reopen " + quoted(name_));
  return fd;
}

Result<Participant> Segment::join(Role role) {
  auto fd = reopen_fd();
  if (!fd) return std::move(fd).error();
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    if (!lock_byte(*fd, kParticipantLockBase + i, F_WRLCK)) continue;
    ParticipantSlot& slot = header().participants[i];
    Participant p;
    p.fd_ = *fd;
    p.index_ = i;
    p.slot_ = &slot;
    p.owner_pid_ = static_cast<std::uint32_t>(::getpid());
    // release: [S2] the new generation is published after we hold the lock; survivors that read
    // it (acquire) know claims tagged with an older generation belong to a dead holder.
    std::uint32_t gen = slot.generation.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (gen == 0) gen = slot.generation.fetch_add(1, std::memory_order_acq_rel) + 1;  // skip 0
    p.generation_ = gen;
    // relaxed: display fields, read as guesses by the CLI.
    slot.pid.store(static_cast<std::uint32_t>(::getpid()), std::memory_order_relaxed);
    slot.role.store(static_cast<std::uint32_t>(role), std::memory_order_relaxed);
    slot.joined_ns.store(realtime_ns(), std::memory_order_relaxed);
    slot.state.store(static_cast<std::uint32_t>(SlotState::taken), std::memory_order_relaxed);
    return p;
  }
  ::close(*fd);
  return Error(Errc::too_many_participants,
               quoted(name_) + " already has " + std::to_string(kMaxParticipants) +
                   " live participants");
}

Result<RoleLock> Segment::acquire_role(std::uint32_t role_index) {
  auto fd = reopen_fd();
  if (!fd) return std::move(fd).error();
  if (!lock_byte(*fd, kRoleLockBase + role_index, F_WRLCK)) {
    const int err = errno;
    ::close(*fd);
    if (err == EAGAIN || err == EACCES)
      return Error(Errc::role_taken, "role " + std::to_string(role_index) + " of " +
                                         quoted(name_) + " is held by a live handle",
                   err);
    return sys_error(err, "cannot lock a role of " + quoted(name_));
  }
  RoleLock r;
  r.fd_ = *fd;
  return r;
}

Result<RoleHold> Segment::hold_roles(std::span<const std::uint32_t> roles) {
  for (std::uint32_t r : roles)
    if (r > kMaxHeldRole)
      return Error(Errc::invalid_argument, "role " + std::to_string(r) + " of " + quoted(name_) +
                                               " cannot be held (at most role " +
                                               std::to_string(kMaxHeldRole) + ")");
  auto fd = reopen_fd();
  if (!fd) return std::move(fd).error();
  RoleHold h;
  h.fd_ = *fd;
  for (std::uint32_t r : roles) {
    // A shared lock never conflicts with another hold; only probes for a write lock see it.
    if (!lock_byte(h.fd_, kRoleLockBase + kRoleHoldOffset + r, F_RDLCK))
      return sys_error(errno, "cannot hold a role of " + quoted(name_));
  }
  return h;
}

Result<RoleHold> Segment::adopt_hold(int fd) const {
  RoleHold h;
  h.fd_ = fd;  // closed on every failure below
  struct stat theirs{};
  struct stat ours{};
  if (fd < 0 || ::fstat(fd, &theirs) != 0 || ::fstat(fd_, &ours) != 0)
    return Error(Errc::invalid_argument, "a role hold of " + quoted(name_) + " must be an open fd");
  if (theirs.st_ino != ours.st_ino || theirs.st_dev != ours.st_dev)
    return Error(Errc::invalid_argument,
                 "the fd passed as a role hold is not a description of " + quoted(name_));
  return h;
}

bool Segment::role_hold_present(std::uint32_t role_index) const noexcept {
  return role_index <= kMaxHeldRole &&
         byte_locked(fd_, kRoleLockBase + kRoleHoldOffset + role_index);
}

bool Segment::role_held(std::uint32_t role_index) const noexcept {
  return byte_locked(fd_, kRoleLockBase + role_index);
}

bool Segment::participant_alive(std::uint32_t index) const noexcept {
  return index < kMaxParticipants && byte_locked(fd_, kParticipantLockBase + index);
}

std::uint32_t Segment::live_participants() const noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    // acquire: pairs with the release in join(); a never-taken slot (generation 0) is skipped.
    if (header().participants[i].generation.load(std::memory_order_acquire) == 0) continue;
    if (participant_alive(i)) ++n;
  }
  for (std::uint32_t r = 0; r < kRoleBytes; ++r) n += role_held(r) ? 1 : 0;
  return n;
}

bool Segment::creator_alive() const noexcept { return byte_locked(fd_, kCreatorLockByte); }


}  // namespace shmq
