// A FlatBuffers message over a Pipe: the writer builds each Quote directly in the pipe's shared
// memory, the reader (a forked process) verifies it and reads it in place: no copy either side.
//
//   fb_pipe 100    # sends 100 quotes to a child, which checks and counts them
//
// Build against the installed library (flatc writes quote_generated.h from quote.fbs):
//   flatc --cpp quote.fbs
//   c++ -std=c++20 -O2 -I. fb_pipe.cpp $(pkg-config --cflags --libs shmq) -o fb_pipe
#include <shmq/serialize/reader.hpp>
#include <shmq/serialize/writer.hpp>
#include <shmq/shm/pipe.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "quote_generated.h"

// Tells shmq::fb the root type and its schema's file_identifier.
SHMQ_FB_ROOT_TYPE(example::Quote, example::QuoteIdentifier);

using namespace std::chrono_literals;

namespace {

int read_quotes(shmq::Pipe& pipe, long expected) {
  auto rx = pipe.reader();
  if (!rx) return 1;
  shmq::fb::Reader<example::Quote> reader(*rx);  // verifies every buffer before handing it out
  long good = 0;
  for (;;) {
    auto m = reader.recv(shmq::Deadline::in(10s));
    if (!m) {
      if (m.error().code == shmq::fb::ReadErrc::closed) break;
      std::fprintf(stderr, "reader: %s\n", m.error().message().c_str());
      return 1;
    }
    const example::Quote* q = m.get();  // points into shared memory until m is released
    good += q->sequence() == static_cast<std::uint64_t>(good) && q->ask() > q->bid() &&
            q->symbol()->str() == "SHMQ";
  }
  std::printf("reader: %ld of %ld quotes intact\n", good, expected);
  std::fflush(stdout);  // the child leaves with _exit(), which flushes nothing
  return good == expected ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const long count = argc > 1 ? std::atol(argv[1]) : 100;
  auto pipe = shmq::Pipe::create({.capacity = 1 << 16, .anonymous = true});
  if (!pipe) {
    std::fprintf(stderr, "create: %s\n", pipe.error().what.c_str());
    return 1;
  }
  const pid_t child = ::fork();
  if (child == 0) ::_exit(read_quotes(*pipe, count));
  auto tx = pipe->writer();
  if (!tx) return 1;
  shmq::fb::Writer<example::Quote> writer(*tx);
  for (long i = 0; i < count; ++i) {
    const auto s = writer.send(
        [i](flatbuffers::FlatBufferBuilder& b) {
          return example::CreateQuote(b, b.CreateString("SHMQ"), 99.5 + i, 100.0 + i,
                                      static_cast<std::uint64_t>(i));
        },
        shmq::Deadline::in(10s));
    if (s != shmq::Status::ok) {
      std::fprintf(stderr, "writer: %s\n", shmq::status_name(s).data());
      return 1;
    }
  }
  tx->close();  // the reader drains, then sees `closed`
  std::printf("writer: sent %ld quotes\n", count);
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
