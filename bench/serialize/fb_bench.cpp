// FlatBuffers over shmq channels, per message: build + send + receive + verify + read every field
// + release, for a market-data tick and an order, built in place in the claimed ring space
// ("inplace") versus built in a (reused) heap builder and then copied into the channel ("copy").
// One thread does both ends, so the numbers are the CPU cost per message, free of cross-core
// effects; the ratio copy/inplace is the saving of building in place. Also: verify vs trusted.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>

#include "../../serialize/fuzz/touch.hpp"
#include "../../tests/serialize/samples.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/schemas.hpp"
#include "shmq/serialize/writer.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

namespace {

namespace s = shmq::schema;
namespace samples = shmq::fb::samples;
using shmq::Status;

std::string bench_name(const char* what) {
  static int n = 0;
  std::string s = "b-fb-";
  s.append(what).append("-").append(std::to_string(::getpid())).append("-").append(std::to_string(n++));
  return s;
}

// Orders built without heap allocations, so the benchmark measures FlatBuffers and the channel.
// small: shaped like samples::build_order's default (2 legs, 3 tags, 4 ladder steps, a 16-byte
// note), ~420 bytes. large: 16 legs, 16 tags, 256 ladder steps, a 4 KiB note, ~7 KiB.
constexpr std::size_t kMaxLegs = 16;
char g_note[4096];

flatbuffers::Offset<s::Order> build_order_noalloc(flatbuffers::FlatBufferBuilder& b, std::uint64_t i,
                                                 bool large) {
  const std::size_t n_legs = large ? 16 : 2, n_tags = large ? 16 : 3, n_ladder = large ? 256 : 4;
  const std::size_t note_bytes = large ? sizeof g_note : 16;
  std::int64_t ladder[256];
  for (std::size_t k = 0; k < n_ladder; ++k) ladder[k] = static_cast<std::int64_t>(i + k);
  auto ladder_v = b.CreateVector(ladder, n_ladder);
  char text[24];
  int n = std::snprintf(text, sizeof text, "cl-%llu", static_cast<unsigned long long>(i));
  auto client_s = b.CreateString(text, static_cast<std::size_t>(n));
  auto account = b.CreateString("ACC-0042");
  auto symbol = b.CreateString("ESZ5");
  static const char* const kNames[kMaxLegs] = {"LEG0", "LEG1", "LEG2", "LEG3", "LEG4", "LEG5",
                                               "LEG6", "LEG7", "LEG8", "LEG9", "LEG10", "LEG11",
                                               "LEG12", "LEG13", "LEG14", "LEG15"};
  flatbuffers::Offset<s::Leg> legs[kMaxLegs];
  for (std::size_t k = 0; k < n_legs; ++k) {
    legs[k] = s::CreateLeg(b, b.CreateString(kNames[k]), k % 2 ? s::Side::Sell : s::Side::Buy,
                           static_cast<std::int32_t>(k + 1));
  }
  flatbuffers::Offset<s::Tag> tags[kMaxLegs];
  for (std::size_t k = 0; k < n_tags; ++k) {
    auto key = b.CreateString(kNames[k] + 3);  // "0", "1", ...
    tags[k] = s::CreateTag(b, key, b.CreateString(kNames[k]));
  }
  auto legs_v = b.CreateVector(legs, n_legs);
  auto tags_v = b.CreateVector(tags, n_tags);
  auto note = b.CreateString(g_note, note_bytes);
  auto limit = s::CreateLimitOrder(b, 4500.25, false);
  s::OrderBuilder o(b);
  o.add_order_id(i);
  o.add_client_order_id(client_s);
  o.add_account(account);
  o.add_symbol(symbol);
  o.add_side(s::Side::Buy);
  o.add_quantity(10);
  o.add_time_in_force(s::TimeInForce::ImmediateOrCancel);
  o.add_type_type(s::OrderType::LimitOrder);
  o.add_type(limit.Union());
  o.add_legs(legs_v);
  o.add_tags(tags_v);
  o.add_price_ladder(ladder_v);
  o.add_created_ns(static_cast<std::int64_t>(i));
  o.add_note(note);
  return o.Finish();
}

struct LargeOrder {};  // a tag: s::Order built large

template <class M>
using root_t = std::conditional_t<std::is_same_v<M, LargeOrder>, s::Order, M>;

template <class M>
auto build_fn(std::uint64_t i) {
  if constexpr (std::is_same_v<M, s::Tick>) {
    return [i](flatbuffers::FlatBufferBuilder& b) { return samples::build_tick(b, i); };
  } else {
    return [i](flatbuffers::FlatBufferBuilder& b) {
      return build_order_noalloc(b, i, std::is_same_v<M, LargeOrder>);
    };
  }
}

// The copy path: a reused heap builder, then claim, prefix, memcpy, commit.
template <class M, class W, class T = root_t<M>>
Status send_copied(W& tx, flatbuffers::FlatBufferBuilder& b, std::uint64_t i) {
  b.Clear();
  b.Finish(build_fn<M>(i)(b), shmq::fb::RootTraits<T>::identifier());
  const std::size_t n = shmq::fb::kPrefixBytes + b.GetSize();
  auto c = tx.try_claim(n, shmq::fb::kFlatBuffersKind);
  if (!c.valid()) return c.status();
  shmq::fb::store_prefix(c.bytes().data(), {shmq::fb::type_id<T>(), shmq::fb::kPrefixBytes});
  std::memcpy(c.bytes().data() + shmq::fb::kPrefixBytes, b.GetBufferPointer(), b.GetSize());
  c.commit(n);
  return Status::ok;
}

template <class M, class W, class R, class T = root_t<M>>
void run(benchmark::State& state, W& tx, R& rx, bool in_place, shmq::fb::VerifyMode mode) {
  shmq::fb::Writer<T, W> writer(tx);
  shmq::fb::Reader<T, R> reader(rx, {.mode = mode});
  flatbuffers::FlatBufferBuilder heap(1024);
  std::uint64_t i = 0, sink = 0, bytes = 0;
  for (auto _ : state) {
    const Status st = in_place ? writer.try_send(build_fn<M>(i)) : send_copied<M>(tx, heap, i);
    auto m = reader.try_recv();
    if (st != Status::ok || !m.ok()) {
      state.SkipWithError(("send/recv failed: " + m.error().message()).c_str());
      break;
    }
    sink += shmq::fb::fuzz::touch(m.get());
    bytes += m.buffer().size();
    ++i;
  }
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(static_cast<std::int64_t>(i));
  state.counters["buffer_bytes"] = i ? static_cast<double>(bytes) / static_cast<double>(i) : 0;
  state.counters["fallbacks"] = static_cast<double>(writer.fallback_copies());
}

template <class M>
void BM_pipe(benchmark::State& state) {
  const bool in_place = state.range(0) != 0;
  const auto mode = state.range(1) != 0 ? shmq::fb::VerifyMode::verify : shmq::fb::VerifyMode::trusted;
  // 256 KiB: the ring stays in L2, as it does for a consumer that keeps up.
  auto p = shmq::Pipe::create({.name = "", .capacity = 1 << 18});
  if (!p) {
    state.SkipWithError(p.error().what.c_str());
    return;
  }
  auto tx = p->writer();
  auto rx = p->reader();
  if (!tx || !rx) {
    state.SkipWithError("pipe roles");
    return;
  }
  run<M>(state, *tx, *rx, in_place, mode);
}

template <class M>
void BM_queue(benchmark::State& state) {
  const bool in_place = state.range(0) != 0;
  const auto mode = state.range(1) != 0 ? shmq::fb::VerifyMode::verify : shmq::fb::VerifyMode::trusted;
  const std::string name = bench_name("queue");
  // Slots large enough for the small order; the large one spills (both paths alike).
  auto q = shmq::Queue::create({.name = name, .slots = 256, .slot_size = 1024});
  if (!q) {
    state.SkipWithError(q.error().what.c_str());
    return;
  }
  {
    auto tx = q->writer();
    auto rx = q->reader();
    if (tx && rx) {
      run<M>(state, *tx, *rx, in_place, mode);
    } else {
      state.SkipWithError("queue handles");
    }
  }
  (void)shmq::Queue::unlink(name);
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"inplace", "verify"});
  for (int verify : {1, 0})
    for (int in_place : {1, 0}) b->Args({in_place, verify});
}

BENCHMARK(BM_pipe<s::Tick>)->Name("fb/pipe/tick")->Apply(args);
BENCHMARK(BM_pipe<s::Order>)->Name("fb/pipe/order")->Apply(args);
BENCHMARK(BM_pipe<LargeOrder>)->Name("fb/pipe/order_7k")->Apply(args);
BENCHMARK(BM_queue<s::Tick>)->Name("fb/queue/tick")->Apply(args);
BENCHMARK(BM_queue<s::Order>)->Name("fb/queue/order")->Apply(args);

}  // namespace

BENCHMARK_MAIN();
