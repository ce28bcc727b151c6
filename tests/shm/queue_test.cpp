// Queue: API, validation of corrupt segments, spill files, JoinableQueue, a P x C stress test
// with forked processes, and a kill -9 gauntlet over every kill point.
#include "shmq/shm/queue.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"
#include "shmq/core/wait_any.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;
using namespace std::chrono_literals;

namespace {

using testing::Cleanup;
using testing::kSanitized;
using testing::SharedArray;
using testing::wait_exit;

constexpr std::uint64_t kNearWrap = ~0ull - 5000;
constexpr std::uint32_t kEpochNearWrap = 0xFFFFFFFFu - 99;

std::string unique_name() { return testing::unique_name("queue"); }

std::size_t spill_files_of(const std::string& name) {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/dev/shm")) {
    std::string owner;
    while (const dirent* e = ::readdir(d))
      if (Queue::is_spill_file_name(e->d_name, &owner) && owner == name) ++n;
    ::closedir(d);
  }
  return n;
}

std::vector<std::byte> spilled_message(std::uint64_t index, std::size_t size) {
  std::vector<std::byte> m(size);
  std::memcpy(m.data(), &index, sizeof index);
  for (std::size_t j = sizeof index; j < size; ++j)
    m[j] = static_cast<std::byte>((index * 131 + j * 7) & 0xFF);
  return m;
}
bool is_spilled_message(const Message& m, std::uint64_t index, std::size_t size) {
  const auto want = spilled_message(index, size);
  return m.size() == size && std::memcmp(m.data(), want.data(), size) == 0;
}

// The arena's owner words (queue.hpp): 0 = free, else arena_tag(the holding slot position).
std::vector<std::uint64_t> arena_owners(const Queue& q) {
  const auto& b = *reinterpret_cast<const QueueBodyHeader*>(q.segment().body());
  const auto* owners = reinterpret_cast<const std::atomic<std::uint64_t>*>(q.segment().body() + b.arena_offset);
  std::vector<std::uint64_t> out;
  for (std::uint64_t i = 0; i < b.arena_chunks; ++i) out.push_back(owners[i].load(std::memory_order_seq_cst));
  return out;
}
bool arena_all_free(const Queue& q) {
  const auto o = arena_owners(q);
  return std::all_of(o.begin(), o.end(), [](std::uint64_t v) { return v == 0; });
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string as_string(const Message& m) {
  return {reinterpret_cast<const char*>(m.data()), m.size()};
}

}  // namespace

TEST_CASE("queue: a message sent by one handle is received through a queue opened by name") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(sut.has_value());
  auto other = Queue::open(name);
  REQUIRE(other.has_value());
  CHECK(other->slots() == 16);
  CHECK(other->slot_size() == 64);
  CHECK(other->capacity() == 16);
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  auto rx = other->reader();
  REQUIRE(rx.has_value());
  CHECK(tx->try_send(as_bytes("hello"), 300) == Status::ok);
  CHECK(sut->size_guess() == 1);
  Message m;
  REQUIRE(rx->recv(m, Deadline::in(5s)) == Status::ok);
  CHECK(as_string(m) == "hello");
  CHECK(m.kind() == 300);
  CHECK(m.zero_copy());
  m.release();
  CHECK(sut->size_guess() == 0);
  CHECK(rx->try_recv(m) == Status::empty);
}

TEST_CASE("queue: maxsize bounds the queue below its slots and size_guess stays within it") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 16, .maxsize = 3});
  REQUIRE(sut.has_value());
  CHECK(sut->capacity() == 3);
  CHECK(sut->maxsize() == 3);
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  for (int i = 0; i < 3; ++i) CHECK(tx->try_send(as_bytes("x")) == Status::ok);
  CHECK(tx->try_send(as_bytes("x")) == Status::full);
  CHECK(tx->send(as_bytes("x"), Deadline::in(2ms)) == Status::timeout);
  CHECK(sut->size_guess() == 3);
}

TEST_CASE("queue: statistics count sent and received messages once handles flush them") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 64, .slot_size = 16});
  REQUIRE(sut.has_value());
  {
    auto tx = sut->writer();
    auto rx = sut->reader();
    for (int i = 0; i < 300; ++i) {
      CHECK(tx->try_send(as_bytes("0123456789")) == Status::ok);
      Message m;
      CHECK(rx->try_recv(m) == Status::ok);
    }
  }
  CHECK(sut->stats().sent.load(std::memory_order_seq_cst) == 300);
  CHECK(sut->stats().received.load(std::memory_order_seq_cst) == 300);
  CHECK(sut->stats().bytes_sent.load(std::memory_order_seq_cst) == 3000);
  CHECK(sut->stats().bytes_received.load(std::memory_order_seq_cst) == 3000);
}

TEST_CASE("queue: a spilled send with an expired deadline times out on a full queue") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 2, .slot_size = 8, .maxsize = 1});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  CHECK(tx->try_send(as_bytes("x")) == Status::ok);
  const std::string big(100, 'b');
  CHECK(tx->try_send(as_bytes(big)) == Status::full);
  CHECK(tx->send(as_bytes(big), Deadline::now()) == Status::timeout);
  CHECK(tx->send(as_bytes(big), Deadline::in(2ms)) == Status::timeout);
  CHECK(spill_files_of(name) == 0);
}

TEST_CASE("queue: create refuses invalid parameters with invalid_argument") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 12, .slot_size = 64});
  REQUIRE_FALSE(sut.has_value());
  CHECK(sut.error().code == Errc::invalid_argument);
  sut = Queue::create({.name = name, .slots = 1, .slot_size = 64});
  REQUIRE_FALSE(sut.has_value());
  CHECK(sut.error().code == Errc::invalid_argument);
  sut = Queue::create({.name = name, .slots = 16, .slot_size = 60});
  REQUIRE_FALSE(sut.has_value());
  CHECK(sut.error().code == Errc::invalid_argument);
  sut = Queue::create({.name = name, .slots = 16, .slot_size = 64, .maxsize = 17});
  REQUIRE_FALSE(sut.has_value());
  CHECK(sut.error().code == Errc::invalid_argument);
  CHECK(Queue::open(name).error().code == Errc::not_found);
}

TEST_CASE("queue: 1 MiB messages spill (no arena), arrive intact and leave no file behind") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 0});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  REQUIRE(tx.has_value());
  REQUIRE(rx.has_value());
  std::vector<std::byte> big(1 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>(i * 7 + (i >> 12));
  CHECK(tx->try_send(big, 5) == Status::ok);
  CHECK(tx->send(as_bytes("small"), Deadline::never()) == Status::ok);
  CHECK(tx->send(big, Deadline::never(), 6) == Status::ok);
  CHECK(spill_files_of(name) == 2);
  Message m;
  REQUIRE(rx->recv(m, Deadline::in(5s)) == Status::ok);
  CHECK(m.kind() == 5);
  REQUIRE(m.size() == big.size());
  CHECK(std::memcmp(m.data(), big.data(), big.size()) == 0);
  CHECK(spill_files_of(name) == 1);  // unlinked as soon as mapped
  m.release();
  REQUIRE(rx->recv(m, Deadline::in(5s)) == Status::ok);
  CHECK(as_string(m) == "small");
  std::size_t got = 0;
  CHECK(rx->recv_many(
            [&](std::span<const std::byte> b, std::uint16_t kind) {
              got += b.size() == big.size() && kind == 6 &&
                     std::memcmp(b.data(), big.data(), big.size()) == 0;
            },
            10, Deadline::in(5s)) == 1);
  CHECK(got == 1);
  CHECK(spill_files_of(name) == 0);
}

