// Queue: segment set-up and validation, participant handles, spill files, JoinableQueue
// counters and the kill-point handler. The lock-free protocol lives in core/mpmc_ring.hpp.
#include "shmq/shm/queue.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace shmq {
namespace detail {

namespace {
constexpr std::size_t kPathMax = 256;
// "/dev/shm/shmq." + a tag of at most kSpillTagBytes - 1 + ".x": room left for 16 hex digits.
constexpr std::size_t kSpillPrefixMax = 232;
static_assert(9 + 5 + (kSpillTagBytes - 1) + 2 < kSpillPrefixMax);
static_assert(kSpillPrefixMax + 16 + 1 <= kPathMax);

// "/dev/shm/shmq.<tag>.x": a spill file's path without its 16 hex digits.
void format_spill_prefix(const char* tag, char (&out)[kSpillPrefixMax]) noexcept {
  std::snprintf(out, sizeof out, "%.*s/%.*s%s.x", static_cast<int>(kShmDirectory.size()),
                kShmDirectory.data(), static_cast<int>(kSegmentFilePrefix.size()),
                kSegmentFilePrefix.data(), tag);
}

std::string quoted(std::string_view name) {
  return name.empty() ? std::string("the anonymous queue") : "queue '" + std::string(name) + "'";
}
}  // namespace

struct QueueShared;

// The ring's view of the participant table: claim words in the segment header, liveness from
// the kernel's OFD locks, and spill files to remove when a slot is recovered.
class QueueRegistry final : public core::ClaimRegistry {
 public:
  explicit QueueRegistry(const QueueShared* q) noexcept : q_(q) {}
  std::uint32_t participants() const noexcept override { return kMaxParticipants; }
  std::atomic<std::uint64_t>* claim_words(std::uint32_t index) const noexcept override;
  bool alive(std::uint32_t index) const noexcept override;
  std::uint32_t generation(std::uint32_t index) const noexcept override;
  bool sealed(std::uint64_t pos, std::uint8_t tag) const noexcept override;
  void reclaim(std::uint64_t pos) noexcept override;
  void sweep_sleepers() noexcept override;

 private:
  const QueueShared* q_;
};

struct QueueShared {
  QueueShared() : registry(this) {}
  // A generated or anonymous queue disappears with its last user: its spill files go too.
  // "Last" is asked only after our own attach lock is gone, through a description of our own:
  // a probe through our attach description would be blind to a forked peer, which shares that
  // description, since F_OFD_GETLK never reports a description's own lock to it: a forked
  // producer leaving (a Python child at exit) would take its parent for absent and remove the
  // files of committed, unread messages, and their reader would get `corrupt`.
  //   1. not generated/anonymous: nothing to do (the files go with the name: Queue::unlink);
  //   2. no probe description (fd limit): keep the files (a leak gc removes, never a loss);
  //   3. after our detach, some description still holds the attach lock (another process, a
  //      forked parent or child sharing ours, or another Queue of this process): keep them;
  //   4. none: we were the last; remove them. Two last ones racing both remove: harmless.
  ~QueueShared() {
    if (!segment.valid()) return;
    const std::uint32_t flags = segment.header().flags;
    if ((flags & (kUnlinkWhenUnused | kAnonymous)) == 0) return;  // case 1
    auto probe = segment.reopen_fd();
    { Segment gone = std::move(segment); }  // unmaps and drops our attach lock (if ours alone)
    if (!probe) return;                     // case 2
    if (!attach_locked(*probe)) (void)Queue::remove_spill_files(spill_tag);  // cases 3, 4
    ::close(*probe);
  }
  // Whether any description holds the segment's attach lock; `fd` is a description holding none.
  static bool attach_locked(int fd) noexcept {
    struct flock fl {};
    fl.l_type = F_WRLCK;  // conflicts with every reader's shared attach lock
    fl.l_whence = SEEK_SET;
    fl.l_start = kAttachLockByte;
    fl.l_len = 1;
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return true;  // unknown: keep the files
    return fl.l_type != F_UNLCK;
  }
  QueueShared(const QueueShared&) = delete;
  QueueShared& operator=(const QueueShared&) = delete;

  // "/dev/shm/shmq.<tag>.x<16 hex>" into out; no allocation.
  void spill_path(std::uint64_t pos, char (&out)[kPathMax]) const noexcept {
    std::snprintf(out, sizeof out, "%s%016llx", spill_prefix, static_cast<unsigned long long>(pos));
  }

  // Arena chunk i's owner word and bytes (i < arena_chunks).
  std::atomic<std::uint64_t>& owner(std::uint64_t i) const noexcept { return arena_owner[i]; }
  std::byte* chunk(std::uint64_t i) const noexcept { return arena + i * arena_chunk_bytes; }

