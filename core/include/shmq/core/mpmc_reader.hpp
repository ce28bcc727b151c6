// The reader side of the MPMC ring: any number of MpmcReaders, in any number of processes. The
// claim protocol, tags and crash recovery: mpmc_ring.hpp; the format: mpmc_format.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "shmq/core/fault.hpp"
#include "shmq/core/mpmc_end.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// A received message still occupying its slot until MpmcReader::release().
struct MpmcView {
  std::uint64_t pos = 0;
  const std::byte* data = nullptr;
  std::uint32_t length = 0;
  std::uint16_t kind = 0;
  std::uint8_t flags = 0;
  std::uint8_t word = 0;  // the claim word holding it (0 = transient, in recv_many)
  std::span<const std::byte> bytes() const noexcept { return {data, length}; }
};

// Messages a reader holds under a lease [L1]: positions [pos, pos + count), their ids. Skip
// records inside the range (aborted claims) are held too but never delivered.
struct MpmcLease {
  std::uint64_t pos = 0;
  std::uint64_t count = 0;
  std::uint8_t word = 0;      // the claim word holding it; 0 = no lease
  bool redelivered = false;   // adopted from a holder that died or gave it back
  bool valid() const noexcept { return word != 0; }
};

// One reader participant. Not thread-safe (one thread at a time), except release(), which may run
// in any thread.
class MpmcReader : public MpmcEnd {
 public:
  MpmcReader() noexcept : MpmcEnd(false) {}
  // The arguments: see MpmcEnd.
  MpmcReader(MpmcRing ring, std::atomic<std::uint64_t>* words, ClaimRegistry* registry,
             Stats* stats, SleepMark mark = {}, std::uint64_t self = 0) noexcept
      : MpmcEnd(ring, words, registry, stats, mark, false, self) {}

  // Takes the oldest committed message; it occupies its slot until release(out). Up to
  // kClaimWords - 1 views may be held; with all held, returns `full` (release one first).
  // Returns ok | empty | closed (closed and drained) | corrupt | full.
  [[nodiscard]] Status try_recv(MpmcView& out) noexcept {
    const std::uint32_t w = free_hold_word();
    if (w == 0) return Status::full;
    for (;;) {
      std::uint64_t pos = 0;
      const Status st = claim_one(words_[w], pos);
      if (st != Status::ok) return st;
      SHMQ_KILL_POINT(KillPoint::holding_read);
      const Status v = view(pos, w, out);
      if (v == Status::ok) {
        counters_.add(1, out.length);
        return v;
      }
      release_slot(pos, words_[w]);  // a skip record or a corrupt one: drop it
      if (v == Status::corrupt) return v;
    }
  }

  [[nodiscard]] Status recv(MpmcView& out, Deadline d) noexcept {
    return block([&] { return try_recv(out); }, d);
  }

  // Gives a view's slot back to writers. Any thread; once per view.
  void release(MpmcView& v) noexcept {
    if (v.data == nullptr) return;
    release_slot(MpmcRing::header_of(v.data), v.pos, words_[v.word]);
    v.data = nullptr;
  }

  // Takes up to `max` committed messages with one claim and calls fn(const MpmcView&) for each,
  // releasing each slot after fn returns. fn must not throw. Returns how many were delivered;
  // *why (if given): ok if any were, else empty | closed | corrupt (see "Batches" in status.hpp).
  template <class F>
  std::size_t try_recv_many(F&& fn, std::size_t max, Status* why = nullptr) noexcept {
    std::size_t delivered = 0;
    Status st = Status::ok;
    while (delivered == 0 && max != 0) {
      std::uint64_t pos = 0, n = 0;
      st = claim(std::min<std::uint64_t>(max, kMaxBatch), words_[0], pos, &n);
      if (st != Status::ok) break;
      SHMQ_KILL_POINT(KillPoint::holding_read);
      std::uint64_t bytes = 0;
      for (std::uint64_t i = 0; i < n; ++i) {
        MpmcView v;
        if (view(pos + i, 0, v) == Status::ok) {
          fn(static_cast<const MpmcView&>(v));
          ++delivered;
          bytes += v.length;
        }
        // release: [Q2] pairs with the writer of the next lap.
        ring_.slot(pos + i).seq.store(mpmc::seq_released(pos + i, ring_.slots()),
                                      std::memory_order_release);
      }
      words_[0].store(0, std::memory_order_release);  // [Q4]
      recovery_.notify(ring_.header().space_free, static_cast<int>(n));
      counters_.add(delivered, bytes);  // 0 before this claim: the loop runs again only then
    }
    if (why != nullptr) *why = delivered != 0 ? Status::ok : st;
    return delivered;
  }

