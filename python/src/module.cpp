// _shmq: the thin native half of the Python package. One native call per put/get: it encodes the
// object (codec.cpp), claims room in the channel with the GIL held, and releases the GIL only when
// it has to sleep (support.hpp). This file is the module's glue: it registers the bindings of each
// job (message_view.cpp, queue_binding.cpp, pipe_binding.cpp, wait_binding.cpp) and the
// process-wide functions (fork, exit, gc, unlink).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <dirent.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "channel.hpp"
#include "codec.hpp"
#include "shmq/shm/queue.hpp"
#include "shmq/shm/segment.hpp"
#include "support.hpp"

namespace shmq::py {

void bind_queue(nb::module_& m);
void bind_pipe(nb::module_& m);
void bind_wait(nb::module_& m);

namespace {

void after_fork_in_child() {
  ++g_fork_generation;
  codec_after_fork();
  for (ChannelState* s : channel_states()) s->after_fork();
}

void close_all() {
  for (ChannelState* s : std::vector<ChannelState*>(channel_states())) s->drop_all();
}

bool is_spill(const std::string& file) { return shmq::Queue::is_spill_file_name(file); }
void remove_spills(const std::string& name) { (void)shmq::Queue::remove_spill_files(name); }

// Removes generated-name segments ("anon-...", unlinked by their last user) that no live process
// holds: leftovers of processes killed before they could detach. Named segments are left alone.
nb::list gc_scan() {
  nb::list removed;
  std::vector<std::string> names;
  if (DIR* dir = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(dir)) {
      const std::string f = e->d_name;
      if (f.rfind("shmq.anon-", 0) == 0 && !is_spill(f)) names.push_back(f.substr(5));
    }
    ::closedir(dir);
  }
  for (const std::string& name : names) {
    auto used = shmq::segment_in_use(name);
    if (used && !*used && ::unlink(shmq::segment_path(name).c_str()) == 0) {
      remove_spills(name);
      removed.append(name);
    }
  }
  return removed;
}

void unlink_name(const std::string& name) {
  auto r = shmq::Segment::unlink(name);
  if (!r) throw_error(r.error());
}

}  // namespace
}  // namespace shmq::py

NB_MODULE(_shmq, m) {
  using namespace shmq::py;
  m.doc() = "shmq native core (internal; use the shmq package)";
  init_globals();
  init_codec();
  bind_message_view(m);
  bind_queue(m);
  bind_pipe(m);
  bind_wait(m);
  m.def("after_fork_in_child", &after_fork_in_child);
  m.def("close_all", &close_all);
  m.def("gc_scan", &gc_scan);
  m.def("unlink", &unlink_name, nb::arg("name"));
}
