// shmq::fb::Writer<T>: builds a FlatBuffers message of root type T directly in the space claimed
// in a channel (Pipe or Queue), so the bytes the builder writes are the bytes the reader reads.
//
//   shmq::fb::Writer<shmq::schema::Tick> w(tx);
//   w.try_send([&](flatbuffers::FlatBufferBuilder& b) {
//     shmq::schema::TickBuilder t(b);
//     t.add_instrument_id(7);
//     return t.Finish();
//   });
//
// The machinery is AnyWriter<W>, which takes the root type's identity at run time (RootId);
// Writer<T> is AnyWriter with T's, and DynWriter (dyn_write.hpp) builds with it from a schema
// loaded at run time.
//
// How: claim n bytes (an adaptive guess from recent message sizes, or WriterOptions::claim_bytes),
// give FlatBufferBuilder the claim through ClaimAllocator, Finish() with the schema's
// file_identifier, write the prefix (prefix.hpp) and commit the whole claim. The builder fills
// downward, so the buffer ends at the claim's end; the prefix records where it starts.
// If the message outgrows the claim, the builder spills to the heap, the claim is aborted and the
// finished buffer is sent with the channel's send(): exactly one copy into the channel, counted in
// core::Stats::fallback_copies. The in-place path allocates nothing.
//
// Works with any writer type W that offers the Pipe/Queue shapes:
//   try_claim(n, kind) / claim(n, deadline, kind) -> a claim with valid(), status(), bytes(),
//   commit(used), abort();  try_send(span, kind) / send(span, deadline, kind) -> Status.
// Optional: max_claim() (caps the claim), slot_size() (a slot-based channel: claims default to
// one slot), stats() (core::Stats& or *, for the shared counter; else WriterOptions::stats).
//
// Thread roles: a Writer is used by one thread at a time, like the channel writer it wraps.
//
// Synchronization
//   None of its own: the builder writes into claimed space that no reader can see; the channel's
//   commit (release) publishes the prefix and the buffer together, and its recv (acquire) on the
//   reader side pairs with it.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmq/core/layout.hpp"
#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/serialize/allocator.hpp"
#include "shmq/serialize/decode.hpp"
#include "shmq/serialize/prefix.hpp"

namespace shmq {
class PipeWriter;  // the default channel; include shmq/shm/pipe.hpp to use it
}

namespace shmq::fb {

struct WriterOptions {
  // Bytes to claim for each message, prefix included. 0: adapt to the sizes recently sent
  // (a slowly decaying high-water mark plus headroom), starting at kInitialClaim.
  std::size_t claim_bytes = 0;
  // Stats to count fallback copies in when the writer type has no stats() of its own (e.g.
  // &pipe.segment().stats(direction)). Ignored if the writer has stats().
  core::Stats* stats = nullptr;
};

namespace detail {

template <class W>
concept HasMaxClaim = requires(const W& w) {
  { w.max_claim() } -> std::convertible_to<std::size_t>;
};

template <class W>
concept HasSlotSize = requires(const W& w) {
  { w.slot_size() } -> std::convertible_to<std::uint64_t>;
};

template <class W>
core::Stats* writer_stats(W& w, core::Stats* fallback) noexcept {
  if constexpr (requires { { w.stats() } -> std::convertible_to<core::Stats*>; }) {
    return w.stats();
  } else if constexpr (requires { { &w.stats() } -> std::convertible_to<core::Stats*>; }) {
    return &w.stats();
  } else {
    return fallback;
  }
}

// The builder's region inside a claim: after the prefix, both ends on kBufferAlign boundaries,
// so the buffer (which FlatBuffers aligns relative to its end) is aligned in memory too.
struct Region {
  std::uint8_t* begin = nullptr;
  std::size_t size = 0;
  std::size_t end_offset = 0;  // bytes of the claim in use: the region's end - claim start
};

inline Region region_of(std::span<std::byte> claim) noexcept {
  const auto base = reinterpret_cast<std::uintptr_t>(claim.data());
  const auto lo = core::align_up(base + kPrefixBytes, kBufferAlign);
  const auto hi = (base + claim.size()) & ~std::uintptr_t{kBufferAlign - 1};
  if (claim.size() < kPrefixBytes + kBufferAlign || hi <= lo) return {};
  return {reinterpret_cast<std::uint8_t*>(lo), static_cast<std::size_t>(hi - lo),
          static_cast<std::size_t>(hi - base)};
}

}  // namespace detail

// The identity a message is sent under: the prefix's type id and the file_identifier Finish()
// writes into the buffer (nullptr: none).
struct RootId {
  std::uint32_t type_id = 0;
  const char* identifier = nullptr;
};

template <RootType T>
RootId root_id_of() noexcept {
  return {type_id<T>(), RootTraits<T>::identifier()};
}

// The in-place machinery for a root type known at run time (a schema loaded with Schema::load_*):
// Writer<T> is this with T's identity. `build(b)` returns the root table's offset (uoffset_t or
// any flatbuffers::Offset). If build throws, nothing is sent: the claim is aborted (the claim's
// destructor) and the exception propagates.
template <class W = PipeWriter>
class AnyWriter {
 public:
  // While a table is open the builder also keeps 8 bytes per field in the free space below the
  // data (its scratch pad), so a claim needs headroom beyond the finished size.
  static constexpr std::size_t kInitialClaim = 1024;
  static constexpr std::size_t kMinClaim = 256;

