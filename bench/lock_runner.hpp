// Lock benchmarks shared by shmq (shm/sync_bench.cpp) and its peers (baselines/lock_peers_bench.cpp),
// so both are measured the same way:
//   uncontended(state, lock, unlock)        one thread, lock + unlock per item
//   two_process_counter(state, make_worker) two forked processes, each incrementing a shared
//                                           counter `kCounterRounds` times under the lock; time is
//                                           taken by the workers (first start to last finish)
// The control block is a MAP_SHARED anonymous mapping created before the fork.
//
// Synchronization
//   [L1] the parent stores `go` (release) after both workers reported ready (acquire of `ready`);
//        workers spin on `go` (acquire), then read the clock. Their start/end times (CLOCK_MONOTONIC,
//        comparable across processes) are written before `done` is bumped (release); the parent
//        reads them after waitpid().
#pragma once

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <benchmark/benchmark.h>
#include <csignal>
#include <cstdint>
#include <functional>
#include <new>
#include <thread>

#include "harness.hpp"

namespace shmq::bench {

inline constexpr std::uint64_t kCounterRounds = 200'000;

template <class Lock, class Unlock>
void uncontended(benchmark::State& state, Lock&& lock, Unlock&& unlock) {
  for (auto _ : state) {
    lock();
    unlock();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

struct CounterControl {
  alignas(kLine) std::atomic<std::uint32_t> ready{0};
  alignas(kLine) std::atomic<std::uint32_t> go{0};
  alignas(kLine) std::uint64_t counter = 0;  // guarded by the lock under test
  alignas(kLine) std::int64_t start_ns[2] = {};
  std::int64_t end_ns[2] = {};
  std::atomic<std::uint32_t> failed{0};
};

// make_worker(ctl) runs in each forked child before the start: it opens or prepares what it
// needs and returns the per-increment body, `bool(std::uint64_t& counter)` (false: failed).
using CounterBody = std::function<bool(std::uint64_t&)>;

inline void two_process_counter(benchmark::State& state,
                                const std::function<CounterBody(CounterControl&)>& make_worker) {
  void* mem = ::mmap(nullptr, sizeof(CounterControl), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    state.SkipWithError("mmap failed");
    return;
  }
  auto* ctl = new (mem) CounterControl;
  for (auto _ : state) {
    ctl->ready.store(0, std::memory_order_relaxed);  // relaxed: before the fork
    ctl->go.store(0, std::memory_order_relaxed);
    ctl->counter = 0;
    pid_t pids[2];
    for (int w = 0; w < 2; ++w) {
      pids[w] = ::fork();
      if (pids[w] == 0) {
        CounterBody body = make_worker(*ctl);
        ctl->ready.fetch_add(1, std::memory_order_release);  // [L1]
        while (ctl->go.load(std::memory_order_acquire) == 0) std::this_thread::yield();  // [L1]
        ctl->start_ns[w] = now_ns();
        for (std::uint64_t i = 0; i < kCounterRounds; ++i) {
          if (!body(ctl->counter)) {
            ctl->failed.store(1, std::memory_order_relaxed);  // relaxed: read after waitpid
            break;
          }
        }
        ctl->end_ns[w] = now_ns();
        ::_exit(0);
      }
    }
    const std::int64_t give_up = now_ns() + 30'000'000'000;  // a worker that died must not hang `make`
    while (ctl->ready.load(std::memory_order_acquire) < 2 && now_ns() < give_up)  // [L1]
      std::this_thread::yield();
    if (ctl->ready.load(std::memory_order_acquire) < 2) {
      for (pid_t p : pids) ::kill(p, SIGKILL);
      ctl->failed.store(1, std::memory_order_relaxed);  // relaxed: read below, after waitpid
    }
    ctl->go.store(1, std::memory_order_release);  // [L1]
    for (pid_t p : pids) {
      int st = 0;
      while (::waitpid(p, &st, 0) < 0) {
      }
    }
    const std::int64_t t0 = std::min(ctl->start_ns[0], ctl->start_ns[1]);
    const std::int64_t t1 = std::max(ctl->end_ns[0], ctl->end_ns[1]);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
    if (ctl->failed.load(std::memory_order_relaxed) != 0 || ctl->counter != 2 * kCounterRounds) {
      state.SkipWithError("a worker failed or the counter is not exact");
      break;
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * 2 * kCounterRounds));
  ::munmap(mem, sizeof(CounterControl));
}

}  // namespace shmq::bench