TEST_CASE("queue: a claim larger than a slot is written in place and an aborted one vanishes") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 0});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  {
    QueueClaim c = tx->try_claim(100000, 9);
    REQUIRE(c.valid());
    CHECK(spill_files_of(name) == 1);
  }  // destroyed uncommitted: aborted
  CHECK(spill_files_of(name) == 0);
  QueueClaim c = tx->try_claim(100000, 9);
  REQUIRE(c.valid());
  REQUIRE(c.bytes().size() == 100000);
  std::memset(c.bytes().data(), 0x5a, 70000);
  c.commit(70000);
  QueueClaim small = tx->try_claim(10, 2);
  REQUIRE(small.valid());
  std::memcpy(small.bytes().data(), "0123456789", 10);
  small.commit(4);
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(m.size() == 70000);
  CHECK(m.kind() == 9);
  CHECK(std::all_of(m.bytes().begin(), m.bytes().end(), [](std::byte b) { return b == std::byte{0x5a}; }));
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(as_string(m) == "0123");
  CHECK(m.kind() == 2);
  CHECK(rx->try_recv(m) == Status::empty);
}

TEST_CASE("queue: messages larger than a slot go to the arena: in place, no file, chunks reused") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 8192});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  REQUIRE(tx.has_value());
  REQUIRE(rx.has_value());
  const std::byte* lo = sut->segment().body();
  const std::byte* hi = lo + sut->segment().body_bytes();
  // Many laps through two chunks: each message lands in the segment, and no file is made.
  for (std::uint64_t i = 0; i < 200; ++i) {
    const auto msg = spilled_message(i, 100 + (i * 37) % 8000);
    REQUIRE(tx->try_send(msg, 4) == Status::ok);
    CHECK(spill_files_of(name) == 0);
    Message m;
    REQUIRE(rx->try_recv(m) == Status::ok);
    CHECK(m.kind() == 4);
    CHECK(m.data() >= lo);
    CHECK(m.data() + m.size() <= hi);
    CHECK(is_spilled_message(m, i, msg.size()));
    CHECK_FALSE(arena_all_free(*sut));  // held until released
    m.release();
    CHECK(arena_all_free(*sut));
  }
  // Both chunks held: the next large message spills into a file; larger than a chunk: a file.
  Message a, b;
  REQUIRE(tx->try_send(spilled_message(1, 5000)) == Status::ok);
  REQUIRE(tx->try_send(spilled_message(2, 5000)) == Status::ok);
  REQUIRE(tx->try_send(spilled_message(3, 5000)) == Status::ok);
  REQUIRE(tx->try_send(spilled_message(4, 9000)) == Status::ok);
  CHECK(spill_files_of(name) == 2);
  REQUIRE(rx->try_recv(a) == Status::ok);
  REQUIRE(rx->try_recv(b) == Status::ok);
  CHECK(is_spilled_message(a, 1, 5000));
  CHECK(is_spilled_message(b, 2, 5000));
  const auto held = arena_owners(*sut);
  CHECK(std::count(held.begin(), held.end(), 0u) == 0);
  Message c, d;
  REQUIRE(rx->try_recv(c) == Status::ok);
  REQUIRE(rx->try_recv(d) == Status::ok);  // the fourth hold: copied out
  CHECK(is_spilled_message(c, 3, 5000));
  CHECK(is_spilled_message(d, 4, 9000));
  a.release();
  b.release();
  c.release();
  d.release();
  CHECK(arena_all_free(*sut));
  CHECK(spill_files_of(name) == 0);
  // recv_many hands arena bytes to the callback and frees the chunk after it.
  REQUIRE(tx->try_send(spilled_message(5, 3000)) == Status::ok);
  bool ok = false;
  CHECK(rx->try_recv_many([&](std::span<const std::byte> bytes, std::uint16_t) {
    const auto want = spilled_message(5, 3000);
    ok = bytes.size() == want.size() && std::memcmp(bytes.data(), want.data(), want.size()) == 0;
  }, 4) == 1);
  CHECK(ok);
  CHECK(arena_all_free(*sut));
}

TEST_CASE("queue: an arena claim is written in place; an aborted one frees its chunk") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 1,
                            .arena_chunk_bytes = 4096});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  {
    QueueClaim c = tx->try_claim(4000, 9);
    REQUIRE(c.valid());
    CHECK_FALSE(arena_all_free(*sut));
  }  // aborted
  CHECK(arena_all_free(*sut));
  QueueClaim c = tx->try_claim(4096, 9);
  REQUIRE(c.valid());
  CHECK(c.bytes().data() >= sut->segment().body());
  CHECK(spill_files_of(name) == 0);
  std::memset(c.bytes().data(), 0x3c, 3000);
  c.commit(3000);
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(m.size() == 3000);
  CHECK(std::all_of(m.bytes().begin(), m.bytes().end(), [](std::byte x) { return x == std::byte{0x3c}; }));
}

TEST_CASE("queue: corrupt arena references are reported and free no one else's chunk") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 4096});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  auto* ring = reinterpret_cast<core::MpmcRingHeader*>(sut->segment().body() + sizeof(QueueBodyHeader));
  auto* slot0 = reinterpret_cast<core::MpmcSlotHeader*>(reinterpret_cast<std::byte*>(ring) + sizeof(*ring));
  auto* ref = reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::byte*>(slot0) + sizeof(core::MpmcSlotHeader));
  REQUIRE(tx->try_send(spilled_message(0, 1000)) == Status::ok);
  REQUIRE(ref[1] >= 1);
  const std::uint64_t chunk = ref[1];
  SUBCASE("a chunk index beyond the arena") { ref[1] = 3; }
  SUBCASE("chunk zero") { ref[1] = 0; }
  SUBCASE("a length beyond the chunk") { ref[0] = 4097; }
  SUBCASE("a chunk tagged for another position") { ref[1] = chunk == 1 ? 2 : 1; }
  Message m;
  CHECK(rx->try_recv(m) == Status::corrupt);
  CHECK(sut->stats().corrupt_events.load(std::memory_order_seq_cst) >= 1);
  // The real chunk stays with its (corrupt) slot's tag; no other chunk was freed or taken.
  const auto owners = arena_owners(*sut);
  CHECK(std::count(owners.begin(), owners.end(), 0u) == 1);
}

TEST_CASE("queue: send_many mixes slot-sized and spilled messages in order") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 16, .slot_size = 32});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  std::vector<std::string> texts;
  for (int i = 0; i < 12; ++i) texts.push_back(i % 4 == 3 ? std::string(1000 + i, 'a' + i) : std::to_string(i));
  std::vector<std::span<const std::byte>> msgs;
  for (auto& t : texts) msgs.push_back(as_bytes(t));
  Status why = Status::timeout;
  CHECK(tx->send_many(msgs, Deadline::now(), 4, &why) == texts.size());
  CHECK(why == Status::ok);
  std::vector<std::string> got;
  while (got.size() < texts.size()) {
    const std::size_t n = rx->recv_many(
        [&](std::span<const std::byte> b, std::uint16_t) {
          got.emplace_back(reinterpret_cast<const char*>(b.data()), b.size());
        },
        5, Deadline::in(5s));
    REQUIRE(n > 0);
  }
  CHECK(got == texts);
}

