#include "shmq/core/spsc_ring.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;
using namespace shmq::core;
using namespace std::chrono_literals;

namespace {

using shmq::testing::scaled;

// A ring in process memory, aligned like a segment body, with both ends attached.
struct Ring {
  explicit Ring(std::uint64_t capacity) : capacity(capacity) {
    const std::size_t bytes = SpscRing::required_bytes(capacity);
    mem = static_cast<std::byte*>(::operator new(bytes, std::align_val_t{kCacheLine}));
    std::memset(mem, 0xEE, bytes);  // garbage where the ring does not write
    REQUIRE(SpscRing::init_in(span(), capacity));
    REQUIRE(writer.attach(span(), capacity, &stats) == Status::ok);
    REQUIRE(reader.attach(span(), capacity, &stats) == Status::ok);
  }
  ~Ring() { ::operator delete(mem, std::align_val_t{kCacheLine}); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  std::span<std::byte> span() const { return {mem, SpscRing::required_bytes(capacity)}; }
  SpscRingControl& control() const { return *SpscRing::control(span()); }
  std::byte* data() const { return mem + SpscRing::kControlBytes; }

  std::uint64_t capacity;
  std::byte* mem;
  Stats stats{};
  SpscWriter writer;
  SpscReader reader;
};

// Message `seq`: its kind and every byte follow from seq, so the reader can check all of it.
std::uint16_t kind_of(std::uint64_t seq) { return static_cast<std::uint16_t>(seq * 7 + 1); }
std::byte byte_of(std::uint64_t seq, std::size_t i) {
  return static_cast<std::byte>((seq * 131 + i * 7 + (i >> 8)) & 0xFF);
}
std::vector<std::byte> make_msg(std::uint64_t seq, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = byte_of(seq, i);
  return v;
}
bool msg_ok(std::uint64_t seq, std::size_t n, std::span<const std::byte> got, std::uint16_t kind) {
  if (got.size() != n || kind != kind_of(seq)) return false;
  for (std::size_t i = 0; i < n; ++i) {
    if (got[i] != byte_of(seq, i)) return false;
  }
  return true;
}

// Sizes: mostly small, some up to max_payload, a few streamed (up to 3x the ring).
std::size_t size_of(std::uint64_t seq, std::uint64_t capacity) {
  std::uint64_t x = seq * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  const std::uint64_t r = x % 1000;
  if (r < 900) return x % 65;
  if (r < 990) return x % (capacity / 2);
  return 1 + x % (3 * capacity);
}

std::span<const std::byte> bytes_of(const std::vector<std::byte>& v) { return {v.data(), v.size()}; }

}  // namespace

TEST_CASE("spsc ring: a sent message is received intact with its kind") {
  Ring sut(1024);
  const auto msg = make_msg(1, 100);
  REQUIRE(sut.writer.try_send(bytes_of(msg), kind_of(1)) == Status::ok);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(v.zero_copy);
  CHECK(msg_ok(1, 100, v.bytes, v.kind));
  sut.reader.release(v.end);
  CHECK(sut.reader.try_recv(v) == Status::empty);
}

TEST_CASE("spsc ring: an empty message is a message") {
  Ring sut(256);
  REQUIRE(sut.writer.try_send({}, 9) == Status::ok);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(v.bytes.empty());
  CHECK(v.kind == 9);
}

TEST_CASE("spsc ring: try_send reports full when the reader lags, and ok once it reads") {
  Ring sut(256);
  const auto msg = make_msg(0, 56);  // 64-byte records: 4 fill the ring
  for (int i = 0; i < 4; ++i) REQUIRE(sut.writer.try_send(bytes_of(msg), 0) == Status::ok);
  CHECK(sut.writer.try_send(bytes_of(msg), 0) == Status::full);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(sut.writer.try_send(bytes_of(msg), 0) == Status::full);  // the view still holds its space
  sut.reader.release(v.end);
  CHECK(sut.writer.try_send(bytes_of(msg), 0) == Status::ok);
}

TEST_CASE("spsc ring: the reader returns space in batches of head_batch bytes, and when it runs dry") {
  Ring sut(4096);
  REQUIRE(SpscRing::head_batch(4096) == 256);
  const auto msg = make_msg(0, 56);  // 64-byte records: 64 fill the ring, 4 make a batch
  int sent = 0;
  while (sut.writer.try_send(bytes_of(msg), 0) == Status::ok) ++sent;
  REQUIRE(sent == 64);
  RecvView v;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(sut.reader.try_recv(v) == Status::ok);
    sut.reader.release(v.end);
  }
  // 192 bytes read: below the batch, so not yet returned, but recorded for a later reader.
  CHECK(sut.control().head.load(std::memory_order_seq_cst) == 0);
  CHECK(sut.control().read_pos.load(std::memory_order_seq_cst) == 192);
  CHECK(sut.writer.try_send(bytes_of(msg), 0) == Status::full);
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  sut.reader.release(v.end);
  CHECK(sut.control().head.load(std::memory_order_seq_cst) == 256);
  CHECK(sut.writer.try_send(bytes_of(msg), 0) == Status::ok);
  // Reading on to the end returns everything, batch or not.
  int got = 0;
  while (sut.reader.try_recv(v) == Status::ok) {
    sut.reader.release(v.end);
    ++got;
  }
  CHECK(got == 61);
  CHECK(sut.control().head.load(std::memory_order_seq_cst) ==
        sut.control().tail.load(std::memory_order_seq_cst));
}

