#include "peek.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "shmq/core/mpmc_ring.hpp"
#include "shmq/core/spsc_ring.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::cli {
namespace {

// Copies one little-endian field out of a pread buffer (no aliasing, no alignment assumption).
template <class T>
T field(const std::vector<std::byte>& buf, std::size_t offset) {
  T v{};
  if (offset + sizeof v <= buf.size()) std::memcpy(&v, buf.data() + offset, sizeof v);
  return v;
}

template <class T>
Result<T> read_value(const Probe& p, std::uint64_t offset) {
  T v{};
  if (auto r = p.read_at(offset, &v, sizeof v); !r) return std::move(r).error();
  return v;
}

Result<std::vector<std::byte>> read_bytes(const Probe& p, std::uint64_t offset, std::size_t n) {
  std::vector<std::byte> out(n);
  if (n != 0) {
    if (auto r = p.read_at(offset, out.data(), n); !r) return std::move(r).error();
  }
  return out;
}

bool is_pipe(const Probe& p) { return p.kind_name() == "pipe"; }

// ---- Pipe --------------------------------------------------------------------------------------

struct PipeRing {
  std::uint64_t control_offset = 0;  // file offset of the ring's control block
  std::uint64_t data_offset = 0;     // file offset of its data area
  std::uint64_t capacity = 0;
  std::uint64_t head = 0, tail = 0, read_pos = 0;
  std::uint32_t held = 0;
  bool writer_closed = false, reader_closed = false;

