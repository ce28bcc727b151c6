// The harness every benchmark in bench/ shares: workers as threads or forked processes, a control
// block in a MAP_SHARED anonymous mapping, rounds started by the benchmark thread, and time taken
// by the workers themselves (first producer start → last consumer finish), so the coordinator's
// own wake-up latency never counts.
//
// Synchronization
//   [R1] the coordinator stores `round` (release) and wakes the futex; workers load it (acquire)
//        and so see the round's parameters written before it.
//   [D1] the last consumer adds to `consumed` (seq_cst) and bumps `done` (seq_cst), then wakes;
//        the coordinator reads `done`, re-checks `consumed`, and sleeps on `done` only if it still
//        holds the value it read: no wake-up is lost.
//   Times are CLOCK_MONOTONIC nanoseconds, comparable across processes.
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <benchmark/benchmark.h>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace shmq::bench {

inline constexpr std::size_t kLine = 128;

// Allocations counted by the malloc hook of alloc_count.hpp, in binaries that include it.
inline std::atomic<std::uint64_t> g_allocs{0};
inline bool g_alloc_hook = false;

inline void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

inline std::int64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// --- futex on a shared word (never FUTEX_PRIVATE_FLAG: the peer may be another process) -------
inline void futex_wait(std::atomic<std::uint32_t>* w, std::uint32_t expected,
                       std::int64_t timeout_ns = -1) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
    tsp = &ts;
  }
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAIT, expected, tsp, nullptr, 0);
}
inline void futex_wake(std::atomic<std::uint32_t>* w, int n = INT_MAX) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAKE, n, nullptr, nullptr, 0);
}

// Spin, then yield: the same waiting policy for every peer, so that oversubscribed runs (more
// workers than cores) make progress and no queue is favoured by its own wait strategy.
class Spin {
 public:
  void wait() noexcept {
    if (++n_ < 256) {
      relax();
    } else {
      n_ = 0;
      std::this_thread::yield();
    }
  }
  void reset() noexcept { n_ = 0; }

 private:
  unsigned n_ = 0;
};

// --- CPUs ----------------------------------------------------------------------------------------
inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

// Pins the calling thread to the index-th allowed CPU (modulo their number). Returns false when
// the machine has one CPU or the call fails (then the scheduler decides).
inline bool pin_to(int index, const std::vector<int>& cpus) noexcept {
  if (cpus.size() < 2) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpus[static_cast<std::size_t>(index) % cpus.size()], &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;  // 0 = calling thread
}

// --- shared anonymous memory -------------------------------------------------------------------
template <class T>
class Shared {
 public:
  Shared() {
    void* p = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ptr_ = new (p) T();
  }
  ~Shared() {
    ptr_->~T();
    munmap(ptr_, bytes());
  }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T* operator->() const noexcept { return ptr_; }
  T& operator*() const noexcept { return *ptr_; }

 private:
  static constexpr std::size_t bytes() { return (sizeof(T) + 4095) & ~std::size_t{4095}; }
  T* ptr_;
};

// --- the control block of a run ----------------------------------------------------------------
inline constexpr std::size_t kMaxSamples = 1 << 16;

struct Control {
  alignas(kLine) std::atomic<std::uint32_t> round{0};  // futex word; [R1]
  std::atomic<std::uint32_t> stop{0};
  alignas(kLine) std::atomic<std::uint32_t> done{0};   // futex word; [D1]
  alignas(kLine) std::atomic<std::uint64_t> consumed{0};
  alignas(kLine) std::atomic<std::int64_t> t_start{0};  // earliest producer start this round
  std::atomic<std::int64_t> t_end{0};                   // last consumer finish this round
  std::atomic<std::uint32_t> failed{0};
  char error[160]{};
  alignas(kLine) std::atomic<std::uint64_t> allocs{0};     // by all workers, inside rounds
  std::atomic<std::int64_t> rss_over_segments_kib{INT64_MIN};  // max over worker processes
  std::uint64_t per_producer = 0;   // messages each producer sends per round
  std::uint64_t total = 0;          // messages consumed per round (all producers)
  std::uint32_t n_samples = 0;      // latency samples (ns), written by the timing worker
  std::uint32_t samples[kMaxSamples]{};

