#include "support.hpp"

#include <cerrno>

namespace shmq::py {

Globals g;
std::uint64_t g_fork_generation = 0;

namespace {

PyObject* keep(nb::object o) { return o.release().ptr(); }

}  // namespace

void init_globals() {
  nb::module_ pickle = nb::module_::import_("pickle");
  g.dumps = keep(pickle.attr("dumps"));
  g.loads = keep(pickle.attr("loads"));
  nb::module_ queue = nb::module_::import_("queue");
  g.empty = keep(queue.attr("Empty"));
  g.full = keep(queue.attr("Full"));
  g.too_short = keep(nb::module_::import_("multiprocessing").attr("BufferTooShort"));
  g.protocol = PyLong_FromLong(5);
  g.cb_kwnames = Py_BuildValue("(s)", "buffer_callback");
  g.buffers_kwnames = Py_BuildValue("(s)", "buffers");
}

void throw_py(PyObject* type, const std::string& what) {
  PyErr_SetString(type, what.c_str());
  throw nb::python_error();
}

void throw_error(const shmq::Error& e) {
  using shmq::Errc;
  PyObject* type = PyExc_OSError;
  switch (e.code) {
    case Errc::invalid_argument:
    case Errc::invalid_name: type = PyExc_ValueError; break;
    case Errc::not_found: type = PyExc_FileNotFoundError; break;
    case Errc::exists: type = PyExc_FileExistsError; break;
    case Errc::permission_denied:
    case Errc::wrong_owner:
    case Errc::insecure_mode: type = PyExc_PermissionError; break;
    case Errc::timeout: type = PyExc_TimeoutError; break;
    case Errc::interrupted: type = PyExc_InterruptedError; break;
    default: break;
  }
  if (type == PyExc_OSError || type == PyExc_FileNotFoundError ||
      type == PyExc_FileExistsError || type == PyExc_PermissionError) {
    const int err = e.sys_errno != 0 ? e.sys_errno : (type == PyExc_FileNotFoundError ? ENOENT : EIO);
    PyObject* args = Py_BuildValue("(is)", err, e.what.c_str());
    PyErr_SetObject(type, args);
    Py_XDECREF(args);
    throw nb::python_error();
  }
  throw_py(type, e.what);
}

void check_signals() {
  if (PyErr_CheckSignals() != 0) throw nb::python_error();
}

nb::object steal_or_throw(PyObject* o) {
  if (o == nullptr) throw nb::python_error();
  return nb::steal(o);
}

Deadline make_deadline(bool block, std::optional<double> timeout) {
  if (!block) return Deadline::now();
  if (!timeout) return Deadline::never();
  const double t = *timeout > 0 ? *timeout : 0.0;
  if (t > 1e9) return Deadline::never();
  return Deadline::in(std::chrono::duration<double>(t));
}

bool HandleMutex::lock(Deadline d) {
  if (m_.try_lock()) return true;
  for (;;) {
    bool got;
    {
      nb::gil_scoped_release nogil;
      got = m_.try_lock_until(d.capped(kSlice).time_point());
    }
    if (got) return true;
    check_signals();
    if (d.expired()) return false;
  }
}

std::vector<ChannelState*>& channel_states() {
  static std::vector<ChannelState*> states;
  return states;
}

ChannelState::ChannelState() : fork_generation_(g_fork_generation) {
  channel_states().push_back(this);
}

ChannelState::~ChannelState() {
  auto& states = channel_states();
  for (auto& s : states) {
    if (s == this) {
      s = states.back();
      states.pop_back();
      break;
    }
  }
}

}  // namespace shmq::py