  std::uint64_t read_end() const noexcept {
    return core::SpscRing::read_end(head, read_pos, capacity);
  }
};

// The rings of a pipe lie back to back after the header, one per direction
// (Pipe::body_bytes_for(capacity, directions) == directions * SpscRing::required_bytes).
Result<PipeRing> read_pipe_ring(const Probe& p, unsigned direction) {
  using core::SpscRing;
  using core::SpscRingControl;
  const SegmentHeader& h = *p.header();
  PipeRing r;
  r.capacity = h.params.capacity;
  if (!SpscRing::valid_capacity(r.capacity)) {
    return Error(Errc::corrupt, fmt::format("corrupt header at field params.capacity: {} is not a "
                                            "valid ring size", r.capacity));
  }
  r.control_offset = kHeaderBytes + SpscRing::required_bytes(r.capacity) * direction;
  r.data_offset = r.control_offset + SpscRing::kControlBytes;
  auto ctl = read_bytes(p, r.control_offset, SpscRing::kControlBytes);
  if (!ctl) return std::move(ctl).error();
  const auto magic = field<std::uint64_t>(*ctl, offsetof(SpscRingControl, magic));
  const auto capacity = field<std::uint64_t>(*ctl, offsetof(SpscRingControl, capacity));
  if (magic != core::spsc::kRingMagic) {
    return Error(Errc::corrupt, fmt::format("corrupt ring {} at field magic: 0x{:016x}", direction, magic));
  }
  if (capacity != r.capacity) {
    return Error(Errc::corrupt, fmt::format("corrupt ring {} at field capacity: {}, the header says {}",
                                            direction, capacity, r.capacity));
  }
  r.head = field<std::uint64_t>(*ctl, offsetof(SpscRingControl, head));
  r.tail = field<std::uint64_t>(*ctl, offsetof(SpscRingControl, tail));
  r.read_pos = field<std::uint64_t>(*ctl, offsetof(SpscRingControl, read_pos));
  r.held = field<std::uint32_t>(*ctl, offsetof(SpscRingControl, held));
  r.writer_closed = field<std::uint32_t>(*ctl, offsetof(SpscRingControl, writer_closed)) != 0;
  r.reader_closed = field<std::uint32_t>(*ctl, offsetof(SpscRingControl, reader_closed)) != 0;
  if (!SpscRing::positions_ok(r.head, r.tail, r.capacity)) {
    return Error(Errc::corrupt, fmt::format("corrupt ring {} at fields head/tail: head {}, tail {}, "
                                            "capacity {}", direction, r.head, r.tail, r.capacity));
  }
  return r;
}

Result<std::uint64_t> reread_head(const Probe& p, const PipeRing& r) {
  return read_value<std::uint64_t>(p, r.control_offset + offsetof(core::SpscRingControl, head));
}

PeekResult peek_pipe(const Probe& p, unsigned direction, std::size_t count, std::size_t keep) {
  namespace spsc = core::spsc;
  using RK = spsc::RecordKind;
  PeekResult out;
  auto fail = [&out](std::string why) {
    out.corrupt = true;
    out.stopped = std::move(why);
    return std::move(out);
  };
  auto ring = read_pipe_ring(p, direction);
  if (!ring) return fail(ring.error().what);
  const PipeRing& r = *ring;
  const std::uint64_t mask = r.capacity - 1;
  const std::uint64_t max_payload = core::SpscRing::max_payload(r.capacity);
  // Messages between head and read_end() were handed to the reader. If it holds some, they are
  // shown (marked held: their space is not free); if not, they are consumed and skipped.
  const bool holds = r.held != 0;
  const std::uint64_t held_end = r.read_end();

  std::uint64_t pos = holds ? r.head : held_end;
  bool assembling = false;
  bool seen_start = false;  // before the first message start, stray chunks are a consumed message's rest
  std::uint64_t got = 0;
  PeekedMessage msg;

  // The writer may reuse bytes below head: a message whose start head has passed may be torn.
  auto still_intact = [&](std::uint64_t start) -> bool {
    auto head = reread_head(p, r);
    return head && *head - r.head <= start - r.head;
  };
  auto append = [&](std::uint64_t file_off, std::uint64_t n) -> Result<void> {
    const std::uint64_t room = keep > msg.bytes.size() ? keep - msg.bytes.size() : 0;
    const std::size_t take = static_cast<std::size_t>(std::min(room, n));
    auto b = read_bytes(p, file_off, take);
    if (!b) return std::move(b).error();
    msg.bytes.insert(msg.bytes.end(), b->begin(), b->end());
    return {};
  };

  const unsigned shift = core::SpscRing::capacity_shift(r.capacity);
  // The records are those whose headers are committed, from pos on (tail follows them).
  while (pos - r.head < r.capacity && out.messages.size() < count) {
    const std::uint64_t off = pos & mask;
    const std::uint64_t contiguous = r.capacity - off;
    const std::uint64_t avail = r.head + r.capacity - pos;
    const std::uint64_t rec_off = r.data_offset + off;
    auto word = read_value<std::uint64_t>(p, rec_off);
    if (!word) return fail(word.error().what);
    if (!spsc::committed(*word, spsc::lap_check(pos, shift))) break;  // nothing more written
    const std::uint32_t length = spsc::word_length(*word);
    const std::uint32_t tag = spsc::word_tag(*word);
    const spsc::RecordCheck check = spsc::check_record(length, tag, contiguous, avail, max_payload);
    if (check != spsc::RecordCheck::ok && !still_intact(pos)) break;  // overwritten under us
    switch (check) {
      case spsc::RecordCheck::ok: break;
      case spsc::RecordCheck::bad_tag:
        return fail(fmt::format("corrupt record at position {}: invalid tag 0x{:08x}", pos, tag));
      case spsc::RecordCheck::bad_padding:
        return fail(fmt::format("corrupt padding record at position {}: length {}", pos, length));
      case spsc::RecordCheck::bad_length:
        return fail(fmt::format("corrupt record at position {}: length {} (at most {}, {} bytes "
                                "within a ring of head)", pos, length, max_payload, avail));
    }
    const RK rk = spsc::tag_record(tag);
    const std::uint16_t kind = spsc::tag_kind(tag);
    const std::uint64_t rec = spsc::record_bytes(length);
    if (rk == RK::padding) {
      pos += rec;
      continue;
    }
    const std::uint64_t payload_off = rec_off + spsc::kHeaderBytes;
    switch (rk) {
      case RK::whole: {
        if (assembling) return fail(fmt::format("corrupt record at position {}: a whole message "
                                                "inside a chunked one", pos));
        seen_start = true;
        msg = PeekedMessage{};
        msg.position = pos;
        msg.kind = kind;
        msg.size = length;
        msg.held = holds && pos - r.head < held_end - r.head;
        if (auto a = append(payload_off, length); !a) return fail(a.error().what);
        if (!still_intact(pos)) {
          out.stopped = "the reader consumed the rest while dump was reading";
          return out;
        }
        out.messages.push_back(std::move(msg));
        break;
      }
      case RK::first: {
        if (assembling) return fail(fmt::format("corrupt record at position {}: a chunked message "
                                                "starts inside another", pos));
        auto total = read_value<std::uint64_t>(p, payload_off);
        if (!total) return fail(total.error().what);
        if (!spsc::first_chunk_ok(length, *total, max_payload)) {
          return fail(fmt::format("corrupt first chunk at position {}: length {}, total {}", pos,
                                  length, *total));
        }
        seen_start = true;
        assembling = true;
        msg = PeekedMessage{};
        msg.position = pos;
        msg.kind = kind;
        msg.size = *total;
        msg.chunked = true;
        msg.held = false;  // chunked messages are copied out by the reader, never held
        got = length - spsc::kChunkTotalBytes;
        if (auto a = append(payload_off + spsc::kChunkTotalBytes, got); !a) return fail(a.error().what);
        break;
      }
      case RK::middle:
      case RK::last: {
        if (!assembling) {
          if (!seen_start) break;  // the rest of a message the reader already began
          return fail(fmt::format("corrupt record at position {}: a chunk with no first chunk", pos));
        }
        if (!spsc::next_chunk_ok(tag, length, msg.kind, msg.size - got, max_payload))
          return fail(fmt::format("corrupt chunk at position {}: length {}", pos, length));
        got += length;
        if (auto a = append(payload_off, length); !a) return fail(a.error().what);
        if (rk == RK::last) {
          assembling = false;
          if (!still_intact(msg.position)) {
            out.stopped = "the reader consumed the rest while dump was reading";
            return out;
          }
          out.messages.push_back(std::move(msg));
        }
        break;
      }
      case RK::abort:
        assembling = false;  // the writer gave up on the chunked message in progress
        break;
      default:
        break;
    }
    pos += rec;
  }
  if (assembling && out.messages.size() < count && still_intact(msg.position)) {
    msg.complete = false;
    msg.note = fmt::format("being streamed: {} of {} bytes written", got, msg.size);
    out.messages.push_back(std::move(msg));
  }
  return out;
}

// ---- Queue -------------------------------------------------------------------------------------

struct QueueRing {
  std::uint64_t offset = 0;  // file offset of the MpmcRingHeader
  std::uint64_t slots = 0, slot_size = 0, stride = 0, maxsize = 0;
  std::uint64_t enqueue = 0, dequeue = 0;
  bool closed = false;
  std::uint64_t arena_chunks = 0, arena_chunk_bytes = 0;
  std::uint64_t arena_data = 0;  // file offset of chunk 0
  std::uint64_t arena_owners = 0;  // file offset of the owner words
  std::string spill_tag;     // the <tag> of the spill files' names; empty if unusable
};

// A queue's body: QueueBodyHeader (queue.hpp), then the MpmcRing at body + ring_offset.
Result<QueueRing> read_queue_ring(const Probe& p) {
  using core::MpmcRingHeader;
  QueueRing q;
  auto bad = [](const char* f, std::uint64_t v) {
    return Error(Errc::corrupt, fmt::format("corrupt queue at field {}: {}", f, v));
  };
  auto body = read_bytes(p, kHeaderBytes, sizeof(QueueBodyHeader));
  if (!body) return std::move(body).error();
  const auto body_magic = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, magic));
  const auto ring_offset = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, ring_offset));
  const auto ring_bytes = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, ring_bytes));
  if (body_magic != kQueueBodyMagic) return bad("magic (queue body)", body_magic);
  if (ring_offset != sizeof(QueueBodyHeader)) return bad("ring_offset", ring_offset);
  if (ring_bytes > p.header()->body_bytes - ring_offset) return bad("ring_bytes", ring_bytes);
  const auto arena_offset = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, arena_offset));
  q.arena_chunks = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, arena_chunks));
  q.arena_chunk_bytes = field<std::uint64_t>(*body, offsetof(QueueBodyHeader, arena_chunk_bytes));
  if (q.arena_chunks > kMaxArenaChunks) return bad("arena_chunks", q.arena_chunks);
  if (!valid_arena(q.arena_chunks, q.arena_chunk_bytes))
    return bad("arena_chunk_bytes", q.arena_chunk_bytes);
  const ArenaLayout arena = arena_layout(ring_offset + ring_bytes, q.arena_chunks, q.arena_chunk_bytes);
  if (arena_offset != arena.offset || arena.offset + arena.total > p.header()->body_bytes)
    return bad("arena_offset", arena_offset);
  q.arena_owners = kHeaderBytes + arena.offset;
  q.arena_data = kHeaderBytes + arena.offset + arena.owner_bytes;
  char tag[kSpillTagBytes];
  std::memcpy(tag, body->data() + offsetof(QueueBodyHeader, spill_tag), sizeof tag);
  if (std::memchr(tag, '\0', sizeof tag) == nullptr) {
    return Error(Errc::corrupt, "corrupt queue at field spill_tag: not NUL-terminated");
  }
  // The tag becomes part of a path: only a valid segment name may (no '/', no "..").
  if (valid_segment_name(tag)) q.spill_tag = tag;
  q.offset = kHeaderBytes + ring_offset;
  auto hb = read_bytes(p, q.offset, sizeof(MpmcRingHeader));
  if (!hb) return std::move(hb).error();
  const core::mpmc::Params params{
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, magic)),
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, slots)),
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, slot_size)),
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, stride)),
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, maxsize)),
      field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, total_bytes))};
  q.slots = params.slots;
  q.slot_size = params.slot_size;
  q.stride = params.stride;
  q.maxsize = params.maxsize;
  q.enqueue = field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, enqueue_pos));
  q.dequeue = field<std::uint64_t>(*hb, offsetof(MpmcRingHeader, dequeue_pos));
  q.closed = field<std::uint32_t>(*hb, offsetof(MpmcRingHeader, closed)) != 0;
  if (const auto b = core::mpmc::bad_field(params); b.name != nullptr) return bad(b.name, b.value);
  const std::uint64_t total = params.total_bytes;
  if (total > ring_bytes) return bad("total_bytes", total);
  if (q.offset + total > static_cast<std::uint64_t>(p.file_stat().st_size))
    return bad("total_bytes (beyond the file)", total);
  const auto d = core::mpmc::distance(q.dequeue, q.enqueue);
  if (d > static_cast<std::int64_t>(q.slots) || d < -static_cast<std::int64_t>(q.slots))
    return Error(Errc::corrupt, fmt::format("corrupt queue ring at fields enqueue_pos/dequeue_pos: "
                                            "{} and {} are more than {} slots apart",
                                            q.enqueue, q.dequeue, q.slots));
  return q;
}

