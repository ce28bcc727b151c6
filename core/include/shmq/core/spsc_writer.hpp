// The writer end of an SPSC byte ring. Protocol, tags and the ordering contract: spsc_ring.hpp;
// the record format and its checks: spsc_format.hpp.
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "shmq/core/backoff.hpp"
#include "shmq/core/spsc_end.hpp"
#include "shmq/core/spsc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// The writer. One thread at a time. A claim must be committed or aborted before the next call.
class SpscWriter : public SpscEnd {
 public:
  // Attaches to a ring placed by init_in. ok | corrupt. Clears writer_closed (a new stream).
  Status attach(std::span<std::byte> mem, std::uint64_t capacity, Stats* stats) noexcept {
    if (attach_common(mem, capacity, stats) != Status::ok) return Status::corrupt;
    msgs_counter_ = &stats->sent;
    bytes_counter_ = &stats->bytes_sent;
    // acquire: pairs with [P1]/[P2]; check() validated the pair, read them once more here.
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (!SpscRing::positions_ok(head, tail, capacity)) return corrupt();
    cached_head_ = head;
    if (find_frontier(tail, head) != Status::ok) return corrupt();
    // relaxed: crash-recovery word of the previous writer (see the Synchronization block).
    pending_abort_ = ctl_->writer_streaming.load(std::memory_order_relaxed) != 0;
    // Only the writer sleeps on space_wait and we are the writer now, so a count left there is a
    // predecessor's killed asleep; without this every release would make a syscall.
    ctl_->space_wait.clear_waiters();
    fence_ = ctl_->data_wait.announce_light_waker();  // [D1] before our first notify
    // relaxed: a counter for liveness decisions, no data behind it.
    ctl_->writer_attached.fetch_add(1, std::memory_order_relaxed);
    // release: a reader that sees the flag cleared also sees our attach state.
    ctl_->writer_closed.store(0, std::memory_order_release);
    return last_ = Status::ok;
  }

  std::size_t max_claim() const noexcept { return max_payload(); }

  // True if the reader closed, or was declared gone by set_reader_gone() and none came since.
  bool reader_gone() const noexcept {
    // relaxed: flags that gate a decision; no data is read because of them.
    if (ctl_->reader_closed.load(std::memory_order_relaxed) != 0) return true;
    return reader_gone_ &&
           ctl_->reader_attached.load(std::memory_order_relaxed) == reader_gone_epoch_;
  }
  // The caller found the reader dead (its liveness check): sends now report closed.
  void set_reader_gone() noexcept {
    reader_gone_ = true;
    // relaxed: compared later to tell a new reader from the dead one.
    reader_gone_epoch_ = ctl_->reader_attached.load(std::memory_order_relaxed);
  }

  // ok | full | too_big | closed | corrupt. Never blocks.
  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept {
    assert(!claim_open_ && "commit or abort the claim first");
    // The common case in one piece: a whole record before the end of the data area, with room
    // for it and for the zeroed header after it by the cached head, and nothing to abort. Locals
    // first: stores into the ring may alias any member, which the compiler would then reload.
    const std::uint64_t pos = pending_;
    const std::uint64_t rec = spsc::record_bytes(msg.size());
    const std::uint64_t capacity = capacity_;
    const std::uint64_t mask = mask_;
    std::byte* const data = data_;
    if (msg.size() <= max_payload_ && (pos & mask) + rec <= capacity &&
        pos + rec + spsc::kHeaderBytes - cached_head_ <= capacity && !pending_abort_ &&
        !reader_gone()) {
      const std::uint64_t word = spsc::header_word(
          static_cast<std::uint32_t>(msg.size()),
          spsc::make_tag(RK::whole, kind, spsc::lap_check(pos, shift_)));
      detail::copy_polled_last(data + (pos & mask) + spsc::kHeaderBytes, msg.data(), msg.size());
      seal_free(data + ((pos + rec) & mask), pos + rec);     // free: tested above
      spsc::store_header_release(data + (pos & mask), word);  // [P1]
      pending_ = pos + rec;
      count(msg.size());
      publish();
      return last_ = Status::ok;
    }
    return try_send_slow(msg, kind);
  }