TEST_CASE("spsc ring: closing the reader returns the space it read") {
  Ring sut(4096);
  for (int i = 0; i < 2; ++i) REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 56)), 0) == Status::ok);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  sut.reader.release(v.end);
  CHECK(sut.control().head.load(std::memory_order_seq_cst) == 0);
  sut.reader.close();
  CHECK(sut.control().head.load(std::memory_order_seq_cst) == 64);
}

TEST_CASE("spsc ring: records that would cross the end wrap behind a padding record, in order") {
  Ring sut(256);
  std::uint64_t sent = 0, received = 0;
  for (int round = 0; round < 200; ++round) {
    // 40-byte payloads make 48-byte records: 256 is not a multiple of 48, so padding happens.
    while (sut.writer.try_send(bytes_of(make_msg(sent, 40)), kind_of(sent)) == Status::ok) ++sent;
    RecvView v;
    REQUIRE(sut.reader.try_recv(v) == Status::ok);
    REQUIRE(msg_ok(received, 40, v.bytes, v.kind));
    sut.reader.release(v.end);
    ++received;
  }
  RecvView v;
  while (sut.reader.try_recv(v) == Status::ok) {
    REQUIRE(msg_ok(received++, 40, v.bytes, v.kind));
    sut.reader.release(v.end);
  }
  CHECK(received == sent);
  CHECK(sent > 200);
}

TEST_CASE("spsc ring: try_send streams a message above max_payload that fits, in one publish") {
  Ring sut(1024);
  const std::size_t n = sut.writer.max_claim() + 100;
  REQUIRE(sut.writer.try_send(bytes_of(make_msg(5, n)), kind_of(5)) == Status::ok);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK_FALSE(v.zero_copy);
  CHECK(msg_ok(5, n, v.bytes, v.kind));
  const auto taken = sut.reader.take_assembled();
  CHECK(taken.size() == n);
}

TEST_CASE("spsc ring: try_send of a message larger than the ring reports too_big") {
  Ring sut(1024);
  CHECK(sut.writer.try_send(bytes_of(make_msg(0, 1025)), 0) == Status::too_big);
  CHECK(sut.writer.try_send(bytes_of(make_msg(0, 1020)), 0) == Status::too_big);  // + headers
  CHECK(sut.writer.try_claim(sut.writer.max_claim() + 1) == nullptr);
  CHECK(sut.writer.last_status() == Status::too_big);
}

TEST_CASE("spsc ring: a message many times the ring streams in chunks and is reassembled") {
  Ring sut(256);
  constexpr std::size_t kBig = 10'000;
  std::thread writer([&] {
    for (std::uint64_t seq = 0; seq < 20; ++seq) {
      const std::size_t n = seq % 2 == 0 ? kBig + seq : 10;
      REQUIRE(sut.writer.send(bytes_of(make_msg(seq, n)), Deadline::never(), kind_of(seq),
                              AlwaysAlive{}) == Status::ok);
    }
  });
  for (std::uint64_t seq = 0; seq < 20; ++seq) {
    RecvView v;
    REQUIRE(sut.reader.recv(v, Deadline::in(30s), AlwaysAlive{}) == Status::ok);
    const std::size_t n = seq % 2 == 0 ? kBig + seq : 10;
    CHECK(msg_ok(seq, n, v.bytes, v.kind));
    if (v.zero_copy) sut.reader.release(v.end);
  }
  writer.join();
}

