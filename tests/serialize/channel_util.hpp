// Helpers for the serialize tests over real channels: a unique segment name that is removed even
// when a test fails, and a check that a pointer lies inside a segment's mapping. The rest of the
// scaffolding is tests/test_util.hpp's.
#pragma once

#include <string>

#include "shmq/shm/segment.hpp"
#include "test_util.hpp"

namespace shmq::fb::testing {

// "t-fb-<what>-<pid>-<n>", unlinked when the guard goes away.
class SegmentName {
 public:
  explicit SegmentName(const char* what) : cleanup_(shmq::testing::unique_name(std::string("fb-") + what)) {}
  const std::string& str() const { return cleanup_.name; }

 private:
  shmq::testing::Cleanup cleanup_;
};

inline bool inside(const Segment& seg, const void* p, std::size_t n = 1) {
  const auto* b = static_cast<const std::byte*>(p);
  return b >= seg.base() && b + n <= seg.base() + seg.size();
}

}  // namespace shmq::fb::testing
