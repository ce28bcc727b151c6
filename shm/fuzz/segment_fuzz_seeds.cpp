// Writes seed files for segment_open_fuzz: whole pipe and queue segments with messages in them
// (small, wrapped, chunked, spilled-size records), one file each, into the directory argv[1].
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

namespace {

bool save(const shmq::Segment& seg, const std::string& path) {
  std::vector<char> buf(seg.size());
  if (::pread(seg.fd(), buf.data(), buf.size(), 0) != static_cast<ssize_t>(buf.size())) return false;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  return std::fclose(f) == 0 && ok;
}

std::vector<std::byte> payload(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int written = 0;
  for (const bool duplex : {false, true}) {
    auto pipe = shmq::Pipe::create({.name = "", .capacity = 512, .duplex = duplex, .anonymous = true});
    if (!pipe) return 1;
    auto tx = pipe->writer(0);
    if (!tx) return 1;
    // Fill, drain some, refill: the seed holds a wrapped ring with a padding record.
    for (unsigned i = 0; i < 6; ++i) (void)tx->try_send(payload(20 + i * 13, i), i % 3);
    {
      auto rx = pipe->reader(0);
      shmq::Message m;
      for (int i = 0; i < 3 && rx && rx->try_recv(m) == shmq::Status::ok; ++i) m.release();
    }
    for (unsigned i = 0; i < 5; ++i) (void)tx->try_send(payload(40 + i * 7, i), 1);
    written += save(pipe->segment(), dir + (duplex ? "/pipe-duplex" : "/pipe-simplex"));
  }
  {
    shmq::QueueConfig c;
    c.slots = 8;
    c.slot_size = 64;
    c.arena_chunks = 1;  // one small chunk, so the seed stays small and holds an arena reference
    c.arena_chunk_bytes = 4096;
    c.anonymous = true;
    auto q = shmq::Queue::create(c);
    if (!q) return 1;
    auto tx = q->writer();
    if (!tx) return 1;
    for (unsigned i = 0; i < 6; ++i) (void)tx->try_send(payload(8 + i * 9, i), i % 2);
    (void)tx->try_send(payload(300, 7), 0);  // larger than a slot: in the arena chunk
    written += save(q->segment(), dir + "/queue");
  }
  std::printf("wrote %d seeds to %s\n", written, dir.c_str());
  return written == 3 ? 0 : 1;
}
