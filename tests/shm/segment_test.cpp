#include "shmq/shm/segment.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>

#include "test_util.hpp"

// Atomics the tests themselves use are seq_cst: the simplest order to reason about, and no test
// measures speed. Orders that matter are those of the code under test.

using namespace shmq;

namespace {

using testing::Cleanup;
using testing::kill_and_reap;

std::string unique_name(const char* what) { return testing::unique_name(std::string("seg-") + what); }

bool exists_in_dev_shm(const std::string& name) {
  return ::access(segment_path(name).c_str(), F_OK) == 0;
}

SegmentConfig config_for(const std::string& name, std::uint64_t body = 4096) {
  SegmentConfig c;
  c.name = name;
  c.kind = SegmentKind::pipe;
  c.body_bytes = body;
  c.params.capacity = 4096;
  c.params.directions = 1;
  return c;
}

// Maps the file of `name` raw, lets `mutate` damage it, unmaps.
void tamper(const std::string& name, const std::function<void(SegmentHeader&)>& mutate) {
  const int fd = ::open(segment_path(name).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  void* p = ::mmap(nullptr, kHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  REQUIRE(p != MAP_FAILED);
  mutate(*static_cast<SegmentHeader*>(p));
  ::munmap(p, kHeaderBytes);
  ::close(fd);
}

// Creates a valid segment, closes it (kept on disk: a chosen name), damages it, opens it.
Errc open_after(const std::function<void(SegmentHeader&)>& mutate, const std::string& name) {
  {
    auto sut = Segment::create(config_for(name));
    REQUIRE(sut.has_value());
  }
  tamper(name, mutate);
  auto r = Segment::open(name, SegmentKind::pipe);
  if (r) return Errc::ok;
  CHECK(!r.error().what.empty());
  return r.error().code;
}

// Runs `child` in a forked process that then waits to be killed; returns its pid.
pid_t fork_holding(const std::function<void()>& child, int ready_fd_write) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    child();
    char c = 1;
    if (::write(ready_fd_write, &c, 1) != 1) _exit(3);
    for (;;) ::pause();
  }
  return pid;
}

}  // namespace

TEST_CASE("segment: create then open by name sees the same header and memory") {
  const std::string name = unique_name("basic");
  Cleanup cleanup{name};
  auto created = Segment::create(config_for(name, 10000));
  REQUIRE(created.has_value());
  CHECK(created->body_bytes() >= 10000);
  CHECK(exists_in_dev_shm(name));
  struct stat st{};
  REQUIRE(::stat(segment_path(name).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto sut = Segment::open(name, SegmentKind::pipe);
  REQUIRE(sut.has_value());
  CHECK(sut->header().params.capacity == 4096);
  CHECK(std::string(sut->header().name) == name);
  created->body()[7] = std::byte{42};
  CHECK(sut->body()[7] == std::byte{42});
}

TEST_CASE("segment: names are validated") {
  CHECK(valid_segment_name("jobs"));
  CHECK(valid_segment_name("a.b-c_D9"));
  CHECK_FALSE(valid_segment_name(""));
  CHECK_FALSE(valid_segment_name("../etc"));
  CHECK_FALSE(valid_segment_name("a/b"));
  CHECK_FALSE(valid_segment_name(".hidden"));
  CHECK_FALSE(valid_segment_name("-flag"));
  CHECK_FALSE(valid_segment_name(std::string(kMaxNameLength + 1, 'x')));
  auto sut = Segment::create(config_for("bad/name"));
  REQUIRE_FALSE(sut.has_value());
  CHECK(sut.error().code == Errc::invalid_name);
  auto opened = Segment::open("no such", SegmentKind::pipe);
  CHECK(opened.error().code == Errc::invalid_name);
}

TEST_CASE("segment: create refuses an existing name and open reports a missing one") {
  const std::string name = unique_name("exists");
  Cleanup cleanup{name};
  auto first = Segment::create(config_for(name));
  REQUIRE(first.has_value());
  auto second = Segment::create(config_for(name));
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == Errc::exists);
  CHECK(second.error().what.find(name) != std::string::npos);
  auto missing = Segment::open(unique_name("missing"), SegmentKind::pipe);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::not_found);
}

