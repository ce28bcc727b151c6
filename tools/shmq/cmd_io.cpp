// shmq create / send / recv: the channel APIs (Pipe, Queue) for scripts.
//
// send and recv take a role for their lifetime like any other process: a pipe's writer or reader
// of one direction (refused with role_taken while another live process holds it), or a queue
// writer/reader slot. When they exit, their handles close: a pipe's reader then drains and sees
// `closed` (end of stream); a pipe's writer sees `closed` until another reader attaches.
#include <fmt/core.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "commands.hpp"
#include "inspect.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::cli {
namespace {

Deadline deadline_for(double timeout_s) {
  if (timeout_s < 0) return Deadline::never();
  return Deadline::in(std::chrono::duration<double>(timeout_s));
}

std::string timeout_text(double timeout_s) { return fmt::format("{:g} s", timeout_s); }

// The kind of a segment, from its header, with the header's problems as errors.
Result<std::string> channel_kind(const std::string& name) {
  auto probe = Probe::open(name);
  if (!probe) return std::move(probe).error();
  if (!probe->sound()) return probe->first_error();
  return probe->kind_name();
}

// Message sources for send: stdin lines, or whole files.
class Source {
 public:
  explicit Source(const std::vector<std::string>& files) : files_(files) {}
  // False at the end; an unreadable file is reported through `error`.
  bool next(std::vector<std::byte>& out, std::string& error) {
    if (files_.empty()) {
      std::string line;
      if (!std::getline(std::cin, line)) return false;
      out.assign(reinterpret_cast<const std::byte*>(line.data()),
                 reinterpret_cast<const std::byte*>(line.data()) + line.size());
      return true;
    }
    if (index_ >= files_.size()) return false;
    const std::string& path = files_[index_++];
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      error = "cannot read '" + path + "'";
      return false;
    }
    std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    out.assign(reinterpret_cast<const std::byte*>(data.data()),
               reinterpret_cast<const std::byte*>(data.data()) + data.size());
    return true;
  }

 private:
  const std::vector<std::string>& files_;
  std::size_t index_ = 0;
};

template <class Writer>
int send_all(Writer& w, const SendOptions& o, const std::string& ctx) {
  Source src(o.files);
  std::vector<std::byte> msg;
  std::string error;
  std::uint64_t sent = 0;
  while (src.next(msg, error)) {
    const Deadline d = deadline_for(o.timeout);
    Status s;
    do {
      s = w.send(std::span<const std::byte>(msg), d, o.kind);
    } while (s == Status::interrupted);  // a signal we do not handle: just retry
    switch (s) {
      case Status::ok: ++sent; continue;
      case Status::timeout:
        return report(ctx, fmt::format("timed out after {} waiting for room ({} message{} sent)",
                                       timeout_text(o.timeout), sent, sent == 1 ? "" : "s"));
      case Status::closed:
        return report(ctx, fmt::format("the reader closed the channel ({} message{} sent)", sent,
                                       sent == 1 ? "" : "s"));
      case Status::too_big:
        return report(ctx, fmt::format("message {} ({} bytes) is too big for this channel", sent,
                                       msg.size()));
      default:
        return report(ctx, fmt::format("the channel is corrupt ({}) after {} messages",
                                       status_name(s), sent));
    }
  }
  if (!error.empty()) return report(ctx, error);
  return kExitOk;
}

class Sink {
 public:
  explicit Sink(const std::string& prefix) : prefix_(prefix) {}
  bool put(std::span<const std::byte> bytes, std::string& error) {
    if (prefix_.empty()) {
      const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), stdout) == bytes.size() &&
                      std::fputc('\n', stdout) != EOF && std::fflush(stdout) == 0;
      if (!ok) error = "cannot write to stdout";
      return ok;
    }
    const std::string path = prefix_ + std::to_string(index_++);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) error = "cannot write '" + path + "'";
    return static_cast<bool>(out);
  }

 private:
  const std::string& prefix_;
  std::uint64_t index_ = 0;
};