 private:
  [[gnu::noinline]] Status try_send_slow(std::span<const std::byte> msg,
                                         std::uint16_t kind) noexcept {
    if (reader_gone()) return last_ = Status::closed;
    if (pending_abort_ && write_abort_now() != Status::ok) return last_;
    if (msg.size() > max_payload_) return try_send_chunked(msg, kind);
    const std::uint64_t rec = spsc::record_bytes(msg.size());
    if (reserve(need_for(rec)) != Status::ok) return full_or_corrupt();
    write_record(place(rec), RK::whole, kind, msg);
    count(msg.size());
    publish();
    return last_ = Status::ok;
  }

 public:
  // ok | timeout | interrupted | closed | too_big | corrupt. Any size up to kMaxMessageBytes.
  template <class PeerAlive>
  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d, std::uint16_t kind,
                            PeerAlive&& alive) noexcept {
    assert(!claim_open_ && "commit or abort the claim first");
    Status s = prepare(d, alive);
    if (s != Status::ok) return last_ = s;
    if (msg.size() > max_payload_) return send_chunked(msg, d, kind, alive);
    const std::uint64_t rec = spsc::record_bytes(msg.size());
    if ((s = wait_room(need_for(rec), d, alive)) != Status::ok) return last_ = s;
    write_record(place(rec), RK::whole, kind, msg);
    count(msg.size());
    publish();
    return last_ = Status::ok;
  }

  // Writes as many of `msgs` as it can before the deadline, committing and publishing once per
  // run of records that fit (a batch that fits is one commit). Returns how many were sent; *why (if
  // given): ok if all were, else what stopped it (see "Batches" in status.hpp).
  template <class PeerAlive>
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind, PeerAlive&& alive, Status* why = nullptr) noexcept {
    Status s = prepare(d, alive);
    std::size_t sent = 0;
    for (; s == Status::ok && sent < msgs.size(); ++sent) {
      const auto msg = msgs[sent];
      if (msg.size() > max_payload_) {
        s = send(msg, d, kind, alive);  // publishes what is pending before it waits
        if (s != Status::ok) break;
        continue;
      }
      const std::uint64_t rec = spsc::record_bytes(msg.size());
      if ((s = wait_room(need_for(rec), d, alive)) != Status::ok) break;
      write_record(place(rec), RK::whole, kind, msg);
      count(msg.size());
    }
    publish();
    stopped(s, why);
    return sent;
  }

  // Zero-copy write: returns `n` writable bytes in the ring, or nullptr (why: last_status():
  // full | too_big | closed | corrupt). Then commit(used) or abort_claim().
  [[nodiscard]] std::byte* try_claim(std::size_t n, std::uint16_t kind = 0) noexcept {
    if (const Status s = claim_precheck(n); s != Status::ok) return fail(s);
    if (pending_abort_ && write_abort_now() != Status::ok) return nullptr;
    const std::uint64_t rec = spsc::record_bytes(n);
    if (reserve(need_for(rec)) != Status::ok) {
      full_or_corrupt();
      return nullptr;
    }
    return open_claim(rec, n, kind);
  }

  // Like try_claim but waits for room until `d`: nullptr with timeout | interrupted | closed |
  // too_big | corrupt.
  template <class PeerAlive>
  [[nodiscard]] std::byte* claim(std::size_t n, Deadline d, std::uint16_t kind,
                                 PeerAlive&& alive) noexcept {
    if (const Status s = claim_precheck(n); s != Status::ok) return fail(s);
    if (const Status s = prepare(d, alive); s != Status::ok) return fail(s);
    const std::uint64_t rec = spsc::record_bytes(n);
    if (const Status s = wait_room(need_for(rec), d, alive); s != Status::ok) return fail(s);
    return open_claim(rec, n, kind);
  }

  // Publishes the first `used` bytes of the open claim as one message (used <= claimed size).
  void commit(std::size_t used) noexcept {
    assert(claim_open_ && used <= claim_size_);
    if (!claim_open_) return;
    if (used > claim_size_) used = claim_size_;
    pending_ = claim_pos_ + spsc::record_bytes(used);
    put_header(claim_pos_, static_cast<std::uint32_t>(used), RK::whole, claim_kind_);
    claim_open_ = false;
    count(used);
    publish();
  }
  void abort_claim() noexcept {
    if (!claim_open_) return;
    pending_ = claim_rollback_;  // the padding placed for it, if any, is still held back
    held_ = nullptr;
    claim_open_ = false;
  }
  bool claim_open() const noexcept { return claim_open_; }

  // Publishes everything, flags the stream closed and wakes a sleeping reader.
  void close() noexcept {
    if (ctl_ == nullptr) return;
    abort_claim();
    publish();
    flush_counts();
    // [P3] release: the final commits are visible to a reader that sees the flag; pairs with
    // the acquire in SpscReader::writer_gone().
    ctl_->writer_closed.store(1, std::memory_order_release);
    notify(ctl_->data_wait);
    ctl_ = nullptr;
  }

  // Publishes everything and lets go of the ring without flagging the stream closed: the
  // writer's role passes to another holder of the same end (multiprocessing's Connection shared
  // by several processes), which attaches and carries on.
  void leave() noexcept {
    if (ctl_ == nullptr) return;
    abort_claim();
    publish();
    flush_counts();
    ctl_ = nullptr;
  }

  WaitWord* space_wait_word() const noexcept { return &ctl_->space_wait; }
  // Free bytes as this writer last saw them (a guess: the reader may have freed more).
  std::uint64_t free_guess() const noexcept { return capacity_ - (pending_ - cached_head_); }

 private:
  using RK = spsc::RecordKind;

  std::byte* at(std::uint64_t pos) const noexcept { return data_ + (pos & mask_); }

  // Bytes needed to place a record of `rec` bytes at pending_: the record, plus padding if it
  // would cross the end of the data area.
  std::uint64_t need_for(std::uint64_t rec) const noexcept {
    const std::uint64_t contiguous = capacity_ - (pending_ & mask_);
    return contiguous >= rec ? rec : contiguous + rec;
  }

  // ok if `need` bytes are free after pending_ (refreshing the cached head once), full if not,
  // corrupt if the shared head violates cached_head <= head <= pending.
  Status reserve(std::uint64_t need) noexcept {
    if (capacity_ - (pending_ - cached_head_) >= need) return Status::ok;
    if (!refresh_head()) return corrupt();
    return capacity_ - (pending_ - cached_head_) >= need ? Status::ok : Status::full;
  }
  bool refresh_head() noexcept {
    // [P2] acquire: pairs with the release store of head in SpscReader::publish_head(); the
    // reader is done with the bytes below it before we overwrite them.
    const std::uint64_t head = ctl_->head.load(std::memory_order_acquire);
    if (head - cached_head_ > pending_ - cached_head_) return false;
    cached_head_ = head;
    return true;
  }

  // Places a record of `rec` bytes at pending_ (after padding if needed); reserve() said yes.
  // Returns its position.
  std::uint64_t place(std::uint64_t rec) noexcept {
    const std::uint64_t contiguous = capacity_ - (pending_ & mask_);
    if (contiguous < rec) {
      put_header(pending_, spsc::padding_length(contiguous), RK::padding, 0);
      pending_ += contiguous;
    }
    pending_ += rec;
    return pending_ - rec;
  }

  void write_record(std::uint64_t pos, RK rk, std::uint16_t kind,
                    std::span<const std::byte> payload) noexcept {
    detail::copy_polled_last(at(pos) + spsc::kHeaderBytes, payload.data(), payload.size());
    put_header(pos, static_cast<std::uint32_t>(payload.size()), rk, kind);
  }

  // Commit groups. Everything written between two publishes becomes visible at once: the first
  // header of the group (at the frontier) is held back and stored last, with release; the
  // headers after it are stored as they come, where no reader looks before the frontier moves.
  void put_header(std::uint64_t pos, std::uint32_t length, RK rk, std::uint16_t kind) noexcept {
    const std::uint64_t word =
        spsc::header_word(length, spsc::make_tag(rk, kind, spsc::lap_check(pos, shift_)));
    if (held_ == nullptr) {
      held_ = at(pos);
      held_word_ = word;
    } else {
      spsc::store_header_relaxed(at(pos), word);
    }
  }
  void commit_group() noexcept {
    if (held_ == nullptr) return;
    seal(pending_);
    spsc::store_header_release(held_, held_word_);  // [P1]
    held_ = nullptr;
  }
  // Keeps the new frontier from looking committed (see spsc_format.hpp): zeroes its header when
  // the bytes there are free. When they are not, the ring is exactly full and they hold the
  // header one lap back (the reader's head), which the check byte rejects.
  void seal(std::uint64_t end) noexcept {
    if (end + spsc::kHeaderBytes - cached_head_ > capacity_ && !(refresh_head() &&
        end + spsc::kHeaderBytes - cached_head_ <= capacity_)) {
      return;
    }
    seal_free(at(end), end);
  }
  // The frontier `end` at `p` is free: zero it, unless it already does not look committed (the
  // usual case: older bytes rarely carry this lap's check byte). Only the writer writes the data
  // area, so the bytes cannot change after the look; a line we only read is not taken from a
  // reader that polls it.
  static void seal_free(std::byte* p, std::uint64_t end, unsigned shift) noexcept {
    // relaxed: our own earlier stores, or bytes the reader finished with ([P2] ordered them).
    const std::uint64_t old =
        __atomic_load_n(reinterpret_cast<const std::uint64_t*>(p), __ATOMIC_RELAXED);
    if (spsc::committed(old, spsc::lap_check(end, shift))) {
      spsc::store_header_relaxed(p, 0);  // relaxed: published by the release that follows
    }
  }
  void seal_free(std::byte* p, std::uint64_t end) const noexcept { seal_free(p, end, shift_); }

  void publish() noexcept {
    commit_group();
    if (pending_ == tail_) return;
    tail_ = pending_;
    // [P4] release: the headers below tail are committed; pairs with the acquires of tail in
    // SpscReader (the sleep re-check, guesses and the corruption check).
    ctl_->tail.store(tail_, std::memory_order_release);
    notify(ctl_->data_wait);  // [D1]
  }

  // On attach: the records a previous writer committed beyond the later of head and tail (one
  // killed between its commit and its tail store) stay; we write after them.
  Status find_frontier(std::uint64_t tail, std::uint64_t head) noexcept {
    std::uint64_t pos = spsc::later(head, tail);
    while (pos - head < capacity_) {
      const std::uint64_t word = spsc::load_header(at(pos));  // [P1]
      if (!spsc::committed(word, spsc::lap_check(pos, shift_))) break;
      const std::uint32_t length = spsc::word_length(word);
      if (spsc::check_record(length, spsc::word_tag(word), capacity_ - (pos & mask_),
                             head + capacity_ - pos, max_payload_) != spsc::RecordCheck::ok) {
        return Status::corrupt;
      }
      pos += spsc::record_bytes(length);
    }
    tail_ = pending_ = pos;
    // [P4] release: as in publish(); a no-op store when nobody died mid-publish.
    if (pos != tail) ctl_->tail.store(pos, std::memory_order_release);
    return Status::ok;
  }

  Status full_or_corrupt() noexcept {
    if (last_ != Status::corrupt) last_ = Status::full;
    flush_counts();  // a lagging reader: a good moment to make the statistics exact
    return last_;
  }
  std::byte* fail(Status s) noexcept {
    last_ = s;
    return nullptr;
  }

  Status claim_precheck(std::size_t n) noexcept {
    assert(!claim_open_ && "one claim at a time");
    if (claim_open_) return Status::full;
    if (n > max_payload_) return Status::too_big;
    if (reader_gone()) return Status::closed;
    return Status::ok;
  }

  std::byte* open_claim(std::uint64_t rec, std::size_t n, std::uint16_t kind) noexcept {
    claim_rollback_ = pending_;
    claim_pos_ = place(rec);  // a padding it needs is held back until commit
    pending_ = claim_pos_;    // nothing of the claim counts as written until commit
    claim_ptr_ = at(claim_pos_);
    claim_size_ = n;
    claim_kind_ = kind;
    claim_open_ = true;
    last_ = Status::ok;
    return claim_ptr_ + spsc::kHeaderBytes;
  }

  // Before a blocking write: the reader must be there, and a half-sent message must be aborted.
  template <class PeerAlive>
  Status prepare(Deadline d, PeerAlive& alive) noexcept {
    if (reader_gone()) return Status::closed;
    if (!pending_abort_) return Status::ok;
    const Status s = wait_room(need_for(spsc::kHeaderBytes), d, alive);
    if (s == Status::ok) write_abort();
    return s;
  }

  Status write_abort_now() noexcept {
    if (reserve(need_for(spsc::kHeaderBytes)) != Status::ok) return full_or_corrupt();
    write_abort();
    return Status::ok;
  }
  void write_abort() noexcept {
    write_record(place(spsc::kHeaderBytes), RK::abort, 0, {});
    publish();
    pending_abort_ = false;
    // relaxed: crash-recovery word (see the Synchronization block).
    ctl_->writer_streaming.store(0, std::memory_order_relaxed);
  }

  // ---- chunked messages: first = {u64 total} + data, then middle..., last.
  struct Chunk {
    RK rk;
    std::size_t take;  // message bytes in this chunk
    std::uint64_t payload;
  };
  Chunk next_chunk(std::size_t done, std::size_t total) const noexcept {
    if (done == 0) return {RK::first, max_payload_ - spsc::kChunkTotalBytes, max_payload_};
    const std::size_t left = total - done;
    if (left > max_payload_) return {RK::middle, max_payload_, max_payload_};
    return {RK::last, left, left};
  }
  void write_chunk(const Chunk& c, std::span<const std::byte> msg, std::size_t done,
                   std::uint16_t kind) noexcept {
    const std::uint64_t pos = place(spsc::record_bytes(c.payload));
    std::byte* out = at(pos) + spsc::kHeaderBytes;
    if (c.rk == RK::first) {
      const std::uint64_t total = msg.size();
      std::memcpy(out, &total, sizeof total);
      out += sizeof total;
    }
    std::memcpy(out, msg.data() + done, c.take);
    put_header(pos, static_cast<std::uint32_t>(c.payload), c.rk, kind);
  }
  // Bytes the whole chunk sequence needs when placed from `pos`.
  std::uint64_t chunked_need(std::uint64_t pos, std::size_t total) const noexcept {
    const std::uint64_t start = pos;
    for (std::size_t done = 0; done < total;) {
      const Chunk c = next_chunk(done, total);
      const std::uint64_t rec = spsc::record_bytes(c.payload);
      const std::uint64_t contiguous = capacity_ - (pos & mask_);
      if (contiguous < rec) pos += contiguous;
      pos += rec;
      done += c.take;
    }
    return pos - start;
  }

  Status try_send_chunked(std::span<const std::byte> msg, std::uint16_t kind) noexcept {
    // A message above the capacity can never be try-sent; below it, the loop is ~3 records.
    if (msg.size() > capacity_ || chunked_need(0, msg.size()) > capacity_) {
      return last_ = Status::too_big;
    }
    const std::uint64_t need = chunked_need(pending_, msg.size());
    if (need > capacity_) return pad_to_end();
    if (reserve(need) != Status::ok) return full_or_corrupt();
    for (std::size_t done = 0; done < msg.size();) {
      const Chunk c = next_chunk(done, msg.size());
      write_chunk(c, msg, done, kind);
      done += c.take;
    }
    count(msg.size());
    publish();  // one commit group: all chunks at once, never a partial message
    return last_ = Status::ok;
  }

  // From this offset the chunks would need more than the ring even when empty: publish a padding
  // record up to the end, so that a later try starts at offset 0 (where it fits). Returns full.
  Status pad_to_end() noexcept {
    const std::uint64_t contiguous = capacity_ - (pending_ & mask_);
    if (reserve(contiguous) != Status::ok) return full_or_corrupt();
    put_header(pending_, spsc::padding_length(contiguous), RK::padding, 0);
    pending_ += contiguous;
    publish();
    return last_ = Status::full;
  }

  template <class PeerAlive>
  Status send_chunked(std::span<const std::byte> msg, Deadline d, std::uint16_t kind,
                      PeerAlive& alive) noexcept {
    if (msg.size() > spsc::kMaxMessageBytes) return last_ = Status::too_big;
    // relaxed: crash-recovery word; it is stored before the release that publishes a chunk.
    ctl_->writer_streaming.store(1, std::memory_order_relaxed);
    Status s = Status::ok;
    std::size_t done = 0;
    while (done < msg.size()) {
      const Chunk c = next_chunk(done, msg.size());
      s = wait_room(need_for(spsc::record_bytes(c.payload)), d, alive);
      if (s != Status::ok) break;
      write_chunk(c, msg, done, kind);
      done += c.take;
      publish();  // chunk by chunk: the reader copies one while we write the next
    }
    if (s != Status::ok) {
      pending_abort_ = done != 0;  // the reader holds a partial message: abort it next time
      if (done == 0) ctl_->writer_streaming.store(0, std::memory_order_relaxed);  // relaxed: as above
      return last_ = s;
    }
    ctl_->writer_streaming.store(0, std::memory_order_relaxed);  // relaxed: as above
    count(msg.size());
    return last_ = Status::ok;
  }

  // Waits until `need` bytes are free: spins (spin_budget() rounds), then sleeps on space_wait
  // in slices, checking the reader's liveness after each slice that ends without a wake.
  // ok | timeout | interrupted | closed | corrupt.
  template <class PeerAlive>
  Status wait_room(std::uint64_t need, Deadline d, PeerAlive& alive) noexcept {
    if (const Status s = reserve(need); s != Status::full) return s;
    publish();  // the reader must see everything we wrote before we wait for it
    Backoff backoff(spin_budget_);
    for (;;) {
      const Status s = reserve(need);
      if (s != Status::full) return s;
      if (reader_gone()) return Status::closed;
      if (d.expired()) return Status::timeout;
      if (backoff.spin()) continue;
      flush_counts();
      Stats::bump(stats_->full_waits);
      const FutexResult r = ctl_->space_wait.wait(  // [D2]
          [&] { return reserve(need) != Status::full || reader_gone(); },
          d.capped(kSleepSlice));
      if (r == FutexResult::interrupted) return Status::interrupted;
      if (r == FutexResult::timed_out && !alive()) set_reader_gone();
    }
  }

  std::uint64_t tail_ = 0;         // published tail
  std::uint64_t pending_ = 0;      // end of what is written, committed or not (>= tail_)
  std::uint64_t cached_head_ = 0;  // the reader's head as last seen; never above the real one
  std::byte* held_ = nullptr;      // where the open commit group's first header goes, or null
  std::uint64_t held_word_ = 0;    // that header
  std::uint64_t claim_rollback_ = 0;
  std::uint64_t claim_pos_ = 0;
  std::byte* claim_ptr_ = nullptr;
  std::size_t claim_size_ = 0;
  std::uint32_t reader_gone_epoch_ = 0;
  std::uint16_t claim_kind_ = 0;
  bool claim_open_ = false;
  bool pending_abort_ = false;
  bool reader_gone_ = false;
};

}  // namespace shmq::core