TEST_CASE("spsc ring: a chunked send that times out is aborted and never delivered") {
  Ring sut(256);
  // Nobody reads: the first two chunks fill the ring, the third times out.
  CHECK(sut.writer.send(bytes_of(make_msg(1, 1000)), Deadline::in(5ms), 1, AlwaysAlive{}) ==
        Status::timeout);
  RecvView v;
  CHECK(sut.reader.try_recv(v) == Status::empty);  // two chunks consumed, message incomplete
  // The next send first appends the abort record; the reader drops the partial message.
  REQUIRE(sut.writer.send(bytes_of(make_msg(2, 30)), Deadline::in(5s), kind_of(2), AlwaysAlive{}) ==
          Status::ok);
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(msg_ok(2, 30, v.bytes, v.kind));
}

TEST_CASE("spsc ring: send_many publishes the tail once and recv_many the head once") {
  Ring sut(4096);
  std::vector<std::vector<std::byte>> msgs;
  std::vector<std::span<const std::byte>> spans;
  for (std::uint64_t seq = 0; seq < 10; ++seq) msgs.push_back(make_msg(seq, 20 + seq));
  for (const auto& m : msgs) spans.push_back(bytes_of(m));
  // A registered waiter makes every notify a counted FUTEX_WAKE: wakes == publishes.
  sut.control().data_wait.waiters.fetch_add(1, std::memory_order_seq_cst);
  sut.control().space_wait.waiters.fetch_add(1, std::memory_order_seq_cst);
  CHECK(sut.writer.send_many(spans, Deadline::now(), 3, AlwaysAlive{}) == 10);
  CHECK(Stats::read(sut.stats.wakes) == 1);
  std::uint64_t seq = 0;
  bool all_ok = true;
  const std::size_t n = sut.reader.recv_many(
      [&](std::span<const std::byte> b, std::uint16_t kind) {
        all_ok = all_ok && kind == 3 && b.size() == 20 + seq && b[0] == byte_of(seq, 0);
        ++seq;
      },
      100);
  CHECK(n == 10);
  CHECK(all_ok);
  CHECK(Stats::read(sut.stats.wakes) == 2);
  sut.control().data_wait.waiters.fetch_sub(1, std::memory_order_seq_cst);
  sut.control().space_wait.waiters.fetch_sub(1, std::memory_order_seq_cst);
}

TEST_CASE("spsc ring: batches say why they stopped: ok when done, else the outcome") {
  Ring sut(256);  // max_payload 120: two 100-byte records fill it
  const auto msg = make_msg(0, 100);
  const std::vector<std::span<const std::byte>> three(3, bytes_of(msg));
  Status why = Status::ok;
  CHECK(sut.writer.send_many(three, Deadline::now(), 0, AlwaysAlive{}, &why) == 2);
  CHECK(why == Status::timeout);  // the third found no room before the (past) deadline
  std::size_t seen = 0;
  auto count = [&](std::span<const std::byte>, std::uint16_t) { ++seen; };
  CHECK(sut.reader.recv_many(count, 1, &why) == 1);
  CHECK(why == Status::ok);
  CHECK(sut.reader.recv_many(count, 10, &why) == 1);
  CHECK(why == Status::ok);  // a receive takes "up to max": one is a success
  CHECK(sut.reader.recv_many(count, 10, &why) == 0);
  CHECK(why == Status::empty);
  CHECK(sut.writer.send_many(std::span(three).first(1), Deadline::now(), 0, AlwaysAlive{}, &why) == 1);
  CHECK(why == Status::ok);
  sut.writer.close();
  CHECK(sut.reader.recv_many(count, 10, &why) == 1);
  CHECK(sut.reader.recv_many(count, 10, &why) == 0);
  CHECK(why == Status::closed);
  CHECK(seen == 3);
}