  // Blocks until at least one message arrives (or the deadline passes), then takes up to `max`.
  // *why: as for try_recv_many, or timeout | interrupted.
  template <class F>
  std::size_t recv_many(F&& fn, std::size_t max, Deadline d, Status* why = nullptr) noexcept {
    std::size_t n = 0;
    const Status st = block(
        [&] {
          Status s = Status::ok;
          n = try_recv_many(fn, max, &s);
          return n != 0 ? Status::ok : s;
        },
        d);
    if (why != nullptr) *why = st;
    return n;
  }

  // Leases [L1]-[L5]: up to `max` committed messages held until ack_lease(); if this reader dies
  // (or give_back()s them) they are redelivered to the next reader that takes a lease, instead
  // of being abandoned. A lease taken here is first one left by a dead holder, if any waits
  // (out.redelivered), else new messages. A lease takes a hold word, like a held view.
  // Returns ok | empty | closed | corrupt | full (every hold word busy).
  [[nodiscard]] Status try_lease(std::size_t max, MpmcLease& out) noexcept {
    out = {};
    const std::uint32_t w = free_hold_word();
    if (w == 0) return Status::full;
    if (const std::uint64_t adopted = recovery_.adopt(words_[w], self_); adopted != 0) {
      // relaxed: any recent position is near enough to widen the word's 48-bit position.
      const std::uint64_t near = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
      out = {mpmc::claim_first(adopted, near), mpmc::claim_count(adopted),
             static_cast<std::uint8_t>(w), true};
      return Status::ok;
    }
    std::uint64_t pos = 0, n = 0;
    const Status st = claim(std::min<std::uint64_t>(max, kMaxBatch), words_[w], pos, &n,
                            mpmc::ClaimOp::lease);
    if (st != Status::ok) return st;
    SHMQ_KILL_POINT(KillPoint::holding_lease);
    counters_.add(n, 0);
    out = {pos, n, static_cast<std::uint8_t>(w), false};
    return Status::ok;
  }

  [[nodiscard]] Status lease(std::size_t max, Deadline d, MpmcLease& out) noexcept {
    return block([&] { return try_lease(max, out); }, d);
  }

  // The i-th message of a lease (i < count): ok, empty for a skip record, corrupt.
  [[nodiscard]] Status lease_view(const MpmcLease& l, std::uint64_t i, MpmcView& out) noexcept {
    return view(l.pos + i, l.word, out);
  }

