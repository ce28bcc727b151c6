#include "pipe_binding.hpp"

#include <cstring>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <string>

#include "ready.hpp"

namespace shmq::py {

void PipeState::after_fork() {
  writer.reset();
  reader.reset();
  wmu_.reset_after_fork();
  rmu_.reset_after_fork();
  fork_generation_ = g_fork_generation;
}

void PipeState::drop_all() {
  if (writer) writer->close();
  if (reader) reader->close();
  writer.reset();
  reader.reset();
  if (views_ == 0) pipe.reset();
}

PipeState::~PipeState() {
  writer.reset();
  reader.reset();
}

PipeEnd::PipeEnd(const std::string& name, bool create, std::uint64_t capacity, bool duplex,
                 int end, bool readable, bool writable, bool raw_only)
    : end_(end), readable_(readable), writable_(writable), raw_only_(raw_only) {
  st_ = std::make_shared<PipeState>();
  if (create) {
    shmq::PipeConfig cfg;
    cfg.name = name;
    cfg.capacity = capacity;
    cfg.duplex = duplex;
    auto p = shmq::Pipe::create(cfg);
    if (!p) throw_error(p.error());
    st_->pipe.emplace(std::move(*p));
  } else {
    auto p = shmq::Pipe::open(name);
    if (!p) {
      // the other end's process may have closed everything already: report it on use
      if (p.error().code != shmq::Errc::not_found) throw_error(p.error());
      gone_ = true;
    } else {
      st_->pipe.emplace(std::move(*p));
    }
  }
  name_ = st_->pipe ? st_->pipe->name() : name;
  duplex_ = st_->pipe ? st_->pipe->duplex() : duplex;
  // Duplex: end 0 = writer(0) + reader(1); end 1 = writer(1) + reader(0).
  // One-way: end 0 reads direction 0, end 1 writes it.
  wdir_ = duplex_ ? static_cast<unsigned>(end) : 0u;
  rdir_ = duplex_ ? static_cast<unsigned>(1 - end) : 0u;
}

void PipeEnd::send(nb::handle obj) {
  Payload p;
  p.encode(obj.ptr(), raw_only_);
  send_payload(p);
}

int PipeEnd::send_nowait(nb::handle obj) {
  Payload p;
  p.encode(obj.ptr(), raw_only_);
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
  return steal_or_throw(decode(m.data(), m.size(), m.kind()));
}

nb::object PipeEnd::recv_bytes(std::optional<Py_ssize_t> maxlength) {
  if (maxlength && *maxlength < 0) throw_py(PyExc_ValueError, "negative maxlength");
  shmq::Message m;
  recv_into(m);
  if (maxlength && m.size() > static_cast<std::size_t>(*maxlength))
    throw_py(PyExc_OSError, "bad message length");
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
  const std::size_t room = static_cast<std::size_t>(v.len - offset);
  if (m.size() > room) {
    PyObject* b = bytes_from(m.data(), m.size());
    if (b == nullptr) throw nb::python_error();
    PyErr_SetObject(g.too_short, b);
    Py_DECREF(b);
    throw nb::python_error();
  }
  std::memcpy(static_cast<char*>(v.buf) + offset, m.data(), m.size());
  return m.size();
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
    if (st_->writer) st_->writer->close();
    if (st_->reader) st_->reader->close();
    st_->writer.reset();
    st_->reader.reset();
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
  if (closed_ || !st_) throw_py(PyExc_OSError, "handle is closed");
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
      .def(nb::init<const std::string&, bool, std::uint64_t, bool, int, bool, bool, bool>(),
           nb::arg("name"), nb::arg("create"), nb::arg("capacity"), nb::arg("duplex"),
           nb::arg("end"), nb::arg("readable"), nb::arg("writable"), nb::arg("raw_only"))
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