TEST_CASE("queue: beyond three held messages the reader hands out copies") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 16});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  for (int i = 0; i < 5; ++i) CHECK(tx->try_send(as_bytes(std::to_string(i))) == Status::ok);
  Message m[5];
  for (int i = 0; i < 5; ++i) REQUIRE(rx->try_recv(m[i]) == Status::ok);
  for (int i = 0; i < 5; ++i) CHECK(as_string(m[i]) == std::to_string(i));
  CHECK(m[2].zero_copy());
  CHECK_FALSE(m[3].zero_copy());
}

TEST_CASE("queue: after close writers get closed and readers drain then get closed") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 16});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  CHECK(tx->try_send(as_bytes("last")) == Status::ok);
  sut->close();
  CHECK(sut->closed());
  CHECK(tx->try_send(as_bytes("more")) == Status::closed);
  Message m;
  CHECK(rx->recv(m, Deadline::never()) == Status::ok);
  CHECK(rx->recv(m, Deadline::never()) == Status::closed);
}

TEST_CASE("queue: join waits for task_done of every added task") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 16});
  REQUIRE(sut.has_value());
  CHECK(sut->join(Deadline::now()) == Status::ok);
  sut->tasks_added(2);
  CHECK(sut->join(Deadline::in(2ms)) == Status::timeout);
  CHECK(sut->task_done().has_value());
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    CHECK(sut->task_done().has_value());
  });
  CHECK(sut->join(Deadline::never()) == Status::ok);
  t.join();
  auto extra = sut->task_done();
  REQUIRE_FALSE(extra.has_value());
  CHECK(extra.error().code == Errc::invalid_argument);
  CHECK(sut->unfinished_tasks_guess() == 0);
}

TEST_CASE("queue: an anonymous queue carries messages to a forked child") {
  auto sut = Queue::create({.name = "", .slots = 8, .slot_size = 32, .anonymous = true});
  REQUIRE(sut.has_value());
  CHECK(sut->name().empty());
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto tx = sut->writer();
    std::string big(5000, 'z');
    const bool ok = tx && tx->send(as_bytes("from child"), Deadline::in(5s)) == Status::ok &&
                    tx->send(as_bytes(big), Deadline::in(5s)) == Status::ok;
    ::_exit(ok ? 0 : 1);
  }
  CHECK(wait_exit(pid) == 0);
  Message m;
  REQUIRE(rx->recv(m, Deadline::in(5s)) == Status::ok);
  CHECK(as_string(m) == "from child");
  REQUIRE(rx->recv(m, Deadline::in(5s)) == Status::ok);
  CHECK(m.size() == 5000);
}

TEST_CASE("queue: an anonymous queue's memfd is labelled with its spill tag, for shmq gc") {
  auto sut = Queue::create({.name = "", .slots = 8, .slot_size = 32, .anonymous = true});
  REQUIRE(sut.has_value());
  const auto& body = *reinterpret_cast<const QueueBodyHeader*>(sut->segment().body());
  const std::string tag(body.spill_tag);
  CHECK(tag.rfind("memfd-", 0) == 0);
  std::ifstream maps("/proc/self/maps");
  bool found = false;
  for (std::string line; std::getline(maps, line);)
    found = found || line.find("/memfd:shmq." + tag + " ") != std::string::npos;
  CHECK(found);
}

TEST_CASE("queue: a child's inherited handles only close descriptors when destroyed") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 16});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  CHECK(tx->try_send(as_bytes("a")) == Status::ok);
  const pid_t pid = ::fork();
  if (pid == 0) {
    QueueWriter w = std::move(*tx);
    QueueReader r = std::move(*rx);
    w.close();
    r.close();
    ::_exit(0);
  }
  CHECK(wait_exit(pid) == 0);
  CHECK(tx->try_send(as_bytes("b")) == Status::ok);
  Message m;
  CHECK(rx->try_recv(m) == Status::ok);
  CHECK(rx->try_recv(m) == Status::ok);
  CHECK(as_string(m) == "b");
}

namespace {

// A spilled message of `size` bytes whose every byte depends on its index.
bool shm_file_exists(const std::string& file) {
  struct stat st {};
  return ::stat(("/dev/shm/" + file).c_str(), &st) == 0;
}

}  // namespace

// Regression: a process that destroys its Queue (a Python producer at exit does) used to take
// it for the last user when its only fellow was a forked parent or child: both hold the attach
// lock through the one file description fork shares, which F_OFD_GETLK does not report to its
// own holder. It then removed every spill file of the queue, committed-but-unread messages
// included, and their reader got `corrupt`. Spilled messages over several laps, each checked.
// A reader killed while asleep leaves its futex waiter count raised; without the sweep every
// later send would make a FUTEX_WAKE syscall for nobody.
TEST_CASE("queue: a reader killed asleep does not leave every later send making a syscall") {
  // Asleep in recv (its slot rejoined or not), or in wait_any (as Python's shmq.wait sleeps).
  for (const int mode : {0, 1, 2}) {
    const bool rejoin = mode == 1, in_wait_any = mode == 2;
    CAPTURE(rejoin);
    CAPTURE(in_wait_any);
    const std::string name = unique_name();
    Cleanup cleanup(name);
    auto sut = Queue::create({.name = name, .slots = 64, .slot_size = 64});
    REQUIRE(sut.has_value());
    auto& ring = *reinterpret_cast<core::MpmcRingHeader*>(sut->segment().body() + sizeof(QueueBodyHeader));
    // Our handles take participant slots first, so the child's slot is one nobody else holds.
    auto tx = sut->writer();
    auto rx = sut->reader();
    REQUIRE(tx.has_value());
    REQUIRE(rx.has_value());
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      auto q = Queue::open(name);
      if (!q) ::_exit(2);
      auto r = q->reader();
      if (!r) ::_exit(3);
      if (in_wait_any) {
        core::WaitWord* w = r->data_wait_word();
        const core::SleepMark mark = r->data_sleep_mark();
        (void)core::wait_any(std::span<core::WaitWord* const>(&w, 1), [&] { return r->ready_guess(); },
                             Deadline::never(), std::span<const core::SleepMark>(&mark, 1));
        ::_exit(5);
      }
      Message m;
      (void)r->recv(m, Deadline::never());
      ::_exit(4);
    }
    while (!ring.data_ready.has_waiters_guess()) std::this_thread::sleep_for(1ms);
    CHECK(testing::kill_and_reap(child) == 128 + SIGKILL);
    CHECK(ring.data_ready.waiter_count() == 1);  // left behind
    std::optional<QueueReader> late;
    if (rejoin) {
      // A new participant takes the dead reader's slot and, with it, its count back at once.
      auto r = sut->reader();
      REQUIRE(r.has_value());
      late = std::move(*r);
      CHECK(ring.data_ready.waiter_count() == 0);
    }
    // Otherwise only the sweep after kIdleWakesBeforeSweep wakes of nobody can help.
    const auto wakes = [&] { return sut->stats().wakes.load(std::memory_order_seq_cst); };
    const std::uint64_t before = wakes();
    Message m;
    for (int i = 0; i < 1000; ++i) {
      REQUIRE(tx->try_send(as_bytes("x")) == Status::ok);
      REQUIRE(rx->try_recv(m) == Status::ok);
      m.release();
    }
    CHECK(ring.data_ready.waiter_count() == 0);
    CHECK(wakes() - before <= core::kIdleWakesBeforeSweep);
    const std::uint64_t settled = wakes();
    for (int i = 0; i < 1000; ++i) {
      REQUIRE(tx->try_send(as_bytes("x")) == Status::ok);
      REQUIRE(rx->try_recv(m) == Status::ok);
      m.release();
    }
    CHECK(wakes() == settled);
  }
}

