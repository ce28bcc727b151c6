#include "pipe_binding.hpp"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <unistd.h>

#include <cstring>

#include <string>

#include "ready.hpp"

namespace shmq::py {

namespace {

// What multiprocessing's recv_bytes gives for `m` when that is not m's payload itself: the pickle
// of a bytes-like object sent whole (object_bytes), or a pickle whose out-of-band buffers travel
// after it, made again in-band. An invalid object when the payload is the answer.
nb::object repickled(const shmq::Message& m) {
  PyObject* obj = nullptr;
  if (m.kind() == kObjectBytesKind) {
    obj = bytes_from(m.data(), m.size());
  } else if (m.kind() == kPickleKind && m.size() != 0 &&
             static_cast<std::uint8_t>(m.data()[0]) != 0x80) {  // not PROTO: buffers follow
    obj = unpickle(m.data(), m.size());
  } else {
    return nb::object();
  }
  nb::object o = steal_or_throw(obj);
  return steal_or_throw(PyObject_CallFunctionObjArgs(g.dumps, o.ptr(), g.protocol, nullptr));
}

}  // namespace

void PipeState::after_fork() {
  writer.reset();
  reader.reset();
  wmu_.reset_after_fork();
  rmu_.reset_after_fork();
  fork_generation_ = g_fork_generation;
}

void PipeState::release_roles() {
  const bool held = pipe && pipe->held_ends() && hold.valid();
  hold.release();
  if (!held) {  // a pipe without held ends (made by C++): closing ends the streams
    if (writer) writer->close();
    if (reader) reader->close();
    writer.reset();
    reader.reset();
    return;
  }
  auto last = [&](std::uint32_t role) { return !pipe->role_hold_present(role); };
  if (wdir) {
    const std::uint32_t role = shmq::detail::pipe_role(*wdir, false);
    if (!last(role)) {
      if (writer) writer->leave();
    } else if (writer) {
      writer->close();
    } else if (auto w = pipe->writer(*wdir)) {
      w->close();  // never used here: taken only to tell a waiting reader at once
    }
  }
  if (rdir) {
    const std::uint32_t role = shmq::detail::pipe_role(*rdir, true);
    if (!last(role)) {
      if (reader) reader->leave();
    } else if (reader) {
      reader->close();
    } else if (auto r = pipe->reader(*rdir)) {
      r->close();
    }
  }
  writer.reset();
  reader.reset();
}

void PipeState::drop_all() {
  release_roles();
  if (views_ == 0) pipe.reset();
}

PipeState::~PipeState() {
  unwatch(*this);  // a handle dropped without close(): the watcher must let go first
  writer.reset();
  reader.reset();
}

PipeEnd::PipeEnd(const std::string& name, bool create, std::uint64_t capacity, bool duplex,
                 int end, bool readable, bool writable, bool raw_only, int hold_fd)
    : end_(end), readable_(readable), writable_(writable), raw_only_(raw_only) {
  st_ = std::make_shared<PipeState>();
  if (create) {
    shmq::PipeConfig cfg;
    cfg.name = name;
    cfg.capacity = capacity;
    cfg.duplex = duplex;
    cfg.held_ends = true;
    auto p = shmq::Pipe::create(cfg);
    if (!p) throw_error(p.error());
    st_->pipe.emplace(std::move(*p));
  } else {
    auto p = shmq::Pipe::open(name);
    // The last mapping may be gone while a passed hold keeps the pipe: map it through the hold.
    if (!p && p.error().code == shmq::Errc::not_found && hold_fd >= 0)
      p = shmq::Pipe::from_hold(hold_fd);
    if (!p) {
      if (hold_fd >= 0) ::close(hold_fd);
      // the other end's process may have closed everything already: report it on use
      if (p.error().code != shmq::Errc::not_found) throw_error(p.error());
      gone_ = true;
    } else {
      st_->pipe.emplace(std::move(*p));
    }
  }
  name_ = st_->pipe && !st_->pipe->name().empty() ? st_->pipe->name() : name;
  duplex_ = st_->pipe ? st_->pipe->duplex() : duplex;
  // Duplex: end 0 = writer(0) + reader(1); end 1 = writer(1) + reader(0).
  // One-way: end 0 reads direction 0, end 1 writes it.
  wdir_ = duplex_ ? static_cast<unsigned>(end) : 0u;
  rdir_ = duplex_ ? static_cast<unsigned>(1 - end) : 0u;
  if (writable_) st_->wdir = wdir_;
  if (readable_) st_->rdir = rdir_;
  take_hold(hold_fd);
}

void PipeEnd::take_hold(int hold_fd) {
  if (!st_->pipe || !st_->pipe->held_ends()) {
    if (hold_fd >= 0) ::close(hold_fd);
    return;
  }
  if (hold_fd >= 0) {
    auto h = st_->pipe->adopt_hold(hold_fd);
    if (!h) throw_error(h.error());
    st_->hold = std::move(*h);
    return;
  }
  std::uint32_t roles[2];
  std::size_t n = 0;
  if (writable_) roles[n++] = shmq::detail::pipe_role(wdir_, false);
  if (readable_) roles[n++] = shmq::detail::pipe_role(rdir_, true);
  auto h = st_->pipe->hold(std::span<const std::uint32_t>(roles, n));
  if (!h) throw_error(h.error());
  st_->hold = std::move(*h);
}

void PipeEnd::send(nb::handle obj) {
  Payload p;
  p.encode(obj.ptr(), raw_only_);
  if (p.kind() == kBytesKind) p.set_kind(kObjectBytesKind);  // see MessageKind::object_bytes
  send_payload(p);
}

int PipeEnd::send_nowait(nb::handle obj) {
  Payload p;
  p.encode(obj.ptr(), raw_only_);
  if (p.kind() == kBytesKind) p.set_kind(kObjectBytesKind);
  PipeState& st = state();
  if (!writable_) throw_py(PyExc_OSError, "connection is read-only");
  if (gone_) throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
  if (!st.wmu_.lock(Deadline::now())) return 0;
  Locked guard(st.wmu_);
  const Status s = put_payload(writer(st), p, Deadline::now());
  switch (s) {
    case Status::ok: return 1;
    case Status::full: return 0;
    case Status::too_big: return -1;
    case Status::closed: throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
    default: throw_py(PyExc_OSError, std::string("shmq: send failed: ") +
                                         std::string(shmq::status_name(s)));
  }
}

void PipeEnd::send_flatbuffer(nb::handle buffer) {
  Payload p;
  p.encode_flatbuffer(buffer.ptr());
  send_payload(p);
}

void PipeEnd::send_bytes(nb::handle buf, Py_ssize_t offset, std::optional<Py_ssize_t> size) {
  Py_buffer v;
  if (PyObject_GetBuffer(buf.ptr(), &v, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
  struct Rel {
    Py_buffer* v;
    ~Rel() { PyBuffer_Release(v); }
  } rel{&v};
  const Py_ssize_t n = v.len;
  if (offset < 0) throw_py(PyExc_ValueError, "offset is negative");
  if (n < offset) throw_py(PyExc_ValueError, "buffer length < offset");
  Py_ssize_t sz = size ? *size : n - offset;
  if (sz < 0) throw_py(PyExc_ValueError, "size is negative");
  if (offset + sz > n) throw_py(PyExc_ValueError, "buffer length < offset + size");
  Payload p;  // the slice goes straight from the caller's buffer, held by `rel`
  p.raw(static_cast<const char*>(v.buf) + offset, static_cast<std::size_t>(sz));
  send_payload(p);
}

nb::object PipeEnd::recv() {
  shmq::Message m;
  recv_into(m);
  // A message sent as bytes (send_bytes, a C++ writer) is a pickle to recv(), as in
  // multiprocessing; serializer="bytes" never unpickles.
  if (m.kind() == kBytesKind && !raw_only_) return steal_or_throw(unpickle(m.data(), m.size()));
  return steal_or_throw(decode(m.data(), m.size(), m.kind()));
}

nb::object PipeEnd::recv_bytes(std::optional<Py_ssize_t> maxlength) {
  if (maxlength && *maxlength < 0) throw_py(PyExc_ValueError, "negative maxlength");
  shmq::Message m;
  recv_into(m);
  nb::object re = repickled(m);
  const std::size_t n = re.is_valid() ? static_cast<std::size_t>(PyBytes_GET_SIZE(re.ptr()))
                                      : m.size();
  if (maxlength && n > static_cast<std::size_t>(*maxlength))
    throw_py(PyExc_OSError, "bad message length");
  if (re.is_valid()) return re;
  return steal_or_throw(bytes_from(m.data(), m.size()));
}

std::size_t PipeEnd::recv_bytes_into(nb::handle buf, Py_ssize_t offset) {
  Py_buffer v;
  if (PyObject_GetBuffer(buf.ptr(), &v, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS) != 0)
    throw nb::python_error();
  struct Rel {
    Py_buffer* v;
    ~Rel() { PyBuffer_Release(v); }
  } rel{&v};
  if (offset < 0 || offset > v.len) throw_py(PyExc_ValueError, "offset out of bounds");
  shmq::Message m;
  recv_into(m);
  nb::object re = repickled(m);
  const std::byte* data = m.data();
  std::size_t size = m.size();
  if (re.is_valid()) {
    data = reinterpret_cast<const std::byte*>(PyBytes_AS_STRING(re.ptr()));
    size = static_cast<std::size_t>(PyBytes_GET_SIZE(re.ptr()));
  }
  const std::size_t room = static_cast<std::size_t>(v.len - offset);
  if (size > room) {
    PyObject* b = bytes_from(data, size);
    if (b == nullptr) throw nb::python_error();
    PyErr_SetObject(g.too_short, b);
    Py_DECREF(b);
    throw nb::python_error();
  }
  std::memcpy(static_cast<char*>(v.buf) + offset, data, size);
  return size;
}

bool PipeEnd::poll(std::optional<double> timeout) {
  PipeState& st = state();
  if (!readable_) throw_py(PyExc_OSError, "connection is write-only");
  if (gone_) return true;
  const Deadline d = make_deadline(true, timeout);
  if (!st.rmu_.lock(d)) return false;
  Locked guard(st.rmu_);
  AfterRead after(st);
  shmq::PipeReader& r = reader(st);
  if (r.ready_guess()) return true;
  // Nothing waits: the stream has ended if the writer's end is gone (multiprocessing's poll
  // says True then too). One syscall; a gone writer makes the reads drain, then report closed.
  if (!r.check_writer()) return true;
  if (is_poll(d)) return false;
  shmq::core::WaitWord* w = r.data_wait_word();
  for (;;) {
    bool ready = false;
    {
      nb::gil_scoped_release nogil;
      const auto fr = w->wait([&] { return r.ready_guess(); }, d.capped(kSlice));
      // a dead writer shows only through liveness: ask after a slice that brought nothing
      ready = r.ready_guess() || (fr == shmq::core::FutexResult::timed_out && !r.writer_alive());
    }
    if (ready) return true;
    check_signals();
    if (d.expired()) return false;
  }
}

void PipeEnd::close() {
  if (closed_) return;
  closed_ = true;
  if (st_) {
    unwatch(*st_);
    st_->release_roles();
    if (st_->views_ == 0) st_->pipe.reset();
    st_.reset();
  }
}

shmq::core::WaitWord* PipeEnd::wait_word(bool* ready) {
  PipeState& st = state();
  if (!readable_) throw_py(PyExc_OSError, "connection is write-only");
  if (gone_) {
    *ready = true;
    return nullptr;
  }
  shmq::PipeReader& r = reader(st);
  *ready = r.ready_guess();
  return r.data_wait_word();
}

PipeState& PipeEnd::attached(bool with_reader, bool with_writer) {
  PipeState& st = state();
  if (!gone_ && with_reader) reader(st);
  if (!gone_ && with_writer) writer(st);
  return st;
}

PipeState& PipeEnd::state() {
  // (no pipe but not gone_: close_all dropped it at exit)
  if (closed_ || !st_ || (!gone_ && !st_->pipe)) throw_py(PyExc_OSError, "handle is closed");
  return *st_;
}

shmq::PipeWriter& PipeEnd::writer(PipeState& st) {
  if (!st.writer) {
    auto w = st.pipe->writer(wdir_);
    if (!w) throw_error(w.error());
    st.writer.emplace(std::move(*w));
  }
  return *st.writer;
}

shmq::PipeReader& PipeEnd::reader(PipeState& st) {
  if (!st.reader) {
    auto r = st.pipe->reader(rdir_);
    if (!r) throw_error(r.error());
    st.reader.emplace(std::move(*r));
  }
  return *st.reader;
}

void PipeEnd::send_payload(const Payload& p) {
  send_with([&](shmq::PipeWriter& w, Deadline d) { return put_payload(w, p, d); });
}

void PipeEnd::raise_send(Status s) {
  switch (s) {
    case Status::closed: throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
    case Status::too_big: throw_py(PyExc_ValueError, "message too big for this pipe");
    default: throw_py(PyExc_OSError, std::string("shmq: send failed: ") +
                                         std::string(shmq::status_name(s)));
  }
}

void PipeEnd::recv_into(shmq::Message& m) {
  PipeState& st = state();
  if (!readable_) throw_py(PyExc_OSError, "connection is write-only");
  if (gone_) throw_py(PyExc_EOFError, "");
  if (!st.rmu_.lock(Deadline::never())) throw_py(PyExc_OSError, "cannot lock the connection");
  Locked guard(st.rmu_);
  AfterRead after(st);
  const Status s = recv_message(reader(st), m, Deadline::never());
  switch (s) {
    case Status::ok: return;
    case Status::closed: throw_py(PyExc_EOFError, "");
    default: throw_py(PyExc_OSError, std::string("shmq: recv failed: ") +
                                         std::string(shmq::status_name(s)));
  }
}

std::shared_ptr<ChannelState> PipeEnd::recv_held(shmq::Message& m) {
  recv_into(m);
  st_->views_ += 1;
  return st_;
}

void bind_pipe(nb::module_& m) {
  nb::class_<PipeEnd>(m, "PipeEnd")
      .def(nb::init<const std::string&, bool, std::uint64_t, bool, int, bool, bool, bool, int>(),
           nb::arg("name"), nb::arg("create"), nb::arg("capacity"), nb::arg("duplex"),
           nb::arg("end"), nb::arg("readable"), nb::arg("writable"), nb::arg("raw_only"),
           nb::arg("hold_fd") = -1)
      .def_prop_ro("hold_fd", &PipeEnd::hold_fd)
      .def_prop_ro("name", &PipeEnd::name)
      .def_prop_ro("end", &PipeEnd::end)
      .def_prop_ro("readable", &PipeEnd::readable)
      .def_prop_ro("writable", &PipeEnd::writable)
      .def_prop_ro("raw_only", &PipeEnd::raw_only)
      .def_prop_ro("closed", &PipeEnd::closed)
      .def("send", &PipeEnd::send, nb::arg("obj").none())
      .def("send_nowait", &PipeEnd::send_nowait, nb::arg("obj").none())
      .def("send_flatbuffer", &PipeEnd::send_flatbuffer, nb::arg("buffer"))
      .def("recv", &PipeEnd::recv)
      .def("send_bytes", &PipeEnd::send_bytes, nb::arg("buf"), nb::arg("offset") = 0,
           nb::arg("size").none() = nb::none())
      .def("recv_bytes", &PipeEnd::recv_bytes, nb::arg("maxlength").none() = nb::none())
      .def("recv_bytes_into", &PipeEnd::recv_bytes_into, nb::arg("buf"), nb::arg("offset") = 0)
      .def("poll", &PipeEnd::poll, nb::arg("timeout").none() = 0.0)
      .def("close", &PipeEnd::close);
}

}  // namespace shmq::py
