// Adapters that give each peer queue the same two verbs, try_push(const T&) and try_pop(T&), so
// one benchmark body drives them all. Peers are used the way their authors document: fixed
// capacity, no allocation on the hot path once warm (moodycamel ConcurrentQueue is pre-sized and
// used with tokens and enqueue; see MoodyCq for why not try_enqueue).
#pragma once

#include <atomic_queue/atomic_queue.h>
#include <concurrentqueue/concurrentqueue.h>
#include <readerwriterqueue/readerwriterqueue.h>

#include <boost/date_time/posix_time/posix_time_types.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <boost/lockfree/spsc_queue.hpp>
#include <cstddef>
#include <memory>
#include <string>

namespace shmq::bench::peers {

// --- single producer, single consumer, in-process -------------------------------------------
template <class T>
class BoostSpsc {
 public:
  static constexpr const char* kName = "boost_spsc";
  explicit BoostSpsc(std::size_t capacity) : q_(capacity) {}
  bool try_push(const T& v) noexcept { return q_.push(v); }
  bool try_pop(T& v) noexcept { return q_.pop(v); }

 private:
  boost::lockfree::spsc_queue<T> q_;
};

template <class T>
class MoodyRwq {
 public:
  static constexpr const char* kName = "moodycamel_rwq";
  explicit MoodyRwq(std::size_t capacity) : q_(capacity) {}
  // try_enqueue never allocates: it fails when the pre-sized blocks are full.
  bool try_push(const T& v) noexcept { return q_.try_enqueue(v); }
  bool try_pop(T& v) noexcept { return q_.try_dequeue(v); }

 private:
  moodycamel::ReaderWriterQueue<T> q_;
};

template <class T, bool Spsc>
class AtomicQueue {
 public:
  static constexpr const char* kName = "atomic_queue";
  explicit AtomicQueue(std::size_t capacity) : q_(static_cast<unsigned>(capacity)) {}
  bool try_push(const T& v) noexcept { return q_.try_push(v); }
  bool try_pop(T& v) noexcept { return q_.try_pop(v); }

 private:
  // MAXIMIZE_THROUGHPUT=true, TOTAL_ORDER=false: the library's recommended defaults.
  atomic_queue::AtomicQueueB2<T, std::allocator<T>, true, false, Spsc> q_;
};

// --- many producers, many consumers, in-process -----------------------------------------------
// moodycamel ConcurrentQueue with explicit producer and consumer tokens (its fastest mode).
//
// Why enqueue and not try_enqueue: an explicit producer keeps every block it ever takes from the
// shared pool (it reuses its own blocks, it never gives them back). try_enqueue cannot allocate,
// so once one producer has run ahead and taken the whole pre-sized pool, a producer that still
// needs its first (or a further) block fails forever: the round never ends. That is what hung
// 64 B 2p2c/4p4c and 1024 B 2p2c (8 B had a pool bigger than a whole round). enqueue allocates a
// block in that case, as the library intends; the pool is pre-sized to `capacity` elements per
// producer so that, in steady state, blocks come from the pool and are reused, not allocated.
template <class T>
class MoodyCq {
 public:
  static constexpr const char* kName = "moodycamel_cq";
  MoodyCq(std::size_t capacity, std::size_t producers)
      : q_(capacity * producers, producers, 0) {}

  class Producer {
   public:
    explicit Producer(MoodyCq& q) : q_(q.q_), tok_(q.q_) {}
    bool try_push(const T& v) noexcept { return q_.enqueue(tok_, v); }

   private:
    moodycamel::ConcurrentQueue<T>& q_;
    moodycamel::ProducerToken tok_;
  };
  class Consumer {
   public:
    explicit Consumer(MoodyCq& q) : q_(q.q_), tok_(q.q_) {}
    bool try_pop(T& v) noexcept { return q_.try_dequeue(tok_, v); }

   private:
    moodycamel::ConcurrentQueue<T>& q_;
    moodycamel::ConsumerToken tok_;
  };

 private:
  moodycamel::ConcurrentQueue<T> q_;
};

// --- across processes ---------------------------------------------------------------------------
// Boost.Interprocess message_queue (a mutex and two condition variables in a named shared-memory
// segment under /dev/shm). The name is removed when the guard goes, also on failure.
class BoostMqName {
 public:
  explicit BoostMqName(std::string name) : name_(std::move(name)) {
    boost::interprocess::message_queue::remove(name_.c_str());
  }
  ~BoostMqName() { boost::interprocess::message_queue::remove(name_.c_str()); }
  BoostMqName(const BoostMqName&) = delete;
  BoostMqName& operator=(const BoostMqName&) = delete;
  const char* c_str() const noexcept { return name_.c_str(); }

 private:
  std::string name_;
};

}  // namespace shmq::bench::peers
