// The reader end of an SPSC byte ring. Protocol, tags, head batching and the ordering contract:
// spsc_ring.hpp; the record format and its checks: spsc_format.hpp.
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "shmq/core/backoff.hpp"
#include "shmq/core/spsc_end.hpp"
#include "shmq/core/spsc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// The reader. One thread at a time. A zero-copy view returned by try_recv/recv holds its ring
// space until release(); the head advances only when no view is held.
class SpscReader : public SpscEnd {
 public:
  // A reader polls the next record's header, not tail; every kTailCheckEvery-th poll that finds
  // no record also checks tail against it (corruption behind an uncommitted header).
  static constexpr std::uint32_t kTailCheckEvery = 1024;

  // Attaches to a ring placed by init_in. ok | corrupt. If the previous reader died holding
  // messages, they are skipped and counted in Stats::abandoned. Clears reader_closed.
  Status attach(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (attach_common(mem, capacity, stats) != Status::ok) return Status::corrupt;
    msgs_counter_ = &stats->received;
    bytes_counter_ = &stats->bytes_received;
    // acquire: pairs with [P1]/[P2].
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (!SpscRing::positions_ok(head, tail, capacity)) return corrupt();
    head_ = read_pos_ = head;
    head_batch_ = SpscRing::head_batch(capacity);
    skip_abandoned();
    resync_ = true;  // we may start in the middle of a chunked message
    // As in SpscWriter::attach, for data_wait, where only the reader sleeps.
    ctl_->data_wait.clear_waiters();
    fence_ = ctl_->space_wait.announce_light_waker();  // [D2] before our first notify
    // relaxed: a counter for liveness decisions, no data behind it.
    ctl_->reader_attached.fetch_add(1, std::memory_order_relaxed);
    // release: as in SpscWriter::attach.
    ctl_->reader_closed.store(0, std::memory_order_release);
    return last_ = Status::ok;
  }

  // True if the writer closed, or was declared gone by set_writer_gone() and none came since.
  bool writer_gone() const noexcept {
    // [P3] acquire: pairs with the release in SpscWriter::close(); the caller re-reads tail.
    if (ctl_->writer_closed.load(std::memory_order_acquire) != 0) return true;
    // relaxed: compared only.
    return writer_gone_ &&
           ctl_->writer_attached.load(std::memory_order_relaxed) == writer_gone_epoch_;
  }
  // The caller found the writer dead: once drained, reads report closed.
  void set_writer_gone() noexcept {
    writer_gone_ = true;
    // relaxed: compared later to tell a new writer from the dead one.
    writer_gone_epoch_ = ctl_->writer_attached.load(std::memory_order_relaxed);
  }

  // ok | empty | closed | corrupt. Never blocks. On ok, `out` is zero copy (release() it) or a
  // view of the reassembly buffer, valid until the next call (or take it: take_assembled()).
  [[nodiscard]] Status try_recv(RecvView& out) noexcept {
    // The common case in one piece: a committed whole record that passes read_one()'s checks,
    // with no reassembly in progress or outstanding.
    if (!assembling_ && !delivered_) {
      const std::uint64_t pos = read_pos_;
      const std::uint64_t offset = pos & mask_;
      const std::byte* const record = data_ + offset;
      const std::uint64_t word = spsc::load_header(record);  // [P1]
      const std::uint32_t length = spsc::word_length(word);
      const std::uint64_t rec = spsc::record_bytes(length);
      if (spsc::word_tag(word) >> 16 == whole_tag_top(pos) && length <= max_payload_ &&
          rec <= capacity_ - offset && pos + rec - head_ <= capacity_) {
        resync_ = false;
        read_pos_ = pos + rec;
        out = {{record + spsc::kHeaderBytes, length}, spsc::tag_kind(spsc::word_tag(word)), true,
               pos + rec};
        count(length);
        hold_one();
        return last_ = Status::ok;
      }
    }
    return try_recv_slow(out);
  }

  // ok | timeout | interrupted | closed | corrupt. Spins (spin_budget() rounds), then sleeps on
  // data_wait in slices, checking the writer's liveness after each slice that ends without a wake.
  template <class PeerAlive>
  [[nodiscard]] Status recv(RecvView& out, Deadline d, PeerAlive&& alive) noexcept {
    Backoff backoff(spin_budget_);
    for (;;) {
      const Status s = try_recv(out);
      if (s != Status::empty) return s;
      if (d.expired()) return last_ = Status::timeout;
      if (backoff.spin()) continue;
      const FutexResult r = sleep(d);
      if (r == FutexResult::interrupted) return last_ = Status::interrupted;
      if (r == FutexResult::timed_out && !alive()) set_writer_gone();
    }
  }