TEST_CASE("spsc ring: a claim is published by commit with the used length, and abort publishes nothing") {
  Ring sut(1024);
  std::byte* p = sut.writer.try_claim(300, 4);
  REQUIRE(p != nullptr);
  const auto msg = make_msg(4, 120);
  std::memcpy(p, msg.data(), msg.size());
  sut.writer.commit(120);
  p = sut.writer.try_claim(50, 5);
  REQUIRE(p != nullptr);
  sut.writer.abort_claim();
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(v.bytes.size() == 120);
  CHECK(v.kind == 4);
  CHECK(std::memcmp(v.bytes.data(), msg.data(), 120) == 0);
  sut.reader.release(v.end);
  CHECK(sut.reader.try_recv(v) == Status::empty);
}

TEST_CASE("spsc ring: a claim at the end of the data area wraps behind padding") {
  Ring sut(512);
  RecvView v;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 150)), 0) == Status::ok);  // 160 bytes
    REQUIRE(sut.reader.try_recv(v) == Status::ok);
    REQUIRE(v.zero_copy);
    sut.reader.release(v.end);
  }
  std::byte* p = sut.writer.try_claim(100, 1);  // 112 bytes do not fit in the last 32
  REQUIRE(p != nullptr);
  CHECK(p == sut.data() + 8);
  std::memset(p, 0x5A, 100);
  sut.writer.commit(100);
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(v.bytes.size() == 100);
  CHECK(v.bytes[99] == std::byte{0x5A});
}

TEST_CASE("spsc ring: the reader gets closed after the writer closes and the ring drains") {
  Ring sut(256);
  REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 8)), kind_of(0)) == Status::ok);
  sut.writer.close();
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(msg_ok(0, 8, v.bytes, v.kind));
  sut.reader.release(v.end);
  CHECK(sut.reader.try_recv(v) == Status::closed);
  CHECK(sut.reader.recv(v, Deadline::never(), AlwaysAlive{}) == Status::closed);
}

TEST_CASE("spsc ring: the writer gets closed after the reader closes") {
  Ring sut(256);
  sut.reader.close();
  CHECK(sut.writer.try_send(bytes_of(make_msg(0, 8)), 0) == Status::closed);
  CHECK(sut.writer.send(bytes_of(make_msg(0, 8)), Deadline::never(), 0, AlwaysAlive{}) ==
        Status::closed);
}

TEST_CASE("spsc ring: a reader whose writer is declared dead drains, then gets closed") {
  Ring sut(256);
  REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 8)), kind_of(0)) == Status::ok);
  RecvView v;
  // The liveness callback says dead: recv still delivers what was committed, then closed.
  auto dead = [] { return false; };
  REQUIRE(sut.reader.recv(v, Deadline::never(), dead) == Status::ok);
  sut.reader.release(v.end);
  CHECK(sut.reader.recv(v, Deadline::never(), dead) == Status::closed);
}

TEST_CASE("spsc ring: recv honours its deadline") {
  Ring sut(256);
  RecvView v;
  const Deadline d = Deadline::in(20ms);
  CHECK(sut.reader.recv(v, d, AlwaysAlive{}) == Status::timeout);
  CHECK(d.expired());
  CHECK(Stats::read(sut.stats.empty_waits) >= 1);
  CHECK(sut.reader.recv(v, Deadline::now(), AlwaysAlive{}) == Status::timeout);
}

TEST_CASE("spsc ring: send on a full ring honours its deadline") {
  Ring sut(256);
  while (sut.writer.try_send(bytes_of(make_msg(0, 56)), 0) == Status::ok) {
  }
  const Deadline d = Deadline::in(20ms);
  CHECK(sut.writer.send(bytes_of(make_msg(0, 56)), d, 0, AlwaysAlive{}) == Status::timeout);
  CHECK(d.expired());
  CHECK(Stats::read(sut.stats.full_waits) >= 1);
}

TEST_CASE("spsc ring: a sleeping reader is woken by a send") {
  Ring sut(256);
  std::thread writer([&] {
    while (!sut.control().data_wait.has_waiters_guess()) std::this_thread::sleep_for(1ms);
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(3, 10)), kind_of(3)) == Status::ok);
  });
  RecvView v;
  REQUIRE(sut.reader.recv(v, Deadline::in(30s), AlwaysAlive{}) == Status::ok);
  CHECK(msg_ok(3, 10, v.bytes, v.kind));
  writer.join();
  CHECK(Stats::read(sut.stats.wakes) >= 1);
  CHECK(Stats::read(sut.stats.empty_waits) >= 1);
}