TEST_CASE("queue: a forked peer leaving does not take spill files of unread messages") {
  constexpr std::uint64_t kSlots = 8;
  constexpr std::uint64_t kMessages = kSlots * 6;  // six laps of the ring
  constexpr std::size_t kSize = 1024;              // spills: larger than a slot
  for (const bool child_writes : {true, false}) {
    CAPTURE(child_writes);
    auto sut = Queue::create({.name = "", .slots = kSlots, .slot_size = 64, .arena_chunks = 0});
    REQUIRE(sut.has_value());
    const std::string name = sut->name();  // generated: the last one out removes everything
    SharedArray<std::atomic<unsigned>> writer_left(1);
    // The writer sends everything, then leaves (destroying its handles and its Queue) while the
    // last lap is still unread; the reader reads all but that lap, waits for the writer to
    // leave, then reads the last lap. Returns 0 on success.
    auto write_all = [&]() -> int {
      const int rc = [&] {
        auto tx = sut->writer();
        if (!tx) return 2;
        for (std::uint64_t i = 0; i < kMessages; ++i)
          if (tx->send(spilled_message(i, kSize), Deadline::in(10s)) != Status::ok) return 3;
        return 0;
      }();
      *sut = Queue();
      // release: the reader that sees 1 (acquire) runs after our Queue was destroyed.
      writer_left[0].store(1, std::memory_order_release);
      return rc;
    };
    auto read_all = [&]() -> int {
      const int rc = [&] {
        int bad = 0;
        auto rx = sut->reader();
        if (!rx) return 2;
        Message m;
        for (std::uint64_t i = 0; i < kMessages; ++i) {
          if (i == kMessages - kSlots) {
            m.release();  // its slot is the one the writer's last message needs
            const auto give_up = std::chrono::steady_clock::now() + 10s;
            while (writer_left[0].load(std::memory_order_acquire) == 0) {  // see write_all
              if (std::chrono::steady_clock::now() > give_up) return 5;
              std::this_thread::sleep_for(1ms);
            }
          }
          const Status st = rx->recv(m, Deadline::in(10s));
          if (st != Status::ok) return 10 + static_cast<int>(st);
          if (!is_spilled_message(m, i, kSize)) ++bad;
        }
        return bad == 0 ? 0 : 4;
      }();
      *sut = Queue();
      return rc;
    };
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(child_writes ? write_all() : read_all());
    REQUIRE(pid > 0);
    CHECK((child_writes ? read_all() : write_all()) == 0);
    CHECK(wait_exit(pid) == 0);
    // Both have left: the last one out removed the segment and every spill file.
    CHECK_FALSE(shm_file_exists("shmq." + name));
    CHECK(spill_files_of(name) == 0);
  }
}

TEST_CASE("queue: a writer killed just after recovering a dead reader's slot leaks nothing") {
  // The survivor that frees a dead reader's slot also frees its arena chunk and counts the lost
  // message. It once did both after the CAS that frees the slot, so a survivor killed right after
  // that CAS leaked the chunk and left the loss uncounted: nobody would find that slot again.
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 2, .slot_size = 64, .arena_chunks = 2,
                            .arena_chunk_bytes = 4096});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  REQUIRE(tx.has_value());
  REQUIRE(tx->try_send(spilled_message(0, 1000)) == Status::ok);  // in an arena chunk
  REQUIRE(tx->try_send(as_bytes("one")) == Status::ok);           // the queue is full
  const pid_t reader = ::fork();
  REQUIRE(reader >= 0);
  if (reader == 0) {  // takes the large message and dies holding it (_exit runs no destructor)
    auto q = Queue::open(name);
    auto rx = q ? q->reader() : Result<QueueReader>(Error(Errc::system, "open"));
    Message m;
    ::_exit(rx && rx->recv(m, Deadline::in(10s)) == Status::ok ? 0 : 2);
  }
  REQUIRE(wait_exit(reader) == 0);
  CHECK_FALSE(arena_all_free(*sut));
  const pid_t writer = ::fork();
  REQUIRE(writer >= 0);
  if (writer == 0) {  // waits for room, recovers the dead reader's slot, stops just after
    auto q = Queue::open(name);
    auto wx = q ? q->writer() : Result<QueueWriter>(Error(Errc::system, "open"));
    if (!wx) ::_exit(2);
    arm_kill_point(core::KillPoint::recovering_read, 0);
    (void)wx->send(as_bytes("two"), Deadline::in(10s));
    ::_exit(3);  // not reached: stopped at the kill point
  }
  int status = 0;
  while (::waitpid(writer, &status, WUNTRACED) < 0 && errno == EINTR) {
  }
  CHECK(WIFSTOPPED(status));
  CHECK(testing::kill_and_reap(writer) == 128 + SIGKILL);
  CHECK(sut->stats().abandoned.load(std::memory_order_seq_cst) == 1);
  CHECK(arena_all_free(*sut));
  // The queue moves on: "one" is still there and the freed slot takes a new message.
  auto rx = sut->reader();
  REQUIRE(rx.has_value());
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(as_string(m) == "one");
  m.release();
  REQUIRE(tx->try_send(as_bytes("three")) == Status::ok);
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(as_string(m) == "three");
}

TEST_CASE("queue: arena messages keep their chunks across position 2^64 - 1") {
  // The chunk taken at position 2^64 - 1 once carried tag pos + 1 == 0, "free": the next large
  // message took the same chunk and the first one read back as corrupt.
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 4,
                            .arena_chunk_bytes = 4096, .initial_position = ~0ull - 3});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  REQUIRE(tx.has_value());
  REQUIRE(rx.has_value());
  for (std::uint64_t i = 0; i < 8; ++i)  // positions 2^64 - 4 ... 3: all in the arena at once
    REQUIRE(tx->try_send(spilled_message(i, 1000)) == Status::ok);
  CHECK(spill_files_of(name) == 4);  // four chunks, then files
  for (std::uint64_t i = 0; i < 8; ++i) {
    Message m;
    REQUIRE(rx->try_recv(m) == Status::ok);
    CHECK(is_spilled_message(m, i, 1000));
  }
  CHECK(sut->stats().corrupt_events.load(std::memory_order_seq_cst) == 0);
  CHECK(arena_all_free(*sut));
  CHECK(spill_files_of(name) == 0);
}