  void fail(const char* what) noexcept {
    // relaxed: the flag is read by the coordinator after the round ended or timed out.
    if (failed.exchange(1, std::memory_order_relaxed) == 0)
      std::snprintf(error, sizeof(error), "%s", what);
  }
  void fail(const char* prefix, const std::string& what) noexcept {
    if (failed.exchange(1, std::memory_order_relaxed) == 0)
      std::snprintf(error, sizeof(error), "%s%s", prefix, what.c_str());
  }
  // The round-start time: the earliest of all producers' starts.
  void mark_start() noexcept {
    const std::int64_t t = now_ns();
    std::int64_t cur = t_start.load(std::memory_order_relaxed);
    // relaxed: the coordinator reads t_start after [D1], which orders it.
    while ((cur == 0 || t < cur) &&
           !t_start.compare_exchange_weak(cur, t, std::memory_order_relaxed)) {
    }
  }
  // Adds `n` consumed messages; the consumer that completes the round stamps the end and wakes.
  // Returns true when the round's total is reached.
  bool add_consumed(std::uint64_t n, std::uint64_t target) noexcept {
    if (n == 0) return consumed.load(std::memory_order_acquire) >= target;
    // [D1] seq_cst: ordered before the `done` bump the coordinator re-checks against.
    const std::uint64_t now = consumed.fetch_add(n, std::memory_order_seq_cst) + n;
    if (now == target) finish_round();
    return now >= target;
  }
  void finish_round() noexcept {
    t_end.store(now_ns(), std::memory_order_relaxed);
    done.fetch_add(1, std::memory_order_seq_cst);  // [D1]
    futex_wake(&done);
  }
};

// M1's second half: this process's resident memory beyond the shmq segments it maps.
// RSS from /proc/self/status, less the resident pages of the mappings of /dev/shm/shmq.* and
// memfd:shmq* (from /proc/self/smaps: a queue's arena is mostly untouched, so its mapped size
// would understate the rest).
inline std::int64_t rss_over_segments_kib() {
  std::int64_t rss_kib = -1;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmRSS:", 6) == 0) rss_kib = std::atoll(line + 6);
    std::fclose(f);
  }
  std::int64_t seg_kib = 0;
  if (FILE* f = std::fopen("/proc/self/smaps", "r")) {
    char line[1024];
    bool in_segment = false;
    while (std::fgets(line, sizeof line, f)) {
      unsigned long lo = 0, hi = 0;
      if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
        in_segment = std::strstr(line, "/dev/shm/shmq.") || std::strstr(line, "memfd:shmq");
      } else if (in_segment && std::strncmp(line, "Rss:", 4) == 0) {
        seg_kib += std::atoll(line + 4);
      }
    }
    std::fclose(f);
  }
  return rss_kib < 0 ? INT64_MIN : rss_kib - seg_kib;
}

