// Message: a received message, the same type for every channel (Pipe, Queue).
//
// A Message is either
//   - borrowed: a view into shared memory (zero copy). The channel space stays reserved until the
//     Message is released (release(), destruction, or being assigned over); the channel is told
//     through the release hook {fn, context, token} it installed; or
//   - owned: the bytes live in a heap buffer the Message owns (a reassembled or spilled message).
// Both may be set at once (a hook to call and a buffer to free). Move-only; releasing twice is a
// no-op. A borrowed Message must be released before the reader handle that produced it is
// destroyed: the hook's context points into that handle's state.
//
// Synchronization: none of its own. A Message belongs to one thread at a time; the ordering with
// the writer is established by the channel's recv (acquire) and the hook's publish (release).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace shmq {

class Message {
 public:
  // Called once when a borrowed message is released. Must not throw.
  using ReleaseFn = void (*)(void* context, std::uint64_t token) noexcept;

  Message() noexcept = default;
  Message(Message&& other) noexcept { steal(other); }
  Message& operator=(Message&& other) noexcept {
    if (this != &other) {
      release();
      steal(other);
    }
    return *this;
  }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() { release(); }

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::uint16_t kind() const noexcept { return kind_; }
  bool valid() const noexcept { return valid_; }
  // True if bytes() points into shared memory (and holds channel space until released).
  bool zero_copy() const noexcept { return valid_ && owned_.empty() && release_fn_ != nullptr; }

  // Gives the channel space back (borrowed) and frees the buffer (owned). Idempotent: an invalid
  // Message holds nothing (no release function, no buffer).
  void release() noexcept {
    if (!valid_) return;
    if (release_fn_ != nullptr) {
      const ReleaseFn fn = std::exchange(release_fn_, nullptr);
      fn(context_, token_);
    }
    if (owned_.capacity() != 0) std::vector<std::byte>().swap(owned_);
    data_ = nullptr;
    size_ = 0;
    kind_ = 0;
    valid_ = false;
  }

  // ---- for channels: fill a Message. Each first releases what the Message held.
  void set_borrowed(const std::byte* data, std::size_t size, std::uint16_t kind, ReleaseFn fn,
                    void* context, std::uint64_t token) noexcept {
    release();
    data_ = data;
    size_ = size;
    kind_ = kind;
    release_fn_ = fn;
    context_ = context;
    token_ = token;
    valid_ = true;
  }
  // Takes the buffer; bytes() is [offset, offset + size) of it.
  void set_owned(std::vector<std::byte>&& buffer, std::size_t offset, std::size_t size,
                 std::uint16_t kind) noexcept {
    release();
    owned_ = std::move(buffer);  // moving a vector keeps its data pointer
    data_ = owned_.data() + offset;
    size_ = size;
    kind_ = kind;
    valid_ = true;
  }
  void set_owned(std::vector<std::byte>&& buffer, std::uint16_t kind) noexcept {
    const std::size_t n = buffer.size();
    set_owned(std::move(buffer), 0, n, kind);
  }

 private:
  void steal(Message& o) noexcept {
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    kind_ = std::exchange(o.kind_, 0);
    valid_ = std::exchange(o.valid_, false);
    release_fn_ = std::exchange(o.release_fn_, nullptr);
    context_ = std::exchange(o.context_, nullptr);
    token_ = std::exchange(o.token_, 0);
    owned_ = std::move(o.owned_);  // keeps the data pointer valid
    o.owned_.clear();
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  ReleaseFn release_fn_ = nullptr;
  void* context_ = nullptr;
  std::uint64_t token_ = 0;
  std::vector<std::byte> owned_;
  std::uint16_t kind_ = 0;
  bool valid_ = false;
};

}  // namespace shmq