template <class Reader>
int recv_all(Reader& r, const RecvOptions& o, const std::string& ctx) {
  Sink sink(o.file_prefix);
  std::uint64_t n = 0;
  std::string error;
  while (o.count == 0 || n < o.count) {
    const Deadline d = deadline_for(o.timeout);
    Message m;
    Status s;
    do {
      s = r.recv(m, d);
    } while (s == Status::interrupted);
    if (s == Status::ok) {
      if (!sink.put(m.bytes(), error)) return report(ctx, error);
      m.release();
      ++n;
      continue;
    }
    const std::string got = o.count == 0 ? fmt::format("{} received", n)
                                         : fmt::format("{} of {} received", n, o.count);
    switch (s) {
      case Status::timeout:
        // Without --count, a quiet period of --timeout is the normal end.
        if (o.count == 0) return kExitOk;
        return report(ctx, fmt::format("timed out after {} waiting for a message ({})",
                                       timeout_text(o.timeout), got));
      case Status::closed:
        if (o.count == 0) return kExitOk;
        return report(ctx, fmt::format("the channel was closed ({})", got));
      default:
        return report(ctx, fmt::format("the channel is corrupt ({}; {})", status_name(s), got));
    }
  }
  return kExitOk;
}

}  // namespace

int cmd_create(const CreateOptions& o) {
  const std::string ctx = "create " + o.name;
  if (!valid_segment_name(o.name)) {
    return report(ctx, Error(Errc::invalid_name, "invalid segment name '" + o.name +
                                                     "': use 1 to 200 characters from A-Z a-z "
                                                     "0-9 . _ -, not starting with . or -"));
  }
  if (o.kind == "pipe") {
    PipeConfig c;
    c.name = o.name;
    if (o.capacity_given) c.capacity = o.capacity;
    c.duplex = o.duplex;
    auto pipe = Pipe::create(c);
    if (!pipe) return report(ctx, pipe.error());
    std::cout << fmt::format("created pipe '{}': {} per direction{}\n", o.name,
                             human_bytes(pipe->capacity()), pipe->duplex() ? ", duplex" : "");
    return kExitOk;
  }
  QueueConfig c;
  c.name = o.name;
  if (o.slots_given) c.slots = o.slots;
  if (o.slot_size_given) c.slot_size = o.slot_size;
  if (o.maxsize_given) c.maxsize = o.maxsize;
  if (o.arena_chunks_given) c.arena_chunks = o.arena_chunks;
  if (o.arena_chunk_bytes_given) c.arena_chunk_bytes = o.arena_chunk_bytes;
  auto queue = Queue::create(c);
  if (!queue) return report(ctx, queue.error());
  std::cout << fmt::format("created queue '{}': {} slots of {} bytes, maxsize {}, arena {} x {}\n",
                           o.name, c.slots, queue->slot_size(), queue->capacity(), c.arena_chunks,
                           human_bytes(c.arena_chunk_bytes));
  return kExitOk;
}

int cmd_send(const SendOptions& o) {
  const std::string ctx = "send " + o.name;
  auto kind = channel_kind(o.name);
  if (!kind) return report(ctx, kind.error());
  if (*kind == "pipe") {
    auto pipe = Pipe::open(o.name);
    if (!pipe) return report(ctx, pipe.error());
    auto w = pipe->writer(o.direction);
    if (!w) return report(ctx, w.error());
    return send_all(*w, o, ctx);
  }
  auto queue = Queue::open(o.name);
  if (!queue) return report(ctx, queue.error());
  if (o.direction != 0) return report(ctx, "a queue has one direction: drop --direction");
  auto w = queue->writer();
  if (!w) return report(ctx, w.error());
  return send_all(*w, o, ctx);
}

int cmd_recv(const RecvOptions& o) {
  const std::string ctx = "recv " + o.name;
  auto kind = channel_kind(o.name);
  if (!kind) return report(ctx, kind.error());
  if (*kind == "pipe") {
    auto pipe = Pipe::open(o.name);
    if (!pipe) return report(ctx, pipe.error());
    auto r = pipe->reader(o.direction);
    if (!r) return report(ctx, r.error());
    return recv_all(*r, o, ctx);
  }
  auto queue = Queue::open(o.name);
  if (!queue) return report(ctx, queue.error());
  if (o.direction != 0) return report(ctx, "a queue has one direction: drop --direction");
  auto r = queue->reader();
  if (!r) return report(ctx, r.error());
  return recv_all(*r, o, ctx);
}

}  // namespace shmq::cli
