// libFuzzer target: a hostile segment file. The input becomes the whole file behind a memfd;
// opening it as a pipe and as a queue must fail with a named error or succeed, and a successful
// open must survive reading records from it: never a crash, a hang or an out-of-bounds access.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

namespace {

// The seeds (segment_fuzz_seeds) are real pipe and queue segments holding messages, so that
// mutations reach past the header checks into the rings.
int make_file(const std::uint8_t* data, std::size_t size) {
  const int fd = ::memfd_create("fuzz", MFD_CLOEXEC);
  if (fd < 0) return -1;
  ::fchmod(fd, 0600);  // memfds start at 0777, which open() rightly refuses
  if (::write(fd, data, size) != static_cast<ssize_t>(size)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void drain_pipe(shmq::Pipe& pipe) {
  for (unsigned d = 0; d < pipe.directions(); ++d) {
    auto rx = pipe.reader(d);
    if (!rx) continue;
    shmq::Message m;
    for (int i = 0; i < 64; ++i) {
      if (rx->try_recv(m) != shmq::Status::ok) break;
      volatile std::byte sink{};
      for (std::byte b : m.bytes()) sink = b;
      (void)sink;
      m.release();
    }
  }
}

void drain_queue(shmq::Queue& q) {
  auto rx = q.reader();
  if (!rx) return;
  shmq::Message m;
  for (int i = 0; i < 64; ++i) {
    if (rx->try_recv(m) != shmq::Status::ok) break;
    volatile std::byte sink{};
    for (std::byte b : m.bytes()) sink = b;
    (void)sink;
    m.release();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > (1u << 20)) return 0;
  const int fd = make_file(data, size);
  if (fd < 0) return 0;
  shmq::OpenOptions opts;
  opts.initializing_wait_ms = 0;
  if (auto pipe = shmq::Pipe::from_fd(fd, opts)) drain_pipe(*pipe);
  if (auto q = shmq::Queue::from_fd(fd, opts)) drain_queue(*q);
  ::close(fd);
  return 0;
}
