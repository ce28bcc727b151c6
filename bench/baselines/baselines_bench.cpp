// Peer queues measured with the same harness as shmq, in the same run (see bench/run.py):
//   spsc/<peer>/<bytes>                in-process SPSC, 2 pinned threads          (P1's yardstick)
//   mpmc/<peer>/<bytes>/<P>p<C>c       in-process MPMC, P+C threads               (P5's yardstick)
//   xproc/boost_mq/<bytes>             Boost.Interprocess message_queue, 2 processes   (P2)
//   pingpong/cacheline                 two atomics in a shared mapping, spinning      (P3)
//   pingpong/futex                     two shared futex words, always sleeping        (P4)
//   pingpong/boost_mq                  two Boost message_queues, blocking calls        (P4)
#include <unistd.h>

#include <benchmark/benchmark.h>
#include <cstdio>
#include <memory>
#include <string>

#include "baselines/peers.hpp"
#include "harness.hpp"

namespace shmq::bench {
namespace {

namespace bip = boost::interprocess;

template <class Q, std::size_t N>
void bm_spsc(benchmark::State& state) {
  using T = Payload<N>;
  auto q = std::make_unique<Q>(slots_for(N));
  Workers w(Mode::thread, 2, true, [&q](int index, Control&) -> std::function<void(WorkerContext&)> {
    if (index == 0) {
      return [&q](WorkerContext& wc) {
        T item{};
        produce(wc, [&](std::uint64_t i) {
          item.stamp(i);
          return q->try_push(item);
        });
      };
    }
    return [&q](WorkerContext& wc) {
      T item;
      std::uint64_t sink = 0;
      consume(wc, [&]() -> std::size_t {
        if (!q->try_pop(item)) return 0;
        sink += item.read();
        return 1;
      });
      benchmark::DoNotOptimize(sink);
    };
  });
  const std::uint64_t n = round_messages(N);
  drive(state, w, n, n);
}

template <class Q, std::size_t N>
void bm_mpmc(benchmark::State& state, int producers, int consumers) {
  using T = Payload<N>;
  auto q = std::make_unique<Q>(slots_for(N), static_cast<std::size_t>(producers));
  Workers w(Mode::thread, producers + consumers, true,
            [&q, producers](int index, Control&) -> std::function<void(WorkerContext&)> {
              if (index < producers) {
                auto tok = std::make_shared<typename Q::Producer>(*q);
                return [tok](WorkerContext& wc) {
                  T item{};
                  produce(wc, [&](std::uint64_t i) {
                    item.stamp(i);
                    return tok->try_push(item);
                  });
                };
              }
              auto tok = std::make_shared<typename Q::Consumer>(*q);
              return [tok](WorkerContext& wc) {
                T item;
                std::uint64_t sink = 0;
                consume(wc, [&]() -> std::size_t {
                  if (!tok->try_pop(item)) return 0;
                  sink += item.read();
                  return 1;
                });
                benchmark::DoNotOptimize(sink);
              };
            });
  const std::uint64_t per = round_messages(N) / static_cast<std::uint64_t>(producers);
  drive(state, w, per, per * static_cast<std::uint64_t>(producers));
}

// atomic_queue has no tokens: producers and consumers share the queue object directly.
template <std::size_t N>
class AtomicMpmc {
 public:
  using T = Payload<N>;
  AtomicMpmc(std::size_t capacity, std::size_t) : q_(capacity) {}
  struct Producer {
    explicit Producer(AtomicMpmc& a) : q(a.q_) {}
    bool try_push(const T& v) noexcept { return q.try_push(v); }
    peers::AtomicQueue<T, false>& q;
  };
  struct Consumer {
    explicit Consumer(AtomicMpmc& a) : q(a.q_) {}
    bool try_pop(T& v) noexcept { return q.try_pop(v); }
    peers::AtomicQueue<T, false>& q;
  };