TEST_CASE("spsc ring: attach rejects positions a ring apart, misalignment, bad magic") {
  Ring sut(256);
  SpscReader reader;
  SpscWriter writer;
  SUBCASE("head more than a ring past tail") {
    sut.control().head.store(256 + 64, std::memory_order_seq_cst);
  }
  SUBCASE("tail - head > capacity") {
    sut.control().tail.store(256 + 8, std::memory_order_seq_cst);
  }
  SUBCASE("misaligned tail") {
    sut.control().tail.store(3, std::memory_order_seq_cst);
  }
  SUBCASE("bad magic") {
    sut.control().magic ^= 1;
  }
  SUBCASE("capacity differs") {
    sut.control().capacity = 512;
  }
  CHECK(SpscRing::check(sut.span(), 256) == Status::corrupt);
  CHECK(reader.attach(sut.span(), 256, &sut.stats) == Status::corrupt);
  CHECK(writer.attach(sut.span(), 256, &sut.stats) == Status::corrupt);
  CHECK(Stats::read(sut.stats.corrupt_events) >= 2);
}

// The record header at `pos` of `sut`, as the writer stores it (check byte of its lap).
void put_header(const Ring& sut, std::uint64_t pos, std::uint32_t length, spsc::RecordKind rk) {
  const std::uint8_t check = spsc::lap_check(pos, SpscRing::capacity_shift(sut.capacity));
  const std::uint64_t word = spsc::header_word(length, spsc::make_tag(rk, 0, check));
  std::memcpy(sut.data() + (pos & (sut.capacity - 1)), &word, sizeof word);
}

// try_recv until it stops reporting empty: a reader that finds no committed record asks tail
// every SpscReader::kTailCheckEvery polls, so corruption behind an uncommitted header shows then.
Status poll(SpscReader& r, RecvView& v) {
  Status s = Status::empty;
  for (std::uint32_t i = 0; i <= SpscReader::kTailCheckEvery && s == Status::empty; ++i) {
    s = r.try_recv(v);
  }
  return s;
}

TEST_CASE("spsc ring: corrupt shared values seen while running are reported, not trusted") {
  Ring sut(256);
  REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 16)), 0) == Status::ok);
  RecvView v;
  auto consume_first = [&] {
    REQUIRE(sut.reader.try_recv(v) == Status::ok);
    sut.reader.release(v.end);
  };
  SUBCASE("tail beyond head + capacity") {
    consume_first();
    sut.control().tail.store(1000, std::memory_order_seq_cst);
  }
  SUBCASE("tail more than a ring behind the reader") {
    consume_first();
    sut.control().tail.store(std::uint64_t(-1024), std::memory_order_seq_cst);
  }
  SUBCASE("tail past a record that is not there") {
    consume_first();
    sut.control().tail.store(64, std::memory_order_seq_cst);
  }
  SUBCASE("record length above max_payload") {
    put_header(sut, 0, 0x7FFFFFF0, spsc::RecordKind::whole);
  }
  SUBCASE("record crossing the end of the data area") {
    consume_first();
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(1, 104)), 0) == Status::ok);  // 24 .. 136
    consume_first();
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(2, 16)), 0) == Status::ok);   // 136 .. 160
    put_header(sut, 136, 120, spsc::RecordKind::whole);  // 128 bytes from 136: past 256
  }
  SUBCASE("garbage check byte under a published tail") {
    const std::uint32_t tag = 0x12345678;
    std::memcpy(sut.data() + 4, &tag, 4);
  }
  SUBCASE("unknown record kind") {
    put_header(sut, 0, 16, static_cast<spsc::RecordKind>(9));
  }
  SUBCASE("padding that does not reach the end") {
    put_header(sut, 0, 16, spsc::RecordKind::padding);
  }
  SUBCASE("a middle chunk with no first chunk") {
    consume_first();  // leaves the resync window of attach
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(0, 16)), 0) == Status::ok);
    put_header(sut, 24, 16, spsc::RecordKind::middle);
  }
  CHECK(poll(sut.reader, v) == Status::corrupt);
  CHECK(sut.reader.recv(v, Deadline::in(10s), AlwaysAlive{}) == Status::corrupt);
  CHECK(Stats::read(sut.stats.corrupt_events) >= 1);
}

