// Readiness file descriptors (ready_binding.cpp): Connection.fileno() and Queue.fileno() return an
// eventfd that is readable exactly while a message (for a pipe, also the end of the stream)
// waits, so select, selectors, multiprocessing.connection.wait and asyncio's add_reader work; a
// second, one-shot eventfd per channel is signalled when room comes (put_async, send_async).
//
// One watcher thread per process, started by the first fileno(), keeps them: it sleeps with
// futex_waitv on the data words of the channels whose fd is not signalled (and the space words of
// armed ones), signals an fd when its channel has a message, and then stops watching that channel
// until a read of this process found it empty again and cleared the fd. So a writer pays nothing
// while nobody watches, and while somebody does, one FUTEX_WAKE per burst of messages (the
// watcher wakes, writes the eventfd once, and leaves the word until the reader drains it).
#pragma once

#include <nanobind/nanobind.h>

#include "support.hpp"

namespace shmq::py {

// A channel's readiness state (defined in ready_binding.cpp).
class Watch;

// Called by every read path of a watched channel, with its read mutex held, after it took a
// message or found none: if nothing is left now, the readiness fd is cleared (and the watcher
// told). A mutex lock and a few loads; nothing for a channel without a readiness fd.
void watch_after_read(Watch& w) noexcept;

// Stops watching `st`; every binding calls it before it drops the roles or the mapping the
// watcher reads. GIL held (released while it waits for the watcher to let go).
void unwatch(ChannelState& st);
// At exit, before the mappings go: stops the watcher thread and forgets every watch.
void watch_shutdown();
// In a forked child, which has no watcher thread: forgets the parent's watches (closing this
// process's copies of their fds).
void watch_after_fork_in_child();

void bind_ready(nb::module_& m);

// Runs watch_after_read when a read path's scope ends (before its mutex guard, declared earlier,
// unlocks).
class AfterRead {
 public:
  explicit AfterRead(ChannelState& st) : st_(st) {}
  AfterRead(const AfterRead&) = delete;
  AfterRead& operator=(const AfterRead&) = delete;
  ~AfterRead() {
    if (st_.watch) watch_after_read(*st_.watch);
  }

 private:
  ChannelState& st_;
};

}  // namespace shmq::py