inline void note_rss(Control& c) {
  const std::int64_t v = rss_over_segments_kib();
  std::int64_t cur = c.rss_over_segments_kib.load(std::memory_order_relaxed);
  // relaxed: read by the coordinator after waitpid().
  while (v > cur && !c.rss_over_segments_kib.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

struct WorkerContext {
  Control& ctl;
  int index;          // 0 .. workers-1
  std::uint32_t round;
  std::uint64_t target;  // cumulative `consumed` value that ends this round
};

enum class Mode { thread, process };

// Runs `workers` copies of a body as threads or forked processes; each waits for rounds started
// by `run_round()`. The body is called once per round: body(WorkerContext&) and returns when its
// part of the round is done. Per-worker state lives in the body's captures (set-up once).
class Workers {
 public:
  using Setup = std::function<std::function<void(WorkerContext&)>(int index, Control& ctl)>;

  Workers(Mode mode, int n, bool pin, Setup setup) : mode_(mode) {
    const std::vector<int> cpus = allowed_cpus();
    pinned_ = pin && cpus.size() >= 2 && static_cast<std::size_t>(n) <= cpus.size();
    for (int i = 0; i < n; ++i) {
      auto entry = [this, i, cpus, setup] {
        if (pinned_) pin_to(i, cpus);
        auto body = setup(i, *ctl_);
        worker_loop(i, body);
      };
      if (mode == Mode::thread) {
        threads_.emplace_back(entry);
      } else {
        std::fflush(nullptr);
        const pid_t pid = fork();
        if (pid == 0) {
          entry();
          std::fflush(nullptr);
          _exit(0);
        }
        if (pid < 0) {
          ctl_->fail("fork failed");
        } else {
          pids_.push_back(pid);
        }
      }
    }
  }
  ~Workers() { stop(); }

  Control& ctl() noexcept { return *ctl_; }
  bool pinned() const noexcept { return pinned_; }

  // Runs one round; returns its duration in seconds, or a negative value on failure.
  double run_round(std::uint64_t per_producer, std::uint64_t total) {
    Control& c = *ctl_;
    c.per_producer = per_producer;
    c.total = total;
    c.t_start.store(0, std::memory_order_relaxed);
    c.t_end.store(0, std::memory_order_relaxed);
    const std::uint32_t done_before = c.done.load(std::memory_order_acquire);
    c.round.fetch_add(1, std::memory_order_release);  // [R1]
    futex_wake(&c.round);
    const std::int64_t give_up = now_ns() + 30'000'000'000;  // a hung peer must not hang `make`
    for (;;) {
      const std::uint32_t d = c.done.load(std::memory_order_acquire);
      if (d != done_before) break;
      if (c.failed.load(std::memory_order_relaxed) || !children_alive() || now_ns() > give_up) {
        if (!c.failed.load(std::memory_order_relaxed)) c.fail("a worker died or hung");
        return -1.0;
      }
      futex_wait(&c.done, d, 100'000'000);
    }
    const std::int64_t t0 = c.t_start.load(std::memory_order_relaxed);
    const std::int64_t t1 = c.t_end.load(std::memory_order_relaxed);
    return t0 > 0 && t1 >= t0 ? static_cast<double>(t1 - t0) * 1e-9 : 1e-9;
  }

  void stop() {
    if (stopped_) return;
    stopped_ = true;
    ctl_->stop.store(1, std::memory_order_release);
    ctl_->round.fetch_add(1, std::memory_order_release);
    futex_wake(&ctl_->round);
    for (auto& t : threads_) t.join();
    for (pid_t p : pids_) {
      if (p <= 0) continue;  // already reaped
      int status = 0;
      // A worker stuck in a full queue after a failure: give it a moment, then kill it.
      for (int i = 0; i < 200; ++i) {
        if (waitpid(p, &status, WNOHANG) == p) break;
        if (i == 199) {
          kill(p, SIGKILL);
          waitpid(p, &status, 0);
        }
        usleep(10'000);
      }
    }
  }

 private:
  void worker_loop(int i, std::function<void(WorkerContext&)>& body) {
    Control& c = *ctl_;
    std::uint64_t target = 0;
    for (std::uint32_t r = 1;; ++r) {
      for (;;) {
        const std::uint32_t cur = c.round.load(std::memory_order_acquire);  // [R1]
        if (cur >= r) break;
        futex_wait(&c.round, cur, 200'000'000);
        if (c.failed.load(std::memory_order_relaxed)) return;
      }
      if (c.stop.load(std::memory_order_acquire)) {
        if (mode_ == Mode::process) note_rss(c);
        return;
      }
      target += c.total;
      WorkerContext wc{c, i, r, target};
      // relaxed: a plain count, read by the coordinator after the workers were joined.
      const std::uint64_t a0 = g_allocs.load(std::memory_order_relaxed);
      body(wc);
      c.allocs.fetch_add(g_allocs.load(std::memory_order_relaxed) - a0, std::memory_order_relaxed);
    }
  }

  bool children_alive() {
    for (pid_t& p : pids_) {
      int status = 0;
      if (p > 0 && waitpid(p, &status, WNOHANG) == p) {
        p = -1;  // reaped: never signal or wait for that pid again
        return false;
      }
    }
    return true;
  }

  Shared<Control> ctl_;
  Mode mode_;
  bool pinned_ = false;
  bool stopped_ = false;
  std::vector<std::thread> threads_;
  std::vector<pid_t> pids_;
};

// Drives a benchmark: one round per iteration, manual time, items/s; on failure reports the
// worker's error. Also sets the pinned/mode labels and, when samples exist, p50/p99.
inline void drive(benchmark::State& state, Workers& w, std::uint64_t per_producer,
                  std::uint64_t total, std::uint64_t roundtrips_per_round = 0) {
  double seconds = 0;
  std::vector<std::uint32_t> samples;
  for (auto _ : state) {
    const double s = w.run_round(per_producer, total);
    if (s < 0) {
      state.SkipWithError(w.ctl().error);
      break;
    }
    state.SetIterationTime(s);
    seconds += s;
    const Control& c = w.ctl();
    samples.insert(samples.end(), c.samples, c.samples + c.n_samples);
  }
  w.stop();
  if (w.ctl().failed.load(std::memory_order_relaxed)) return;
  const auto iters = static_cast<std::int64_t>(state.iterations());
  state.SetItemsProcessed(iters * static_cast<std::int64_t>(total));
  state.counters["pinned"] = w.pinned() ? 1 : 0;
  if (g_alloc_hook && iters > 0) {
    state.counters["allocs_per_msg"] =
        static_cast<double>(w.ctl().allocs.load(std::memory_order_relaxed)) /
        static_cast<double>(iters * static_cast<std::int64_t>(total));
  }
  if (const std::int64_t r = w.ctl().rss_over_segments_kib.load(std::memory_order_relaxed);
      r != INT64_MIN) {
    state.counters["rss_over_segments_kib"] = static_cast<double>(r);
  }
  if (roundtrips_per_round > 0 && iters > 0) {
    state.counters["ns_per_roundtrip"] =
        seconds * 1e9 / static_cast<double>(iters * static_cast<std::int64_t>(roundtrips_per_round));
  }
  if (!samples.empty()) {
    std::sort(samples.begin(), samples.end());
    auto pct = [&](double q) {
      return static_cast<double>(samples[static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1))]);
    };
    state.counters["p50_ns"] = pct(0.50);
    state.counters["p99_ns"] = pct(0.99);
    state.counters["p999_ns"] = pct(0.999);
  }
}

// Records the latency sample of a round trip every `kSampleEvery` trips.
inline constexpr std::uint64_t kSampleEvery = 16;
inline void sample(Control& c, std::int64_t ns) noexcept {
  if (c.n_samples < kMaxSamples) c.samples[c.n_samples++] = static_cast<std::uint32_t>(std::min<std::int64_t>(ns, UINT32_MAX));
}

// The producer side of a round: `try_push(seq)` until it succeeds, per_producer times.
template <class TryPush>
void produce(WorkerContext& w, TryPush&& try_push) {
  w.ctl.mark_start();
  Spin spin;
  const std::uint64_t n = w.ctl.per_producer;
  for (std::uint64_t i = 0; i < n; ++i) {
    while (!try_push(i)) {
      // relaxed: a failure flag; any staleness only delays giving up.
      if (w.ctl.failed.load(std::memory_order_relaxed)) return;
      spin.wait();
    }
    spin.reset();
  }
}

// The consumer side: `try_pop()` returns how many messages it took (0 when empty). Counts are
// published in batches of 256 and whenever the queue looks empty, so consumers do not contend
// on the shared counter per message.
template <class TryPop>
void consume(WorkerContext& w, TryPop&& try_pop) {
  std::uint64_t pending = 0;
  Spin spin;
  for (;;) {
    const std::size_t n = try_pop();
    if (n > 0) {
      pending += n;
      if (pending >= 256) {
        if (w.ctl.add_consumed(pending, w.target)) return;
        pending = 0;
      }
      spin.reset();
      continue;
    }
    if (w.ctl.add_consumed(pending, w.target)) return;
    pending = 0;
    if (w.ctl.failed.load(std::memory_order_relaxed)) return;
    spin.wait();
  }
}

// A single consumer with a blocking pop: takes exactly the round's total, then reports it.
template <class Pop>
void consume_all(WorkerContext& w, Pop&& pop) {
  const std::uint64_t n = w.ctl.total;
  for (std::uint64_t i = 0; i < n; ++i) {
    if (!pop()) return;
  }
  w.ctl.add_consumed(n, w.target);
}

// The timing side of a ping-pong round: `trip(seq)` does one round trip. Every kSampleEvery-th
// trip is timed on its own for the percentiles.
template <class Trip>
void ping(WorkerContext& w, Trip&& trip) {
  Control& c = w.ctl;
  c.n_samples = 0;
  const std::uint64_t n = c.per_producer;
  const std::uint64_t base = static_cast<std::uint64_t>(w.round - 1) * n;
  c.mark_start();
  for (std::uint64_t i = 0; i < n; ++i) {
    if (i % kSampleEvery == 0) {
      const std::int64_t t0 = now_ns();
      if (!trip(base + i)) return;
      sample(c, now_ns() - t0);
    } else if (!trip(base + i)) {
      return;
    }
  }
  c.add_consumed(n, w.target);
}

// A payload of N bytes whose first 8 carry a sequence number.
template <std::size_t N>
struct Payload {
  std::byte b[N];
  void stamp(std::uint64_t v) noexcept { std::memcpy(b, &v, sizeof(v) < N ? sizeof(v) : N); }
  std::uint64_t read() const noexcept {
    std::uint64_t v = 0;
    std::memcpy(&v, b, sizeof(v) < N ? sizeof(v) : N);
    return v;
  }
};

// Elements of a ring sized to about `bytes` of payload: peers get the same memory as a Pipe.
inline std::size_t slots_for(std::size_t payload, std::size_t bytes = 1 << 20) {
  std::size_t n = bytes / payload;
  n = std::max<std::size_t>(n, 1024);
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Messages per round: about 20 ms of work at the expected rates, shorter for big payloads.
inline std::uint64_t round_messages(std::size_t payload) {
  if (payload <= 64) return 200'000;
  if (payload <= 1024) return 50'000;
  return 5'000;
}


}  // namespace shmq::bench
