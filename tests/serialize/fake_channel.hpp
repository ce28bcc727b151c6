// An in-process stand-in for a channel with the Pipe/Queue writer and reader shapes, so the
// Writer/Reader logic is tested on its own (and so tests can hand the Reader arbitrary bytes).
// Records are laid out one after another in an 8-aligned arena; nothing is ever reused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/shm/message.hpp"

namespace shmq::fb::testing {

class FakeChannel {
 public:
  explicit FakeChannel(std::size_t arena_bytes = 1 << 20, std::size_t max_claim = 1 << 16)
      : max_claim_(max_claim), arena_(new std::uint64_t[arena_bytes / 8]), arena_bytes_(arena_bytes) {}

  std::byte* arena() const { return reinterpret_cast<std::byte*>(arena_.get()); }
  std::size_t arena_bytes() const { return arena_bytes_; }
  bool in_arena(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= arena() && b < arena() + arena_bytes_;
  }

  struct Record {
    std::size_t offset;
    std::size_t size;
    std::uint16_t kind;
  };
  std::size_t max_claim_;
  std::deque<Record> records;
  std::size_t used = 0;
  std::size_t released = 0;
  core::Stats stats{};

  // Places raw bytes as one record at an offset with the given misalignment (0..7).
  void push_raw(std::span<const std::byte> bytes, std::uint16_t kind, std::size_t misalign = 0) {
    used = (used + 7) & ~std::size_t{7};
    used += misalign;
    std::memcpy(arena() + used, bytes.data(), bytes.size());
    records.push_back({used, bytes.size(), kind});
    used += bytes.size();
  }

 private:
  std::unique_ptr<std::uint64_t[]> arena_;
  std::size_t arena_bytes_;
};

class FakeClaim {
 public:
  FakeClaim() = default;
  FakeClaim(FakeChannel* ch, std::size_t offset, std::size_t n, std::uint16_t kind)
      : ch_(ch), offset_(offset), n_(n), kind_(kind) {}
  FakeClaim(FakeClaim&& o) noexcept { *this = std::move(o); }
  FakeClaim& operator=(FakeClaim&& o) noexcept {
    ch_ = std::exchange(o.ch_, nullptr);
    offset_ = o.offset_;
    n_ = o.n_;
    kind_ = o.kind_;
    status_ = o.status_;
    return *this;
  }
  ~FakeClaim() { abort(); }

  bool valid() const noexcept { return ch_ != nullptr; }
  Status status() const noexcept { return status_; }
  std::span<std::byte> bytes() const noexcept { return {ch_->arena() + offset_, n_}; }
  void commit(std::size_t used) noexcept {
    ch_->records.push_back({offset_, used, kind_});
    ch_->used = offset_ + used;
    ch_ = nullptr;
  }
  void abort() noexcept { ch_ = nullptr; }
  Status status_ = Status::ok;

 private:
  FakeChannel* ch_ = nullptr;
  std::size_t offset_ = 0;
  std::size_t n_ = 0;
  std::uint16_t kind_ = 0;
};

class FakeWriter {
 public:
  explicit FakeWriter(FakeChannel& ch) : ch_(&ch) {}
  FakeClaim try_claim(std::size_t n, std::uint16_t kind = 0) noexcept {
    if (n > ch_->max_claim_) return invalid(Status::too_big);
    const std::size_t at = (ch_->used + 7) & ~std::size_t{7};
    if (at + n > ch_->arena_bytes()) return invalid(Status::full);
    ++claims;
    return FakeClaim(ch_, at, n, kind);
  }
  FakeClaim claim(std::size_t n, Deadline, std::uint16_t kind = 0) noexcept { return try_claim(n, kind); }
  Status try_send(std::span<const std::byte> m, std::uint16_t kind = 0) noexcept {
    if (((ch_->used + 7) & ~std::size_t{7}) + m.size() > ch_->arena_bytes()) return Status::full;
    ch_->push_raw(m, kind);
    ++sends;
    return Status::ok;
  }
  Status send(std::span<const std::byte> m, Deadline, std::uint16_t kind = 0) noexcept {
    return try_send(m, kind);
  }
  std::size_t max_claim() const noexcept { return ch_->max_claim_; }
  core::Stats& stats() noexcept { return ch_->stats; }
  std::size_t claims = 0;
  std::size_t sends = 0;

 private:
  static FakeClaim invalid(Status s) {
    FakeClaim c;
    c.status_ = s;
    return c;
  }
  FakeChannel* ch_;
};

class FakeReader {
 public:
  explicit FakeReader(FakeChannel& ch) : ch_(&ch) {}
  Status try_recv(Message& out) noexcept {
    if (ch_->records.empty()) return Status::empty;
    const auto r = ch_->records.front();
    ch_->records.pop_front();
    out.set_borrowed(ch_->arena() + r.offset, r.size, r.kind, &on_release, ch_, r.offset);
    return Status::ok;
  }
  Status recv(Message& out, Deadline) noexcept {
    const Status s = try_recv(out);
    return s == Status::empty ? Status::timeout : s;
  }
  core::Stats& stats() noexcept { return ch_->stats; }

 private:
  static void on_release(void* ctx, std::uint64_t) noexcept { ++static_cast<FakeChannel*>(ctx)->released; }
  FakeChannel* ch_;
};

}  // namespace shmq::fb::testing
