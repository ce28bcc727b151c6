// What the FlatBuffers fuzz targets share: a channel that yields one record and counts its
// release, so a target checks that every path of the reader gives the record back.
#pragma once

#include <cstddef>
#include <cstdint>

#include "shmq/shm/message.hpp"
#include "shmq/core/status.hpp"

namespace shmq::fb::fuzz {

// A channel that yields one record and counts its release.
class OneShotReader {
 public:
  OneShotReader(const std::byte* data, std::size_t size, std::uint16_t kind)
      : data_(data), size_(size), kind_(kind) {}
  shmq::Status try_recv(shmq::Message& out) noexcept {
    if (done_) return shmq::Status::empty;
    done_ = true;
    out.set_borrowed(data_, size_, kind_, &on_release, &released_, 0);
    return shmq::Status::ok;
  }
  shmq::Status recv(shmq::Message& out, shmq::Deadline) noexcept { return try_recv(out); }
  int released_ = 0;

 private:
  static void on_release(void* ctx, std::uint64_t) noexcept { ++*static_cast<int*>(ctx); }
  const std::byte* data_;
  std::size_t size_;
  std::uint16_t kind_;
  bool done_ = false;
};

}  // namespace shmq::fb::fuzz
