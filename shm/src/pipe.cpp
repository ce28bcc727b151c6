// Pipe: segment set-up and validation, roles, liveness. The hot path is inline in pipe.hpp.
#include "shmq/shm/pipe.hpp"

#include <fcntl.h>

#include <cstdio>
#include <cstring>
#include <utility>

namespace shmq {
namespace {

// Segments round their body up to whole pages; the body must be the rings plus less than a page.
constexpr std::uint64_t kPageBytes = 4096;

std::string pipe_label(const Segment& seg) {
  return seg.name().empty() ? std::string("anonymous pipe") : "pipe '" + seg.name() + "'";
}

std::string dir_text(unsigned directions) {
  return directions == 1 ? "1 direction" : std::to_string(directions) + " directions";
}

ChannelParams read_params(const Segment& seg) noexcept {
  ChannelParams p;  // read once: another process controls the shared bytes
  std::memcpy(&p, &seg.header().params, sizeof p);
  return p;
}

Result<void> check_shape(const Segment& seg, const ChannelParams& p) {
  const std::string who = pipe_label(seg);
  if ((p.flags & ~kPipeKnownFlags) != 0)
    return Error(Errc::corrupt, who + " has unknown flags " + std::to_string(p.flags) +
                                    "; the segment is corrupt or from a newer shmq");
  if (p.directions != 1 && p.directions != 2)
    return Error(Errc::corrupt, who + " declares " + std::to_string(p.directions) +
                                    " directions (a pipe has 1 or 2); the segment is corrupt");
  if (!core::SpscRing::valid_capacity(p.capacity))
    return Error(Errc::corrupt, who + " declares a ring capacity of " + std::to_string(p.capacity) +
                                    " bytes, not a power of two from " +
                                    std::to_string(core::SpscRing::kMinCapacity) + " to " +
                                    std::to_string(core::SpscRing::kMaxCapacity) +
                                    "; the segment is corrupt");
  const std::uint64_t need = Pipe::body_bytes_for(p.capacity, p.directions);
  const std::uint64_t have = seg.body_bytes();
  if (have < need || have - need >= kPageBytes)
    return Error(Errc::size_mismatch,
                 who + " has " + std::to_string(have) + " body bytes but " + dir_text(p.directions) +
                     " of " + std::to_string(p.capacity) + "-byte rings need " + std::to_string(need) +
                     " (rounded up to a page); the segment is corrupt or not a pipe of this version");
  return {};
}

Result<void> check_ring(const Segment& seg, std::span<std::byte> mem, std::uint64_t capacity,
                        unsigned direction) {
  if (core::SpscRing::check(mem, capacity) == Status::ok) return {};
  const auto* c = core::SpscRing::control(mem);
  // relaxed: values for the message only; check() already decided.
  const std::uint64_t head = c->head.load(std::memory_order_relaxed);
  const std::uint64_t tail = c->tail.load(std::memory_order_relaxed);
  core::Stats::bump(seg.stats(direction).corrupt_events);
  return Error(Errc::corrupt,
               pipe_label(seg) + ": the ring of direction " + std::to_string(direction) +
                   " is invalid (magic " + (c->magic == core::spsc::kRingMagic ? "ok" : "bad") +
                   ", capacity " + std::to_string(c->capacity) + " of " + std::to_string(capacity) +
                   ", head " + std::to_string(head) + ", tail " + std::to_string(tail) +
                   "; a pipe needs head and tail within one ring of each other, both 8-byte "
                   "aligned)");
}

Error bad_direction(const Segment& seg, unsigned direction, unsigned directions) {
  return Error(Errc::invalid_argument, "direction " + std::to_string(direction) + " does not exist: " +
                                           pipe_label(seg) + " has " + dir_text(directions));
}

// Shared by writer() and reader(): the role lock first (refusal is the common failure), then a
// participant slot for display, then the state, whose ring end attaches to `ring`.
template <class State>
Result<std::unique_ptr<State>> make_end(const std::shared_ptr<Segment>& seg, unsigned direction,
                                        bool reader, std::span<std::byte> ring, std::uint64_t capacity,
                                        bool held_ends) {
  auto role = seg->acquire_role(detail::pipe_role(direction, reader));
  if (!role) return std::move(role).error();
  auto participant = seg->join(reader ? Role::reader : Role::writer);
  if (!participant) return std::move(participant).error();
  auto st = std::make_unique<State>();
  st->end.segment = seg;
  st->end.role = std::move(*role);
  st->end.participant = std::move(*participant);
  st->end.direction = direction;
  st->end.owner_pid = ::getpid();
  st->end.held_ends = held_ends;
  if (st->ring.attach(ring, capacity, &seg->stats(direction)) != Status::ok)
    return Error(Errc::corrupt, pipe_label(*seg) + ": the ring of direction " +
                                    std::to_string(direction) + " has invalid positions");
  return st;
}

// Whether the peer of `end` (the reader of a writer's direction, or the writer of a reader's) is
// alive: with held ends, while any process holds its role; otherwise while a live process holds
// the role lock, or before the peer's first attach (`peer_attached` still 0: nobody to be dead).
bool peer_alive(const detail::PipeEnd& end, bool peer_is_reader,
                const std::atomic<std::uint32_t>& peer_attached) noexcept {
  const std::uint32_t role = detail::pipe_role(end.direction, peer_is_reader);
  const Segment& seg = *end.segment;
  if (end.held_ends) return seg.role_hold_present(role) || seg.role_held(role);
  // relaxed: a counter; only whether it was ever bumped matters.
  if (peer_attached.load(std::memory_order_relaxed) == 0) return true;
  return seg.role_held(role);
}

}  // namespace

// ---- Pipe

Result<Pipe> Pipe::create(const PipeConfig& config) {
  if (!core::SpscRing::valid_capacity(config.capacity))
    return Error(Errc::invalid_argument,
                 "pipe capacity " + std::to_string(config.capacity) + " must be a power of two from " +
                     std::to_string(core::SpscRing::kMinCapacity) + " to " +
                     std::to_string(core::SpscRing::kMaxCapacity) + " bytes");
  const unsigned directions = config.duplex ? 2 : 1;
  SegmentConfig sc;
  sc.name = config.name;
  sc.kind = SegmentKind::pipe;
  sc.params.capacity = config.capacity;
  sc.params.directions = directions;
  sc.params.flags = config.held_ends ? kPipeHeldEnds : 0u;
  sc.body_bytes = body_bytes_for(config.capacity, directions);
  sc.anonymous = config.anonymous;
  sc.unlink_when_unused = config.name.empty() && !config.anonymous;
  const std::uint64_t ring_bytes = core::SpscRing::required_bytes(config.capacity);
  auto init = [&](Segment& seg) {
    for (unsigned d = 0; d < directions; ++d) {
      core::SpscRing::init_in({seg.body() + d * ring_bytes, ring_bytes}, config.capacity);
    }
  };
  return adopt(Segment::create(sc, init));
}

Result<Pipe> Pipe::open(std::string_view name, const OpenOptions& options) {
  return adopt(Segment::open(name, SegmentKind::pipe, options));
}

Result<Pipe> Pipe::from_fd(int fd, const OpenOptions& options) {
  return adopt(Segment::from_fd(fd, SegmentKind::pipe, options));
}

Result<void> Pipe::unlink(std::string_view name) {
  auto info = inspect_segment_file(name);
  if (info && info->problem.code == Errc::ok && info->kind != SegmentKind::pipe)
    return Error(Errc::wrong_kind, "segment '" + std::string(name) +
                                       "' is a queue, not a pipe; remove it with Queue::unlink, "
                                       "which removes its spill files too");
  return Segment::unlink(name);
}

Result<Pipe> Pipe::from_hold(int fd, const OpenOptions& options) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const int own = ::open(path, O_RDWR | O_CLOEXEC);
  if (own < 0)
    return Error(Errc::not_found, "the pipe of a received hold cannot be opened: " +
                                      std::string(std::strerror(errno)), errno);
  auto pipe = from_fd(own, options);  // maps through a duplicate of `own`
  ::close(own);
  return pipe;
}