  // Sleeps once (at most one slice) unless data or a close is already there. For wait loops
  // built by callers (recv_many with a deadline, wait_any).
  FutexResult sleep(Deadline d) noexcept {
    Stats::bump(stats_->empty_waits);
    return ctl_->data_wait.wait([&] { return ready_guess(); },  // [D1]
                                d.capped(kSleepSlice));
  }

  // Calls fn(std::span<const std::byte>, std::uint16_t kind) for up to `max` messages available
  // now, in order, and publishes the head once at the end. The span is valid only during the
  // call. fn must not throw and must not call back into this reader. *why (if given): ok if it
  // delivered any, else empty | closed | corrupt (see "Batches" in status.hpp).
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max, Status* why = nullptr) noexcept {
    drop_assembled();
    std::size_t n = 0;
    Status s = Status::ok;
    while (n < max) {
      RecvView v;
      if ((s = read_one(v, false)) != Status::ok) break;
      fn(v.bytes, v.kind);
      if (!v.zero_copy) drop_assembled();
      ++n;
    }
    stopped(n != 0 || max == 0 ? Status::ok : s, why);
    save_recovery();
    publish_head(n < max);
    if (s == Status::empty) flush_counts();
    return n;
  }

  // The holder of a zero-copy view is done with it.
  void release(std::uint64_t /*token*/) noexcept {
    assert(held_ > 0);
    if (held_ == 0 || ctl_ == nullptr) return;
    --held_;
    // relaxed: crash-recovery word.
    ctl_->held.store(held_, std::memory_order_relaxed);
    publish_head(false);
  }

  // Moves the reassembled message just returned out of the reader (its size = the message's).
  std::vector<std::byte> take_assembled() noexcept {
    delivered_ = false;
    return std::exchange(assembly_, {});
  }

  // Bytes waiting, headers included (a guess: from tail, which follows the commits).
  std::size_t size_guess() const noexcept {
    // relaxed: a guess.
    const std::int64_t d =
        static_cast<std::int64_t>(ctl_->tail.load(std::memory_order_relaxed) - read_pos_);
    return d <= 0 || static_cast<std::uint64_t>(d) > capacity_ ? 0 : static_cast<std::size_t>(d);
  }
  // A record or a close is waiting (a guess; a dead writer is not seen here). Also true when tail
  // contradicts the record at read_pos, so that the next reads find the corruption.
  bool ready_guess() const noexcept {
    // The re-check of the Dekker pair [D1]: the commit [P1] first, then tail [P4].
    return header_committed() || writer_gone() || tail_contradicts();
  }
  WaitWord* data_wait_word() const noexcept { return &ctl_->data_wait; }
  std::uint32_t held() const noexcept { return held_; }

  // Returns the space read and lets go of the ring without flagging the reader closed, for
  // another holder of the same end to attach (see SpscWriter::leave()). Messages still held are
  // then counted abandoned by the next reader, as a dead reader's are.
  void leave() noexcept {
    if (ctl_ == nullptr) return;
    publish_head(true);
    flush_counts();
    ctl_ = nullptr;
  }

  // Flags the reader closed (the writer then gets closed) and wakes a sleeping writer.
  void close() noexcept {
    if (ctl_ == nullptr) return;
    publish_head(true);
    flush_counts();
    // [P3] release: pairs with the relaxed flag check in SpscWriter::reader_gone(), which
    // needs no data from us.
    ctl_->reader_closed.store(1, std::memory_order_release);
    notify(ctl_->space_wait);
    ctl_ = nullptr;
  }

 private:
  using RK = spsc::RecordKind;

  struct Header {
    std::uint64_t offset;
    std::uint32_t length;
    std::uint32_t tag;
  };

  [[gnu::noinline]] Status try_recv_slow(RecvView& out) noexcept {
    drop_assembled();
    const Status s = read_one(out, true);
    publish_head(s != Status::ok);  // running dry: return the space at once
    if (s == Status::empty) flush_counts();
    return last_ = s;
  }

  // If the previous reader died holding views or with reads it had not yet published (head
  // batching), its read_pos is ahead of head: skip to it, if it lies on the record chain from
  // head (else it is stale or corrupt, and we start at head).
  void skip_abandoned() noexcept {
    // relaxed: crash-recovery words, written by the previous holder of the role.
    const std::uint64_t pos = ctl_->read_pos.load(std::memory_order_relaxed);
    const std::uint32_t held = ctl_->held.load(std::memory_order_relaxed);
    if (SpscRing::read_end(head_, pos, capacity_) != head_ && on_chain(pos)) {
      Stats::bump(stats_->abandoned, held);
      read_pos_ = pos;
    }
    ctl_->held.store(0, std::memory_order_relaxed);  // relaxed: as above
    ctl_->read_pos.store(read_pos_, std::memory_order_relaxed);
    saved_pos_ = read_pos_;
    publish_head(true);
  }
  // True if the committed records from head_ end exactly at `end`, none of them corrupt.
  bool on_chain(std::uint64_t end) const noexcept {
    std::uint64_t pos = head_;
    while (pos != end && end - pos <= capacity_) {
      const std::uint64_t word = spsc::load_header(at(pos));  // [P1]
      if (!spsc::committed(word, spsc::lap_check(pos, shift_))) return false;
      const std::uint32_t length = spsc::word_length(word);
      if (spsc::check_record(length, spsc::word_tag(word), capacity_ - (pos & mask_),
                             head_ + capacity_ - pos, max_payload_) != spsc::RecordCheck::ok) {
        return false;
      }
      pos += spsc::record_bytes(length);
    }
    return pos == end;
  }
  void save_recovery() noexcept {
    if (held_ == 0) return;
    save_read_pos();
    // relaxed: crash-recovery word, read only by a later holder of the role.
    ctl_->held.store(held_, std::memory_order_relaxed);
  }
  void save_read_pos() noexcept {
    if (saved_pos_ == read_pos_) return;
    saved_pos_ = read_pos_;
    // relaxed: crash-recovery word, read only by a later holder of the role.
    ctl_->read_pos.store(read_pos_, std::memory_order_relaxed);
  }

  // Publishes head when forced or a batch is complete (see "Head batching"); otherwise records
  // the read position for a later reader. Never past a held view.
  void publish_head(bool force) noexcept {
    if (read_pos_ == head_) return;
    if (held_ != 0 || (!force && read_pos_ - head_ < head_batch_)) {
      save_read_pos();
      return;
    }
    head_ = read_pos_;
    // [P2] release: we are done with the bytes below head; pairs with the acquire in
    // SpscWriter::reserve().
    ctl_->head.store(head_, std::memory_order_release);
    notify(ctl_->space_wait);  // [D2]
  }

  std::byte* at(std::uint64_t pos) const noexcept { return data_ + (pos & mask_); }
  // The top half of the tag of a whole record at `pos`: its lap's check byte and the kind.
  std::uint32_t whole_tag_top(std::uint64_t pos) const noexcept {
    return spsc::make_tag(RK::whole, 0, spsc::lap_check(pos, shift_)) >> 16;
  }

  bool header_committed() const noexcept {
    return spsc::committed(spsc::load_header(at(read_pos_)), spsc::lap_check(read_pos_, shift_));
  }

  // The writer stores tail after the headers below it [P4]: a tail past read_pos with no
  // committed record at read_pos, or a tail out of a ring's reach of head, is corrupt.
  bool tail_contradicts() const noexcept {
    // [P4] acquire: pairs with the release in SpscWriter::publish().
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    if (!SpscRing::positions_ok(head_, tail, capacity_)) return true;
    return static_cast<std::int64_t>(tail - read_pos_) > 0 && !header_committed();
  }

  // No committed record at read_pos_: empty, or closed when the writer is gone and nothing more
  // comes, or corrupt when tail says a record should be there. Every kTailCheckEvery-th call (and
  // always before closed) asks tail, so a reader that only polls the header still finds a
  // corrupt ring; the others leave tail's line to the writer. ok: look again, a record came.
  Status not_ready() noexcept {
    if (++idle_polls_ % kTailCheckEvery == 0 && tail_contradicts()) return corrupt();
    if (!writer_gone()) return Status::empty;
    // [P3]: the flag was read (acquire) after the writer's last commit; look once more.
    if (header_committed()) return Status::ok;
    if (tail_contradicts()) return corrupt();
    discard_partial();  // a chunked message the writer never finished is never delivered
    return Status::closed;
  }

  // Reads and validates the header at read_pos_. ok | empty | closed | corrupt.
  Status next_header(Header& h) noexcept {
    h.offset = read_pos_ & mask_;
    std::uint64_t word = spsc::load_header(data_ + h.offset);  // [P1]
    const std::uint8_t check = spsc::lap_check(read_pos_, shift_);
    if (!spsc::committed(word, check)) {
      if (const Status s = not_ready(); s != Status::ok) return s;
      word = spsc::load_header(data_ + h.offset);  // [P1]
    }
    h.length = spsc::word_length(word);
    h.tag = spsc::word_tag(word);
    const spsc::RecordCheck c = spsc::check_record(h.length, h.tag, capacity_ - h.offset,
                                                   head_ + capacity_ - read_pos_, max_payload_);
    return c == spsc::RecordCheck::ok ? Status::ok : corrupt();
  }

  // Consumes records until one message is complete. hold: count a zero-copy view as held.
  Status read_one(RecvView& out, bool hold) noexcept {
    for (;;) {
      Header h;
      if (const Status s = next_header(h); s != Status::ok) return s;
      const std::byte* payload = data_ + h.offset + spsc::kHeaderBytes;
      const std::uint64_t rec = spsc::record_bytes(h.length);
      switch (spsc::tag_record(h.tag)) {
        case RK::padding:
          consume(rec);  // up to the end of the data area (checked in next_header)
          continue;
        case RK::whole:
          if (assembling_) return corrupt();
          resync_ = false;
          read_pos_ += rec;
          out = {{payload, h.length}, spsc::tag_kind(h.tag), true, read_pos_};
          count(h.length);
          if (hold) hold_one();
          return Status::ok;
        case RK::abort:
          discard_partial();
          consume(rec);
          continue;
        default:
          break;
      }
      const Chunk c = take_chunk(h, payload);
      if (c == Chunk::corrupt) return Status::corrupt;
      consume(rec);
      if (c == Chunk::completed) return finish_assembly(out);
    }
  }

  void consume(std::uint64_t bytes) noexcept {
    read_pos_ += bytes;
    // Chunks are copied and padding is empty: nothing of them is held. A chunk is half the ring,
    // so this publishes for chunks (the writer streaming a message waits for that space).
    publish_head(false);
  }
  void hold_one() noexcept {
    ++held_;
    save_recovery();
  }

  enum class Chunk : std::uint8_t { more, completed, corrupt };

  // Appends one chunk to the reassembly buffer.
  Chunk take_chunk(const Header& h, const std::byte* payload) noexcept {
    const RK rk = spsc::tag_record(h.tag);
    if (rk == RK::first) {
      const Status s = begin_assembly(h.length, spsc::tag_kind(h.tag), payload);
      return s == Status::ok ? Chunk::more : Chunk::corrupt;
    }
    if (!assembling_) {
      // After attach we may see the rest of a message whose start a previous reader consumed.
      if (resync_) return Chunk::more;
      corrupt();
      return Chunk::corrupt;
    }
    const std::uint64_t room = expected_total_ - assembly_.size();
    if (!spsc::next_chunk_ok(h.tag, h.length, assembly_kind_, room, max_payload_)) {
      corrupt();
      return Chunk::corrupt;
    }
    assembly_.insert(assembly_.end(), payload, payload + h.length);
    return rk == RK::last ? Chunk::completed : Chunk::more;
  }

  Status begin_assembly(std::uint32_t length, std::uint16_t kind, const std::byte* payload) noexcept {
    if (assembling_) return corrupt();
    resync_ = false;
    const std::uint64_t total = length == max_payload_ ? spsc::load_u64(payload) : 0;
    if (!spsc::first_chunk_ok(length, total, max_payload_)) return corrupt();
    drop_assembled();
    assembly_.clear();
    // Never trust `total` for the allocation: grow with the data that really arrives.
    assembly_.reserve(static_cast<std::size_t>(total < kReserveCap ? total : kReserveCap));
    assembly_.insert(assembly_.end(), payload + spsc::kChunkTotalBytes, payload + length);
    expected_total_ = total;
    assembly_kind_ = kind;
    assembling_ = true;
    return Status::ok;
  }

  Status finish_assembly(RecvView& out) noexcept {
    assembling_ = false;
    delivered_ = true;
    out = {{assembly_.data(), assembly_.size()}, assembly_kind_, false, read_pos_};
    count(assembly_.size());
    return Status::ok;
  }

  void discard_partial() noexcept {
    if (!assembling_) return;
    assembling_ = false;
    assembly_.clear();
  }
  // The reassembled message handed out last time was not taken: reuse or free the buffer.
  void drop_assembled() noexcept {
    if (!delivered_) return;
    delivered_ = false;
    if (assembly_.capacity() > kReserveCap) {
      std::vector<std::byte>().swap(assembly_);
    } else {
      assembly_.clear();
    }
  }

  static constexpr std::uint64_t kReserveCap = 16u << 20;

  std::uint64_t read_pos_ = 0;     // records below are consumed (held views included)
  std::uint64_t saved_pos_ = 0;    // the value last stored in the crash-recovery word read_pos
  std::uint64_t head_ = 0;         // published head
  std::uint64_t head_batch_ = 0;   // publish head after reading this far past it
  std::uint64_t expected_total_ = 0;
  std::vector<std::byte> assembly_;
  std::uint32_t held_ = 0;
  std::uint32_t idle_polls_ = 0;   // not_ready() calls, for the tail check
  std::uint32_t writer_gone_epoch_ = 0;
  std::uint16_t assembly_kind_ = 0;
  bool assembling_ = false;
  bool delivered_ = false;
  bool resync_ = false;
  bool writer_gone_ = false;
};

}  // namespace shmq::core
