// The writer side of the MPMC ring: any number of MpmcWriters, in any number of processes. The
// claim protocol, tags and crash recovery: mpmc_ring.hpp; the format: mpmc_format.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "shmq/core/detail/copy.hpp"
#include "shmq/core/fault.hpp"
#include "shmq/core/mpmc_end.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::core {

// A slot claimed for writing in place. Plain data; MpmcWriter::commit/abort finish it.
struct MpmcClaim {
  std::uint64_t pos = 0;
  std::byte* data = nullptr;
  std::size_t capacity = 0;  // slot_size
  std::uint32_t word = 0;    // the claim word in use (1..3); 0 = invalid claim
  Status status = Status::full;
  bool valid() const noexcept { return word != 0; }
};

// One writer participant. Not thread-safe: one thread at a time (any number of writers).
class MpmcWriter : public MpmcEnd {
 public:
  MpmcWriter() noexcept : MpmcEnd(true) {}
  // The arguments: see MpmcEnd.
  MpmcWriter(MpmcRing ring, std::atomic<std::uint64_t>* words, ClaimRegistry* registry,
             Stats* stats, SleepMark mark = {}, std::uint64_t self = 0) noexcept
      : MpmcEnd(ring, words, registry, stats, mark, true, self) {}

  [[nodiscard]] Status try_send(std::span<const std::byte> msg, std::uint16_t kind = 0) noexcept {
    if (msg.size() > ring_.slot_size()) return Status::too_big;
    std::uint64_t pos = 0;
    const Status st = claim_one(words_[0], pos);
    if (st != Status::ok) return st;
    MpmcSlotHeader& s = ring_.slot(pos);
    fill(s, msg, kind, 0);
    commit_one(s, pos, words_[0]);
    counters_.add(1, msg.size());
    return Status::ok;
  }

  [[nodiscard]] Status send(std::span<const std::byte> msg, Deadline d,
                            std::uint16_t kind = 0) noexcept {
    if (msg.size() > ring_.slot_size()) return Status::too_big;
    return block([&] { return try_send(msg, kind); }, d);
  }

  // Claims one slot for writing in place (slot_size bytes). Up to kClaimWords - 1 claims may be
  // outstanding per writer; beyond that the claim fails with `full`.
  [[nodiscard]] MpmcClaim try_claim() noexcept {
    MpmcClaim c;
    const std::uint32_t w = free_hold_word();
    if (w == 0) return c;
    std::uint64_t pos = 0;
    c.status = claim_one(words_[w], pos);
    if (c.status != Status::ok) return c;
    c.pos = pos;
    c.data = ring_.payload(pos);
    c.capacity = ring_.slot_size();
    c.word = w;
    SHMQ_KILL_POINT(KillPoint::mid_write);
    return c;
  }

  [[nodiscard]] MpmcClaim claim(Deadline d) noexcept {
    MpmcClaim c;
    const Status st = block(
        [&] {
          c = try_claim();
          return c.status;
        },
        d);
    c.status = st;
    return c;
  }

  // Publishes a claim: `used` payload bytes (<= slot_size), `flags` for the host (kSlotSpilled).
  void commit(MpmcClaim& c, std::size_t used, std::uint16_t kind, std::uint8_t flags = 0) noexcept {
    if (!c.valid()) return;
    MpmcSlotHeader& s = ring_.slot(c.pos);
    s.length = static_cast<std::uint32_t>(std::min<std::size_t>(used, ring_.slot_size()));
    s.kind = kind;
    s.flags = flags;
    s.reserved = 0;
    SHMQ_KILL_POINT(KillPoint::before_commit);
    commit_one(s, c.pos, words_[c.word]);
    if ((flags & kSlotSkip) == 0) counters_.add(1, used);
    c.word = 0;
    c.status = Status::closed;
  }
  // A claimed position cannot be given back (later ones may be taken): it is committed as a
  // skip record that readers drop.
  void abort(MpmcClaim& c) noexcept { commit(c, 0, 0, kSlotSkip); }

  // Sends a prefix of `msgs` with one claim (one CAS); returns how many were sent. *why (if
  // given): ok if all were, else too_big (the next message is larger than a slot), full (no free
  // slot for it), closed or corrupt (see "Batches" in status.hpp).
  std::size_t try_send_many(std::span<const std::span<const std::byte>> msgs, std::uint16_t kind,
                            Status* why = nullptr) noexcept {
    return send_run(msgs, kind, 0, 0, [](std::uint64_t, std::uint64_t) noexcept {}, why);
  }