  Segment segment;
  core::MpmcRing ring;
  QueueBodyHeader* body = nullptr;
  std::atomic<std::uint64_t>* arena_owner = nullptr;
  std::byte* arena = nullptr;
  std::uint64_t arena_chunks = 0;
  std::uint64_t arena_chunk_bytes = 0;
  std::string spill_tag;
  char spill_prefix[kSpillPrefixMax] = {};
  QueueRegistry registry;
};

std::atomic<std::uint64_t>* QueueRegistry::claim_words(std::uint32_t index) const noexcept {
  return q_->segment.header().participants[index].claim;
}
bool QueueRegistry::alive(std::uint32_t index) const noexcept {
  return q_->segment.participant_alive(index);
}
bool QueueRegistry::sealed(std::uint64_t pos, std::uint8_t tag) const noexcept {
  if (tag == 0 || tag > kQueueJournals) return false;
  // acquire: [J2] [Q7] pairs with the release store of the seal in send_many_journaled(): the
  // sealed slots' bytes are visible.
  const std::uint64_t seal = q_->body->journals[tag - 1].seal.load(std::memory_order_acquire);
  return core::mpmc::claim_covers(seal, pos, core::mpmc::ClaimOp::enqueue);
}

std::uint32_t QueueRegistry::generation(std::uint32_t index) const noexcept {
  // acquire: [S2] pairs with the bump in Segment::join().
  return q_->segment.header().participants[index].generation.load(std::memory_order_acquire);
}
void QueueRegistry::reclaim(std::uint64_t pos) noexcept {
  // The dead owner of `pos` may hold an arena chunk tagged arena_tag(pos) (never more than one).
  for (std::uint64_t i = 0; i < q_->arena_chunks; ++i) {
    std::uint64_t tag = arena_tag(pos);
    // release: [A2]; the dead owner's bytes are discarded, the next taker's CAS acquires.
    if (q_->owner(i).compare_exchange_strong(tag, 0, std::memory_order_release, std::memory_order_relaxed))
      break;
  }
  char path[kPathMax];
  q_->spill_path(pos, path);
  ::unlink(path);  // ENOENT: the slot never spilled, or its reader unlinked the file already
}

// Takes back the wait counts a dead participant's SleepMark `seen` stands for, if `mark` still
// holds it (the CAS makes one taker of many: a sweeper, or the slot's next holder).
void take_back_sleep(const QueueShared& q, std::atomic<std::uint64_t>& mark, std::uint64_t seen) noexcept {
  if (seen == 0) return;
  // acq_rel: one winner among racing takers; no data rides on it.
  if (!mark.compare_exchange_strong(seen, 0, std::memory_order_acq_rel, std::memory_order_relaxed)) return;
  if ((seen & core::kSleepOnData) != 0) q.ring.header().data_ready.drop_dead_waiter();
  if ((seen & core::kSleepOnSpace) != 0) q.ring.header().space_free.drop_dead_waiter();
}

void QueueRegistry::sweep_sleepers() noexcept {
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    auto& mark = q_->segment.header().participants[i].asleep;
    // relaxed: a dead holder's last store is visible once the kernel reports it dead.
    const std::uint64_t seen = mark.load(std::memory_order_relaxed);
    if (seen == 0 || q_->segment.participant_alive(i)) continue;
    take_back_sleep(*q_, mark, seen);
  }
}

struct QueueWriterState {
  ~QueueWriterState() {
    if (::getpid() != pid) core.discard_stats();  // an inherited copy: the parent counts them
  }
  std::shared_ptr<QueueShared> shared;
  Participant participant;
  pid_t pid = 0;
  core::MpmcWriter core;
  std::uint64_t arena_next = 0;  // where the next chunk search starts (round robin)
  QueueJournal* journal = nullptr;  // open_journal()
  std::uint64_t self = 0;           // core::mpmc::holder_id of this participant
};

struct QueueReaderState {
  ~QueueReaderState() {
    if (::getpid() != pid) core.discard_stats();
  }
  // One per claim word: the context of a zero-copy Message's release hook.
  struct Hold {
    QueueReaderState* owner = nullptr;
    core::MpmcView view;
    SpillMap spill;  // a spilled message's mapping, unmapped on release
  };
  std::shared_ptr<QueueShared> shared;
  Participant participant;
  pid_t pid = 0;
  core::MpmcReader core;
  Hold holds[core::kClaimWords];
};

core::MpmcReader& reader_core(QueueReaderState& s) noexcept { return s.core; }
QueueShared& reader_shared(QueueReaderState& s) noexcept { return *s.shared; }

Status map_spill(QueueShared& q, const core::MpmcView& v, SpillMap& out, bool keep) noexcept {
  core::Stats& stats = q.segment.stats(0);
  auto corrupt = [&] {
    core::Stats::bump(stats.corrupt_events);
    return Status::corrupt;
  };
  SpillRef ref;  // read once, then checked
  if (!decode_spill_ref(v.bytes(), q.arena_chunks, q.arena_chunk_bytes, ref)) return corrupt();
  if (ref.chunk != 0) {
    // relaxed: the slot's acquire [Q1] ordered the writer's tag before this; a chunk not tagged
    // with this slot's position belongs to someone else and is left alone.
    if (q.owner(ref.chunk - 1).load(std::memory_order_relaxed) != arena_tag(v.pos)) return corrupt();
    out.base = q.chunk(ref.chunk - 1);
    out.length = ref.length;
    out.chunk = ref.chunk;
    return Status::ok;
  }
  const std::uint64_t len = ref.length;
  char path[kPathMax];
  q.spill_path(v.pos, path);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return corrupt();
  struct stat st {};
  void* p = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) >= len)
    p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  // Unlinked at once: the mapping keeps the pages, and a reader killed from here on leaves
  // nothing behind. A leased message keeps its file until the lease is acked.
  if (!keep) ::unlink(path);
  ::close(fd);
  if (p == MAP_FAILED) return corrupt();
  out.base = p;
  out.length = len;
  return Status::ok;
}

void unmap_spill(QueueShared& q, SpillMap& m, bool keep) noexcept {
  if (m.chunk != 0) {
    if (keep) {
      m = {};
      return;
    }
    q.owner(m.chunk - 1).store(0, std::memory_order_release);  // [A2]: our reads come first
  } else if (m.base != nullptr) {
    ::munmap(m.base, m.length);
  }
  m = {};
}

namespace {

void release_hook(void* context, std::uint64_t) noexcept {
  auto* h = static_cast<QueueReaderState::Hold*>(context);
  unmap_spill(*h->owner->shared, h->spill);  // before the slot: see queue.hpp on the arena
  h->owner->core.release(h->view);
}

void stop_self(core::KillPoint) noexcept { ::raise(SIGSTOP); }

// SHMQ_KILL_POINT=<name>[:<skip>] arms a kill point when the library loads.
bool arm_from_environment() noexcept {
  const char* env = std::getenv("SHMQ_KILL_POINT");
  if (env == nullptr || *env == 0) return false;
  const std::string_view spec(env);
  const std::size_t colon = spec.find(':');
  const std::string_view name = spec.substr(0, colon);
  std::uint64_t skip = 0;
  if (colon != std::string_view::npos) skip = std::strtoull(env + colon + 1, nullptr, 10);
  for (std::uint32_t k = 1; k < static_cast<std::uint32_t>(core::KillPoint::count_); ++k) {
    const auto kp = static_cast<core::KillPoint>(k);
    if (core::kill_point_name(kp) == name) {
      arm_kill_point(kp, skip);
      return true;
    }
  }
  return false;
}
[[maybe_unused]] const bool g_armed_from_environment = arm_from_environment();

}  // namespace
}  // namespace detail

