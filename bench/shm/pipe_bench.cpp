// shmq::Pipe across processes (writer and reader are forked processes that open the pipe by
// name), with the same harness and round sizes as the peers in baselines/:
//   pipe/<bytes>                  try_send / try_recv, one message at a time        (P1, P2)
//   pipe_batched/<bytes>          send_many / try_recv_many, 32 per batch
//   pingpong/pipe_spin            duplex pipe, try_send + try_recv loop               (P3)
//   pingpong/pipe_sleep           duplex pipe, send + recv(Deadline::never()) with spin budget 0
//                                 on all four ends: every wait is a futex sleep       (P4)
//   pingpong/pipe_blocking        as pipe_sleep with the default spin budget (recv spins first,
//                                 so at sub-µs round trips it rarely sleeps; extra)
// Every run also counts allocations inside the rounds (allocs_per_msg, M1) and the worker
// processes' RSS beyond their mapped segments (rss_over_segments_kib, M1).
#include <unistd.h>

#include <array>
#include <benchmark/benchmark.h>
#include <memory>
#include <string>
#include <vector>

#include "alloc_count.hpp"
#include "harness.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq::bench {
namespace {

std::string unique_name(const char* what) {
  static int counter = 0;
  return "bench-" + std::string(what) + "-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
}

// Creates a named pipe and unlinks it when the benchmark ends, also on failure.
class PipeGuard {
 public:
  PipeGuard(const char* what, bool duplex, std::uint64_t capacity) : name_(unique_name(what)) {
    auto r = Pipe::create({.name = name_, .capacity = capacity, .duplex = duplex});
    if (r) {
      pipe_ = std::make_unique<Pipe>(std::move(*r));
    } else {
      error_ = std::string("Pipe::create: ").append(r.error().what);
    }
  }
  ~PipeGuard() {
    pipe_.reset();
    (void)Segment::unlink(name_);
  }
  bool ok() const noexcept { return pipe_ != nullptr; }
  const std::string& error() const noexcept { return error_; }
  const std::string& name() const noexcept { return name_; }

 private:
  std::string name_;
  std::string error_;
  std::unique_ptr<Pipe> pipe_;
};

// Opens the pipe in a worker process; reports a failure through the control block.
std::shared_ptr<Pipe> open_in_worker(const std::string& name, Control& ctl) {
  auto r = Pipe::open(name);
  if (!r) {
    ctl.fail("Pipe::open: ", r.error().what);
    return nullptr;
  }
  return std::make_shared<Pipe>(std::move(*r));
}

template <class Role>
std::shared_ptr<Role> take(Result<Role> r, Control& ctl) {
  if (!r) {
    ctl.fail("role: ", r.error().what);
    return nullptr;
  }
  return std::make_shared<Role>(std::move(*r));
}

using Body = std::function<void(WorkerContext&)>;

template <std::size_t N>
void bm_pipe(benchmark::State& state, bool batched) {
  PipeGuard g("pipe", false, 1 << 20);
  if (!g.ok()) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  const std::string name = g.name();
  Workers w(Mode::process, 2, true, [&name, batched](int index, Control& ctl) -> Body {
    auto pipe = open_in_worker(name, ctl);
    if (!pipe) return [](WorkerContext&) {};
    if (index == 0) {
      auto tx = take(pipe->writer(), ctl);
      if (!tx) return [](WorkerContext&) {};
      if (!batched) {
        return [pipe, tx](WorkerContext& wc) {
          Payload<N> item{};
          produce(wc, [&](std::uint64_t i) {
            item.stamp(i);
            const Status s = tx->try_send(std::as_bytes(std::span(item.b)));
            if (s != Status::ok && s != Status::full) wc.ctl.fail("try_send failed");
            return s == Status::ok;
          });
        };
      }
      return [pipe, tx](WorkerContext& wc) {
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
          // A partial batch re-sends its unsent tail with fresh stamps: only counts matter here.
          left -= sent;
          seq += sent;
          spin.reset();
        }
      };
    }
    auto rx = take(pipe->reader(), ctl);
    if (!rx) return [](WorkerContext&) {};
    if (!batched) {
      return [pipe, rx](WorkerContext& wc) {
        Message m;
        std::uint64_t sink = 0;
        consume(wc, [&]() -> std::size_t {
          const Status s = rx->try_recv(m);
          if (s == Status::empty) return 0;
          if (s != Status::ok || m.size() != N) {
            wc.ctl.fail("try_recv failed");
            return 0;
          }
          std::uint64_t v;
          std::memcpy(&v, m.data(), std::min<std::size_t>(8, N));
          sink += v;
          m.release();
          return 1;
        });
        benchmark::DoNotOptimize(sink);
      };
    }
    return [pipe, rx](WorkerContext& wc) {
      std::uint64_t sink = 0;
      consume(wc, [&]() -> std::size_t {
        Status why = Status::ok;
        const std::size_t n = rx->try_recv_many(
            [&](std::span<const std::byte> b, std::uint16_t) {
              std::uint64_t v = 0;
              std::memcpy(&v, b.data(), std::min<std::size_t>(8, b.size()));
              sink += v;
            },
            256, &why);
        if (n == 0 && why != Status::empty) wc.ctl.fail("try_recv_many failed");
        return n;
      });
      benchmark::DoNotOptimize(sink);
    };
  });
  const std::uint64_t n = round_messages(N);
  drive(state, w, n, n);
}