// Reads the first bytes of a spilled message's file without unlinking or mapping it.
// An absent file means a reader took the message meanwhile (it unlinks the file at once).
Result<std::vector<std::byte>> read_spill(const QueueRing& q, std::uint64_t pos, std::uint64_t len,
                                          std::size_t keep) {
  if (q.spill_tag.empty()) return Error(Errc::corrupt, "the queue has no usable spill tag");
  const std::string path = Queue::spill_file_path(q.spill_tag, pos);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return Error(Errc::not_found, "the spill file is gone: a reader took the message");
  struct stat st {};
  std::vector<std::byte> out(static_cast<std::size_t>(std::min<std::uint64_t>(len, keep)));
  Error err;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) < len) {
    err = Error(Errc::corrupt, "the spill file " + path + " is not a file of the message's size");
  } else {
    std::size_t got = 0;
    while (got < out.size()) {
      const ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err = Error(Errc::truncated, "the spill file " + path + " shrank while it was read");
        break;
      }
      got += static_cast<std::size_t>(n);
    }
  }
  ::close(fd);
  if (err.code != Errc::ok) return err;
  return out;
}

// The bytes of a committed, non-skip slot's message (at most `keep` of them), wherever they
// live: in the slot, in an arena chunk or in a spill file. not_found: a reader took it meanwhile.
Result<std::vector<std::byte>> read_message(const Probe& p, const QueueRing& q, std::uint64_t pos,
                                            std::uint64_t payload_off, PeekedMessage& m,
                                            std::size_t keep) {
  auto first = [&](std::uint64_t n) { return static_cast<std::size_t>(std::min<std::uint64_t>(n, keep)); };
  if (!m.spilled) return read_bytes(p, payload_off, first(m.size));
  auto raw = read_bytes(p, payload_off, static_cast<std::size_t>(m.size));
  if (!raw) return std::move(raw).error();
  SpillRef ref;
  if (!decode_spill_ref(*raw, q.arena_chunks, q.arena_chunk_bytes, ref))
    return Error(Errc::corrupt, fmt::format("corrupt spill reference in the slot at position {}", pos));
  m.size = ref.length;
  if (ref.chunk != 0) {
    m.note = fmt::format("in arena chunk {}", ref.chunk - 1);
    return read_bytes(p, q.arena_data + (ref.chunk - 1) * q.arena_chunk_bytes, first(ref.length));
  }
  m.note = "spilled into a file of its own";
  return read_spill(q, pos, ref.length, keep);
}

