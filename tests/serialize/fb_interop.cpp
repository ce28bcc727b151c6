// The C++ end of the Python interop tests (tests/python/test_fb.py): writes or reads messages of
// the shipped schemas through a named Queue with the flatc-generated shmq::fb::Writer<T> /
// Reader<T>, the way a C++ service would talk to a Python one.
//   fb_interop write-order|write-tick QUEUE N   sends samples::build_order/build_tick(i), i < N
//   fb_interop read-order|read-tick QUEUE N     receives N, checks each with check_order/check_tick
// Exit 0 when every message was sent / read back as expected; 1 with the reason on stderr.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "samples.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/schemas.hpp"
#include "shmq/serialize/writer.hpp"
#include "shmq/shm/queue.hpp"

namespace {

namespace s = shmq::schema;
namespace samples = shmq::fb::samples;
using namespace std::chrono_literals;

// The order shape both sides agree on (test_fb.py builds the same dicts).
const samples::OrderShape kShape{.legs = 3, .tags = 2, .ladder = 5, .note_bytes = 8};

int fail(const std::string& why) {
  std::fprintf(stderr, "fb_interop: %s\n", why.c_str());
  return 1;
}

template <class T, class Build>
int write(shmq::QueueWriter& w, std::uint64_t n, Build&& build) {
  shmq::fb::Writer<T, shmq::QueueWriter> sut(w);
  for (std::uint64_t i = 0; i < n; ++i) {
    const shmq::Status st = sut.send([&](auto& b) { return build(b, i); }, shmq::Deadline::in(30s));
    if (st != shmq::Status::ok) return fail("send " + std::to_string(i) + ": " + std::string(shmq::status_name(st)));
  }
  return 0;
}

template <class T, class Check>
int read(shmq::QueueReader& r, std::uint64_t n, Check&& check) {
  shmq::fb::Reader<T, shmq::QueueReader> sut(r);
  for (std::uint64_t i = 0; i < n; ++i) {
    auto m = sut.recv(shmq::Deadline::in(30s));
    if (!m) return fail("message " + std::to_string(i) + ": " + m.error().message());
    if (!check(m.get(), i)) return fail("message " + std::to_string(i) + " differs from what was sent");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return fail("usage: fb_interop write-order|write-tick|read-order|read-tick QUEUE N");
  const std::string mode = argv[1];
  const std::uint64_t n = std::strtoull(argv[3], nullptr, 10);
  auto q = shmq::Queue::open(argv[2]);
  if (!q) return fail(q.error().what);
  if (mode.rfind("write", 0) == 0) {
    auto w = q->writer();
    if (!w) return fail(w.error().what);
    if (mode == "write-order") {
      return write<s::Order>(*w, n, [](auto& b, std::uint64_t i) { return samples::build_order(b, i, kShape); });
    }
    return write<s::Tick>(*w, n, [](auto& b, std::uint64_t i) { return samples::build_tick(b, i); });
  }
  auto r = q->reader();
  if (!r) return fail(r.error().what);
  if (mode == "read-order") {
    return read<s::Order>(*r, n, [](const s::Order* o, std::uint64_t i) { return samples::check_order(o, i, kShape); });
  }
  return read<s::Tick>(*r, n, [](const s::Tick* t, std::uint64_t i) { return samples::check_tick(t, i); });
}
