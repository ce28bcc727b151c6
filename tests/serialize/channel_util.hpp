// Helpers for the serialize tests over real channels: unique segment names that are removed even
// when a test fails, and a check that a pointer lies inside a segment's mapping.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "shmq/shm/segment.hpp"

namespace shmq::fb::testing {

// "t-fb-<pid>-<n>", unlinked when the guard goes away (ignoring "not found").
class SegmentName {
 public:
  explicit SegmentName(const char* what) {
    static std::atomic<int> counter{0};
    name_ = "t-fb-";
    name_.append(what).append("-").append(std::to_string(::getpid())).append("-");
    name_.append(std::to_string(counter.fetch_add(1, std::memory_order_relaxed)));
  }
  ~SegmentName() { (void)Segment::unlink(name_); }
  SegmentName(const SegmentName&) = delete;
  SegmentName& operator=(const SegmentName&) = delete;
  const std::string& str() const { return name_; }

 private:
  std::string name_;
};

inline bool inside(const Segment& seg, const void* p, std::size_t n = 1) {
  const auto* b = static_cast<const std::byte*>(p);
  return b >= seg.base() && b + n <= seg.base() + seg.size();
}

// Waits for a forked child; returns its exit code (or 128 + signal).
inline int wait_child(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  return 128 + WTERMSIG(st);
}

}  // namespace shmq::fb::testing
