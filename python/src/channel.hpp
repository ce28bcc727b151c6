// What the Queue and Pipe bindings share: sending an encoded Payload through a writer and
// receiving through a reader with the contract's shapes (try first with the GIL held, then sleep
// in GIL-free slices), and MessageView, a received message kept alive for a memoryview.
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <vector>

#include "codec.hpp"
#include "shmq/shm/message.hpp"
#include "support.hpp"

namespace shmq::py {

// Sends `p` through a Pipe or Queue writer: claimed and written in place when it fits one claim,
// else as one contiguous buffer that the channel streams in chunks.
template <class Writer>
Status put_payload(Writer& w, const Payload& p, Deadline d) {
  const std::size_t n = p.size();
  if (n <= w.max_claim()) {
    auto c = w.try_claim(n, p.kind());
    if (c.valid()) {
      p.write(c.bytes().data());
      c.commit(n);
      return Status::ok;
    }
    Status s = c.status();
    if (s != Status::full || is_poll(d)) return s;
    return block_in_slices(
        [&](Deadline slice) {
          auto cl = w.claim(n, slice, p.kind());
          if (!cl.valid()) return cl.status();
          p.write(cl.bytes().data());
          cl.commit(n);
          return Status::ok;
        },
        d);
  }
  std::vector<std::byte> joined;
  std::span<const std::byte> msg;
  if (p.single()) {
    msg = {p.part0().data, p.part0().size};
  } else {
    joined.resize(n);
    p.write(joined.data());
    msg = joined;
  }
  if (is_poll(d)) return w.try_send(msg, p.kind());
  // A stream is aborted if its deadline passes midway, so it gets the caller's whole deadline;
  // Ctrl-C still interrupts it (EINTR).
  for (;;) {
    Status s;
    {
      nb::gil_scoped_release nogil;
      s = w.send(msg, d, p.kind());
    }
    if (s != Status::interrupted) return s;
    check_signals();
  }
}

template <class Reader>
Status recv_message(Reader& r, shmq::Message& m, Deadline d) {
  Status s = r.try_recv(m);
  if (s != Status::empty || is_poll(d)) return s;
  return block_in_slices([&](Deadline slice) { return r.recv(m, slice); }, d);
}

// A received message kept alive for a memoryview (get_view). The Python type is MessageView.
struct View {
  std::shared_ptr<ChannelState> owner;
  shmq::Message msg;
  std::uint64_t fork_generation = g_fork_generation;
  int exports = 0;

  ~View() { release_now(); }
  void release_now() noexcept;
};

void bind_message_view(nb::module_& m);

}  // namespace shmq::py