using detail::QueueReaderState;
using detail::QueueShared;
using detail::QueueWriterState;

void arm_kill_point(core::KillPoint kp, std::uint64_t skip) noexcept {
  core::fault::arm(kp, skip, &detail::stop_self);
}
void disarm_kill_point() noexcept { core::fault::disarm(); }

// ---------------------------------------------------------------------------------------------
// Queue: creation and validation

Result<Queue> Queue::create(const QueueConfig& config) {
  const core::MpmcConfig mc{.slots = config.slots,
                            .slot_size = config.slot_size,
                            .maxsize = config.maxsize,
                            .initial_position = config.initial_position,
                            .initial_epoch = config.initial_epoch};
  auto ring_bytes = core::MpmcRing::required_bytes(mc);
  if (!ring_bytes) return std::move(ring_bytes).error();
  if (config.arena_chunks > kMaxArenaChunks)
    return Error(Errc::invalid_argument, "arena_chunks " + std::to_string(config.arena_chunks) +
                                             " exceeds " + std::to_string(kMaxArenaChunks));
  if (!valid_arena(config.arena_chunks, config.arena_chunk_bytes))
    return Error(Errc::invalid_argument, "arena_chunk_bytes " + std::to_string(config.arena_chunk_bytes) +
                                             " is not a multiple of 4096 in (0, 1 GiB]");
  const ArenaLayout arena =
      arena_layout(sizeof(QueueBodyHeader) + *ring_bytes, config.arena_chunks, config.arena_chunk_bytes);
  SegmentConfig sc;
  sc.name = config.name;
  sc.kind = SegmentKind::queue;
  sc.params.capacity = config.slots;
  sc.params.slot_size = config.slot_size;
  sc.params.maxsize = config.maxsize;
  sc.params.directions = 1;
  sc.body_bytes = arena.offset + arena.total;
  sc.anonymous = config.anonymous;

  std::string anon_tag;
  if (config.anonymous) {
    // The memfd carries the tag as its label, so `shmq gc` can tell that the spill files of an
    // anonymous queue belong to one that is still mapped (it has no name in /dev/shm).
    anon_tag = "memfd-" + random_segment_name().substr(5);
    sc.name = anon_tag;
  }
  bool ring_ok = true;
  auto seg = Segment::create(sc, [&](Segment& s) {
    auto* body = new (s.body()) QueueBodyHeader;
    body->magic = kQueueBodyMagic;
    body->slots = config.slots;
    body->slot_size = config.slot_size;
    body->maxsize = config.maxsize;
    body->ring_offset = sizeof(QueueBodyHeader);
    body->ring_bytes = *ring_bytes;
    body->arena_offset = arena.offset;
    body->arena_chunks = config.arena_chunks;
    body->arena_chunk_bytes = config.arena_chunks != 0 ? config.arena_chunk_bytes : 0;
    auto* owners = reinterpret_cast<std::atomic<std::uint64_t>*>(s.body() + arena.offset);
    for (std::uint32_t i = 0; i < config.arena_chunks; ++i)
      owners[i].store(0, std::memory_order_relaxed);  // relaxed: published by [S1] as below
    const std::string& tag = config.anonymous ? anon_tag : s.name();
    std::memset(body->spill_tag, 0, sizeof body->spill_tag);
    std::memcpy(body->spill_tag, tag.data(), std::min(tag.size(), sizeof body->spill_tag - 1));
    // relaxed: the segment's `ready` store [S1] publishes the body.
    body->unfinished_tasks.store(0, std::memory_order_relaxed);
    body->tasks_done.init();
    for (QueueJournal& j : body->journals) {
      j.owner.store(0, std::memory_order_relaxed);
      j.seal.store(0, std::memory_order_relaxed);
      j.pending_range = j.pending_token = j.pending_next = j.done_token = j.done_next = 0;
      j.reserved = 0;
      std::memset(j.name, 0, sizeof j.name);
    }
    ring_ok = core::MpmcRing::init_in({s.body() + body->ring_offset, *ring_bytes}, mc).has_value();
    SHMQ_KILL_POINT(core::KillPoint::creating);
  });
  if (!seg) return std::move(seg).error();
  if (!ring_ok) return Error(Errc::invalid_argument, "cannot format the queue ring");
  return attach(std::move(*seg));
}

Result<Queue> Queue::open(std::string_view name, const OpenOptions& options) {
  auto seg = Segment::open(name, SegmentKind::queue, options);
  if (!seg) return std::move(seg).error();
  return attach(std::move(*seg));
}

Result<Queue> Queue::from_fd(int fd, const OpenOptions& options) {
  auto seg = Segment::from_fd(fd, SegmentKind::queue, options);
  if (!seg) return std::move(seg).error();
  return attach(std::move(*seg));
}