Result<Pipe> Pipe::adopt(Result<Segment> seg) {
  if (!seg) return std::move(seg).error();
  Pipe pipe;
  pipe.seg_ = std::make_shared<Segment>(std::move(*seg));
  const ChannelParams p = read_params(*pipe.seg_);
  if (auto ok = check_shape(*pipe.seg_, p); !ok) return std::move(ok).error();
  pipe.capacity_ = p.capacity;
  pipe.directions_ = p.directions;
  pipe.held_ends_ = (p.flags & kPipeHeldEnds) != 0;
  for (unsigned d = 0; d < pipe.directions_; ++d) {
    if (auto ok = check_ring(*pipe.seg_, pipe.ring_memory(d), pipe.capacity_, d); !ok)
      return std::move(ok).error();
  }
  return pipe;
}

std::span<std::byte> Pipe::ring_memory(unsigned direction) const noexcept {
  const std::uint64_t bytes = core::SpscRing::required_bytes(capacity_);
  return {seg_->body() + direction * bytes, bytes};
}

std::uint64_t Pipe::waiting_guess(unsigned direction) const noexcept {
  namespace spsc = core::spsc;
  if (!seg_ || direction >= directions_) return 0;
  const std::span<std::byte> mem = ring_memory(direction);
  const core::SpscRingControl* c = core::SpscRing::control(mem);
  const std::byte* data = core::SpscRing::data(mem);
  // relaxed (all): a guess; every header the walk reads is loaded with acquire [P1] and checked
  // before it is used.
  const std::uint64_t tail = c->tail.load(std::memory_order_relaxed);
  const std::uint64_t head = c->head.load(std::memory_order_relaxed);
  const std::uint64_t read_pos = c->read_pos.load(std::memory_order_relaxed);
  if (!core::SpscRing::positions_ok(head, tail, capacity_)) return 0;
  const std::uint64_t max_payload = core::SpscRing::max_payload(capacity_);
  const unsigned shift = core::SpscRing::capacity_shift(capacity_);
  std::uint64_t n = 0;
  // The committed records the reader has not taken yet (tail follows the commits).
  for (std::uint64_t pos = core::SpscRing::read_end(head, read_pos, capacity_);
       pos - head < capacity_;) {
    const std::uint64_t offset = pos & (capacity_ - 1);
    const std::uint64_t word = spsc::load_header(data + offset);  // [P1]
    if (!spsc::committed(word, spsc::lap_check(pos, shift))) break;
    const std::uint32_t length = spsc::word_length(word);
    const std::uint32_t tag = spsc::word_tag(word);
    if (spsc::check_record(length, tag, capacity_ - offset, head + capacity_ - pos, max_payload) !=
        spsc::RecordCheck::ok)
      break;  // the reader or writer moved on under us, or the ring is corrupt: stop counting
    const spsc::RecordKind rk = spsc::tag_record(tag);
    n += rk == spsc::RecordKind::whole || rk == spsc::RecordKind::last;
    pos += spsc::record_bytes(length);
  }
  return n;
}

