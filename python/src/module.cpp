// _shmq: the thin native half of the Python package. One native call per put/get: it encodes the
// object (codec.cpp), claims room in the channel with the GIL held, and releases the GIL only when
// it has to sleep (support.hpp). This file is the module's glue: it registers the bindings of each
// job (message_view.cpp, queue_binding.cpp, pipe_binding.cpp, wait_binding.cpp, batch_binding.cpp,
// sync_*.cpp, fb_binding.cpp with fb_view.cpp) and the process-wide functions (fork, exit, gc,
// unlink).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "channel.hpp"
#include "codec.hpp"
#include "pickler.hpp"
#include "ready.hpp"
#include "shmq/shm/gc.hpp"
#include "shmq/shm/queue.hpp"
#include "support.hpp"
#include "sync_binding.hpp"

namespace shmq::py {

void bind_queue(nb::module_& m);
void bind_pipe(nb::module_& m);
void bind_wait(nb::module_& m);
void bind_batch(nb::module_& m);
void bind_fb(nb::module_& m);

namespace {

void after_fork_in_child() {
  watch_after_fork_in_child();  // before the states drop the roles its watches point into
  ++g_fork_generation;
  codec_after_fork();
  for (ChannelState* s : channel_states()) s->after_fork();
}

void close_all() {
  watch_shutdown();  // before the mappings the watcher sleeps in go
  for (ChannelState* s : std::vector<ChannelState*>(channel_states())) {
    // A thread blocked in a call on this channel (a daemon thread in get(), a manager's server
    // thread in recv()) still uses its mapping: it stays mapped for the exit to unmap.
    if (!s->rmu_.try_lock()) {
      s->leave_mapped();
      continue;
    }
    if (!s->wmu_.try_lock()) {
      s->rmu_.unlock();
      s->leave_mapped();
      continue;
    }
    s->drop_all();  // later calls on its handle find it closed
    s->wmu_.unlock();
    s->rmu_.unlock();
  }
  sync_close_all();
}

// shmq.gc(): the library's policy (shm/gc.hpp), the one `shmq gc` applies. Returns the names of
// the segments and spill files it removed (with dry_run: would remove).
nb::list gc_scan(std::vector<std::string> patterns, bool include_named, bool force, bool dry_run,
                 double grace) {
  const shmq::GcPolicy policy{.patterns = std::move(patterns),
                              .include_named = include_named,
                              .force = force,
                              .dry_run = dry_run,
                              .grace_seconds = grace};
  std::vector<shmq::GcEntry> entries;
  {
    nb::gil_scoped_release nogil;  // a directory scan and a lock probe per segment
    entries = shmq::collect_garbage(policy);
  }
  nb::list removed;
  for (const shmq::GcEntry& e : entries) {
    if (e.action == shmq::GcAction::removed || e.action == shmq::GcAction::would_remove)
      removed.append(e.name);
  }
  return removed;
}

// A queue's spill files go with it; for a pipe there are none.
void unlink_name(const std::string& name) {
  auto r = shmq::Queue::unlink(name);
  if (!r) throw_error(r.error());
}

}  // namespace
}  // namespace shmq::py

NB_MODULE(_shmq, m) {
  using namespace shmq::py;
  m.doc() = "shmq native core (internal; use the shmq package)";
  // nanobind reports instances still alive when the module is torn down at interpreter exit.
  // CPython does not promise to free objects that module globals still reference then (a
  // Value received through a queue and kept in __main__ is one), so the report would name
  // correct programs; reference counts are checked by the tests instead (test_sync).
  nb::set_leak_warnings(false);
  init_globals();
  init_codec();
  init_pickler();
  bind_message_view(m);
  bind_queue(m);
  bind_pipe(m);
  bind_wait(m);
  bind_batch(m);
  bind_sync(m);
  bind_fb(m);
  bind_ready(m);
  m.def("after_fork_in_child", &after_fork_in_child);
  m.def("close_all", &close_all);
  m.def("gc_scan", &gc_scan, nb::arg("patterns"), nb::arg("include_named"), nb::arg("force"),
        nb::arg("dry_run"), nb::arg("grace"));
  m.def("unlink", &unlink_name, nb::arg("name"));
}