PeekResult peek_queue(const Probe& p, std::size_t count, std::size_t keep) {
  namespace mpmc = core::mpmc;
  using core::MpmcSlotHeader;
  PeekResult out;
  auto fail = [&out](std::string why) {
    out.corrupt = true;
    out.stopped = std::move(why);
    return std::move(out);
  };
  auto consumed = [&out] {
    out.stopped = "readers consumed the rest while dump was reading";
    return std::move(out);
  };
  auto ring = read_queue_ring(p);
  if (!ring) return fail(ring.error().what);
  const QueueRing& q = *ring;
  const std::uint64_t slots_off = q.offset + sizeof(core::MpmcRingHeader);
  if (mpmc::distance(q.dequeue, q.enqueue) <= 0) return out;  // readers wait ahead
  for (std::uint64_t pos = q.dequeue; pos != q.enqueue && out.messages.size() < count; ++pos) {
    const std::uint64_t slot_off = slots_off + (pos & (q.slots - 1)) * q.stride;
    auto seq = read_value<std::uint64_t>(p, slot_off + offsetof(MpmcSlotHeader, seq));
    if (!seq) return fail(seq.error().what);
    if (*seq == mpmc::seq_free(pos)) {  // claimed by a writer that has not committed (or died)
      PeekedMessage m;
      m.position = pos;
      m.complete = false;
      m.note = "claimed by a writer, not yet committed";
      out.messages.push_back(std::move(m));
      continue;
    }
    if (*seq != mpmc::seq_committed(pos)) return consumed();
    auto length = read_value<std::uint32_t>(p, slot_off + offsetof(MpmcSlotHeader, length));
    auto kind = read_value<std::uint16_t>(p, slot_off + offsetof(MpmcSlotHeader, kind));
    auto flags = read_value<std::uint8_t>(p, slot_off + offsetof(MpmcSlotHeader, flags));
    if (!length || !kind || !flags) return fail("cannot read a slot header");
    const mpmc::SlotCheck check = mpmc::check_slot(*length, *flags, q.slot_size);
    if (check == mpmc::SlotCheck::skip) continue;  // an aborted claim: never delivered
    if (check == mpmc::SlotCheck::bad_length)
      return fail(fmt::format("corrupt slot at position {}: length {} exceeds the slot size {}",
                              pos, *length, q.slot_size));
    PeekedMessage m;
    m.position = pos;
    m.kind = *kind;
    m.size = *length;
    m.spilled = (*flags & core::kSlotSpilled) != 0;
    auto b = read_message(p, q, pos, slot_off + sizeof(MpmcSlotHeader), m, keep);
    if (!b && b.error().code == Errc::not_found) return consumed();
    if (!b) return fail(b.error().what);
    m.bytes = std::move(*b);
    auto again = read_value<std::uint64_t>(p, slot_off + offsetof(MpmcSlotHeader, seq));
    if (!again || *again != mpmc::seq_committed(pos)) return consumed();
    out.messages.push_back(std::move(m));
  }
  return out;
}

}  // namespace