TEST_CASE("queue: writer and reader threads sharing one mapping deliver every message once") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto q = Queue::create({.name = name, .slots = 32, .slot_size = 32, .initial_position = kNearWrap});
  REQUIRE(q.has_value());
  constexpr unsigned kWriters = 2, kReaders = 2;
  constexpr std::uint32_t kPer = kSanitized ? 3000 : 20000;
  std::vector<std::atomic<std::uint8_t>> seen(kWriters * kPer);
  std::atomic<std::uint64_t> bad{0};
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < kWriters; ++w)
    threads.emplace_back([&, w] {
      auto tx = q->writer();
      REQUIRE(tx.has_value());
      std::vector<std::uint32_t> buf;
      for (std::uint32_t n = 0; n < kPer; ++n) {
        buf.assign(n % 50 == 7 ? 100 : 2, n);  // every 50th message spills
        buf[0] = w;
        const std::span<const std::byte> m{reinterpret_cast<const std::byte*>(buf.data()), buf.size() * 4};
        if (tx->send(m, Deadline::never()) != Status::ok) bad.fetch_add(1, std::memory_order_seq_cst);
      }
    });
  // Messages are handed to a releasing thread: release() of a borrowed message from another
  // thread than its reader's.
  for (unsigned r = 0; r < kReaders; ++r)
    threads.emplace_back([&] {
      auto rx = q->reader();
      REQUIRE(rx.has_value());
      for (;;) {
        Message m;
        const Status st = rx->recv(m, Deadline::in(20ms));
        if (st == Status::closed) break;
        if (st != Status::ok) continue;
        std::uint32_t head[2];
        if (m.size() < 8) {
          bad.fetch_add(1, std::memory_order_seq_cst);
          continue;
        }
        std::memcpy(head, m.data(), 8);
        if (head[0] >= kWriters || head[1] >= kPer) {
          bad.fetch_add(1, std::memory_order_seq_cst);
          continue;
        }
        seen[head[0] * kPer + head[1]].fetch_add(1, std::memory_order_seq_cst);
        if (head[1] % 16 == 0) {
          std::thread releaser([msg = std::move(m)]() mutable { msg.release(); });
          releaser.join();
        }
      }
    });
  for (unsigned i = 0; i < kWriters; ++i) threads[i].join();
  q->close();
  for (unsigned i = kWriters; i < threads.size(); ++i) threads[i].join();
  std::uint64_t wrong = 0;
  for (auto& x : seen) wrong += x.load(std::memory_order_seq_cst) != 1;
  CHECK(wrong == 0);
  CHECK(bad.load(std::memory_order_seq_cst) == 0);
  CHECK(spill_files_of(name) == 0);
}

// ---------------------------------------------------------------------------------------------
// Corrupt segments

namespace {

// Creates a valid queue, lets `mutate` change its bytes through a raw mapping, then opens it.
Result<Queue> open_mutated(const std::string& name, void (*mutate)(std::byte* base, int fd)) {
  {
    auto q = Queue::create({.name = name, .slots = 16, .slot_size = 64, .maxsize = 8});
    REQUIRE(q.has_value());
  }
  const std::string path = "/dev/shm/shmq." + name;
  const int fd = ::open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  REQUIRE(p != MAP_FAILED);
  mutate(static_cast<std::byte*>(p), fd);
  ::munmap(p, static_cast<std::size_t>(st.st_size));
  ::close(fd);
  return Queue::open(name, {.initializing_wait_ms = 20});
}

QueueBodyHeader& body_of(std::byte* base) { return *reinterpret_cast<QueueBodyHeader*>(base + kHeaderBytes); }
core::MpmcRingHeader& ring_of(std::byte* base) {
  return *reinterpret_cast<core::MpmcRingHeader*>(base + kHeaderBytes + sizeof(QueueBodyHeader));
}
SegmentHeader& seg_of(std::byte* base) { return *reinterpret_cast<SegmentHeader*>(base); }

struct CorruptCase {
  const char* what;
  void (*mutate)(std::byte*, int);
  Errc expected;
  const char* field;  // expected in the message, or nullptr
};

const CorruptCase kCorruptCases[] = {
    {"body magic", [](std::byte* b, int) { body_of(b).magic ^= 1; }, Errc::bad_magic, nullptr},
    {"body slots", [](std::byte* b, int) { body_of(b).slots = 32; }, Errc::corrupt, "slots"},
    {"body slot_size", [](std::byte* b, int) { body_of(b).slot_size = 128; }, Errc::corrupt, "slot_size"},
    {"body maxsize", [](std::byte* b, int) { body_of(b).maxsize = 4; }, Errc::corrupt, "maxsize"},
    {"ring offset", [](std::byte* b, int) { body_of(b).ring_offset += 128; }, Errc::corrupt, "ring_offset"},
    {"ring bytes", [](std::byte* b, int) { body_of(b).ring_bytes += 64; }, Errc::corrupt, "ring_bytes"},
    {"arena chunks", [](std::byte* b, int) { body_of(b).arena_chunks = kMaxArenaChunks + 1; }, Errc::corrupt, "arena_chunks"},
    {"arena chunk bytes", [](std::byte* b, int) { body_of(b).arena_chunk_bytes = 1000; }, Errc::corrupt, "arena_chunk_bytes"},
    {"arena offset", [](std::byte* b, int) { body_of(b).arena_offset += 4096; }, Errc::corrupt, "arena_offset"},
    {"arena beyond the file", [](std::byte* b, int) { body_of(b).arena_chunks = 400; }, Errc::size_mismatch, nullptr},
    {"spill tag unterminated",
     [](std::byte* b, int) { std::memset(body_of(b).spill_tag, 'a', sizeof body_of(b).spill_tag); },
     Errc::corrupt, "spill_tag"},
    {"spill tag with a slash", [](std::byte* b, int) { body_of(b).spill_tag[0] = '/'; }, Errc::corrupt, "spill_tag"},
    {"params slots not a power of two",
     [](std::byte* b, int) {
       seg_of(b).params.capacity = 15;
       body_of(b).slots = 15;
     },
     Errc::corrupt, nullptr},
    {"params directions", [](std::byte* b, int) { seg_of(b).params.directions = 2; }, Errc::corrupt, "directions"},
    {"ring magic", [](std::byte* b, int) { ring_of(b).magic = 0; }, Errc::bad_magic, nullptr},
    {"ring slots", [](std::byte* b, int) { ring_of(b).slots = 8; }, Errc::corrupt, nullptr},
    {"ring slot_size", [](std::byte* b, int) { ring_of(b).slot_size = 72; }, Errc::corrupt, nullptr},
    {"ring stride", [](std::byte* b, int) { ring_of(b).stride = 8; }, Errc::corrupt, "stride"},
    {"ring maxsize zero", [](std::byte* b, int) { ring_of(b).maxsize = 0; }, Errc::corrupt, "maxsize"},
    {"ring maxsize above slots", [](std::byte* b, int) { ring_of(b).maxsize = 17; }, Errc::corrupt, "maxsize"},
    {"ring maxsize disagreeing", [](std::byte* b, int) { ring_of(b).maxsize = 9; }, Errc::corrupt, "maxsize"},
    {"ring total bytes", [](std::byte* b, int) { ring_of(b).total_bytes += 8; }, Errc::corrupt, "total_bytes"},
    {"segment magic", [](std::byte* b, int) { seg_of(b).magic = 0x1234; }, Errc::bad_magic, nullptr},
    {"segment kind", [](std::byte* b, int) { seg_of(b).kind = 1; }, Errc::wrong_kind, nullptr},
    {"segment version", [](std::byte* b, int) { seg_of(b).layout_version = 99; }, Errc::bad_version, nullptr},
    {"truncated file", [](std::byte*, int fd) { REQUIRE(::ftruncate(fd, 4096) == 0); }, Errc::truncated, nullptr},
    {"group-readable mode", [](std::byte*, int fd) { REQUIRE(::fchmod(fd, 0640) == 0); }, Errc::insecure_mode, nullptr},
};

}  // namespace