Result<Queue> Queue::attach(Segment seg) {
  const std::string who = detail::quoted(seg.name());
  auto bad = [&](const char* field, std::uint64_t v) {
    return Error(Errc::corrupt, who + " has a corrupt header at field '" + field + "' (" +
                                    std::to_string(v) + ")");
  };
  // Every shared value is read once into a local, then checked.
  const ChannelParams params = seg.header().params;
  if (params.directions != 1) return bad("params.directions", params.directions);
  if (seg.body_bytes() < sizeof(QueueBodyHeader))
    return Error(Errc::truncated, who + " is too small for a queue body (" +
                                      std::to_string(seg.body_bytes()) + " bytes)");
  const auto* b = reinterpret_cast<const QueueBodyHeader*>(seg.body());
  const std::uint64_t magic = b->magic, slots = b->slots, slot_size = b->slot_size,
                      maxsize = b->maxsize, ring_offset = b->ring_offset,
                      ring_bytes = b->ring_bytes, arena_offset = b->arena_offset,
                      arena_chunks = b->arena_chunks, arena_chunk_bytes = b->arena_chunk_bytes;
  char tag[kSpillTagBytes];
  std::memcpy(tag, b->spill_tag, sizeof tag);
  if (magic != kQueueBodyMagic)
    return Error(Errc::bad_magic, who + " has no queue body (bad magic in the body header)");
  if (slots != params.capacity) return bad("slots", slots);
  if (slot_size != params.slot_size) return bad("slot_size", slot_size);
  if (maxsize != params.maxsize) return bad("maxsize", maxsize);
  auto need = core::MpmcRing::required_bytes({.slots = slots, .slot_size = slot_size, .maxsize = maxsize});
  if (!need) return Error(Errc::corrupt, who + " has invalid queue parameters: " + need.error().what);
  if (ring_offset != sizeof(QueueBodyHeader)) return bad("ring_offset", ring_offset);
  if (ring_bytes != *need) return bad("ring_bytes", ring_bytes);
  if (ring_offset + ring_bytes > seg.body_bytes())
    return Error(Errc::size_mismatch, who + " needs " + std::to_string(ring_offset + ring_bytes) +
                                          " body bytes but has " + std::to_string(seg.body_bytes()));
  if (arena_chunks > kMaxArenaChunks) return bad("arena_chunks", arena_chunks);
  if (!valid_arena(arena_chunks, arena_chunk_bytes)) return bad("arena_chunk_bytes", arena_chunk_bytes);
  const ArenaLayout arena = arena_layout(ring_offset + ring_bytes, arena_chunks, arena_chunk_bytes);
  if (arena_offset != arena.offset) return bad("arena_offset", arena_offset);
  if (arena.offset + arena.total > seg.body_bytes())
    return Error(Errc::size_mismatch, who + " needs " + std::to_string(arena.offset + arena.total) +
                                          " body bytes (with its arena) but has " +
                                          std::to_string(seg.body_bytes()));
  if (std::memchr(tag, 0, sizeof tag) == nullptr || !valid_segment_name(tag))
    return Error(Errc::corrupt, who + " has a corrupt header at field 'spill_tag'");
  auto ring = core::MpmcRing::attach({seg.body() + ring_offset, ring_bytes});
  if (!ring) {
    Error e = std::move(ring).error();
    e.what = who + ": " + e.what;
    return e;
  }
  if (ring->slots() != slots) return bad("ring.slots", ring->slots());
  if (ring->slot_size() != slot_size) return bad("ring.slot_size", ring->slot_size());
  if (ring->maxsize() != (maxsize == 0 ? slots : maxsize)) return bad("ring.maxsize", ring->maxsize());

  auto shared = std::make_shared<QueueShared>();
  shared->segment = std::move(seg);
  shared->ring = *ring;
  shared->body = reinterpret_cast<QueueBodyHeader*>(shared->segment.body());
  shared->arena_owner = reinterpret_cast<std::atomic<std::uint64_t>*>(shared->segment.body() + arena.offset);
  shared->arena = shared->segment.body() + arena.offset + arena.owner_bytes;
  shared->arena_chunks = arena_chunks;
  shared->arena_chunk_bytes = arena_chunk_bytes;
  shared->spill_tag = tag;
  detail::format_spill_prefix(tag, shared->spill_prefix);
  Queue q;
  q.shared_ = std::move(shared);
  return q;
}

Queue::~Queue() = default;

Result<void> Queue::unlink(std::string_view name) {
  auto r = Segment::unlink(name);
  (void)remove_spill_files(name);
  return r;
}

bool Queue::is_spill_file_name(std::string_view f, std::string* queue_name) {
  constexpr std::string_view prefix = kSegmentFilePrefix;
  constexpr std::size_t kHex = 16;
  if (f.size() < prefix.size() + 1 + 2 + kHex || f.substr(0, prefix.size()) != prefix) return false;
  const std::size_t x = f.size() - kHex - 2;
  if (f.substr(x, 2) != ".x") return false;
  for (char c : f.substr(x + 2))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  const std::string_view name = f.substr(prefix.size(), x - prefix.size());
  if (!valid_segment_name(name)) return false;
  if (queue_name != nullptr) *queue_name = std::string(name);
  return true;
}

std::string Queue::spill_file_path(std::string_view tag, std::uint64_t pos) {
  char prefix[detail::kSpillPrefixMax];
  detail::format_spill_prefix(std::string(tag).c_str(), prefix);
  char path[detail::kPathMax];
  std::snprintf(path, sizeof path, "%s%016llx", prefix, static_cast<unsigned long long>(pos));
  return path;
}