RingState read_ring_state(const Probe& p, unsigned direction) {
  RingState s;
  if (!p.sound()) {
    s.error = "the header is not sound";
    return s;
  }
  if (is_pipe(p)) {
    auto r = read_pipe_ring(p, direction);
    if (!r) {
      s.error = r.error().what;
      return s;
    }
    s.ok = true;
    s.head = r->head;
    s.tail = r->tail;
    s.read = r->read_end();
    // What the reader has not yet been handed (tail follows the commits: never negative here).
    const auto depth = static_cast<std::int64_t>(r->tail - s.read);
    s.depth_bytes = depth > 0 ? static_cast<std::uint64_t>(depth) : 0;
    s.writer_closed = r->writer_closed;
    s.reader_closed = r->reader_closed;
    return s;
  }
  auto q = read_queue_ring(p);
  if (!q) {
    s.error = q.error().what;
    return s;
  }
  s.ok = true;
  s.head = q->dequeue;
  s.tail = q->enqueue;
  s.depth_messages = core::mpmc::depth(q->dequeue, q->enqueue, q->maxsize);
  s.has_message_depth = true;
  s.closed = q->closed;
  s.arena_chunks = q->arena_chunks;
  s.arena_chunk_bytes = q->arena_chunk_bytes;
  for (std::uint64_t i = 0; i < q->arena_chunks; ++i) {
    auto owner = read_value<std::uint64_t>(p, q->arena_owners + i * sizeof(std::uint64_t));
    s.arena_in_use += owner && *owner != 0;
  }
  return s;
}

PeekResult peek(const Probe& p, unsigned direction, std::size_t count, std::size_t keep) {
  if (!p.sound()) {
    PeekResult r;
    r.corrupt = true;
    r.stopped = p.first_error().what;
    return r;
  }
  if (is_pipe(p)) return peek_pipe(p, direction, count, keep);
  return peek_queue(p, count, keep);
}

}  // namespace shmq::cli