TEST_CASE("queue: open rejects corrupt queue segments with named errors") {
  for (const CorruptCase& c : kCorruptCases) {
    CAPTURE(c.what);
    const std::string name = unique_name();
    Cleanup cleanup(name);
    auto sut = open_mutated(name, c.mutate);
    REQUIRE_FALSE(sut.has_value());
    if (c.expected == Errc::truncated) {
      // A file cut short is either smaller than a header or smaller than the header says.
      CHECK((sut.error().code == Errc::truncated || sut.error().code == Errc::size_mismatch));
    } else {
      CHECK(errc_name(sut.error().code) == errc_name(c.expected));
    }
    if (c.field != nullptr) CHECK(sut.error().what.find(c.field) != std::string::npos);
  }
}

TEST_CASE("queue: corrupt slot contents are reported, never read out of bounds") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto sut = Queue::create({.name = name, .slots = 8, .slot_size = 64, .arena_chunks = 0});
  REQUIRE(sut.has_value());
  auto tx = sut->writer();
  auto rx = sut->reader();
  auto* ring = reinterpret_cast<core::MpmcRingHeader*>(sut->segment().body() + sizeof(QueueBodyHeader));
  auto* slot0 = reinterpret_cast<core::MpmcSlotHeader*>(reinterpret_cast<std::byte*>(ring) + sizeof(*ring));
  SUBCASE("an oversized length") {
    CHECK(tx->try_send(as_bytes("abc")) == Status::ok);
    slot0->length = 1u << 31;
    Message m;
    CHECK(rx->try_recv(m) == Status::corrupt);
  }
  SUBCASE("a spill reference to a missing file") {
    std::string big(500, 'q');
    CHECK(tx->try_send(as_bytes(big)) == Status::ok);
    REQUIRE(Queue::remove_spill_files(name).has_value());
    Message m;
    CHECK(rx->try_recv(m) == Status::corrupt);
  }
  SUBCASE("a spill length beyond the file") {
    std::string big(500, 'q');
    CHECK(tx->try_send(as_bytes(big)) == Status::ok);
    const std::uint64_t huge = 1 << 20;
    std::memcpy(reinterpret_cast<std::byte*>(slot0) + sizeof(core::MpmcSlotHeader), &huge, sizeof huge);
    Message m;
    CHECK(rx->try_recv(m) == Status::corrupt);
  }
  SUBCASE("a dequeue position ahead of the slot sequence") {
    ring->enqueue_pos.store(3, std::memory_order_seq_cst);
    ring->dequeue_pos.store(3, std::memory_order_seq_cst);
    slot0->seq.store(1000, std::memory_order_seq_cst);  // slot of position 8 claims a far lap
    Message m;
    CHECK(rx->try_recv(m) == Status::empty);
    for (int i = 0; i < 5; ++i) CHECK(tx->try_send(as_bytes("x")) == Status::ok);
    CHECK(tx->try_send(as_bytes("x")) == Status::corrupt);
  }
  CHECK(sut->stats().corrupt_events.load(std::memory_order_seq_cst) >= 1);
}

// ---------------------------------------------------------------------------------------------
// Stress with processes

