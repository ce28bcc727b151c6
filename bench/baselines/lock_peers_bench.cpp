// Peer locks for S1 and S2 (see bench/run.py), measured with bench/lock_runner.hpp:
//   lock/std_mutex/uncontended          std::mutex, one thread
//   lock/pthread_robust/uncontended     a process-shared robust pthread_mutex_t in shared memory
//   lock/pthread_robust/2proc           the same mutex, two processes incrementing a counter
// A robust mutex is the POSIX answer to a holder that dies (EOWNERDEAD), the nearest peer of
// shmq's Mutex; a lock taken with EOWNERDEAD is made consistent and counts as taken.
#include <pthread.h>
#include <sys/mman.h>

#include <benchmark/benchmark.h>
#include <cerrno>
#include <mutex>

#include "lock_runner.hpp"

namespace shmq::bench {
namespace {

// A robust, process-shared mutex in a MAP_SHARED mapping (inherited by forked workers).
class RobustMutex {
 public:
  RobustMutex() {
    void* p = ::mmap(nullptr, sizeof(pthread_mutex_t), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    m_ = static_cast<pthread_mutex_t*>(p);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    ok_ = pthread_mutex_init(m_, &a) == 0;
    pthread_mutexattr_destroy(&a);
  }
  ~RobustMutex() {
    if (m_ == nullptr) return;
    pthread_mutex_destroy(m_);
    ::munmap(m_, sizeof(pthread_mutex_t));
  }
  bool ok() const { return ok_; }
  bool lock() {
    const int r = pthread_mutex_lock(m_);
    if (r == EOWNERDEAD) return pthread_mutex_consistent(m_) == 0;
    return r == 0;
  }
  void unlock() { pthread_mutex_unlock(m_); }

 private:
  pthread_mutex_t* m_ = nullptr;
  bool ok_ = false;
};

void bm_std_mutex(benchmark::State& state) {
  std::mutex m;
  uncontended(state, [&] { m.lock(); }, [&] { m.unlock(); });
}

void bm_robust_uncontended(benchmark::State& state) {
  RobustMutex m;
  if (!m.ok()) return state.SkipWithError("pthread_mutex_init failed");
  uncontended(state, [&] { m.lock(); }, [&] { m.unlock(); });
}

void bm_robust_2proc(benchmark::State& state) {
  RobustMutex m;
  if (!m.ok()) return state.SkipWithError("pthread_mutex_init failed");
  two_process_counter(state, [&m](CounterControl&) -> CounterBody {
    return [&m](std::uint64_t& counter) {
      if (!m.lock()) return false;
      ++counter;
      m.unlock();
      return true;
    };
  });
}

BENCHMARK(bm_std_mutex)->Name("lock/std_mutex/uncontended");
BENCHMARK(bm_robust_uncontended)->Name("lock/pthread_robust/uncontended");
BENCHMARK(bm_robust_2proc)->Name("lock/pthread_robust/2proc")->UseManualTime();

}  // namespace
}  // namespace shmq::bench