TEST_CASE("segment: a generated name is unlinked when the last mapping goes away") {
  SegmentConfig c = config_for("");
  std::string name;
  {
    auto a = Segment::create(c);
    REQUIRE(a.has_value());
    name = a->name();
    CHECK(name.rfind("anon-", 0) == 0);
    CHECK(name.size() == 5 + 32);
    {
      auto b = Segment::open(name, SegmentKind::pipe);
      REQUIRE(b.has_value());
    }
    CHECK(exists_in_dev_shm(name));  // `a` still holds it
  }
  CHECK_FALSE(exists_in_dev_shm(name));
}

TEST_CASE("segment: leave_mapped gives up the attachment but keeps the memory mapped") {
  auto a = Segment::create(config_for(""));
  REQUIRE(a.has_value());
  const std::string name = a->name();
  auto sut = Segment::open(name, SegmentKind::pipe);
  REQUIRE(sut.has_value());
  sut->leave_mapped();
  CHECK(exists_in_dev_shm(name));  // `a` is still attached
  // relaxed: read back below in this thread. Still mapped: a thread inside a call may go on.
  sut->header().stats[0].wakes.store(7, std::memory_order_relaxed);
  CHECK(core::Stats::read(a->header().stats[0].wakes) == 7);
  a->leave_mapped();  // the last attachment: the generated name goes
  CHECK_FALSE(exists_in_dev_shm(name));
  CHECK(segment_in_use(name).error().code == Errc::not_found);
}

TEST_CASE("segment: a chosen name stays until it is unlinked") {
  const std::string name = unique_name("kept");
  Cleanup cleanup{name};
  { auto a = Segment::create(config_for(name)); REQUIRE(a.has_value()); }
  CHECK(exists_in_dev_shm(name));
  CHECK(Segment::unlink(name).has_value());
  CHECK_FALSE(exists_in_dev_shm(name));
  CHECK(Segment::unlink(name).error().code == Errc::not_found);
}

TEST_CASE("segment: an anonymous memfd segment is shared with a forked child") {
  SegmentConfig c = config_for("");
  c.anonymous = true;
  auto sut = Segment::create(c);
  REQUIRE(sut.has_value());
  CHECK(sut->name().empty());
  auto again = Segment::from_fd(sut->fd(), SegmentKind::pipe);
  REQUIRE(again.has_value());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    again->body()[0] = std::byte{7};
    _exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(sut->body()[0] == std::byte{7});
  auto wrong = Segment::from_fd(sut->fd(), SegmentKind::queue);
  CHECK(wrong.error().code == Errc::wrong_kind);
}

TEST_CASE("segment: a participant is alive while its process lives and dead after kill -9") {
  const std::string name = unique_name("live");
  Cleanup cleanup{name};
  auto sut = Segment::create(config_for(name));
  REQUIRE(sut.has_value());
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  const pid_t pid = fork_holding(
      [&] {
        auto s = Segment::open(name, SegmentKind::pipe);
        if (!s) _exit(2);
        auto p = s->join(Role::writer);
        if (!p || p->index() != 0) _exit(2);
        static Participant keep = std::move(*p);
        static Segment keep_seg = std::move(*s);
      },
      pipefd[1]);
  char c = 0;
  REQUIRE(::read(pipefd[0], &c, 1) == 1);
  CHECK(sut->participant_alive(0));
  CHECK(sut->live_participants() == 1);
  const std::uint32_t gen_before = sut->header().participants[0].generation.load(std::memory_order_seq_cst);
  CHECK(gen_before != 0);
  kill_and_reap(pid);
  CHECK_FALSE(sut->participant_alive(0));
  CHECK(sut->live_participants() == 0);
  auto mine = sut->join(Role::reader);
  REQUIRE(mine.has_value());
  CHECK(mine->index() == 0);  // the dead holder's slot is free again
  CHECK(mine->generation() != gen_before);
  CHECK(sut->participant_alive(0));  // seen through another description: our own lock counts
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

TEST_CASE("segment: an exclusive role is refused while held and freed by close or death") {
  const std::string name = unique_name("role");
  Cleanup cleanup{name};
  auto sut = Segment::create(config_for(name));
  REQUIRE(sut.has_value());
  {
    auto first = sut->acquire_role(0);
    REQUIRE(first.has_value());
    auto second = sut->acquire_role(0);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code == Errc::role_taken);
    CHECK(sut->role_held(0));
    CHECK(sut->acquire_role(1).has_value());
  }
  CHECK_FALSE(sut->role_held(0));
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  const pid_t pid = fork_holding(
      [&] {
        auto s = Segment::open(name, SegmentKind::pipe);
        if (!s) _exit(2);
        auto r = s->acquire_role(0);
        if (!r) _exit(2);
        static RoleLock keep = std::move(*r);
        static Segment keep_seg = std::move(*s);
      },
      pipefd[1]);
  char c = 0;
  REQUIRE(::read(pipefd[0], &c, 1) == 1);
  CHECK(sut->role_held(0));
  CHECK(sut->acquire_role(0).error().code == Errc::role_taken);
  kill_and_reap(pid);
  CHECK_FALSE(sut->role_held(0));
  CHECK(sut->acquire_role(0).has_value());
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

TEST_CASE("segment: 64 participants fit and the 65th is refused") {
  const std::string name = unique_name("full");
  Cleanup cleanup{name};
  auto sut = Segment::create(config_for(name));
  REQUIRE(sut.has_value());
  std::vector<Participant> ps;
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    auto p = sut->join(Role::both);
    REQUIRE(p.has_value());
    ps.push_back(std::move(*p));
  }
  auto extra = sut->join(Role::both);
  REQUIRE_FALSE(extra.has_value());
  CHECK(extra.error().code == Errc::too_many_participants);
  ps.pop_back();
  CHECK(sut->join(Role::both).has_value());
}