  // [Q7] Sealed writes: like try_send_many (and commit), but every slot is marked kSlotSealed
  // with the host's `tag`, and seal(pos, n) runs after the slots are filled and before they are
  // committed (send_many_sealed passes seal(pos, n, messages sent before this run)). seal()
  // stores (release) a word of the host's that covers [pos, pos + n) and that
  // ClaimRegistry::sealed() reads: from that store on, the messages are as good as committed,
  // since a survivor commits them if this writer dies. The host makes that store its record of
  // what was put (shm: a queue journal), exactly once per message across a crash.
  template <class Seal>
  std::size_t try_send_many_sealed(std::span<const std::span<const std::byte>> msgs,
                                   std::uint16_t kind, std::uint8_t tag, Seal&& seal,
                                   Status* why = nullptr) noexcept {
    return send_run(msgs, kind, kSlotSealed, tag,
                    [&](std::uint64_t pos, std::uint64_t n) noexcept {
                      seal(pos, n);
                      SHMQ_KILL_POINT(KillPoint::sealed);
                    },
                    why);
  }
  template <class Seal>
  void commit_sealed(MpmcClaim& c, std::size_t used, std::uint16_t kind, std::uint8_t flags,
                     std::uint8_t tag, Seal&& seal) noexcept {
    if (!c.valid()) return;
    MpmcSlotHeader& s = ring_.slot(c.pos);
    s.length = static_cast<std::uint32_t>(std::min<std::size_t>(used, ring_.slot_size()));
    s.kind = kind;
    s.flags = static_cast<std::uint8_t>(flags | kSlotSealed);
    s.reserved = tag;
    seal(c.pos, std::uint64_t{1});
    SHMQ_KILL_POINT(KillPoint::sealed);
    commit_range(c.pos, 1, words_[c.word]);
    counters_.add(1, used);
    c.word = 0;
    c.status = Status::closed;
  }

  // try_send_many_sealed, waiting for room until the deadline (as send_many).
  template <class Seal>
  std::size_t send_many_sealed(std::span<const std::span<const std::byte>> msgs, Deadline d,
                               std::uint16_t kind, std::uint8_t tag, Seal&& seal,
                               Status* why = nullptr) noexcept {
    std::size_t done = 0;
    Status st = Status::ok;
    while (done < msgs.size()) {
      st = block(
          [&] {
            Status s = Status::ok;
            const std::size_t n = try_send_many_sealed(
                msgs.subspan(done), kind, tag,
                [&](std::uint64_t pos, std::uint64_t k) noexcept { seal(pos, k, done); }, &s);
            done += n;
            return n != 0 ? Status::ok : s;
          },
          d);
      if (st != Status::ok) break;
    }
    if (why != nullptr) *why = st;
    return done;
  }

  // Sends all of `msgs` unless the deadline passes or a message is too big; returns the count.
  // *why: ok if all were sent, else too_big | timeout | interrupted | closed | corrupt.
  std::size_t send_many(std::span<const std::span<const std::byte>> msgs, Deadline d,
                        std::uint16_t kind, Status* why = nullptr) noexcept {
    std::size_t done = 0;
    Status st = Status::ok;
    while (done < msgs.size()) {
      st = block(
          [&] {
            Status s = Status::ok;
            const std::size_t n = try_send_many(msgs.subspan(done), kind, &s);
            done += n;
            return n != 0 ? Status::ok : s;
          },
          d);
      if (st != Status::ok) break;
    }
    if (why != nullptr) *why = st;
    return done;
  }

  // True if a send would find room now (a guess).
  bool writable_guess() const noexcept {
    // relaxed: a guess; the claim re-validates everything.
    const std::uint64_t pos = ring_.header().enqueue_pos.load(std::memory_order_relaxed);
    // acquire: [Q2]
    if (ring_.slot(pos).seq.load(std::memory_order_acquire) != mpmc::seq_free(pos))
      return ring_.closed();
    if (ring_.bounded_below_slots() && !room_below_maxsize(pos)) return ring_.closed();
    return true;
  }

