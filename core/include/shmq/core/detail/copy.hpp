// Copies of message payloads into and out of rings.
#pragma once

#include <cstddef>
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

}  // namespace shmq::core::detail