TEST_CASE("segment: a creator that died during creation leaves a segment open() refuses") {
  const std::string name = unique_name("halfmade");
  Cleanup cleanup{name};
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  const pid_t pid = fork_holding(
      [&] {
        static auto s = Segment::create(config_for(name), [&](Segment&) {
          char c = 1;
          if (::write(pipefd[1], &c, 1) != 1) _exit(3);
          for (;;) ::pause();  // killed while `initializing`
        });
      },
      pipefd[1]);
  char c = 0;
  REQUIRE(::read(pipefd[0], &c, 1) == 1);
  OpenOptions quick;
  quick.initializing_wait_ms = 20;
  auto busy = Segment::open(name, SegmentKind::pipe, quick);
  REQUIRE_FALSE(busy.has_value());
  CHECK(busy.error().code == Errc::initializing);
  CHECK(busy.error().what.find("still being created") != std::string::npos);
  kill_and_reap(pid);
  auto dead = Segment::open(name, SegmentKind::pipe, quick);
  REQUIRE_FALSE(dead.has_value());
  CHECK(dead.error().code == Errc::initializing);
  CHECK(dead.error().what.find("died") != std::string::npos);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

TEST_CASE("segment: corrupt and foreign headers are each rejected with a named error") {
  struct Case {
    const char* what;
    std::function<void(SegmentHeader&)> mutate;
    Errc expected;
  };
  const Case cases[] = {
      {"bad magic", [](SegmentHeader& h) { h.magic ^= 1; }, Errc::bad_magic},
      {"zeroed header", [](SegmentHeader& h) { std::memset(static_cast<void*>(&h), 0, 64); }, Errc::bad_magic},
      {"future version", [](SegmentHeader& h) { h.layout_version = kLayoutVersion + 1; }, Errc::bad_version},
      {"previous version", [](SegmentHeader& h) { h.layout_version = kLayoutVersion - 1; },
       Errc::bad_version},
      {"version zero", [](SegmentHeader& h) { h.layout_version = 0; }, Errc::bad_version},
      {"unknown kind", [](SegmentHeader& h) { h.kind = 99; }, Errc::corrupt},
      {"wrong kind", [](SegmentHeader& h) { h.kind = static_cast<std::uint32_t>(SegmentKind::queue); }, Errc::wrong_kind},
      {"garbage state", [](SegmentHeader& h) { h.state.store(0xdeadbeef, std::memory_order_seq_cst); }, Errc::corrupt},
      {"header size", [](SegmentHeader& h) { h.header_bytes = 4096; }, Errc::size_mismatch},
      {"body offset", [](SegmentHeader& h) { h.body_offset = 0; }, Errc::size_mismatch},
      {"total larger than file", [](SegmentHeader& h) { h.total_bytes += 4096; }, Errc::truncated},
      {"total huge", [](SegmentHeader& h) { h.total_bytes = ~0ull; }, Errc::truncated},
      {"total smaller than file", [](SegmentHeader& h) { h.total_bytes -= 4096; }, Errc::size_mismatch},
      {"body size", [](SegmentHeader& h) { h.body_bytes += 8; }, Errc::size_mismatch},
      {"body size wraps", [](SegmentHeader& h) { h.body_bytes = ~0ull; }, Errc::size_mismatch},
      {"owner field", [](SegmentHeader& h) { h.owner_uid += 1; }, Errc::corrupt},
      {"unterminated name", [](SegmentHeader& h) { std::memset(h.name, 'x', sizeof h.name); }, Errc::corrupt},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string name = unique_name("corrupt");
    Cleanup cleanup{name};
    CHECK(open_after(c.mutate, name) == c.expected);
  }
}

TEST_CASE("segment: truncated, foreign-mode and foreign-owner files are rejected") {
  SUBCASE("a file truncated below its header size") {
    const std::string name = unique_name("trunc");
    Cleanup cleanup{name};
    { auto s = Segment::create(config_for(name)); REQUIRE(s.has_value()); }
    REQUIRE(::truncate(segment_path(name).c_str(), 100) == 0);
    CHECK(Segment::open(name, SegmentKind::pipe).error().code == Errc::truncated);
  }
  SUBCASE("a file truncated inside its body") {
    const std::string name = unique_name("trunc-body");
    Cleanup cleanup{name};
    { auto s = Segment::create(config_for(name, 65536)); REQUIRE(s.has_value()); }
    REQUIRE(::truncate(segment_path(name).c_str(), kHeaderBytes + 4096) == 0);
    CHECK(Segment::open(name, SegmentKind::pipe).error().code == Errc::truncated);
  }
  SUBCASE("an empty file nobody is creating") {
    const std::string name = unique_name("empty");
    Cleanup cleanup{name};
    const int fd = ::open(segment_path(name).c_str(), O_CREAT | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    ::close(fd);
    CHECK(Segment::open(name, SegmentKind::pipe).error().code == Errc::truncated);
  }
  SUBCASE("a file of random bytes") {
    const std::string name = unique_name("random");
    Cleanup cleanup{name};
    const int fd = ::open(segment_path(name).c_str(), O_CREAT | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    std::string junk(kHeaderBytes + 4096, '\x5a');
    REQUIRE(::write(fd, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    ::close(fd);
    CHECK(Segment::open(name, SegmentKind::pipe).error().code == Errc::bad_magic);
  }
  SUBCASE("group- or world-accessible modes") {
    for (mode_t mode : {0640, 0604, 0660, 0666}) {
      const std::string name = unique_name("mode");
      Cleanup cleanup{name};
      { auto s = Segment::create(config_for(name)); REQUIRE(s.has_value()); }
      REQUIRE(::chmod(segment_path(name).c_str(), mode) == 0);
      auto r = Segment::open(name, SegmentKind::pipe);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == Errc::insecure_mode);
      OpenOptions trusting;
      trusting.allow_other_users = true;
      CHECK(Segment::open(name, SegmentKind::pipe, trusting).has_value());
    }
  }
  SUBCASE("a file owned by another uid") {
    const std::string name = unique_name("owner");
    Cleanup cleanup{name};
    { auto s = Segment::create(config_for(name)); REQUIRE(s.has_value()); }
    if (::geteuid() == 0) {  // only root can give a file away; otherwise the check is unreachable
      REQUIRE(::chown(segment_path(name).c_str(), 4242, 4242) == 0);
      auto r = Segment::open(name, SegmentKind::pipe);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == Errc::wrong_owner);
      CHECK(r.error().what.find("uid 4242") != std::string::npos);
    }
  }
  SUBCASE("a symbolic link in place of the segment") {
    const std::string name = unique_name("link");
    const std::string target = unique_name("target");
    Cleanup cleanup{name};
    Cleanup cleanup_target{target};
    { auto s = Segment::create(config_for(target)); REQUIRE(s.has_value()); }
    REQUIRE(::symlink(segment_path(target).c_str(), segment_path(name).c_str()) == 0);
    auto r = Segment::open(name, SegmentKind::pipe);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::system);  // O_NOFOLLOW: ELOOP
  }
}

TEST_CASE("segment: segment_in_use follows attachments and ignores header bytes") {
  const std::string name = unique_name("inuse");
  Cleanup cleanup{name};
  {
    auto sut = Segment::create(config_for(name));
    REQUIRE(sut.has_value());
    auto used = segment_in_use(name);
    REQUIRE(used.has_value());
    CHECK(*used);
  }
  auto unused = segment_in_use(name);
  REQUIRE(unused.has_value());
  CHECK_FALSE(*unused);
  tamper(name, [](SegmentHeader& h) { h.magic = 0; });
  CHECK_FALSE(*segment_in_use(name));
  CHECK(segment_in_use(unique_name("absent")).error().code == Errc::not_found);
}
