// Copies of message payloads into and out of rings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace shmq::core::detail {

// memcpy, but small copies (the common case) are a few overlapping moves of fixed size instead of
// a call: below 64 bytes the call and its size dispatch cost more than the copy.
inline void copy_bytes(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  // Every branch reads exactly [src, src + n). GCC's -Warray-bounds does not see that only the
  // branch for n runs, and warns about the others when src is a small array of the caller's; the
  // empty asm (no instruction) hides which object src points into.
  __asm__("" : "+r"(src));
  auto move = [&]<std::size_t k>(std::size_t at) { std::memcpy(dst + at, src + at, k); };
  if (n > 64) {
    std::memcpy(dst, src, n);
  } else if (n >= 16) {  // the first and last 16 bytes, and the two 16 inside them if needed
    move.template operator()<16>(0);
    move.template operator()<16>(n - 16);
    if (n > 32) {
      move.template operator()<16>(16);
      move.template operator()<16>(n - 32);
    }
  } else if (n >= 8) {
    move.template operator()<8>(0);
    move.template operator()<8>(n - 8);
  } else if (n >= 4) {
    move.template operator()<4>(0);
    move.template operator()<4>(n - 4);
  } else {
    for (std::size_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

// copy_bytes, ordered for a reader that polls the line `dst` starts in (a record's header or a
// slot's sequence number sits there): the bytes past that line first, the bytes in it last, so
// the writer takes that line from the polling reader once, just before its commit, instead of
// losing it again to the reader's next poll in the middle of the copy.
inline void copy_polled_last(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  constexpr std::uintptr_t kLine = 64;
  const std::size_t in_line = kLine - (reinterpret_cast<std::uintptr_t>(dst) & (kLine - 1));
  if (n <= in_line) {
    copy_bytes(dst, src, n);
    return;
  }
  copy_bytes(dst + in_line, src + in_line, n - in_line);
  copy_bytes(dst, src, in_line);
}

}  // namespace shmq::core::detail