 private:
  // Retries `attempt` while it reports `full`: spin, then sleep on space_free in slices.
  template <class Attempt>
  Status block(Attempt&& attempt, Deadline d) noexcept {
    return block_on(attempt, Status::full, d, ring_.header().space_free,
                    [this] { return writable_guess(); },
                    stats_ != nullptr ? &stats_->full_waits : nullptr);
  }

  bool room_below_maxsize(std::uint64_t pos) const noexcept {
    // relaxed: dequeue_pos only grows, so an old value only makes the bound stricter.
    const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
    return mpmc::distance(deq, pos) < static_cast<std::int64_t>(ring_.maxsize());
  }

  // claim(1, ...), with case 1 of its loop inline: the slot of enqueue_pos is free and the CAS
  // wins at the first try. Anything else (and a queue bounded below its slots) takes the loop.
  Status claim_one(std::atomic<std::uint64_t>& word, std::uint64_t& pos_out) noexcept {
    if (!ring_.closed() && !ring_.bounded_below_slots()) {  // [Q6]
      auto& enqueue_pos = ring_.header().enqueue_pos;
      // relaxed: a starting hint; the CAS validates it.
      std::uint64_t pos = enqueue_pos.load(std::memory_order_relaxed);
      // acquire: [Q2] pairs with the release of the reader of the previous lap.
      if (ring_.slot(pos).seq.load(std::memory_order_acquire) == mpmc::seq_free(pos)) {
        // relaxed: [Q3] published by the release CAS below.
        word.store(mpmc::encode_claim(pos, 1, mpmc::ClaimOp::enqueue), std::memory_order_relaxed);
        SHMQ_KILL_POINT(KillPoint::mid_claim);
        // release: [Q3] publishes the claim word with the new position. relaxed on failure
        // (the loop re-records or clears the word).
        if (enqueue_pos.compare_exchange_strong(pos, pos + 1, std::memory_order_release,
                                                std::memory_order_relaxed)) {
          watch_.clear();
          pos_out = pos;
          return Status::ok;
        }
      }
    }
    return claim(1, word, pos_out);
  }

  // Claims up to `want` consecutive free slots; *got receives how many (1 when got == null).
  [[gnu::noinline]] Status claim(std::uint64_t want, std::atomic<std::uint64_t>& word,
                                 std::uint64_t& pos_out, std::uint64_t* got = nullptr) noexcept {
    // acquire: [Q6]
    if (ring_.closed()) return Status::closed;
    // relaxed: a starting hint; the CAS below validates it.
    std::uint64_t pos = ring_.header().enqueue_pos.load(std::memory_order_relaxed);
    // Each round:
    //  1. the slot of pos is free (seq == pos): count free slots from pos (bounded by maxsize),
    //     record the claim, CAS enqueue_pos pos -> pos + n.
    //     1a. CAS wins: we own [pos, pos + n).
    //     1b. CAS loses: another writer moved it; pos is reloaded by the CAS; retry.
    //  2. seq < pos: the slot still holds the previous lap (unread, being read, or being
    //     written by a dead or slow writer): full. A reader that died holding it is recovered
    //     after kStuckGrace, and then we retry.
    //  3. seq > pos: another writer claimed pos since we loaded it; reload enqueue_pos. If it
    //     has not moved, the slot's seq is impossible: corrupt.
    for (;;) {
      MpmcSlotHeader& s = ring_.slot(pos);
      // acquire: [Q2] pairs with the release of the reader of the previous lap.
      const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      const std::int64_t diff = mpmc::distance(mpmc::seq_free(pos), seq);
      if (diff == 0) {  // case 1
        std::uint64_t n = run_length(pos, want, mpmc::seq_free);
        if (ring_.bounded_below_slots()) {
          // relaxed: see room_below_maxsize.
          const std::uint64_t deq = ring_.header().dequeue_pos.load(std::memory_order_relaxed);
          const std::int64_t room =
              static_cast<std::int64_t>(ring_.maxsize()) - mpmc::distance(deq, pos);
          if (room <= 0) {
            word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
            watch_.clear();  // readers recover a dead writer at the head, not us
            return Status::full;
          }
          n = std::min<std::uint64_t>(n, static_cast<std::uint64_t>(room));
        }
        if (take_run(ring_.header().enqueue_pos, pos, n, mpmc::ClaimOp::enqueue, word,
                     [] { SHMQ_KILL_POINT(KillPoint::mid_claim); })) {
          pos_out = pos;
          if (got != nullptr) *got = n;
          return Status::ok;  // case 1a
        }
        continue;  // case 1b
      }
      if (diff < 0) {  // case 2
        word.store(0, std::memory_order_relaxed);  // relaxed: we claim nothing
        if (!recovery_.read_in_flight(pos, seq)) {
          watch_.clear();
        } else if (watch_.probe_due(pos) && recovery_.recover_unreleased_read(pos, seq, self_)) {
          continue;
        }
        return Status::full;
      }
      if (!reload_or_corrupt(ring_.header().enqueue_pos, pos, word)) return Status::corrupt;  // 3
    }
  }