  // Done with every message of the lease: their slots go back to the writers. [L1] The claim is
  // first downgraded to a plain read claim, so a reader killed while acknowledging leaves slots
  // that writers reclaim (its messages were handled), never a lease to redeliver. free(pos) runs
  // for each position after the downgrade and before its slot is released (the host frees what
  // a message kept outside its slot).
  template <class Free>
  void ack_lease(MpmcLease& l, Free&& free) noexcept {
    if (!l.valid()) return;
    // relaxed: each slot release below is a release store and orders it before itself.
    words_[l.word].store(mpmc::encode_claim(l.pos, l.count, mpmc::ClaimOp::dequeue),
                         std::memory_order_relaxed);
    SHMQ_KILL_POINT(KillPoint::acking_lease);
    for (std::uint64_t i = 0; i < l.count; ++i) free(l.pos + i);
    for (std::uint64_t i = 0; i < l.count; ++i)
      // release: [Q2] pairs with the writer of the next lap.
      ring_.slot(l.pos + i).seq.store(mpmc::seq_released(l.pos + i, ring_.slots()),
                                      std::memory_order_release);
    words_[l.word].store(0, std::memory_order_release);  // [Q4]
    recovery_.notify(ring_.header().space_free, static_cast<int>(l.count));
    l = {};
  }
  void ack_lease(MpmcLease& l) noexcept {
    ack_lease(l, [](std::uint64_t) noexcept {});
  }

  // Gives the lease back unacknowledged: its messages are redelivered to the next reader that
  // takes a lease. False (the lease stays ours) if the orphan table is full or its lock busy.
  bool give_back(MpmcLease& l) noexcept {
    if (!l.valid()) return true;
    if (!recovery_.park(words_[l.word], self_)) return false;
    l = {};
    return true;
  }

  // Where this reader marks a sleep on data_ready (for wait_any, which sleeps on it too).
  SleepMark data_sleep_mark() const noexcept { return mark_; }

  // True if a message (or `closed`) is waiting (a guess).
  bool readable_guess() const noexcept {
    // relaxed: a guess; the claim re-validates everything.
    const std::uint64_t pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    // acquire: [Q1]
    return ring_.slot(pos).seq.load(std::memory_order_acquire) == mpmc::seq_committed(pos) ||
           ring_.closed();
  }

  bool can_hold() const noexcept { return free_hold_word() != 0; }

 private:
  // Retries `attempt` while it reports `empty`: spin, then sleep on data_ready in slices.
  template <class Attempt>
  Status block(Attempt&& attempt, Deadline d) noexcept {
    return block_on(attempt, Status::empty, d, ring_.header().data_ready,
                    [this] { return readable_guess(); },
                    stats_ != nullptr ? &stats_->empty_waits : nullptr);
  }

  // Reads the slot header of a claimed position once into locals and validates it.
  Status view(std::uint64_t pos, std::uint32_t w, MpmcView& out) noexcept {
    MpmcSlotHeader& s = ring_.slot(pos);
    const std::uint32_t length = s.length;
    const std::uint16_t kind = s.kind;
    const std::uint8_t flags = s.flags;
    switch (mpmc::check_slot(length, flags, ring_.slot_size())) {
      case mpmc::SlotCheck::ok: break;
      case mpmc::SlotCheck::skip: return Status::empty;
      case mpmc::SlotCheck::bad_length:
        if (stats_ != nullptr) Stats::bump(stats_->corrupt_events);
        return Status::corrupt;
    }
    out.pos = pos;
    out.data = MpmcRing::payload_of(s);
    out.length = length;
    out.kind = kind;
    out.flags = flags;
    out.word = static_cast<std::uint8_t>(w);
    return Status::ok;
  }

  void release_slot(std::uint64_t pos, std::atomic<std::uint64_t>& word) noexcept {
    release_slot(ring_.slot(pos), pos, word);
  }
  void release_slot(MpmcSlotHeader& s, std::uint64_t pos,
                    std::atomic<std::uint64_t>& word) noexcept {
    // release: [Q2] pairs with the acquire of seq by the writer of pos + slots.
    s.seq.store(mpmc::seq_released(pos, ring_.slots()), std::memory_order_release);
    word.store(0, std::memory_order_release);  // [Q4]
    recovery_.notify(ring_.header().space_free, 1);  // [Q5]
  }