enum class Wait { spin, blocking, sleep };

void bm_pingpong(benchmark::State& state, Wait wait) {
  PipeGuard g("pingpong", true, 1 << 16);
  if (!g.ok()) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  const std::string name = g.name();
  const bool blocking = wait != Wait::spin;
  // Sleeping round trips cost ~10 µs: fewer per round, as for the bare futex peer.
  const std::uint64_t n = wait == Wait::sleep ? 5'000 : wait == Wait::blocking ? 20'000 : 100'000;
  Workers w(Mode::process, 2, true, [&name, wait, blocking, n](int index, Control& ctl) -> Body {
    auto pipe = open_in_worker(name, ctl);
    if (!pipe) return [](WorkerContext&) {};
    // End A (index 0) = writer(0) + reader(1); end B = writer(1) + reader(0).
    auto tx = take(pipe->writer(index == 0 ? 0 : 1), ctl);
    auto rx = take(pipe->reader(index == 0 ? 1 : 0), ctl);
    if (!tx || !rx) return [](WorkerContext&) {};
    if (wait == Wait::sleep) {  // the blocking calls go to the futex at once
      tx->set_spin_budget(0);
      rx->set_spin_budget(0);
    }
    // One hop: send `v`, then wait for the peer's next message and return its value.
    auto hop_send = [tx, blocking](std::uint64_t v) {
      const auto b = std::as_bytes(std::span(&v, 1));
      if (blocking) return tx->send(b, Deadline::never()) == Status::ok;
      Status s;
      while ((s = tx->try_send(b)) == Status::full) relax();
      return s == Status::ok;
    };
    auto hop_recv = [rx, blocking](std::uint64_t& v) {
      Message m;
      Status s;
      if (blocking) {
        while ((s = rx->recv(m, Deadline::never())) == Status::interrupted) {
        }
      } else {
        while ((s = rx->try_recv(m)) == Status::empty) relax();
      }
      if (s != Status::ok || m.size() != sizeof v) return false;
      std::memcpy(&v, m.data(), sizeof v);
      return true;
    };
    if (index == 0) {
      return [pipe, hop_send, hop_recv](WorkerContext& wc) {
        ping(wc, [&](std::uint64_t seq) {
          std::uint64_t back = 0;
          if (!hop_send(seq) || !hop_recv(back) || back != seq) {
            wc.ctl.fail("ping-pong: lost or wrong reply");
            return false;
          }
          return true;
        });
      };
    }
    return [pipe, hop_send, hop_recv, n](WorkerContext& wc) {
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t v = 0;
        if (!hop_recv(v) || !hop_send(v)) {
          wc.ctl.fail("pong: recv/send failed");
          return;
        }
      }
    };
  });
  drive(state, w, n, n, n);
}

template <std::size_t N>
void register_size() {
  const std::string s = std::to_string(N);
  benchmark::RegisterBenchmark(("pipe/" + s).c_str(), [](benchmark::State& st) { bm_pipe<N>(st, false); })
      ->UseManualTime();
  benchmark::RegisterBenchmark(("pipe_batched/" + s).c_str(), [](benchmark::State& st) { bm_pipe<N>(st, true); })
      ->UseManualTime();
}

}  // namespace
}  // namespace shmq::bench

int main(int argc, char** argv) {
  using namespace shmq::bench;
  register_size<8>();
  register_size<64>();
  register_size<1024>();
  benchmark::RegisterBenchmark("pingpong/pipe_spin", [](benchmark::State& st) { bm_pingpong(st, Wait::spin); })
      ->UseManualTime();
  benchmark::RegisterBenchmark("pingpong/pipe_sleep", [](benchmark::State& st) { bm_pingpong(st, Wait::sleep); })
      ->UseManualTime();
  benchmark::RegisterBenchmark("pingpong/pipe_blocking",
                               [](benchmark::State& st) { bm_pingpong(st, Wait::blocking); })
      ->UseManualTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
