// Scaffolding shared by the doctest suites (core, shm, serialize): unique segment names that are
// removed however a test ends, forked children, kill-and-reap, sizes scaled for sanitizer builds,
// memory shared with children. Atomics used here are seq_cst, like those of the tests themselves.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "shmq/shm/queue.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq::testing {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// Test sizes scale with SHMQ_TEST_SCALE (tools/run_tests.sh sets it for sanitizer builds; a
// sanitized build run by hand defaults to 0.1).
template <class T>
T scaled(T full, T at_least) {
  const double fallback = kSanitized ? 0.1 : 1.0;
  const char* env = std::getenv("SHMQ_TEST_SCALE");
  const double scale = env != nullptr && std::atof(env) > 0 ? std::atof(env) : fallback;
  const T n = static_cast<T>(static_cast<double>(full) * scale);
  return n < at_least ? at_least : n;
}

// "t-<what>-<pid>-": every segment a suite makes starts with its prefix.
inline std::string name_prefix(std::string_view what) {
  return "t-" + std::string(what) + "-" + std::to_string(::getpid()) + "-";
}
inline std::string unique_name(std::string_view what) {
  static std::atomic<int> n{0};  // tests may name segments from several threads
  return name_prefix(what) + std::to_string(n.fetch_add(1));
}

// Removes a segment (and a queue's spill files) at scope exit, however the test ends.
struct Cleanup {
  explicit Cleanup(std::string n) : name(std::move(n)) {}
  ~Cleanup() { (void)Queue::unlink(name); }
  Cleanup(const Cleanup&) = delete;
  Cleanup& operator=(const Cleanup&) = delete;
  std::string name;
};

// Files in /dev/shm whose names start with name_prefix(what): what a suite left behind.
inline std::vector<std::string> leftovers(std::string_view what) {
  std::vector<std::string> out;
  const std::string p = "shmq." + name_prefix(what);
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d))
      if (std::string_view(e->d_name).starts_with(p)) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

// Runs `child` in a forked process; its return value is the exit code.
inline pid_t spawn(const std::function<int()>& child) {
  std::cout.flush();  // else a child that flushes at exit repeats the parent's buffered output
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(child());
  return pid;
}

// The exit code of a child, or 128 + the signal that killed it.
inline int wait_exit(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// SIGKILL, then the exit code (128 + SIGKILL unless the child had already exited).
inline int kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  return wait_exit(pid);
}

// Memory shared with forked children, for the results they report.
template <class T>
struct SharedArray {
  explicit SharedArray(std::size_t n) : size(n) {
    void* p = ::mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    data = static_cast<T*>(p);
    for (std::size_t i = 0; i < n; ++i) new (&data[i]) T();
  }
  ~SharedArray() { ::munmap(data, size * sizeof(T)); }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;
  T& operator[](std::size_t i) { return data[i]; }
  T* data;
  std::size_t size;
};

}  // namespace shmq::testing