 private:
  peers::AtomicQueue<T, false> q_;
};

std::string unique_name(const char* what) {
  static int counter = 0;
  return "shmq-bench-" + std::string(what) + "-" + std::to_string(getpid()) + "-" +
         std::to_string(++counter);
}

// Boost.Interprocess deadlines are universal-time ptimes.
boost::posix_time::ptime deadline() {
  return boost::posix_time::microsec_clock::universal_time() + boost::posix_time::seconds(10);
}

template <std::size_t N>
void bm_boost_mq(benchmark::State& state) {
  peers::BoostMqName name(unique_name("mq"));
  const std::size_t slots = std::min<std::size_t>(slots_for(N), 16384);
  try {
    bip::message_queue create(bip::create_only, name.c_str(), slots, N);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  Workers w(Mode::process, 2, true, [&name](int index, Control&) -> std::function<void(WorkerContext&)> {
    auto mq = std::make_shared<bip::message_queue>(bip::open_only, name.c_str());
    if (index == 0) {
      return [mq](WorkerContext& wc) {
        Payload<N> item{};
        produce(wc, [&](std::uint64_t i) {
          item.stamp(i);
          // Blocking (bounded, so a lost wake-up reports instead of hanging the run).
          if (mq->timed_send(item.b, N, 0, deadline())) return true;
          wc.ctl.fail("boost mq: send blocked 10 s");
          return false;
        });
      };
    }
    return [mq](WorkerContext& wc) {
      Payload<N> item;
      std::uint64_t sink = 0;
      consume_all(wc, [&] {
        bip::message_queue::size_type got = 0;
        unsigned prio = 0;
        if (!mq->timed_receive(item.b, N, got, prio, deadline())) {
          wc.ctl.fail(mq->get_num_msg() > 0 ? "boost mq: receive slept 10 s with messages queued"
                                            : "boost mq: receive blocked 10 s");
          return false;
        }
        if (got != N) wc.ctl.fail("boost mq: short message");
        sink += item.read();
        return got == N;
      });
      benchmark::DoNotOptimize(sink);
    };
  });
  const std::uint64_t n = round_messages(N) / 4;  // message_queue is ~10x slower: shorter rounds
  drive(state, w, n, n);
}

struct CachelinePair {
  alignas(kLine) std::atomic<std::uint64_t> ping{0};
  alignas(kLine) std::atomic<std::uint64_t> pong{0};
};

void bm_pingpong_cacheline(benchmark::State& state) {
  Shared<CachelinePair> pair;
  CachelinePair* p = &*pair;
  const std::uint64_t n = 100'000;
  Workers w(Mode::process, 2, true, [p, n](int index, Control&) -> std::function<void(WorkerContext&)> {
    if (index == 0) {
      return [p](WorkerContext& wc) {
        ping(wc, [&](std::uint64_t seq) {
          // release/acquire: the bare minimum a message hand-off needs.
          p->ping.store(seq + 1, std::memory_order_release);
          while (p->pong.load(std::memory_order_acquire) != seq + 1) relax();
          return true;
        });
      };
    }
    return [p, n](WorkerContext& wc) {
      const std::uint64_t base = static_cast<std::uint64_t>(wc.round - 1) * n;
      for (std::uint64_t i = 0; i < n; ++i) {
        while (p->ping.load(std::memory_order_acquire) != base + i + 1) relax();
        p->pong.store(base + i + 1, std::memory_order_release);
      }
    };
  });
  drive(state, w, n, n, n);
}

struct FutexPair {
  alignas(kLine) std::atomic<std::uint32_t> ping{0};
  alignas(kLine) std::atomic<std::uint32_t> pong{0};
};

void bm_pingpong_futex(benchmark::State& state) {
  Shared<FutexPair> pair;
  FutexPair* p = &*pair;
  const std::uint64_t n = 5'000;
  // Each side sleeps in FUTEX_WAIT at once and the other always issues FUTEX_WAKE: the cost of
  // a sleeping hand-off with nothing else around it.
  Workers w(Mode::process, 2, true, [p, n](int index, Control&) -> std::function<void(WorkerContext&)> {
    if (index == 0) {
      return [p](WorkerContext& wc) {
        ping(wc, [&](std::uint64_t seq) {
          const auto want = static_cast<std::uint32_t>(seq + 1);
          p->ping.store(want, std::memory_order_release);
          futex_wake(&p->ping, 1);
          for (std::uint32_t v; (v = p->pong.load(std::memory_order_acquire)) != want;)
            futex_wait(&p->pong, v, 1'000'000'000);
          return true;
        });
      };
    }
    return [p, n](WorkerContext& wc) {
      const std::uint64_t base = static_cast<std::uint64_t>(wc.round - 1) * n;
      for (std::uint64_t i = 0; i < n; ++i) {
        const auto want = static_cast<std::uint32_t>(base + i + 1);
        for (std::uint32_t v; (v = p->ping.load(std::memory_order_acquire)) != want;)
          futex_wait(&p->ping, v, 1'000'000'000);
        p->pong.store(want, std::memory_order_release);
        futex_wake(&p->pong, 1);
      }
    };
  });
  drive(state, w, n, n, n);
}

void bm_pingpong_boost_mq(benchmark::State& state) {
  peers::BoostMqName there(unique_name("mq-ping"));
  peers::BoostMqName back(unique_name("mq-pong"));
  try {
    bip::message_queue a(bip::create_only, there.c_str(), 64, 8);
    bip::message_queue b(bip::create_only, back.c_str(), 64, 8);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const std::uint64_t n = 5'000;
  Workers w(Mode::process, 2, true,
            [&there, &back, n](int index, Control&) -> std::function<void(WorkerContext&)> {
              auto to = std::make_shared<bip::message_queue>(bip::open_only,
                                                             index == 0 ? there.c_str() : back.c_str());
              auto from = std::make_shared<bip::message_queue>(bip::open_only,
                                                               index == 0 ? back.c_str() : there.c_str());
              if (index == 0) {
                return [to, from](WorkerContext& wc) {
                  ping(wc, [&](std::uint64_t seq) {
                    std::uint64_t v = seq;
                    to->send(&v, sizeof v, 0);
                    bip::message_queue::size_type got = 0;
                    unsigned prio = 0;
                    from->receive(&v, sizeof v, got, prio);
                    return v == seq;
                  });
                };
              }
              return [to, from, n](WorkerContext&) {
                for (std::uint64_t i = 0; i < n; ++i) {
                  std::uint64_t v = 0;
                  bip::message_queue::size_type got = 0;
                  unsigned prio = 0;
                  from->receive(&v, sizeof v, got, prio);
                  to->send(&v, sizeof v, 0);
                }
              };
            });
  drive(state, w, n, n, n);
}

template <std::size_t N>
void register_size() {
  const std::string s = std::to_string(N);
  benchmark::RegisterBenchmark(("spsc/boost_spsc/" + s).c_str(), bm_spsc<peers::BoostSpsc<Payload<N>>, N>)
      ->UseManualTime();
  benchmark::RegisterBenchmark(("spsc/moodycamel_rwq/" + s).c_str(), bm_spsc<peers::MoodyRwq<Payload<N>>, N>)
      ->UseManualTime();
  benchmark::RegisterBenchmark(("spsc/atomic_queue/" + s).c_str(),
                               bm_spsc<peers::AtomicQueue<Payload<N>, true>, N>)
      ->UseManualTime();
  for (int pc : {1, 2}) {
    const std::string tag = "/" + std::to_string(pc) + "p" + std::to_string(pc) + "c";
    benchmark::RegisterBenchmark(("mpmc/moodycamel_cq/" + s + tag).c_str(),
                                 [pc](benchmark::State& st) {
                                   bm_mpmc<peers::MoodyCq<Payload<N>>, N>(st, pc, pc);
                                 })
        ->UseManualTime();
    if (N == 64) {
      benchmark::RegisterBenchmark(("mpmc/atomic_queue/" + s + tag).c_str(),
                                   [pc](benchmark::State& st) { bm_mpmc<AtomicMpmc<N>, N>(st, pc, pc); })
          ->UseManualTime();
    }
  }
  if (N == 64) {
    benchmark::RegisterBenchmark(("mpmc/moodycamel_cq/" + s + "/4p4c").c_str(),
                                 [](benchmark::State& st) { bm_mpmc<peers::MoodyCq<Payload<N>>, N>(st, 4, 4); })
        ->UseManualTime();
  }
  benchmark::RegisterBenchmark(("xproc/boost_mq/" + s).c_str(), bm_boost_mq<N>)->UseManualTime();
}

}  // namespace
}  // namespace shmq::bench

int main(int argc, char** argv) {
  using namespace shmq::bench;
  register_size<8>();
  register_size<64>();
  register_size<1024>();
  benchmark::RegisterBenchmark("pingpong/cacheline", bm_pingpong_cacheline)->UseManualTime();
  benchmark::RegisterBenchmark("pingpong/futex", bm_pingpong_futex)->UseManualTime();
  benchmark::RegisterBenchmark("pingpong/boost_mq", bm_pingpong_boost_mq)->UseManualTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