  explicit AnyWriter(W& writer, WriterOptions options = {}) noexcept
      : w_(&writer), options_(options), stats_(detail::writer_stats(writer, options.stats)) {}

  // Builds and sends without blocking: ok | full | too_big | closed. On `full` nothing was sent.
  // `size_hint`: the expected message size if the caller knows better than the recent sizes
  // (a slot-based channel then claims beyond one slot, so a large message is built in place).
  template <class Build>
  Status try_send(RootId id, Build&& build, std::size_t size_hint = 0) {
    return send_with(
        id, build, size_hint, [this](std::size_t n) { return w_->try_claim(n, kFlatBuffersKind); },
        [this](std::span<const std::byte> m) { return w_->try_send(m, kFlatBuffersKind); });
  }

  // As try_send, waiting for space until `deadline`: ok | timeout | interrupted | closed | too_big.
  template <class Build>
  Status send(RootId id, Build&& build, Deadline deadline, std::size_t size_hint = 0) {
    return send_with(
        id, build, size_hint,
        [this, deadline](std::size_t n) { return w_->claim(n, deadline, kFlatBuffersKind); },
        [this, deadline](std::span<const std::byte> m) {
          return w_->send(m, deadline, kFlatBuffersKind);
        });
  }

  // ---- observation (tests, benchmarks)
  // Fallback copies made by this writer (the shared counter is in the channel's Stats).
  std::uint64_t fallback_copies() const noexcept { return fallbacks_; }
  // Where the last sent buffer was built: in the claim (shared memory) or on the heap.
  bool last_in_place() const noexcept { return last_in_place_; }
  const void* last_buffer() const noexcept { return last_buffer_; }
  std::size_t last_buffer_size() const noexcept { return last_size_; }
  // The number of bytes the next message will claim (without a size hint).
  std::size_t next_claim() const noexcept { return claim_size(0); }

  // The general form of try_send/send, for callers with their own way to wait: `claim_fn(n)`
  // returns a claim of the channel's type (or an invalid one whose status() says why);
  // `send_fn(span)` sends the finished buffer when it did not fit the claim (the copy path).
  template <class Build, class ClaimFn, class SendFn>
  Status send_with(RootId id, Build&& build, std::size_t size_hint, ClaimFn&& claim_fn,
                   SendFn&& send_fn) {
    auto claim = claim_fn(claim_size(size_hint));
    // too_big: the channel cannot claim that much at once, but its send() may still carry the
    // message (a Pipe streams it in chunks): build on the heap and take the copy path.
    const bool have_claim = claim.valid();
    if (!have_claim && claim.status() != Status::too_big) {
      return claim.status() == Status::ok ? Status::full : claim.status();
    }
    const std::span<std::byte> bytes = have_claim ? claim.bytes() : std::span<std::byte>{};
    // With a size hint, the builder gets only the front of a larger claim (a Queue slot): the
    // buffer and the builder's scratch then share a few cache lines instead of spanning the slot.
    const std::size_t want = size_hint != 0 ? hinted_bytes(size_hint) : bytes.size();
    const detail::Region r = detail::region_of(bytes.first(std::min(want, bytes.size())));
    // Declared before the builder: the builder's destructor returns its block to the allocator.
    ClaimAllocator alloc(r.begin, r.size);
    flatbuffers::FlatBufferBuilder b(r.size != 0 ? r.size : kInitialClaim, &alloc, false,
                                     kBufferAlign);
    const flatbuffers::uoffset_t root = root_offset(build(b));
    b.Finish(flatbuffers::Offset<void>(root), id.identifier);
    std::uint8_t* buf = b.GetBufferPointer();
    const std::size_t size = b.GetSize();
    note_size(kPrefixBytes + size);
    last_buffer_ = buf;
    last_size_ = size;
    if (alloc.in_region(buf)) {
      last_in_place_ = true;
      const auto start = static_cast<std::uint32_t>(reinterpret_cast<std::byte*>(buf) - bytes.data());
      store_prefix(bytes.data(), {id.type_id, start});
      claim.commit(r.end_offset);
      return Status::ok;
    }
    if (have_claim) claim.abort();
    last_in_place_ = false;
    return send_copy(id, alloc, buf, size, send_fn);
  }

 private:

  static flatbuffers::uoffset_t root_offset(flatbuffers::uoffset_t o) noexcept { return o; }
  template <class U>
  static flatbuffers::uoffset_t root_offset(flatbuffers::Offset<U> o) noexcept { return o.o; }

