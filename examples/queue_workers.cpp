// A pool of worker processes sharing one Queue of jobs and one Queue of results. Any number of
// writers and readers may use a Queue at once; each job goes to exactly one worker.
//
//   queue_workers 4 1000    # 4 workers square 1..1000; the parent adds up the results
//
// Build against the installed library:
//   c++ -std=c++20 -O2 queue_workers.cpp $(pkg-config --cflags --libs shmq) -o queue_workers
#include <shmq/shm/queue.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

using namespace std::chrono_literals;

namespace {

template <class T>
std::span<const std::byte> bytes_of(const T& v) {
  return std::as_bytes(std::span(&v, 1));
}
template <class T>
T value_of(const shmq::Message& m) {
  T v{};
  std::memcpy(&v, m.data(), sizeof v);
  return v;
}

// A worker: takes jobs until the queue is closed and drained, answers each with its square.
int work(shmq::Queue& jobs, shmq::Queue& results) {
  auto rx = jobs.reader();  // each handle is a participant: a killed worker's claims are recovered
  auto tx = results.writer();
  if (!rx || !tx) return 1;
  shmq::Message m;
  for (;;) {
    const auto s = rx->recv(m, shmq::Deadline::in(30s));
    if (s == shmq::Status::closed) return 0;
    if (s != shmq::Status::ok) return 1;
    const auto n = value_of<std::uint64_t>(m);
    m.release();  // gives the slot back to the writers
    const std::uint64_t square = n * n;
    if (tx->send(bytes_of(square), shmq::Deadline::in(30s)) != shmq::Status::ok) return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int workers = argc > 1 ? std::atoi(argv[1]) : 4;
  const std::uint64_t count = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1000;
  // Anonymous queues (memfd): shared with the forked workers, gone when the last one exits.
  auto jobs = shmq::Queue::create({.slots = 256, .slot_size = 8, .anonymous = true});
  auto results = shmq::Queue::create({.slots = 256, .slot_size = 8, .anonymous = true});
  for (const auto* q : {&jobs, &results}) {
    if (!*q) {
      std::fprintf(stderr, "create: %s\n", q->error().what.c_str());
      return 1;
    }
  }
  for (int w = 0; w < workers; ++w) {
    if (::fork() == 0) ::_exit(work(*jobs, *results));
  }
  auto tx = jobs->writer();
  auto rx = results->reader();
  if (!tx || !rx) return 1;
  std::uint64_t sent = 1, received = 0, sum = 0;
  shmq::Message m;
  while (received < count) {
    // Keep the pipeline full without blocking on either queue.
    while (sent <= count && tx->try_send(bytes_of(sent)) == shmq::Status::ok) ++sent;
    const auto s = rx->recv(m, shmq::Deadline::in(10ms));
    if (s == shmq::Status::ok) {
      sum += value_of<std::uint64_t>(m);
      ++received;
    } else if (s != shmq::Status::timeout) {
      std::fprintf(stderr, "recv: %s\n", shmq::status_name(s).data());
      return 1;
    }
  }
  jobs->close();  // workers drain what is left (nothing) and then get `closed`
  int failed = 0;
  for (int w = 0; w < workers; ++w) {
    int status = 0;
    ::wait(&status);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::printf("%d workers squared 1..%llu: sum %llu\n", workers,
              static_cast<unsigned long long>(count), static_cast<unsigned long long>(sum));
  return failed == 0 ? 0 : 1;
}
