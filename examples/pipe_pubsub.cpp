// A Pipe between two unrelated processes that meet by name: a publisher streams prices, a
// subscriber prints them until the publisher closes, then removes the pipe.
//
//   pipe_pubsub subscribe prices &      # waits for the pipe to appear
//   pipe_pubsub publish prices 1000     # creates it, sends 1000 messages, closes
//
// Build against the installed library:
//   c++ -std=c++20 -O2 pipe_pubsub.cpp $(pkg-config --cflags --libs shmq) -o pipe_pubsub
#include <shmq/shm/pipe.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

int publish(const std::string& name, long count) {
  auto pipe = shmq::Pipe::create({.name = name, .capacity = 1 << 16});
  if (!pipe) {
    std::fprintf(stderr, "publish: %s\n", pipe.error().what.c_str());
    return 1;
  }
  auto tx = pipe->writer();  // one writer per pipe: a second live one gets role_taken
  if (!tx) {
    std::fprintf(stderr, "publish: %s\n", tx.error().what.c_str());
    return 1;
  }
  for (long i = 0; i < count; ++i) {
    char text[64];
    const int n = std::snprintf(text, sizeof text, "price %ld %.2f", i, 100.0 + 0.25 * i);
    // send() blocks while the ring is full; it returns closed if the subscriber went away.
    const auto s = tx->send(std::as_bytes(std::span(text, static_cast<std::size_t>(n))),
                            shmq::Deadline::in(10s));
    if (s != shmq::Status::ok) {
      std::fprintf(stderr, "publish: send: %s\n", shmq::status_name(s).data());
      return 1;
    }
  }
  tx->close();  // the subscriber drains what was sent, then gets `closed`
  std::printf("published %ld messages\n", count);
  return 0;
}

int subscribe(const std::string& name) {
  // The publisher may not have created the pipe yet: retry for a while.
  auto pipe = shmq::Pipe::open(name);
  for (int i = 0; !pipe && pipe.error().code == shmq::Errc::not_found && i < 1000; ++i) {
    std::this_thread::sleep_for(10ms);
    pipe = shmq::Pipe::open(name);
  }
  if (!pipe) {
    std::fprintf(stderr, "subscribe: %s\n", pipe.error().what.c_str());
    return 1;
  }
  auto rx = pipe->reader();
  if (!rx) {
    std::fprintf(stderr, "subscribe: %s\n", rx.error().what.c_str());
    return 1;
  }
  long received = 0;
  shmq::Message m;
  for (;;) {
    const auto s = rx->recv(m, shmq::Deadline::in(10s));
    if (s == shmq::Status::closed) break;
    if (s != shmq::Status::ok) {
      std::fprintf(stderr, "subscribe: recv: %s\n", shmq::status_name(s).data());
      return 1;
    }
    // m.bytes() points into shared memory until m is released (here: the next recv).
    if (received % 250 == 0) {
      std::printf("%.*s\n", static_cast<int>(m.size()), reinterpret_cast<const char*>(m.data()));
    }
    ++received;
  }
  std::printf("received %ld messages\n", received);
  // A named pipe lives like a file until it is unlinked.
  if (auto r = shmq::Pipe::unlink(name); !r) std::fprintf(stderr, "unlink: %s\n", r.error().what.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "publish") == 0) return publish(argv[2], std::atol(argv[3]));
  if (argc >= 3 && std::strcmp(argv[1], "subscribe") == 0) return subscribe(argv[2]);
  std::fprintf(stderr, "usage: %s publish NAME COUNT | subscribe NAME\n", argv[0]);
  return 2;
}
