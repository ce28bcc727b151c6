// gc's policy (gc.hpp), case by case, on real segments in /dev/shm. Every call is restricted by a
// pattern to the segment under test, so segments of anything else on the machine are never seen.
#include "shmq/shm/gc.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

using namespace shmq;
using shmq::testing::Cleanup;
using shmq::testing::spawn;
using shmq::testing::unique_name;
using shmq::testing::wait_exit;

namespace {

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The policy's switches; the grace period is 0 unless given (the tests' segments are seconds old).
struct Options {
  bool include_named = false;
  bool force = false;
  bool dry_run = false;
  double grace_seconds = 0;
};

// gc over one name: its one entry.
GcEntry gc_one(const std::string& name, Options o = {}) {
  const GcPolicy policy{.patterns = {name},
                        .include_named = o.include_named,
                        .force = o.force,
                        .dry_run = o.dry_run,
                        .grace_seconds = o.grace_seconds};
  const auto entries = collect_garbage(policy);
  REQUIRE(entries.size() == 1);
  CHECK(entries[0].name == name);
  CHECK(!entries[0].reason.empty());
  return entries[0];
}

// A named queue nobody is attached to, holding `messages` committed messages.
void make_idle_queue(const std::string& name, int messages) {
  auto q = Queue::create({.name = name, .slots = 16, .slot_size = 64});
  REQUIRE(q.has_value());
  auto tx = q->writer();
  REQUIRE(tx.has_value());
  for (int i = 0; i < messages; ++i) REQUIRE(tx->try_send(as_bytes("job")) == Status::ok);
}