Result<std::size_t> Queue::remove_spill_files(std::string_view name) {
  const std::string shm_dir(kShmDirectory);
  DIR* dir = ::opendir(shm_dir.c_str());
  if (dir == nullptr)
    return Error(Errc::system, "cannot list " + shm_dir, errno);
  std::size_t removed = 0;
  std::string owner;
  while (const dirent* e = ::readdir(dir)) {
    if (is_spill_file_name(e->d_name, &owner) && owner == name &&
        ::unlinkat(::dirfd(dir), e->d_name, 0) == 0)
      ++removed;
  }
  ::closedir(dir);
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Queue: handles and shared state

namespace {
// A new holder of a participant slot first takes back what a predecessor killed asleep left
// there, then marks its own sleeps with its generation.
core::SleepMark sleep_mark(QueueShared& q, Participant& p) noexcept {
  auto& mark = p.slot()->asleep;
  // relaxed: the predecessor is dead (we hold its lock); its stores are visible.
  detail::take_back_sleep(q, mark, mark.load(std::memory_order_relaxed));
  return {&mark, static_cast<std::uint64_t>(p.generation()) << 32};
}
}  // namespace

namespace {
// What writer() and reader() share: a participant slot, and the ring end on its claim words.
template <class State>
Result<std::unique_ptr<State>> join_as(const std::shared_ptr<QueueShared>& q, Role role) {
  if (!q) return Error(Errc::closed, "the queue handle is empty");
  auto p = q->segment.join(role);
  if (!p) return std::move(p).error();
  auto s = std::make_unique<State>();
  s->shared = q;
  s->participant = std::move(*p);
  s->pid = ::getpid();
  s->core = decltype(s->core)(q->ring, s->participant.slot()->claim, &q->registry,
                              &q->segment.stats(0), sleep_mark(*q, s->participant),
                              core::mpmc::holder_id(s->participant.index(), s->participant.generation()));
  return s;
}
}  // namespace

Result<QueueWriter> Queue::writer() {
  auto s = join_as<QueueWriterState>(shared_, Role::writer);
  if (!s) return std::move(s).error();
  (*s)->self = core::mpmc::holder_id((*s)->participant.index(), (*s)->participant.generation());
  QueueWriter w;
  w.s_ = std::move(*s);
  return w;
}

Result<QueueReader> Queue::reader() {
  auto s = join_as<QueueReaderState>(shared_, Role::reader);
  if (!s) return std::move(s).error();
  for (auto& h : (*s)->holds) h.owner = s->get();
  QueueReader r;
  r.s_ = std::move(*s);
  return r;
}

std::size_t Queue::size_guess() const noexcept { return shared_ ? shared_->ring.size_guess() : 0; }
std::uint64_t Queue::capacity() const noexcept { return shared_ ? shared_->ring.capacity() : 0; }
std::uint64_t Queue::slots() const noexcept { return shared_ ? shared_->ring.slots() : 0; }
std::uint64_t Queue::slot_size() const noexcept { return shared_ ? shared_->ring.slot_size() : 0; }
std::uint64_t Queue::maxsize() const noexcept {
  return shared_ && shared_->ring.bounded_below_slots() ? shared_->ring.maxsize() : 0;
}
const std::string& Queue::name() const noexcept {
  static const std::string none;
  return shared_ ? shared_->segment.name() : none;
}
const Segment& Queue::segment() const noexcept { return shared_->segment; }
void Queue::leave_mapped() noexcept {
  if (shared_) shared_->segment.leave_mapped();
}
core::Stats& Queue::stats() const noexcept { return shared_->segment.stats(0); }
core::WaitWord* Queue::data_wait_word() noexcept {
  return shared_ ? &shared_->ring.header().data_ready : nullptr;
}

void Queue::close() noexcept {
  if (shared_) shared_->ring.close();
}
bool Queue::closed() const noexcept { return !shared_ || shared_->ring.closed(); }

void Queue::tasks_added(std::int64_t n) noexcept {
  // relaxed: [J1] the put's commit (release) orders this before the reader's task_done().
  if (shared_) shared_->body->unfinished_tasks.fetch_add(n, std::memory_order_relaxed);
}

Result<void> Queue::task_done() noexcept {
  if (!shared_) return Error(Errc::closed, "the queue handle is empty");
  auto& counter = shared_->body->unfinished_tasks;
  // relaxed: a starting value; the CAS validates it.
  std::int64_t v = counter.load(std::memory_order_relaxed);
  // Cases: 1. v <= 0: more task_done() calls than tasks: refuse, change nothing.
  //        2. CAS v -> v - 1 wins: done; wake join() if we reached 0.
  //        3. CAS loses: v reloaded (another task_done or tasks_added); retry.
  do {
    if (v <= 0) return Error(Errc::invalid_argument, "task_done() called more times than tasks were put");
    // acq_rel: [J1] release so join() (acquire) sees everything done before; acquire to order
    // our wake after the decrement.
  } while (!counter.compare_exchange_weak(v, v - 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
  if (v == 1) shared_->body->tasks_done.notify();
  return {};
}

Status Queue::join(Deadline d) noexcept {
  if (!shared_) return Status::closed;
  auto& body = *shared_->body;
  // acquire: [J1] pairs with the acq_rel decrement in task_done().
  auto finished = [&] { return body.unfinished_tasks.load(std::memory_order_acquire) <= 0; };
  for (;;) {
    if (finished()) return Status::ok;
    if (d.expired()) return Status::timeout;
    if (body.tasks_done.wait(finished, d.capped(core::kSleepSlice)) == core::FutexResult::interrupted)
      return Status::interrupted;
  }
}

std::int64_t Queue::unfinished_tasks_guess() const noexcept {
  // relaxed: a guess.
  return shared_ ? shared_->body->unfinished_tasks.load(std::memory_order_relaxed) : 0;
}

// ---------------------------------------------------------------------------------------------
// QueueClaim

QueueClaim::QueueClaim(QueueClaim&& o) noexcept
    : owner_(std::exchange(o.owner_, nullptr)),
      claim_(o.claim_),
      data_(o.data_),
      size_(o.size_),
      spill_base_(std::exchange(o.spill_base_, nullptr)),
      spill_len_(o.spill_len_),
      chunk_(std::exchange(o.chunk_, 0)),
      kind_(o.kind_),
      status_(o.status_) {}

QueueClaim& QueueClaim::operator=(QueueClaim&& o) noexcept {
  if (this != &o) {
    abort();
    new (this) QueueClaim(std::move(o));
  }
  return *this;
}

void QueueClaim::commit(std::size_t used) noexcept {
  if (owner_ == nullptr) return;
  used = std::min(used, size_);
  if (chunk_ != 0) {
    const std::uint64_t ref[2] = {used, chunk_};
    std::memcpy(claim_.data, ref, sizeof ref);
    owner_->core.commit(claim_, sizeof ref, kind_, core::kSlotSpilled);
    chunk_ = 0;
  } else if (spill_base_ != nullptr) {
    ::munmap(spill_base_, spill_len_);
    spill_base_ = nullptr;
    const std::uint64_t len = used;
    std::memcpy(claim_.data, &len, sizeof len);
    owner_->core.commit(claim_, sizeof len, kind_, core::kSlotSpilled);
  } else {
    owner_->core.commit(claim_, used, kind_);
  }
  owner_ = nullptr;
  status_ = Status::ok;
}

void QueueClaim::abort() noexcept {
  if (owner_ == nullptr) return;
  if (chunk_ != 0) {
    owner_->shared->owner(chunk_ - 1).store(0, std::memory_order_release);  // [A2]
    chunk_ = 0;
  }
  if (spill_base_ != nullptr) {
    ::munmap(spill_base_, spill_len_);
    spill_base_ = nullptr;
    owner_->shared->registry.reclaim(claim_.pos);  // unlinks the spill file
  }
  owner_->core.abort(claim_);
  owner_ = nullptr;
}

// ---------------------------------------------------------------------------------------------
// QueueWriter

QueueWriter::QueueWriter(QueueWriter&&) noexcept = default;
QueueWriter& QueueWriter::operator=(QueueWriter&&) noexcept = default;
QueueWriter::~QueueWriter() = default;

Status QueueWriter::try_send(std::span<const std::byte> msg, std::uint16_t kind) noexcept {
  if (!s_) return Status::closed;
  if (msg.size() <= s_->core.ring().slot_size()) return s_->core.try_send(msg, kind);
  return send_spilled(msg, kind, Deadline::now());
}

Status QueueWriter::send(std::span<const std::byte> msg, Deadline d, std::uint16_t kind) noexcept {
  if (!s_) return Status::closed;
  if (msg.size() <= s_->core.ring().slot_size()) return s_->core.send(msg, d, kind);
  const Status st = send_spilled(msg, kind, d);
  return st == Status::full ? Status::timeout : st;  // an already expired deadline
}

Status QueueWriter::send_spilled(std::span<const std::byte> msg, std::uint16_t kind,
                                 Deadline d) noexcept {
  // Deadline::now() (try_send): one attempt, `full` rather than `timeout`.
  QueueClaim c = d.expired() ? try_claim(msg.size(), kind) : claim(msg.size(), d, kind);
  if (!c.valid()) return c.status();
  const std::size_t half = msg.size() / 2;
  std::memcpy(c.data_, msg.data(), half);
  SHMQ_KILL_POINT(core::KillPoint::spill_write);
  std::memcpy(c.data_ + half, msg.data() + half, msg.size() - half);
  c.commit(msg.size());
  return Status::ok;
}

QueueClaim QueueWriter::try_claim(std::size_t n, std::uint16_t kind) noexcept {
  return claim(n, Deadline::now(), kind);
}

QueueClaim QueueWriter::claim(std::size_t n, Deadline d, std::uint16_t kind) noexcept {
  QueueClaim c;
  if (!s_) {
    c.status_ = Status::closed;
    return c;
  }
  if (n > kMaxSpillBytes) {
    c.status_ = Status::too_big;
    return c;
  }
  core::MpmcClaim mc = d.expired() ? s_->core.try_claim() : s_->core.claim(d);
  if (!mc.valid()) {
    c.status_ = mc.status;
    return c;
  }
  c.owner_ = s_.get();
  c.claim_ = mc;
  c.kind_ = kind;
  c.status_ = Status::ok;
  if (n <= mc.capacity) {
    c.data_ = mc.data;
    c.size_ = n;
    return c;
  }
  // Larger than a slot: a free arena chunk if one is big enough, tagged with our position.
  QueueShared& q = *s_->shared;
  if (n <= q.arena_chunk_bytes && mc.capacity >= 2 * sizeof(std::uint64_t)) {
    for (std::uint64_t k = 0; k < q.arena_chunks; ++k) {
      const std::uint64_t i = (s_->arena_next + k) % q.arena_chunks;
      std::uint64_t free = 0;
      // relaxed pre-check: skips taken chunks without a locked instruction.
      if (q.owner(i).load(std::memory_order_relaxed) != 0) continue;
      // acquire: [A1]
      if (!q.owner(i).compare_exchange_strong(free, arena_tag(mc.pos), std::memory_order_acquire,
                                              std::memory_order_relaxed))
        continue;
      s_->arena_next = i + 1;
      c.chunk_ = i + 1;
      c.data_ = q.chunk(i);
      c.size_ = n;
      return c;
    }
  }
  // Else a spill file named by the claimed position (never used before).
  char path[detail::kPathMax];
  s_->shared->spill_path(mc.pos, path);
  int fd = ::open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 && errno == EEXIST) {  // left by an earlier queue of the same name
    ::unlink(path);
    fd = ::open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  }
  void* p = MAP_FAILED;
  // posix_fallocate: a full /dev/shm fails here rather than with SIGBUS while copying.
  if (fd >= 0 && ::posix_fallocate(fd, 0, static_cast<off_t>(n)) == 0)
    p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (fd >= 0) ::close(fd);
  if (p == MAP_FAILED) {
    ::unlink(path);
    s_->core.abort(c.claim_);
    c.owner_ = nullptr;
    c.status_ = Status::too_big;  // the message cannot be carried: no space for its spill file
    return c;
  }
  c.spill_base_ = p;
  c.spill_len_ = n;
  c.data_ = static_cast<std::byte*>(p);
  c.size_ = n;
  return c;
}

std::size_t QueueWriter::send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                                   std::uint16_t kind, Status* why) noexcept {
  std::size_t done = 0;
  Status st = s_ ? Status::ok : Status::closed;
  while (s_ && done < msgs.size()) {
    if (msgs[done].size() > s_->core.ring().slot_size()) {
      st = send_spilled(msgs[done], kind, d);
      if (st == Status::full) st = Status::timeout;  // as the core's send_many reports it
      if (st != Status::ok) break;
      ++done;
      continue;
    }
    Status s = Status::ok;
    done += s_->core.send_many(msgs.subspan(done), d, kind, &s);
    if (s == Status::too_big) continue;  // the next message spills
    st = s;
    if (s != Status::ok) break;
  }
  if (why != nullptr) *why = st;
  return done;
}

namespace {

// Whether the participant that holder_id `id` names is alive (its slot not taken over since).
bool holder_alive(const QueueShared& q, std::uint64_t id) noexcept {
  if (id == 0) return false;
  const std::uint32_t index = static_cast<std::uint32_t>(id >> 32) - 1;
  return index < kMaxParticipants && q.registry.alive(index) &&
         q.registry.generation(index) == static_cast<std::uint32_t>(id);
}

// [J2] The record of `j`: what its last sealed run put.
QueueWriter::JournalRecord record_of(const QueueJournal& j) noexcept {
  // acquire: pairs with the seal's release store; the pending words written before it are seen.
  const std::uint64_t seal = j.seal.load(std::memory_order_acquire);
  if (seal == j.pending_range) return {j.pending_token, j.pending_next};
  return {j.done_token, j.done_next};
}

}  // namespace

Result<void> QueueWriter::open_journal(std::string_view name) {
  if (!s_) return Error(Errc::closed, "the writer is closed");
  if (name.empty() || name.size() >= kJournalNameBytes)
    return Error(Errc::invalid_argument, "a journal name has 1 to " +
                                             std::to_string(kJournalNameBytes - 1) + " bytes");
  QueueShared& q = *s_->shared;
  for (int round = 0; round < 8; ++round) {
    QueueJournal* found = nullptr;
    for (QueueJournal& j : q.body->journals)
      if (std::string_view(j.name, strnlen(j.name, sizeof j.name)) == name) found = &j;
    if (found == nullptr) {
      // A free entry (never taken): claim it with a CAS, then name it.
      for (QueueJournal& j : q.body->journals) {
        std::uint64_t free = 0;
        // acq_rel: one taker; the name written after it is read by later openers (racing
        // openers of one new name may each take an entry: names are meant for one writer).
        if (j.owner.load(std::memory_order_acquire) == 0 &&
            j.owner.compare_exchange_strong(free, s_->self, std::memory_order_acq_rel,
                                            std::memory_order_relaxed)) {
          std::memcpy(j.name, name.data(), name.size());
          j.name[name.size()] = 0;
          s_->journal = &j;
          return {};
        }
      }
      return Error(Errc::exists, "every journal of queue '" + q.segment.name() + "' (" +
                                     std::to_string(kQueueJournals) + ") is taken by another name");
    }
    // acquire: the previous holder's journal words are seen once we hold it.
    std::uint64_t held = found->owner.load(std::memory_order_acquire);
    if (held != s_->self && holder_alive(q, held))
      return Error(Errc::role_taken, "journal '" + std::string(name) + "' of queue '" +
                                         q.segment.name() + "' is held by a live writer");
    // acq_rel: one new holder among racing openers of a dead holder's journal.
    if (held != s_->self &&
        !found->owner.compare_exchange_strong(held, s_->self, std::memory_order_acq_rel,
                                              std::memory_order_relaxed))
      continue;
    // The dead holder's last sealed run: commit what it left uncommitted before the seal is
    // reused, so no survivor reading a newer seal could discard it [Q7].
    const std::uint64_t seal = found->seal.load(std::memory_order_acquire);
    if (seal != 0) {
      // relaxed: any recent position is near enough to widen the seal's 48-bit position.
      const std::uint64_t near = q.ring.header().enqueue_pos.load(std::memory_order_relaxed);
      const std::uint64_t first = core::mpmc::claim_first(seal, near);
      for (std::uint64_t k = 0; k < core::mpmc::claim_count(seal); ++k)
        (void)core::MpmcRecovery::commit_on_behalf(q.ring, first + k);
    }
    s_->journal = found;
    return {};
  }
  return Error(Errc::role_taken, "journal '" + std::string(name) + "' is being opened by another writer");
}

QueueWriter::JournalRecord QueueWriter::journal_record() const noexcept {
  if (!s_ || s_->journal == nullptr) return {};
  return record_of(*s_->journal);
}

std::size_t QueueWriter::send_many_journaled(std::span<const std::span<const std::byte>> msgs,
                                             Deadline d, std::uint16_t kind, std::uint64_t token,
                                             std::uint64_t first_index, Status* why) noexcept {
  if (!s_ || s_->journal == nullptr) {
    if (why != nullptr) *why = Status::closed;
    return 0;
  }
  QueueJournal& j = *s_->journal;
  const auto tag = static_cast<std::uint8_t>(&j - s_->shared->body->journals + 1);
  // [J2] pending first, the seal (the commit point), then done.
  auto seal = [&](std::uint64_t pos, std::uint64_t n, std::uint64_t before) noexcept {
    const std::uint64_t range = core::mpmc::encode_claim(pos, n, core::mpmc::ClaimOp::enqueue);
    j.pending_range = range;
    j.pending_token = token;
    j.pending_next = first_index + before + n;
    // release: [J2] [Q7] pairs with the acquire in QueueRegistry::sealed() and record_of().
    j.seal.store(range, std::memory_order_release);
    j.done_token = token;
    j.done_next = first_index + before + n;
  };
  std::size_t done = 0;
  Status st = Status::ok;
  while (done < msgs.size()) {
    if (msgs[done].size() <= s_->core.ring().slot_size()) {
      Status s = Status::ok;
      const std::size_t before = done;
      done += s_->core.send_many_sealed(
          msgs.subspan(done), d, kind, tag,
          [&](std::uint64_t pos, std::uint64_t n, std::uint64_t sent) noexcept { seal(pos, n, before + sent); },
          &s);
      if (s == Status::too_big) continue;  // the next message spills
      st = s;
      if (s != Status::ok) break;
      continue;
    }
    // A spilled message: claimed (arena chunk or spill file), written, then sealed and committed.
    QueueClaim c = d.expired() ? try_claim(msgs[done].size(), kind) : claim(msgs[done].size(), d, kind);
    if (!c.valid()) {
      st = c.status() == Status::full ? Status::timeout : c.status();
      break;
    }
    std::memcpy(c.data_, msgs[done].data(), msgs[done].size());
    const std::size_t used = msgs[done].size();
    std::uint64_t ref[2] = {used, c.chunk_};
    std::size_t ref_bytes = sizeof ref;
    if (c.chunk_ == 0) {
      ::munmap(c.spill_base_, c.spill_len_);
      c.spill_base_ = nullptr;
      ref_bytes = sizeof ref[0];
    }
    std::memcpy(c.claim_.data, ref, ref_bytes);
    const std::size_t before = done;
    s_->core.commit_sealed(c.claim_, ref_bytes, kind, core::kSlotSpilled, tag,
                           [&](std::uint64_t pos, std::uint64_t n) noexcept { seal(pos, n, before); });
    c.chunk_ = 0;
    c.owner_ = nullptr;
    ++done;
  }
  if (why != nullptr) *why = st;
  return done;
}

std::size_t QueueWriter::max_claim() const noexcept {
  return s_ ? static_cast<std::size_t>(kMaxSpillBytes) : 0;
}
std::uint64_t QueueWriter::slot_size() const noexcept { return s_ ? s_->core.ring().slot_size() : 0; }
core::WaitWord* QueueWriter::space_wait_word() noexcept {
  return s_ ? &s_->shared->ring.header().space_free : nullptr;
}
bool QueueWriter::writable_guess() const noexcept { return s_ && s_->core.writable_guess(); }
void QueueWriter::close() noexcept { s_.reset(); }

// ---------------------------------------------------------------------------------------------
// QueueReader

QueueReader::QueueReader(QueueReader&&) noexcept = default;
QueueReader& QueueReader::operator=(QueueReader&&) noexcept = default;
QueueReader::~QueueReader() = default;

namespace {

// Turns a view the reader holds into a Message that borrows the slot until released. A spilled
// message is mapped (and its file unlinked) now, and keeps its slot too: a reader killed while
// holding it leaves the slot to be counted `abandoned`, like any other message.
Status finish(QueueReaderState& s, core::MpmcView& v, Message& out) noexcept {
  QueueReaderState::Hold& h = s.holds[v.word];
  h.view = v;
  h.spill = {};
  if ((v.flags & core::kSlotSpilled) != 0) {
    const Status st = detail::map_spill(*s.shared, v, h.spill);
    if (st != Status::ok) {
      s.core.release(v);
      return st;
    }
    out.set_borrowed(static_cast<const std::byte*>(h.spill.base), h.spill.length, v.kind,
                     &detail::release_hook, &h, v.pos);
    return Status::ok;
  }
  out.set_borrowed(v.data, v.length, v.kind, &detail::release_hook, &h, v.pos);
  return Status::ok;
}

// With every claim word holding a zero-copy message, the next one is copied (rare; allocates).
Status copy_one(QueueReaderState& s, Message& out, Deadline d, bool wait) noexcept {
  Status why = Status::ok;
  auto copy = [&](const core::MpmcView& v) {
    if ((v.flags & core::kSlotSpilled) == 0) {
      out.set_owned(std::vector<std::byte>(v.data, v.data + v.length), v.kind);
      return;
    }
    detail::SpillMap m;
    if (detail::map_spill(*s.shared, v, m) != Status::ok) return;
    auto b = m.bytes();
    out.set_owned(std::vector<std::byte>(b.begin(), b.end()), v.kind);
    detail::unmap_spill(*s.shared, m);
  };
  const std::size_t n = wait ? s.core.recv_many(copy, 1, d, &why) : s.core.try_recv_many(copy, 1, &why);
  if (n == 1 && !out.valid()) return Status::corrupt;
  return n == 1 ? Status::ok : why;
}

}  // namespace

Status QueueReader::try_recv(Message& out) noexcept {
  out.release();
  if (!s_) return Status::closed;
  if (!s_->core.can_hold()) return copy_one(*s_, out, Deadline::now(), false);
  core::MpmcView v;
  const Status st = s_->core.try_recv(v);
  if (st != Status::ok) return st;
  return finish(*s_, v, out);
}

Status QueueReader::recv(Message& out, Deadline d) noexcept {
  out.release();
  if (!s_) return Status::closed;
  if (!s_->core.can_hold()) return copy_one(*s_, out, d, true);
  core::MpmcView v;
  const Status st = s_->core.recv(v, d);
  if (st != Status::ok) return st;
  return finish(*s_, v, out);
}

Status QueueReader::try_lease(std::size_t max, QueueLease& out) noexcept {
  if (out.valid() && !out.give_back()) return Status::full;
  out = QueueLease();
  if (!s_) return Status::closed;
  const Status st = s_->core.try_lease(max, out.lease_);
  if (st == Status::ok) out.owner_ = s_.get();
  return st;
}

Status QueueReader::lease(std::size_t max, Deadline d, QueueLease& out) noexcept {
  if (out.valid() && !out.give_back()) return Status::full;
  out = QueueLease();
  if (!s_) return Status::closed;
  const Status st = s_->core.lease(max, d, out.lease_);
  if (st == Status::ok) out.owner_ = s_.get();
  return st;
}

void QueueLease::ack() noexcept {
  if (!valid()) return;
  detail::QueueShared& q = *owner_->shared;
  // Each message's arena chunk and spill file are freed after the claim's downgrade [L1] and
  // before its slot is released, as a plain reader frees them (queue.hpp, the arena).
  owner_->core.ack_lease(lease_, [&q](std::uint64_t pos) noexcept { q.registry.reclaim(pos); });
  owner_ = nullptr;
}

bool QueueLease::give_back() noexcept {
  if (!valid()) return true;
  if (!owner_->core.give_back(lease_)) return false;
  owner_ = nullptr;
  return true;
}

core::WaitWord* QueueReader::data_wait_word() noexcept {
  return s_ ? &s_->shared->ring.header().data_ready : nullptr;
}
core::SleepMark QueueReader::data_sleep_mark() const noexcept {
  return s_ ? s_->core.data_sleep_mark() : core::SleepMark{};
}
bool QueueReader::ready_guess() const noexcept { return s_ && s_->core.readable_guess(); }
void QueueReader::close() noexcept { s_.reset(); }

}  // namespace shmq