namespace {

struct StressReport {
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> order_errors{0};
  std::atomic<std::uint64_t> bad_records{0};
};

// P writer processes x C reader processes; every (writer, n) arrives exactly once and each reader
// sees each writer's messages in increasing order.
void process_stress(unsigned writers, unsigned readers, std::uint64_t per_writer) {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  auto q = Queue::create({.name = name, .slots = 256, .slot_size = 32,
                          .initial_position = kNearWrap, .initial_epoch = kEpochNearWrap});
  REQUIRE(q.has_value());
  SharedArray<std::atomic<std::uint8_t>> seen(writers * per_writer);
  SharedArray<StressReport> report(1);
  SharedArray<std::atomic<unsigned>> start(1);
  std::vector<pid_t> pids;
  for (unsigned w = 0; w < writers; ++w) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto tx = q->writer();
      if (!tx) ::_exit(2);
      start[0].fetch_add(1, std::memory_order_seq_cst);
      while (start[0].load(std::memory_order_seq_cst) < writers + readers) std::this_thread::yield();
      std::uint64_t n = 0;
      std::array<std::uint64_t, 2 * 16> buf;
      std::array<std::span<const std::byte>, 16> msgs;
      while (n < per_writer) {
        const std::uint64_t batch = std::min<std::uint64_t>((n / 16) % 2 ? 16 : 1, per_writer - n);
        for (std::uint64_t i = 0; i < batch; ++i) {
          buf[2 * i] = w;
          buf[2 * i + 1] = n + i;
          msgs[i] = {reinterpret_cast<const std::byte*>(&buf[2 * i]), 16};
        }
        if (batch == 1) {
          if (tx->send(msgs[0], Deadline::never(), 1) != Status::ok) ::_exit(3);
          ++n;
        } else {
          n += tx->send_many(std::span(msgs).first(batch), Deadline::never(), 1);
        }
      }
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  for (unsigned r = 0; r < readers; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto rx = q->reader();
      if (!rx) ::_exit(2);
      std::vector<std::uint64_t> last(writers, 0);
      std::vector<bool> any(writers, false);
      std::uint64_t count = 0;
      auto take = [&](std::span<const std::byte> b, std::uint16_t) {
        std::uint64_t rec[2];
        if (b.size() != 16) {
          report[0].bad_records.fetch_add(1, std::memory_order_seq_cst);
          return;
        }
        std::memcpy(rec, b.data(), 16);
        if (rec[0] >= writers || rec[1] >= per_writer) {
          report[0].bad_records.fetch_add(1, std::memory_order_seq_cst);
          return;
        }
        if (any[rec[0]] && rec[1] <= last[rec[0]]) report[0].order_errors.fetch_add(1, std::memory_order_seq_cst);
        any[rec[0]] = true;
        last[rec[0]] = rec[1];
        seen[rec[0] * per_writer + rec[1]].fetch_add(1, std::memory_order_relaxed);
        ++count;
      };
      start[0].fetch_add(1, std::memory_order_seq_cst);
      for (std::uint64_t i = 0;; ++i) {
        Status why = Status::ok;
        if (i % 2 == 0) {
          Message m;
          why = rx->recv(m, Deadline::never());
          if (why == Status::ok) take(m.bytes(), m.kind());
        } else {
          rx->recv_many(take, 32, Deadline::never(), &why);
        }
        if (why == Status::closed) break;
        if (why != Status::ok) ::_exit(4);
      }
      report[0].received.fetch_add(count, std::memory_order_seq_cst);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  for (unsigned i = 0; i < writers; ++i) CHECK(wait_exit(pids[i]) == 0);
  q->close();
  for (unsigned i = writers; i < pids.size(); ++i) CHECK(wait_exit(pids[i]) == 0);
  CHECK(report[0].received.load(std::memory_order_seq_cst) == writers * per_writer);
  CHECK(report[0].order_errors.load(std::memory_order_seq_cst) == 0);
  CHECK(report[0].bad_records.load(std::memory_order_seq_cst) == 0);
  std::uint64_t wrong = 0;
  for (std::size_t i = 0; i < seen.size; ++i) wrong += seen[i].load(std::memory_order_seq_cst) != 1;
  CHECK(wrong == 0);
  CHECK(q->size_guess() == 0);
}

}  // namespace

TEST_CASE("queue: P writer x C reader processes deliver every message once in per-writer order") {
  // 16 combinations; 10^7 messages in total in a plain build.
  const std::uint64_t total = kSanitized ? 2'000'000 : 10'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned p = 1; p <= 4; ++p)
    for (unsigned c = 1; c <= 4; ++c) {
      CAPTURE(p);
      CAPTURE(c);
      process_stress(p, c, total / 16 / p);
    }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("process stress: " << total << " messages in " << s << " s");
}

// ---------------------------------------------------------------------------------------------
// Kill -9 gauntlet

namespace {

constexpr std::uint32_t kMaxPerSource = 4096;
constexpr std::uint32_t kMaxSources = 1024;
constexpr std::uint32_t kGauntletSlots = 64;
constexpr std::uint32_t kGauntletSlotSize = 64;

// Message layout: {u32 source, u32 n, u32 length, u32 checksum} + filler bytes.
struct Record {
  std::uint32_t source, n, length, checksum;
};
std::uint32_t filler(std::uint32_t source, std::uint32_t n, std::size_t i) {
  return static_cast<std::uint32_t>((source * 131 + n * 31 + i * 7) & 0xff);
}
std::size_t make_record(std::vector<std::byte>& buf, std::uint32_t source, std::uint32_t n, bool spill) {
  const std::size_t len = spill ? 300 + (n * 97) % 4000 : sizeof(Record) + (n * 13) % 40;
  buf.resize(len);
  std::uint32_t sum = 0;
  for (std::size_t i = sizeof(Record); i < len; ++i) {
    buf[i] = static_cast<std::byte>(filler(source, n, i));
    sum += filler(source, n, i);
  }
  const Record r{source, n, static_cast<std::uint32_t>(len), sum};
  std::memcpy(buf.data(), &r, sizeof r);
  return len;
}

struct Ledger {
  std::atomic<std::uint8_t> delivered[kMaxSources][kMaxPerSource];
  std::atomic<std::uint32_t> committed[kMaxSources];  // sends that returned ok, per source
  std::atomic<std::uint64_t> bad;             // partial or garbled messages seen
};

// Checks a record and marks it delivered; false if it is garbled.
bool record_delivery(Ledger& l, std::span<const std::byte> b) {
  Record r{};
  if (b.size() < sizeof r) return false;
  std::memcpy(&r, b.data(), sizeof r);
  if (r.length != b.size() || r.source >= kMaxSources || r.n >= kMaxPerSource) return false;
  std::uint32_t sum = 0;
  for (std::size_t i = sizeof r; i < b.size(); ++i) {
    const auto v = static_cast<std::uint32_t>(b[i]);
    if (v != filler(r.source, r.n, i)) return false;
    sum += v;
  }
  if (sum != r.checksum) return false;
  l.delivered[r.source][r.n].fetch_add(1, std::memory_order_relaxed);
  return true;
}

enum class Victim { writer, reader, creator };

struct Plan {
  Victim role;
  core::KillPoint kp;  // none: killed by a timer
  std::uint64_t skip;
  int timer_us;
};

[[noreturn]] void victim_writer(Queue& q, Ledger& l, std::uint32_t source, const Plan& plan) {
  auto tx = q.writer();
  if (!tx) ::_exit(2);
  if (plan.kp != core::KillPoint::none) arm_kill_point(plan.kp, plan.skip);
  std::vector<std::byte> buf;
  const bool all_spill = plan.kp == core::KillPoint::spill_write;
  for (std::uint32_t n = 0; n + 1 < kMaxPerSource; ++n) {
    const std::size_t len = make_record(buf, source, n, all_spill || n % 8 == 5);
    Status st;
    if (n % 3 == 2) {
      QueueClaim c = tx->claim(len, Deadline::never(), 7);
      if (!c.valid()) ::_exit(3);
      std::memcpy(c.bytes().data(), buf.data(), len);
      c.commit(len);
      st = Status::ok;
    } else {
      st = tx->send({buf.data(), len}, Deadline::never(), 7);
    }
    if (st != Status::ok) ::_exit(30 + static_cast<int>(st));  // 30 + the status
    l.committed[source].store(n + 1, std::memory_order_release);
  }
  for (;;) ::pause();
}

[[noreturn]] void victim_reader(Queue& q, Ledger& l, const Plan& plan) {
  auto rx = q.reader();
  if (!rx) ::_exit(2);
  if (plan.kp != core::KillPoint::none) arm_kill_point(plan.kp, plan.skip);
  for (std::uint64_t i = 0;; ++i) {
    if (i % 2 == 0) {
      Message m;
      // Exit 40 + the status: the parent reports which.
      if (const Status st = rx->recv(m, Deadline::never()); st != Status::ok) ::_exit(40 + static_cast<int>(st));
      if (!record_delivery(l, m.bytes())) l.bad.fetch_add(1, std::memory_order_seq_cst);
    } else {
      rx->recv_many(
          [&](std::span<const std::byte> b, std::uint16_t) {
            if (!record_delivery(l, b)) l.bad.fetch_add(1, std::memory_order_seq_cst);
          },
          4, Deadline::never());
    }
  }
}

struct Gauntlet {
  explicit Gauntlet(std::string n) : name(std::move(n)), ledger(1) {}
  std::string name;
  SharedArray<Ledger> ledger;
  std::uint32_t parent_source = 0;  // the parent's own messages; a new source every 4095
  std::uint32_t parent_sent = 0;
  std::uint32_t next_source = 1;
  // The next (source, n) for a parent message.
  std::uint32_t take_parent_n() {
    if (parent_sent + 1 >= kMaxPerSource) {
      parent_source = next_source++;
      parent_sent = 0;
    }
    return parent_sent;
  }
  void parent_committed(Ledger& l) { l.committed[parent_source].store(++parent_sent, std::memory_order_seq_cst); }
  std::uint64_t reader_kills = 0;
  double worst_recovery_ms = 0;
  std::uint64_t progress_failures = 0;
};

// The parent's share of a cycle while the victim runs: the counterpart role.
void survivor_step(Gauntlet& g, QueueWriter& tx, QueueReader& rx, const Plan& plan, bool feed) {
  Ledger& l = g.ledger[0];
  std::vector<std::byte> buf;
  if (feed && plan.role == Victim::reader) {
    const std::uint32_t n = g.take_parent_n();
    const std::size_t len = make_record(buf, g.parent_source, n, n % 8 == 3);
    if (tx.try_send({buf.data(), len}, 1) == Status::ok) g.parent_committed(l);
  }
  if (plan.role == Victim::writer && feed) {
    rx.try_recv_many([&](std::span<const std::byte> b, std::uint16_t) {
      if (!record_delivery(l, b)) l.bad.fetch_add(1, std::memory_order_seq_cst);
    }, 8);
  }
}

// After the kill: the survivors must move again. A probe from the parent's writer must come
// through the parent's reader; everything before it is recorded.
void check_progress(Gauntlet& g, QueueWriter& tx, QueueReader& rx) {
  Ledger& l = g.ledger[0];
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::byte> buf;
  const std::uint32_t probe = g.take_parent_n();
  const std::uint32_t probe_source = g.parent_source;
  const std::size_t len = make_record(buf, probe_source, probe, false);
  // The queue may be full (a writer killed asleep): the probe goes in as the parent drains.
  const Deadline give_up = Deadline::in(10s);
  bool sent = false;
  for (bool arrived = false; !arrived;) {
    if (give_up.expired()) {
      ++g.progress_failures;
      MESSAGE("no progress: probe " << (sent ? "sent" : "not sent"));
      return;
    }
    if (!sent && tx.try_send({buf.data(), len}, 1) == Status::ok) {
      sent = true;
      g.parent_committed(l);
    }
    Message m;
    const Status st = rx.recv(m, Deadline::in(sent ? 10ms : 1ms));
    if (st != Status::ok) continue;
    Record r{};
    std::memcpy(&r, m.data(), std::min(sizeof r, m.size()));
    if (!record_delivery(l, m.bytes())) l.bad.fetch_add(1, std::memory_order_seq_cst);
    arrived = r.source == probe_source && r.n == probe;
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  g.worst_recovery_ms = std::max(g.worst_recovery_ms, ms);
}

void run_cycle(Gauntlet& g, Queue& q, QueueWriter& tx, QueueReader& rx, const Plan& plan) {
  const std::uint32_t source = plan.role == Victim::writer ? g.next_source++ : 0;
  REQUIRE(g.next_source < kMaxSources);
  const std::string created = g.name + "-c";
  const pid_t pid = ::fork();
  if (pid == 0) {
    switch (plan.role) {
      case Victim::writer: victim_writer(q, g.ledger[0], source, plan);
      case Victim::reader: victim_reader(q, g.ledger[0], plan);
      case Victim::creator: {
        arm_kill_point(core::KillPoint::creating, 0);
        auto c = Queue::create({.name = created, .slots = 8, .slot_size = 16});
        ::_exit(5);  // not reached: stopped inside create
      }
    }
  }
  // Victims that sleep on an empty (reader) or full (writer) queue need the parent to hold still.
  const bool feed = plan.kp != core::KillPoint::asleep;
  const auto deadline = std::chrono::steady_clock::now() +
                        (plan.kp == core::KillPoint::none ? std::chrono::microseconds(plan.timer_us)
                                                          : std::chrono::microseconds(3'000'000));
  int status = 0;
  bool exited_early = false;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG | WUNTRACED);
    if (r == pid) {  // stopped at its kill point (or exited: a failure)
      exited_early = WIFEXITED(status) || WIFSIGNALED(status);
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    survivor_step(g, tx, rx, plan, feed);
    if (!feed || plan.role == Victim::creator) std::this_thread::sleep_for(50us);
  }
  if (exited_early) {
    MESSAGE("victim " << (WIFEXITED(status) ? "exited with code " : "killed by signal ")
                      << (WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status))
                      << " (30/40 + a Status: a send/recv failed)");
  }
  CHECK_FALSE(exited_early);
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (plan.role == Victim::reader) ++g.reader_kills;
  if (plan.role == Victim::creator) {
    auto sut = Queue::open(created, {.initializing_wait_ms = 20});
    REQUIRE_FALSE(sut.has_value());
    CHECK(sut.error().code == Errc::initializing);
    (void)Queue::unlink(created);
    return;
  }
  check_progress(g, tx, rx);
}

}  // namespace