TEST_CASE("spsc ring: a head the reader never published is reported corrupt to the writer") {
  Ring sut(256);
  while (sut.writer.try_send(bytes_of(make_msg(0, 56)), 0) == Status::ok) {
  }
  sut.control().head.store(10'000, std::memory_order_seq_cst);  // beyond the writer's own tail
  CHECK(sut.writer.try_send(bytes_of(make_msg(0, 56)), 0) == Status::corrupt);
  CHECK(Stats::read(sut.stats.corrupt_events) >= 1);
}

TEST_CASE("spsc ring: a new reader skips messages a dead reader held and counts them abandoned") {
  Ring sut(1024);
  for (std::uint64_t seq = 0; seq < 3; ++seq)
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(seq, 10)), kind_of(seq)) == Status::ok);
  RecvView v0, v1;
  REQUIRE(sut.reader.try_recv(v0) == Status::ok);
  REQUIRE(sut.reader.try_recv(v1) == Status::ok);
  // The reader "dies" holding two views: a new one attaches to the same ring.
  SpscReader next;
  REQUIRE(next.attach(sut.span(), 1024, &sut.stats) == Status::ok);
  CHECK(Stats::read(sut.stats.abandoned) == 2);
  RecvView v;
  REQUIRE(next.try_recv(v) == Status::ok);
  CHECK(msg_ok(2, 10, v.bytes, v.kind));
  next.release(v.end);
  CHECK(next.try_recv(v) == Status::empty);  // and nothing past the published tail
}

TEST_CASE("spsc ring: a new reader never gets again what a dead reader read but had not returned") {
  Ring sut(1 << 16);
  for (std::uint64_t seq = 0; seq < 10; ++seq)
    REQUIRE(sut.writer.try_send(bytes_of(make_msg(seq, 10)), kind_of(seq)) == Status::ok);
  RecvView v;
  REQUIRE(sut.reader.try_recv(v) == Status::ok);  // copied and released: not held
  sut.reader.release(v.end);
  int seen = 0;
  sut.reader.recv_many([&](std::span<const std::byte>, std::uint16_t) { ++seen; }, 3);
  REQUIRE(seen == 3);
  // 4 records of 24 bytes: below the 4 KiB batch.
  REQUIRE(sut.control().head.load(std::memory_order_seq_cst) == 0);
  // The reader "dies" with 4 messages read and their space not yet returned.
  SpscReader next;
  REQUIRE(next.attach(sut.span(), 1 << 16, &sut.stats) == Status::ok);
  CHECK(Stats::read(sut.stats.abandoned) == 0);  // it held none of them
  for (std::uint64_t seq = 4; seq < 10; ++seq) {
    REQUIRE(next.try_recv(v) == Status::ok);
    CHECK(msg_ok(seq, 10, v.bytes, v.kind));
    next.release(v.end);
  }
  CHECK(next.try_recv(v) == Status::empty);
}

TEST_CASE("spsc ring: a new writer aborts the message a dead writer left half-streamed") {
  Ring sut(256);
  CHECK(sut.writer.send(bytes_of(make_msg(1, 1000)), Deadline::in(5ms), 1, AlwaysAlive{}) ==
        Status::timeout);  // "dies" mid-message
  RecvView v;
  CHECK(sut.reader.try_recv(v) == Status::empty);
  SpscWriter next;
  REQUIRE(next.attach(sut.span(), 256, &sut.stats) == Status::ok);
  REQUIRE(next.send(bytes_of(make_msg(2, 20)), Deadline::in(10s), kind_of(2), AlwaysAlive{}) ==
          Status::ok);
  REQUIRE(sut.reader.try_recv(v) == Status::ok);
  CHECK(msg_ok(2, 20, v.bytes, v.kind));
}

// Every message kind is shared by a group of 4 (a send_many batch has one kind).
std::uint16_t group_kind(std::uint64_t seq) { return static_cast<std::uint16_t>((seq / 4) * 7 + 1); }

