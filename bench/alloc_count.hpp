// M1's first half: a counting malloc. Include this header in exactly one translation unit of a
// benchmark executable; every malloc/calloc/realloc/aligned allocation in the process (operator
// new included, which calls malloc in libstdc++) then bumps shmq::bench::g_allocs. The counts
// are taken around the workers' rounds only (see Workers::worker_loop).
#pragma once

#include <cstddef>

#include "harness.hpp"

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

// relaxed: a plain event count.
void* malloc(std::size_t n) {
  shmq::bench::g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  shmq::bench::g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  shmq::bench::g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) {
  shmq::bench::g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  shmq::bench::g_allocs.fetch_add(1, std::memory_order_relaxed);
  void* p = __libc_memalign(align, n);
  if (p == nullptr) return 12;  // ENOMEM
  *out = p;
  return 0;
}
void free(void* p) { __libc_free(p); }
}

namespace shmq::bench {
inline const bool kAllocHookInstalled = (g_alloc_hook = true);
}  // namespace shmq::bench