TEST_CASE("queue: kill -9 at every kill point loses and duplicates no committed message") {
  const std::string name = unique_name();
  Cleanup cleanup(name);
  // A two-chunk arena of 4 KiB: large records (300 B to 4.3 KiB) take a chunk, or a file when
  // both are taken or they are larger, so kills hit both paths.
  auto q = Queue::create({.name = name, .slots = kGauntletSlots, .slot_size = kGauntletSlotSize,
                          .arena_chunks = 2, .arena_chunk_bytes = 4096,
                          .initial_position = kNearWrap, .initial_epoch = kEpochNearWrap});
  REQUIRE(q.has_value());
  auto tx = q->writer();
  auto rx = q->reader();
  REQUIRE(tx.has_value());
  REQUIRE(rx.has_value());
  Gauntlet g(name);
  const Plan plans[] = {
      {Victim::writer, core::KillPoint::mid_claim, 0, 0},
      {Victim::writer, core::KillPoint::mid_write, 0, 0},
      {Victim::writer, core::KillPoint::before_commit, 0, 0},
      {Victim::writer, core::KillPoint::after_commit_before_wake, 0, 0},
      {Victim::writer, core::KillPoint::spill_write, 0, 0},
      {Victim::writer, core::KillPoint::asleep, 0, 0},
      {Victim::reader, core::KillPoint::holding_read, 0, 0},
      {Victim::reader, core::KillPoint::asleep, 0, 0},
      {Victim::creator, core::KillPoint::creating, 0, 0},
      {Victim::writer, core::KillPoint::none, 0, 0},
      {Victim::reader, core::KillPoint::none, 0, 0},
  };
  const char* env_cycles = std::getenv("SHMQ_TEST_CYCLES");  // a shorter run while debugging
  const int kCycles = env_cycles != nullptr ? std::atoi(env_cycles) : 1100;
  std::mt19937 rng(12345);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kCycles; ++i) {
    Plan p = plans[static_cast<std::size_t>(i) % std::size(plans)];
    p.skip = p.kp == core::KillPoint::asleep ? 0 : rng() % 40;
    p.timer_us = 100 + static_cast<int>(rng() % 3000);
    CAPTURE(i);
    CAPTURE(core::kill_point_name(p.kp));
    run_cycle(g, *q, *tx, *rx, p);
  }
  // Lap every slot so that slots held by killed readers are recovered (and counted abandoned).
  Ledger& l = g.ledger[0];
  for (std::uint32_t i = 0; i < 2 * kGauntletSlots; ++i) check_progress(g, *tx, *rx);
  Message m;
  while (rx->try_recv(m) == Status::ok)
    if (!record_delivery(l, m.bytes())) l.bad.fetch_add(1, std::memory_order_seq_cst);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::uint64_t duplicates = 0, missing = 0, delivered = 0;
  constexpr std::uint64_t kShowMissing = 0;  // raise to list missing messages while debugging
  for (std::uint32_t src = 0; src < g.next_source; ++src) {
    const std::uint32_t committed = l.committed[src].load(std::memory_order_seq_cst);
    for (std::uint32_t n = 0; n < kMaxPerSource; ++n) {
      const unsigned d = l.delivered[src][n].load(std::memory_order_seq_cst);
      delivered += d;
      duplicates += d > 1;
      if (n < committed && d == 0 && ++missing <= kShowMissing)
        MESSAGE("missing: source " << src << " n " << n << " of " << committed << " committed");
      if (n > committed && d != 0) ++duplicates;  // never sent, yet delivered
    }
  }
  const core::Stats& st = q->stats();
  MESSAGE("gauntlet: " << kCycles << " cycles in " << s << " s; " << delivered << " delivered; worst recovery "
                       << g.worst_recovery_ms << " ms; abandoned " << st.abandoned.load(std::memory_order_seq_cst) << ", recovered "
                       << st.recovered.load(std::memory_order_seq_cst) << ", missing " << missing
                       << ", corrupt events " << st.corrupt_events.load(std::memory_order_seq_cst));
  CHECK(g.progress_failures == 0);
  CHECK(st.corrupt_events.load(std::memory_order_seq_cst) == 0);  // crashes never look like corruption
  CHECK(duplicates == 0);
  CHECK(l.bad.load(std::memory_order_seq_cst) == 0);
  // A committed message may vanish only with a reader killed while holding it (counted).
  CHECK(missing <= st.abandoned.load(std::memory_order_seq_cst));
  CHECK(st.abandoned.load(std::memory_order_seq_cst) <= 4 * g.reader_kills);
  CHECK(st.recovered.load(std::memory_order_seq_cst) >= 1);
  CHECK(spill_files_of(name) == 0);
  CHECK(arena_all_free(*q));  // every chunk a dead writer or reader held was reclaimed
}

TEST_CASE("queue: no test segment or spill file is left in /dev/shm") {
  CHECK(testing::leftovers("queue").empty());
}