// Creates an unnamed queue in a child that then dies without detaching; returns its name.
std::string orphaned_anonymous_queue() {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = spawn([&] {
    auto q = Queue::create({.slots = 16, .slot_size = 64});
    if (!q) return 1;
    auto tx = q->writer();
    if (!tx || tx->try_send(as_bytes("lost with its users")) != Status::ok) return 2;
    const std::string name = q->name();
    if (::write(fds[1], name.data(), name.size()) != static_cast<ssize_t>(name.size())) return 3;
    ::_exit(0);  // no destructor runs: the name stays, as after a crash
  });
  ::close(fds[1]);
  char buf[256] = {};
  const ssize_t n = ::read(fds[0], buf, sizeof buf - 1);
  ::close(fds[0]);
  REQUIRE(wait_exit(pid) == 0);
  REQUIRE(n > 0);
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

TEST_CASE("gc: a named queue whose users are all gone keeps its committed message") {
  const std::string name = unique_name("gc");
  Cleanup cleanup(name);
  make_idle_queue(name, 1);
  const GcEntry sut = gc_one(name);
  CHECK(sut.action == GcAction::kept);
  CHECK(sut.named);
  CHECK(sut.messages == 1);
  CHECK(sut.reason.find("idle, 1 message") != std::string::npos);
  // The consumer that comes later still gets the job.
  auto q = Queue::open(name);
  REQUIRE(q.has_value());
  auto rx = q->reader();
  REQUIRE(rx.has_value());
  Message m;
  REQUIRE(rx->try_recv(m) == Status::ok);
  CHECK(std::string_view(reinterpret_cast<const char*>(m.data()), m.size()) == "job");
}

TEST_CASE("gc: a named pipe holding messages is kept and its messages counted") {
  const std::string name = unique_name("gc");
  Cleanup cleanup(name);
  {
    auto p = Pipe::create({.name = name, .capacity = 4096, .duplex = true});
    REQUIRE(p.has_value());
    auto tx = p->writer(1);
    REQUIRE(tx.has_value());
    for (int i = 0; i < 3; ++i) REQUIRE(tx->try_send(as_bytes("tick")) == Status::ok);
    std::vector<std::byte> big(3000, std::byte{7});  // streamed in chunks: still one message
    REQUIRE(tx->send(big, Deadline::now()) == Status::ok);
    CHECK(p->waiting_guess(0) == 0);
    CHECK(p->waiting_guess(1) == 4);
  }
  const GcEntry sut = gc_one(name, {.include_named = true});
  CHECK(sut.action == GcAction::kept);
  CHECK(sut.messages == 4);
  CHECK(sut.reason.find("--force") != std::string::npos);
  CHECK(::access(segment_path(name).c_str(), F_OK) == 0);
}

TEST_CASE("gc: an anonymous segment whose users all died is removed, with its message") {
  const std::string name = orphaned_anonymous_queue();
  Cleanup cleanup(name);
  CHECK(generated_segment_name(name));
  const GcEntry dry = gc_one(name, {.dry_run = true});
  CHECK(dry.action == GcAction::would_remove);
  CHECK_FALSE(dry.named);
  CHECK(::access(segment_path(name).c_str(), F_OK) == 0);
  const GcEntry sut = gc_one(name);
  CHECK(sut.action == GcAction::removed);
  CHECK(::access(segment_path(name).c_str(), F_OK) != 0);
}

TEST_CASE("gc: a segment some process holds is kept, named or anonymous") {
  auto anon = Queue::create({.slots = 16, .slot_size = 64});
  REQUIRE(anon.has_value());
  const std::string named = unique_name("gc");
  Cleanup cleanup(named);
  auto pipe = Pipe::create({.name = named, .capacity = 4096});
  REQUIRE(pipe.has_value());
  for (const std::string& name : {anon->name(), named}) {
    const GcEntry sut = gc_one(name, {.include_named = true, .force = true});
    CHECK(sut.action == GcAction::kept);
    CHECK(sut.reason.find("in use") != std::string::npos);
  }
}

TEST_CASE("gc: files younger than the grace period are kept") {
  const std::string name = orphaned_anonymous_queue();
  Cleanup cleanup(name);
  const GcEntry sut = gc_one(name, {.grace_seconds = 3600});
  CHECK(sut.action == GcAction::kept);
  CHECK(sut.reason.find("grace") != std::string::npos);
}

TEST_CASE("gc: include_named removes an idle empty named segment, a non-empty one only with force") {
  const std::string empty = unique_name("gc");
  const std::string full = unique_name("gc");
  Cleanup c1(empty), c2(full);
  make_idle_queue(empty, 0);
  make_idle_queue(full, 2);
  CHECK(gc_one(empty).action == GcAction::kept);  // never without include_named
  const GcEntry removed = gc_one(empty, {.include_named = true});
  CHECK(removed.action == GcAction::removed);
  CHECK(removed.messages == 0);
  CHECK(::access(segment_path(empty).c_str(), F_OK) != 0);
  const GcEntry refused = gc_one(full, {.include_named = true});
  CHECK(refused.action == GcAction::kept);
  CHECK(refused.messages == 2);
  CHECK(refused.reason.find("--force") != std::string::npos);
  CHECK(::access(segment_path(full).c_str(), F_OK) == 0);
  const GcEntry forced = gc_one(full, {.include_named = true, .force = true});
  CHECK(forced.action == GcAction::removed);
  CHECK(::access(segment_path(full).c_str(), F_OK) != 0);
}

TEST_CASE("gc: a corrupt named segment is kept unless include_named and force") {
  const std::string name = unique_name("gc");
  Cleanup cleanup(name);
  make_idle_queue(name, 0);
  const int fd = ::open(segment_path(name).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  const std::uint64_t garbage = 0x0123456789ABCDEFull;
  REQUIRE(::pwrite(fd, &garbage, sizeof garbage, 0) == sizeof garbage);  // the magic
  ::close(fd);
  const GcEntry kept = gc_one(name, {.include_named = true});
  CHECK(kept.action == GcAction::kept);
  CHECK(kept.corrupt);
  CHECK_FALSE(kept.problem.empty());
  CHECK_FALSE(kept.messages.has_value());
  CHECK(gc_one(name, {.include_named = true, .force = true}).action == GcAction::removed);
}

TEST_CASE("gc: a spill file whose queue is gone is removed; one of a live queue is left alone") {
  const std::string live = unique_name("gc");
  Cleanup cleanup(live);
  auto q = Queue::create({.name = live, .slots = 16, .slot_size = 64, .arena_chunks = 0});
  REQUIRE(q.has_value());
  auto tx = q->writer();
  REQUIRE(tx.has_value());
  std::vector<std::byte> big(10000, std::byte{1});  // larger than a slot, no arena: a spill file
  REQUIRE(tx->try_send(big) == Status::ok);
  const std::string missing = unique_name("gc");
  const std::string orphan = "shmq." + missing + ".x0000000000000001";
  const int fd = ::open(("/dev/shm/" + orphan).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
  REQUIRE(fd >= 0);
  ::close(fd);
  auto entries = collect_garbage({.patterns = {live, missing}, .grace_seconds = 0});
  REQUIRE(entries.size() == 2);  // the live queue (in use) and the orphan; not the live spill file
  CHECK(entries[0].name == live);
  CHECK(entries[0].action == GcAction::kept);
  CHECK(entries[1].name == orphan);
  CHECK(entries[1].spill_file);
  CHECK(entries[1].action == GcAction::removed);
  CHECK(::access(("/dev/shm/" + orphan).c_str(), F_OK) != 0);
}

TEST_CASE("gc: list_segment_names lists segments, not spill files") {
  const std::string name = unique_name("gc");
  Cleanup cleanup(name);
  auto q = Queue::create({.name = name, .slots = 16, .slot_size = 64, .arena_chunks = 0});
  REQUIRE(q.has_value());
  auto tx = q->writer();
  REQUIRE(tx.has_value());
  std::vector<std::byte> big(10000, std::byte{1});
  REQUIRE(tx->try_send(big) == Status::ok);
  const auto names = list_segment_names();
  CHECK(std::count(names.begin(), names.end(), name) == 1);
  CHECK(std::none_of(names.begin(), names.end(),
                     [&](const std::string& n) { return n.starts_with(name + ".x"); }));
}