Result<PipeWriter> Pipe::writer(unsigned direction) {
  if (direction >= directions_) return bad_direction(*seg_, direction, directions_);
  auto st = make_end<detail::PipeWriterState>(seg_, direction, false, ring_memory(direction),
                                              capacity_, held_ends_);
  if (!st) return std::move(st).error();
  PipeWriter w;
  w.st_ = std::move(*st);
  return w;
}

Result<PipeReader> Pipe::reader(unsigned direction) {
  if (direction >= directions_) return bad_direction(*seg_, direction, directions_);
  auto st = make_end<detail::PipeReaderState>(seg_, direction, true, ring_memory(direction),
                                              capacity_, held_ends_);
  if (!st) return std::move(st).error();
  PipeReader r;
  r.st_ = std::move(*st);
  return r;
}

Result<RoleHold> Pipe::hold(std::span<const std::uint32_t> roles) {
  for (std::uint32_t r : roles)
    if (r >= 2 * directions_)
      return Error(Errc::invalid_argument, "role " + std::to_string(r) + " does not exist: " +
                                               pipe_label(*seg_) + " has " + dir_text(directions_));
  return seg_->hold_roles(roles);
}

// ---- PipeWriter

bool PipeWriter::reader_alive() const noexcept {
  if (!st_) return false;
  const core::SpscRingControl* c = st_->ring.control();
  if (c == nullptr || st_->ring.reader_gone()) return false;
  return peer_alive(st_->end, /*peer_is_reader=*/true, c->reader_attached);
}