  // The fallback: the finished buffer lies in the builder's heap block; the channel's send()
  // copies it (once) into the ring. The prefix goes into the free space below the buffer when
  // there is room (there almost always is: blocks grow by halves), so it costs no extra copy.
  template <class SendFn>
  Status send_copy(RootId id, const ClaimAllocator& alloc, std::uint8_t* buf, std::size_t size,
                   SendFn& send_fn) {
    ++fallbacks_;
    if (stats_ != nullptr) core::Stats::bump(stats_->fallback_copies);
    const Prefix p{id.type_id, static_cast<std::uint32_t>(kPrefixBytes)};
    const std::uint8_t* block = alloc.heap_block();
    if (block != nullptr && buf - block >= static_cast<std::ptrdiff_t>(kPrefixBytes)) {
      auto* msg = reinterpret_cast<std::byte*>(buf) - kPrefixBytes;
      store_prefix(msg, p);
      return send_fn(std::span<const std::byte>(msg, kPrefixBytes + size));
    }
    // No room below the buffer (a builder that never spilled: an empty region).
    heap_scratch_.resize(kPrefixBytes + size);
    store_prefix(heap_scratch_.data(), p);
    std::memcpy(heap_scratch_.data() + kPrefixBytes, buf, size);
    return send_fn(std::span<const std::byte>(heap_scratch_.data(), heap_scratch_.size()));
  }

  std::size_t claim_size(std::size_t size_hint) const noexcept {
    std::size_t n = options_.claim_bytes;
    if constexpr (detail::HasSlotSize<W>) {
      // A slot-based channel (Queue): a claim up to the slot size is a slot; a larger one is a
      // side allocation (an arena chunk or a file). Claim the slot unless the caller expects a
      // larger message: messages that do not fit it take the copy path, which spills them once.
      if (n == 0) n = static_cast<std::size_t>(w_->slot_size());
    }
    if (size_hint != 0) {
      n = std::max(n, hinted_bytes(size_hint));
    } else if (n == 0) {
      n = high_water_ == 0 ? kInitialClaim
                           : std::max<std::size_t>(
                                 kMinClaim, core::align_up(high_water_ + high_water_ / 2 + 128, 64));
    }
    if constexpr (detail::HasMaxClaim<W>) n = std::min(n, w_->max_claim());
    return n;
  }

  // Room for a message expected to take about `size_hint` bytes: the finished buffer, some
  // growth, the builder's scratch (vtables, field locations) and alignment.
  static std::size_t hinted_bytes(std::size_t size_hint) noexcept {
    return core::align_up(size_hint + size_hint / 2 + 256, 64);
  }

  // A high-water mark that decays by 1/16 per message, so one large message raises the claim at
  // once and a run of small ones lowers it again slowly.
  void note_size(std::size_t total) noexcept {
    high_water_ = std::max(total, high_water_ - high_water_ / 16);
  }

  W* w_;
  WriterOptions options_;
  core::Stats* stats_;
  std::size_t high_water_ = 0;
  std::uint64_t fallbacks_ = 0;
  const void* last_buffer_ = nullptr;
  std::size_t last_size_ = 0;
  bool last_in_place_ = false;
  std::vector<std::byte> heap_scratch_;
};

template <RootType T, class W = PipeWriter>
class Writer {
 public:
  static constexpr std::size_t kInitialClaim = AnyWriter<W>::kInitialClaim;
  static constexpr std::size_t kMinClaim = AnyWriter<W>::kMinClaim;

  explicit Writer(W& writer, WriterOptions options = {}) noexcept : w_(writer, options) {}

  // Builds with `build(flatbuffers::FlatBufferBuilder&) -> flatbuffers::Offset<T>` and sends
  // without blocking: ok | full | too_big | closed. On `full` nothing was sent; call again.
  template <class Build>
  Status try_send(Build&& build) {
    check_build<Build>();
    return w_.try_send(root_id_of<T>(), build);
  }

  // As try_send, waiting for space until `deadline`: ok | timeout | interrupted | closed | too_big.
  template <class Build>
  Status send(Build&& build, Deadline deadline) {
    check_build<Build>();
    return w_.send(root_id_of<T>(), build, deadline);
  }

  // ---- observation (tests, benchmarks): see AnyWriter.
  std::uint64_t fallback_copies() const noexcept { return w_.fallback_copies(); }
  bool last_in_place() const noexcept { return w_.last_in_place(); }
  const void* last_buffer() const noexcept { return w_.last_buffer(); }
  std::size_t last_buffer_size() const noexcept { return w_.last_buffer_size(); }
  std::size_t next_claim() const noexcept { return w_.next_claim(); }

 private:
  template <class Build>
  static constexpr void check_build() {
    static_assert(std::is_convertible_v<std::invoke_result_t<Build&, flatbuffers::FlatBufferBuilder&>,
                                        flatbuffers::Offset<T>>,
                  "build(builder) must return the flatbuffers::Offset<T> of the root table");
  }

  AnyWriter<W> w_;
};

// Deduces the writer type: auto w = shmq::fb::make_writer<Order>(queue_writer);
template <RootType T, class W>
Writer<T, W> make_writer(W& writer, WriterOptions options = {}) noexcept {
  return Writer<T, W>(writer, options);
}

}  // namespace shmq::fb
