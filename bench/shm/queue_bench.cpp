// shmq::Queue across processes: P producer and C consumer processes, each opening the queue by
// name, with the same harness, capacity and round sizes as the in-process peers (mpmc/* in
// baselines/):
//   queue/<bytes>/<P>p<C>c           try_send / try_recv, one message at a time     (P5)
//   queue_batched/<bytes>/<P>p<C>c   send_many / try_recv_many, 32 per batch
// 4p4c runs 8 processes on however many cores there are (unpinned: oversubscribed).
#include <unistd.h>

#include <array>
#include <benchmark/benchmark.h>
#include <memory>
#include <string>

#include "alloc_count.hpp"
#include "harness.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::bench {
namespace {

using Body = std::function<void(WorkerContext&)>;

std::string unique_name() {
  static int counter = 0;
  return std::string("bench-queue-").append(std::to_string(getpid())).append("-").append(std::to_string(++counter));
}

class QueueGuard {
 public:
  QueueGuard(std::uint64_t slots, std::uint64_t slot_size) : name_(unique_name()) {
    auto r = Queue::create({.name = name_, .slots = slots, .slot_size = slot_size});
    if (r) {
      q_ = std::make_unique<Queue>(std::move(*r));
    } else {
      error_ = std::string("Queue::create: ").append(r.error().what);
    }
  }
  ~QueueGuard() {
    q_.reset();
    (void)Queue::unlink(name_);
  }
  bool ok() const noexcept { return q_ != nullptr; }
  const std::string& error() const noexcept { return error_; }
  const std::string& name() const noexcept { return name_; }

 private:
  std::string name_;
  std::string error_;
  std::unique_ptr<Queue> q_;
};

template <std::size_t N>
void bm_queue(benchmark::State& state, int producers, int consumers, bool batched) {
  constexpr std::uint64_t kSlotSize = (N + 7) / 8 * 8;
  QueueGuard g(slots_for(N), kSlotSize);
  if (!g.ok()) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  const std::string name = g.name();
  Workers w(Mode::process, producers + consumers, true,
            [&name, producers, batched](int index, Control& ctl) -> Body {
    auto opened = Queue::open(name);
    if (!opened) {
      ctl.fail("Queue::open: ", opened.error().what);
      return [](WorkerContext&) {};
    }
    auto q = std::make_shared<Queue>(std::move(*opened));
    if (index < producers) {
      auto r = q->writer();
      if (!r) {
        ctl.fail("writer: ", r.error().what);
        return [](WorkerContext&) {};
      }
      auto tx = std::make_shared<QueueWriter>(std::move(*r));
      if (!batched) {
        return [q, tx](WorkerContext& wc) {
          Payload<N> item{};
          produce(wc, [&](std::uint64_t i) {
            item.stamp(i);
            const Status s = tx->try_send(std::as_bytes(std::span(item.b)));
            if (s != Status::ok && s != Status::full) wc.ctl.fail("try_send failed");
            return s == Status::ok;
          });
        };
      }
      return [q, tx](WorkerContext& wc) {
        constexpr std::size_t kBatch = 32;
        std::array<Payload<N>, kBatch> items{};
        std::array<std::span<const std::byte>, kBatch> spans;
        for (std::size_t k = 0; k < kBatch; ++k) spans[k] = std::as_bytes(std::span(items[k].b));
        wc.ctl.mark_start();
        Spin spin;
        std::uint64_t left = wc.ctl.per_producer, seq = 0;
        while (left > 0) {
          const std::size_t n = std::min<std::uint64_t>(kBatch, left);
          for (std::size_t k = 0; k < n; ++k) items[k].stamp(seq + k);
          Status why = Status::ok;
          const std::size_t sent = tx->send_many(std::span(spans.data(), n), Deadline::now(), 0, &why);
          if (sent == 0) {
            if (why != Status::full && why != Status::timeout) {
              wc.ctl.fail("send_many failed");
              return;
            }
            if (wc.ctl.failed.load(std::memory_order_relaxed)) return;
            spin.wait();
            continue;
          }
          left -= sent;
          seq += sent;
          spin.reset();
        }
      };
    }
    auto r = q->reader();
    if (!r) {
      ctl.fail("reader: ", r.error().what);
      return [](WorkerContext&) {};
    }
    auto rx = std::make_shared<QueueReader>(std::move(*r));
    if (!batched) {
      return [q, rx](WorkerContext& wc) {
        Message m;
        std::uint64_t sink = 0;
        consume(wc, [&]() -> std::size_t {
          const Status s = rx->try_recv(m);
          if (s == Status::empty) return 0;
          if (s != Status::ok || m.size() != N) {
            wc.ctl.fail("try_recv failed");
            return 0;
          }
          std::uint64_t v = 0;
          std::memcpy(&v, m.data(), std::min<std::size_t>(8, N));
          sink += v;
          m.release();
          return 1;
        });
        benchmark::DoNotOptimize(sink);
      };
    }
    return [q, rx](WorkerContext& wc) {
      std::uint64_t sink = 0;
      consume(wc, [&]() -> std::size_t {
        Status why = Status::ok;
        const std::size_t n = rx->try_recv_many(
            [&](std::span<const std::byte> b, std::uint16_t) {
              std::uint64_t v = 0;
              std::memcpy(&v, b.data(), std::min<std::size_t>(8, b.size()));
              sink += v;
            },
            32, &why);
        if (n == 0 && why != Status::empty && why != Status::ok) wc.ctl.fail("try_recv_many failed");
        return n;
      });
      benchmark::DoNotOptimize(sink);
    };
  });
  const std::uint64_t per = round_messages(N) / static_cast<std::uint64_t>(producers);
  drive(state, w, per, per * static_cast<std::uint64_t>(producers));
}

template <std::size_t N>
void register_size() {
  const std::string s = std::to_string(N);
  for (int pc : {1, 2}) {
    const std::string bench_name = std::string("queue/").append(s).append(pc == 1 ? "/1p1c" : "/2p2c");
    benchmark::RegisterBenchmark(bench_name.c_str(),
                                 [pc](benchmark::State& st) { bm_queue<N>(st, pc, pc, false); })
        ->UseManualTime();
  }
  if (N == 64) {
    benchmark::RegisterBenchmark("queue/64/4p4c", [](benchmark::State& st) { bm_queue<N>(st, 4, 4, false); })
        ->UseManualTime();
    benchmark::RegisterBenchmark("queue_batched/64/1p1c",
                                 [](benchmark::State& st) { bm_queue<N>(st, 1, 1, true); })
        ->UseManualTime();
    benchmark::RegisterBenchmark("queue_batched/64/2p2c",
                                 [](benchmark::State& st) { bm_queue<N>(st, 2, 2, true); })
        ->UseManualTime();
  }
}

}  // namespace
}  // namespace shmq::bench

int main(int argc, char** argv) {
  using namespace shmq::bench;
  register_size<8>();
  register_size<64>();
  register_size<1024>();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