std::uint64_t PipeWriter::published_head() const noexcept {
  const core::SpscRingControl* c = st_ ? st_->ring.control() : nullptr;
  // acquire: [P2]; the value is only compared (a watcher asks whether room came).
  return c == nullptr ? 0 : c->head.load(std::memory_order_acquire);
}

bool PipeWriter::reader_closed_flag() const noexcept {
  const core::SpscRingControl* c = st_ ? st_->ring.control() : nullptr;
  // relaxed: a flag gating a wake-up; the writer's own send re-checks it.
  return c == nullptr || c->reader_closed.load(std::memory_order_relaxed) != 0;
}

Status PipeWriter::check_reader() noexcept {
  st_->end.polls = 0;
  if (reader_alive()) return Status::full;
  st_->ring.set_reader_gone();
  return st_->ring.note(Status::closed);
}

void PipeWriter::close() noexcept {
  if (!st_) return;
  if (::getpid() == st_->end.owner_pid) {
    st_->ring.close();
  } else {
    st_->ring.detach();  // a forked child: the parent still owns the role and the stream
  }
  st_.reset();  // closes the role and participant fds, unmaps if last
}

void PipeWriter::leave() noexcept {
  if (!st_) return;
  if (::getpid() == st_->end.owner_pid) {
    st_->ring.leave();
  } else {
    st_->ring.detach();
  }
  st_.reset();
}

// ---- PipeReader

bool PipeReader::writer_alive() const noexcept {
  if (!st_) return false;
  const core::SpscRingControl* c = st_->ring.control();
  if (c == nullptr) return false;
  // relaxed: a flag gating a decision; recv looks at the records again after it (see
  // SpscReader::not_ready()).
  if (c->writer_closed.load(std::memory_order_relaxed) != 0) return false;
  return peer_alive(st_->end, /*peer_is_reader=*/false, c->writer_attached);
}

std::uint64_t PipeReader::published_tail() const noexcept {
  const core::SpscRingControl* c = st_ ? st_->ring.control() : nullptr;
  // acquire: [P1]; the value is only compared (a watcher asks whether a record came).
  return c == nullptr ? 0 : c->tail.load(std::memory_order_acquire);
}

bool PipeReader::writer_closed_flag() const noexcept {
  const core::SpscRingControl* c = st_ ? st_->ring.control() : nullptr;
  // acquire: [P3] pairs with the release in SpscWriter::close(); gates a wake-up only.
  return c == nullptr || c->writer_closed.load(std::memory_order_acquire) != 0;
}

bool PipeReader::check_writer() noexcept {
  st_->end.polls = 0;
  if (writer_alive()) return true;
  st_->ring.set_writer_gone();  // the caller reads once more: drain, or closed
  return false;
}

Status PipeReader::wait_data(Deadline d, core::Backoff& backoff) noexcept {
  if (d.expired()) return Status::timeout;
  if (backoff.spin()) return Status::ok;
  const core::FutexResult r = st_->ring.sleep(d);
  if (r == core::FutexResult::interrupted) return Status::interrupted;
  if (r == core::FutexResult::timed_out && !writer_alive()) st_->ring.set_writer_gone();
  return Status::ok;
}

void PipeReader::close() noexcept {
  if (!st_) return;
  if (::getpid() == st_->end.owner_pid) {
    st_->ring.close();
  } else {
    st_->ring.detach();
  }
  st_.reset();
}

void PipeReader::leave() noexcept {
  if (!st_) return;
  if (::getpid() == st_->end.owner_pid) {
    st_->ring.leave();
  } else {
    st_->ring.detach();
  }
  st_.reset();
}

}  // namespace shmq