  // claim(1, ...), with case 1 of its loop inline: the slot of dequeue_pos is committed and the
  // CAS wins at the first try. Anything else takes the loop.
  Status claim_one(std::atomic<std::uint64_t>& word, std::uint64_t& pos_out) noexcept {
    auto& dequeue_pos = ring_.header().dequeue_pos;
    // relaxed: a starting hint; the CAS validates it.
    std::uint64_t pos = dequeue_pos.load(std::memory_order_relaxed);
    // acquire: [Q1] pairs with the writer's commit.
    if (ring_.slot(pos).seq.load(std::memory_order_acquire) == mpmc::seq_committed(pos)) {
      // relaxed: [Q3] published by the release CAS below.
      word.store(mpmc::encode_claim(pos, 1, mpmc::ClaimOp::dequeue), std::memory_order_relaxed);
      // release: [Q3]; the data was acquired through seq above. relaxed on failure (the loop
      // re-records or clears the word).
      if (dequeue_pos.compare_exchange_strong(pos, pos + 1, std::memory_order_release,
                                              std::memory_order_relaxed)) {
        watch_.clear();
        pos_out = pos;
        return Status::ok;
      }
    }
    return claim(1, word, pos_out);
  }

  // Claims up to `want` consecutive committed slots; *got receives how many.
  [[gnu::noinline]] Status claim(std::uint64_t want, std::atomic<std::uint64_t>& word,
                                 std::uint64_t& pos_out, std::uint64_t* got = nullptr,
                                 mpmc::ClaimOp op = mpmc::ClaimOp::dequeue) noexcept {
    // relaxed: a starting hint; the CAS validates it.
    std::uint64_t pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    // Each round:
    //  1. the slot of pos is committed (seq == pos + 1): count committed slots from pos, record
    //     the claim, CAS dequeue_pos pos -> pos + n.
    //     1a. CAS wins: we own [pos, pos + n).
    //     1b. CAS loses: another reader took pos; pos is reloaded by the CAS; retry.
    //  2. seq < pos + 1: nothing committed at pos.
    //     2a. enqueue_pos == pos: empty (or closed, if the queue is closed).
    //     2b. enqueue_pos > pos: a writer claimed pos and has not committed. Empty for now;
    //         after kStuckGrace, if no live participant claims pos, its writer is dead: the slot
    //         is recovered and we retry.
    //  3. seq > pos + 1: another reader took pos since we loaded it; reload dequeue_pos. If it
    //     has not moved, the slot's seq is impossible: corrupt.
    for (;;) {
      // acquire: [Q1] pairs with the writer's commit.
      const std::uint64_t seq = ring_.slot(pos).seq.load(std::memory_order_acquire);
      const std::int64_t diff = mpmc::distance(mpmc::seq_committed(pos), seq);
      if (diff == 0) {  // case 1
        const std::uint64_t n = run_length(pos, want, mpmc::seq_committed);
        if (take_run(ring_.header().dequeue_pos, pos, n, op, word, [] {})) {
          pos_out = pos;
          if (got != nullptr) *got = n;
          return Status::ok;  // case 1a
        }
        continue;  // case 1b
      }
      if (diff < 0) {  // case 2
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        // acquire: [Q3] if we see a writer's claim of pos, its claim word is visible too.
        const std::uint64_t enq = ring_.header().enqueue_pos.load(std::memory_order_acquire);
        if (mpmc::distance(pos, enq) <= 0) {  // case 2a
          watch_.clear();
          return ring_.closed() ? Status::closed : Status::empty;
        }
        if (seq != mpmc::seq_free(pos)) {
          watch_.clear();  // impossible unless corrupt: writers claim only free slots
        } else if (watch_.probe_due(pos) && recovery_.recover_unfinished_write(pos, words_[0])) {  // 2b
          pos = ring_.header().dequeue_pos.load(std::memory_order_relaxed);  // relaxed: a hint
          continue;
        }
        return Status::empty;
      }
      if (!reload_or_corrupt(ring_.header().dequeue_pos, pos, word)) return Status::corrupt;  // 3
    }
  }
};

}  // namespace shmq::core