void send_group(SpscWriter& w, std::uint64_t first, std::uint64_t last, std::uint64_t capacity) {
  const std::uint16_t kind = group_kind(first);
  switch ((first / 4) % 4) {
    case 0:  // try_send, spinning on full; too_big ones go through send
      for (std::uint64_t seq = first; seq < last; ++seq) {
        const auto msg = make_msg(seq, size_of(seq, capacity));
        Status s;
        while ((s = w.try_send(bytes_of(msg), kind)) == Status::full) {
        }
        if (s == Status::too_big) s = w.send(bytes_of(msg), Deadline::never(), kind, AlwaysAlive{});
        REQUIRE(s == Status::ok);
      }
      break;
    case 1:  // blocking send
      for (std::uint64_t seq = first; seq < last; ++seq) {
        const auto msg = make_msg(seq, size_of(seq, capacity));
        REQUIRE(w.send(bytes_of(msg), Deadline::never(), kind, AlwaysAlive{}) == Status::ok);
      }
      break;
    case 2:  // zero-copy claims (claiming a little more than used), send for streamed ones
      for (std::uint64_t seq = first; seq < last; ++seq) {
        const std::size_t n = size_of(seq, capacity);
        if (n > w.max_claim()) {
          REQUIRE(w.send(bytes_of(make_msg(seq, n)), Deadline::never(), kind, AlwaysAlive{}) == Status::ok);
          continue;
        }
        const std::size_t extra = std::min<std::size_t>(7, w.max_claim() - n);
        std::byte* p = w.claim(n + extra, Deadline::never(), kind, AlwaysAlive{});
        REQUIRE(p != nullptr);
        for (std::size_t i = 0; i < n; ++i) p[i] = byte_of(seq, i);
        w.commit(n);
      }
      break;
    default: {  // one batch
      std::vector<std::vector<std::byte>> msgs;
      std::vector<std::span<const std::byte>> spans;
      for (std::uint64_t seq = first; seq < last; ++seq) msgs.push_back(make_msg(seq, size_of(seq, capacity)));
      for (const auto& m : msgs) spans.push_back(bytes_of(m));
      REQUIRE(w.send_many(spans, Deadline::never(), kind, AlwaysAlive{}) == spans.size());
    }
  }
}

TEST_CASE("spsc ring: two threads move every message intact and in order") {
  constexpr std::uint64_t kCapacity = 4096;
  const std::uint64_t count = scaled<std::uint64_t>(1'000'000, 50'000);
  INFO("messages: " << count);
  Ring sut(kCapacity);
  std::atomic<bool> go{false};
  std::thread writer([&] {
    while (!go.load(std::memory_order_acquire)) {
    }
    for (std::uint64_t first = 0; first < count; first += 4)
      send_group(sut.writer, first, std::min(first + 4, count), kCapacity);
    sut.writer.close();
  });
  go.store(true, std::memory_order_release);
  std::uint64_t seq = 0;
  bool ok = true;
  auto check = [&](std::span<const std::byte> b, std::uint16_t kind) {
    const std::size_t n = size_of(seq, kCapacity);
    ok = ok && kind == group_kind(seq) && b.size() == n;
    for (std::size_t i = 0; ok && i < n; ++i) ok = b[i] == byte_of(seq, i);
    ++seq;
  };
  for (std::uint64_t round = 0;; ++round) {
    Status s;
    if (round % 3 == 2) {
      if (sut.reader.recv_many(check, 8, &s) > 0) continue;
    } else {
      RecvView v;
      s = round % 3 == 0 ? sut.reader.try_recv(v) : sut.reader.recv(v, Deadline::never(), AlwaysAlive{});
      if (s == Status::ok) {
        check(v.bytes, v.kind);
        if (v.zero_copy) sut.reader.release(v.end);
        continue;
      }
    }
    if (s == Status::empty) continue;
    CHECK(s == Status::closed);
    break;
  }
  writer.join();
  CHECK(ok);
  CHECK(seq == count);
  sut.reader.flush_stats();
  CHECK(Stats::read(sut.stats.sent) == count);
  CHECK(Stats::read(sut.stats.received) == count);
  CHECK(Stats::read(sut.stats.corrupt_events) == 0);
}