  // Writes a message into its claimed slot. A test armed at mid_write stops us with half of it
  // written; otherwise it is one copy.
  // try_send_many and its sealed twin: one claim for a prefix of `msgs`, the slots filled with
  // `flags` and `tag`, then before_commit(pos, n), then one commit of the run.
  template <class BeforeCommit>
  std::size_t send_run(std::span<const std::span<const std::byte>> msgs, std::uint16_t kind,
                       std::uint8_t flags, std::uint8_t tag, BeforeCommit&& before_commit,
                       Status* why) noexcept {
    std::size_t fit = 0;
    while (fit < msgs.size() && fit < kMaxBatch && msgs[fit].size() <= ring_.slot_size()) ++fit;
    Status st = fit == 0 && !msgs.empty() ? Status::too_big : Status::ok;
    std::uint64_t pos = 0, n = 0;
    if (fit != 0) {
      st = claim(fit, words_[0], pos, &n);
      if (st == Status::ok) {
        std::uint64_t bytes = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
          fill(ring_.slot(pos + i), msgs[i], kind, flags);
          ring_.slot(pos + i).reserved = tag;
          bytes += msgs[i].size();
        }
        before_commit(pos, n);
        commit_range(pos, n, words_[0]);
        counters_.add(n, bytes);
        if (n < msgs.size()) st = msgs[n].size() > ring_.slot_size() ? Status::too_big : Status::full;
      }
    }
    if (why != nullptr) *why = st;
    return static_cast<std::size_t>(n);
  }

  void fill(MpmcSlotHeader& s, std::span<const std::byte> msg, std::uint16_t kind,
            std::uint8_t flags) noexcept {
    std::byte* dst = MpmcRing::payload_of(s);
    if (fault::armed(KillPoint::mid_write)) [[unlikely]] {
      const std::size_t half = msg.size() / 2;
      detail::copy_bytes(dst, msg.data(), half);
      SHMQ_KILL_POINT(KillPoint::mid_write);
      detail::copy_bytes(dst + half, msg.data() + half, msg.size() - half);
    } else {
      detail::copy_polled_last(dst, msg.data(), msg.size());
    }
    s.length = static_cast<std::uint32_t>(msg.size());
    s.kind = kind;
    s.flags = flags;
    SHMQ_KILL_POINT(KillPoint::before_commit);
  }

  void commit_one(MpmcSlotHeader& s, std::uint64_t pos,
                  std::atomic<std::uint64_t>& word) noexcept {
    // release: [Q1] pairs with the acquire of seq by the reader of pos.
    s.seq.store(mpmc::seq_committed(pos), std::memory_order_release);
    // release: [Q4] a survivor that reads 0 sees the commit above.
    word.store(0, std::memory_order_release);
    SHMQ_KILL_POINT(KillPoint::after_commit_before_wake);
    recovery_.notify(ring_.header().data_ready, 1);  // [Q5]
  }

  void commit_range(std::uint64_t pos, std::uint64_t n, std::atomic<std::uint64_t>& word) noexcept {
    for (std::uint64_t i = 0; i < n; ++i)
      // release: [Q1] pairs with the acquire of seq by the reader of pos + i.
      ring_.slot(pos + i).seq.store(mpmc::seq_committed(pos + i), std::memory_order_release);
    // release: [Q4] a survivor that reads 0 sees the commits above.
    word.store(0, std::memory_order_release);
    SHMQ_KILL_POINT(KillPoint::after_commit_before_wake);
    recovery_.notify(ring_.header().data_ready, static_cast<int>(n));  // [Q5] one reader per message
  }
};

}  // namespace shmq::core
