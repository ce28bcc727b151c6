// shmq's synchronization objects (see bench/run.py for the targets; the peers are in
// baselines/lock_peers_bench.cpp, measured the same way through bench/lock_runner.hpp):
//   lock/shmq/uncontended   Mutex lock + unlock in one thread                      (S1)
//   lock/shmq/2proc         two processes incrementing a counter under one Mutex   (S2)
//   lock/shmq/recovery      a holder killed with -9 while another process sleeps in lock():
//                           milliseconds until that lock() returns owner_died (p50_ms, max_ms
//                           over kRecoveryTrials; information, no target)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <benchmark/benchmark.h>
#include <thread>
#include <vector>

#include "lock_runner.hpp"
#include "shmq/shm/sync.hpp"

namespace shmq::bench {
namespace {

constexpr int kRecoveryTrials = 10;

void bm_uncontended(benchmark::State& state) {
  auto m = Mutex::create();
  if (!m) return state.SkipWithError(m.error().what.c_str());
  uncontended(state, [&] { (void)m->lock(); }, [&] { (void)m->unlock(); });
}

void bm_2proc(benchmark::State& state) {
  auto m = Mutex::create();
  if (!m) return state.SkipWithError(m.error().what.c_str());
  two_process_counter(state, [&m](CounterControl&) -> CounterBody {
    (void)m->held_by_this_process();  // joins the arena as this process before the clock starts
    return [&m](std::uint64_t& counter) {
      const Status s = m->lock();
      if (s != Status::ok && s != Status::owner_died) return false;
      ++counter;
      return m->unlock();
    };
  });
}

void bm_recovery(benchmark::State& state) {
  std::vector<double> ms;
  for (auto _ : state) {
    for (int t = 0; t < kRecoveryTrials; ++t) {
      auto m = Mutex::create();
      auto held = Event::create();
      if (!m || !held) return state.SkipWithError("cannot create the objects");
      const pid_t pid = ::fork();
      if (pid == 0) {
        if (m->lock() != Status::ok) ::_exit(2);
        held->set();
        for (;;) ::pause();
      }
      if (held->wait(Deadline::in(std::chrono::seconds(30))) != Status::ok) {
        ::kill(pid, SIGKILL);
        return state.SkipWithError("the holder never locked");
      }
      std::atomic<std::int64_t> got_ns{0};
      std::atomic<bool> asleep{false};
      std::thread waiter([&] {
        asleep.store(true, std::memory_order_release);  // release: pairs with the spin below
        const Status s = m->lock(Deadline::in(std::chrono::seconds(30)));
        got_ns.store(s == Status::owner_died ? now_ns() : -1, std::memory_order_release);
      });
      while (!asleep.load(std::memory_order_acquire)) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let it spin out and sleep
      const std::int64_t t0 = now_ns();
      ::kill(pid, SIGKILL);
      waiter.join();
      int st = 0;
      while (::waitpid(pid, &st, 0) < 0) {
      }
      const std::int64_t t1 = got_ns.load(std::memory_order_acquire);
      if (t1 < 0) return state.SkipWithError("the waiter did not get owner_died");
      ms.push_back(static_cast<double>(t1 - t0) * 1e-6);
      (void)m->unlock();
    }
  }
  std::sort(ms.begin(), ms.end());
  state.counters["p50_ms"] = ms.empty() ? 0.0 : ms[ms.size() / 2];
  state.counters["max_ms"] = ms.empty() ? 0.0 : ms.back();
}

}  // namespace
}  // namespace shmq::bench

int main(int argc, char** argv) {
  using namespace shmq::bench;
  benchmark::RegisterBenchmark("lock/shmq/uncontended", bm_uncontended);
  benchmark::RegisterBenchmark("lock/shmq/2proc", bm_2proc)->UseManualTime();
  benchmark::RegisterBenchmark("lock/shmq/recovery", bm_recovery);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
