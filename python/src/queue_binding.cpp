#include "queue_binding.hpp"

#include "batch_format.hpp"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <string>
#include <vector>

#include "ready.hpp"

namespace shmq::py {

namespace {

// put_many sends runs of up to this many single-part payloads with one send_many.
constexpr std::size_t kBatch = 64;

}  // namespace

void QueueState::after_fork() {
  writer.reset();
  reader.reset();
  ++reader_epoch;
  wmu_.reset_after_fork();
  rmu_.reset_after_fork();
  fork_generation_ = g_fork_generation;
}

void QueueState::drop_all() {
  writer.reset();
  reader.reset();
  ++reader_epoch;
  if (views_ == 0) queue.reset();
}

QueueState::~QueueState() {
  unwatch(*this);  // a handle dropped without close(): the watcher must let go first
  writer.reset();
  reader.reset();
}

QueueHandle::QueueHandle(const std::string& name, std::optional<bool> create,
                         std::uint64_t slots, std::uint64_t slot_size, std::uint64_t maxsize,
                         bool raw_only, bool joinable, nb::handle closed_error,
                         std::uint32_t arena_chunks, std::uint64_t arena_chunk_bytes)
    : raw_only_(raw_only), joinable_(joinable), closed_error_(nb::borrow(closed_error)) {
  st_ = std::make_shared<QueueState>();
  const bool may_create = !create.has_value() || *create;
  const bool may_open = !name.empty() && (!create.has_value() || !*create);
  if (maxsize > slots && may_create && slots != 0)
    throw_py(PyExc_ValueError, "maxsize " + std::to_string(maxsize) + " exceeds slots " +
                                   std::to_string(slots) + "; pass a larger slots=");
  if (may_create) {
    shmq::QueueConfig cfg;
    cfg.name = name;
    cfg.slots = slots;
    cfg.slot_size = slot_size;
    cfg.maxsize = maxsize;
    cfg.arena_chunks = arena_chunks;
    cfg.arena_chunk_bytes = arena_chunk_bytes;
    auto q = shmq::Queue::create(cfg);
    if (q) {
      st_->queue.emplace(std::move(*q));
    } else if (!(may_open && q.error().code == shmq::Errc::exists)) {
      throw_error(q.error());
    }
  }
  if (!st_->queue) {
    auto q = shmq::Queue::open(name);
    if (!q) throw_error(q.error());
    st_->queue.emplace(std::move(*q));
  }
  name_ = st_->queue->name();
  capacity_ = st_->queue->capacity();
}

void QueueHandle::put(nb::handle obj, bool block, std::optional<double> timeout) {
  Payload p;
  p.encode(obj.ptr(), raw_only_);
  put_encoded(p, block, timeout);
}

void QueueHandle::put_flatbuffer(nb::handle buffer, bool block, std::optional<double> timeout) {
  Payload p;
  p.encode_flatbuffer(buffer.ptr());
  put_encoded(p, block, timeout);
}

void QueueHandle::put_encoded(const Payload& p, bool block, std::optional<double> timeout) {
  put_with(block, timeout, [&](shmq::QueueWriter& w, Deadline d) { return put_payload(w, p, d); });
}

nb::object QueueHandle::get(bool block, std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  QueueState& st = state();
  if (!st.rmu_.lock(d)) throw_py(g.empty, "");
  Locked guard(st.rmu_);
  AfterRead after(st);
  shmq::QueueReader& r = reader(st);
  shmq::Message m;
  const Status s = recv_message(r, m, d);
  if (s != Status::ok) raise_get(s);
  return steal_or_throw(decode(m.data(), m.size(), m.kind()));
}

std::size_t QueueHandle::put_many(nb::handle items, bool block, std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  nb::object seq = steal_or_throw(PySequence_Fast(items.ptr(), "put_many() needs an iterable"));
  const Py_ssize_t total = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** objs = PySequence_Fast_ITEMS(seq.ptr());
  QueueState& st = state();
  if (!st.wmu_.lock(d)) throw_py(g.full, "");
  Locked guard(st.wmu_);
  shmq::QueueWriter& w = writer(st);
  std::size_t done = 0;
  while (done < static_cast<std::size_t>(total)) {
    // A run of up to kBatch single-part payloads of one kind goes out with one send_many.
    Payload ps[kBatch];
    std::span<const std::byte> spans[kBatch];
    std::size_t n = 0;
    std::uint16_t kind = 0;
    for (; n < kBatch && done + n < static_cast<std::size_t>(total); ++n) {
      ps[n].encode(objs[done + n], raw_only_);
      if (n == 0) kind = ps[n].kind();
      if (!ps[n].single() || ps[n].kind() != kind || ps[n].size() > w.max_claim()) {
        if (n == 0) ++n;  // a lone special payload: sent alone below
        break;
      }
      spans[n] = {ps[n].part0().data, ps[n].part0().size};
    }
    std::size_t sent = 0;
    if (n == 1 && (!ps[0].single() || ps[0].size() > w.max_claim())) {
      if (joinable_) st.queue->tasks_added(1);
      const Status s = put_payload(w, ps[0], done == 0 ? d : d);
      if (s == Status::ok) {
        sent = 1;
      } else {
        if (joinable_) st.queue->tasks_added(-1);
        if (done == 0) raise_put(s);
        return done;
      }
    } else {
      sent = send_batch(st, w, std::span(spans, n), kind, d);
      if (sent == 0) {
        if (done == 0) raise_put(last_status_);
        return done;
      }
    }
    done += sent;
    if (sent < n) return done;
  }
  return done;
}

nb::list QueueHandle::get_many(std::size_t max_items, bool block, std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  nb::list out;
  if (max_items == 0) return out;
  QueueState& st = state();
  if (!st.rmu_.lock(d)) throw_py(g.empty, "");
  Locked guard(st.rmu_);
  AfterRead after(st);
  shmq::QueueReader& r = reader(st);
  {
    shmq::Message m;
    const Status s = recv_message(r, m, d);
    if (s != Status::ok) raise_get(s);
    out.append(steal_or_throw(decode(m.data(), m.size(), m.kind())));
  }
  bool failed = false;
  r.try_recv_many(
      [&](std::span<const std::byte> b, std::uint16_t kind) noexcept {
        if (failed) return;
        PyObject* o = decode(b.data(), b.size(), kind);
        if (o == nullptr || PyList_Append(out.ptr(), o) != 0) failed = true;
        Py_XDECREF(o);
      },
      max_items - 1);
  if (failed) throw nb::python_error();
  return out;
}

nb::object QueueHandle::get_view(bool block, std::optional<double> timeout) {
  auto view = std::make_unique<View>();
  view->owner = recv_held(view->msg, block, timeout);
  return nb::cast(view.release(), nb::rv_policy::take_ownership);
}

std::shared_ptr<ChannelState> QueueHandle::recv_held(shmq::Message& m, bool block,
                                                     std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  QueueState& st = state();
  if (!st.rmu_.lock(d)) throw_py(g.empty, "");
  Locked guard(st.rmu_);
  AfterRead after(st);
  shmq::QueueReader& r = reader(st);
  const Status s = recv_message(r, m, d);
  if (s != Status::ok) raise_get(s);
  st.views_ += 1;
  return st_;
}

nb::list QueueHandle::get_batches(std::size_t max_items, std::size_t max_bytes, bool block,
                                  std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  nb::list out;
  if (max_items == 0) return out;
  QueueState& st = state();
  if (!st.rmu_.lock(d)) throw_py(g.empty, "");
  Locked guard(st.rmu_);
  shmq::QueueReader& r = reader(st);
  std::vector<std::string> chunks(1);
  std::vector<std::size_t> counts(1, 0);
  auto add = [&](std::span<const std::byte> b, std::uint16_t kind) {
    if (counts.back() != 0 && chunks.back().size() + kBatchRecordHeader + b.size() > max_bytes) {
      chunks.emplace_back();
      counts.push_back(0);
    }
    append_record(chunks.back(), b, kind);
    ++counts.back();
  };
  {
    shmq::Message m;
    const Status s = recv_message(r, m, d);
    if (s != Status::ok) raise_get(s);
    add(std::span<const std::byte>(m.data(), m.size()), m.kind());
  }
  bool failed = false;
  r.try_recv_many(
      [&](std::span<const std::byte> b, std::uint16_t kind) noexcept {
        try {
          add(b, kind);
        } catch (...) {  // out of memory: the message is gone either way, as with a failed get
          failed = true;
        }
      },
      max_items - 1);
  if (failed) throw_py(PyExc_MemoryError, "shmq: no memory for a batch");
  for (std::size_t i = 0; i < chunks.size(); ++i)
    out.append(nb::make_tuple(nb::bytes(chunks[i].data(), chunks[i].size()), counts[i]));
  return out;
}

namespace {

// The records of a batch payload (batch_format.hpp), checked, and `start` within them.
std::vector<BatchRecord> batch_records_from(const nb::bytes& payload, std::size_t start,
                                            const char* what) {
  std::vector<BatchRecord> records;
  const std::span<const std::byte> all(reinterpret_cast<const std::byte*>(payload.c_str()),
                                       payload.size());
  if (!parse_batch(all, records))
    throw_py(PyExc_ValueError, "shmq batch: a record runs past the end of the message");
  if (start > records.size())
    throw_py(PyExc_ValueError, std::string(what) + ": start " + std::to_string(start) +
                                   " is past the " + std::to_string(records.size()) + " records");
  return records;
}

// Puts records[start..] as runs of one kind: send_run(spans, kind, first) sends a run (records
// [first, first + spans.size())) and returns how many went. Stops at the first short run.
template <class SendRun>
std::size_t put_runs(const std::vector<BatchRecord>& records, std::size_t start,
                     SendRun&& send_run) {
  std::size_t done = start;
  std::vector<std::span<const std::byte>> spans;
  while (done < records.size()) {
    const std::uint16_t kind = records[done].kind;
    spans.clear();
    for (std::size_t i = done; i < records.size() && records[i].kind == kind; ++i)
      spans.push_back(records[i].bytes);
    const std::size_t sent = send_run(spans, kind, done);
    done += sent;
    if (sent < spans.size()) break;
  }
  return done - start;
}

}  // namespace

std::size_t QueueHandle::put_batch(nb::bytes payload, std::size_t start, bool block,
                                   std::optional<double> timeout) {
  const std::vector<BatchRecord> records = batch_records_from(payload, start, "put_batch");
  const Deadline d = make_deadline(block, timeout);
  QueueState& st = state();
  if (!st.wmu_.lock(d)) return 0;
  Locked guard(st.wmu_);
  shmq::QueueWriter& w = writer(st);
  // A run of one kind goes out with one send_many (which spills what exceeds a slot).
  return put_runs(records, start,
                  [&](std::span<const std::span<const std::byte>> spans, std::uint16_t kind,
                      std::size_t) { return send_batch(st, w, spans, kind, d); });
}

void QueueHandle::open_journal(const std::string& name) {
  QueueState& st = state();
  if (!st.wmu_.lock(Deadline::never())) throw_py(PyExc_RuntimeError, "writer busy");
  Locked guard(st.wmu_);
  auto r = writer(st).open_journal(name);
  if (!r) throw_error(r.error());
}

nb::tuple QueueHandle::journal_record() {
  QueueState& st = state();
  if (!st.wmu_.lock(Deadline::never())) throw_py(PyExc_RuntimeError, "writer busy");
  Locked guard(st.wmu_);
  const auto rec = writer(st).journal_record();
  return nb::make_tuple(rec.token, rec.next);
}

std::size_t QueueHandle::put_batch_journaled(nb::bytes payload, std::size_t start,
                                             std::uint64_t token, bool block,
                                             std::optional<double> timeout) {
  const std::vector<BatchRecord> records =
      batch_records_from(payload, start, "put_batch_journaled");
  const Deadline d = make_deadline(block, timeout);
  QueueState& st = state();
  if (!st.wmu_.lock(d)) return 0;
  Locked guard(st.wmu_);
  shmq::QueueWriter& w = writer(st);
  // Each claim of a run is recorded in the journal as it commits.
  return put_runs(records, start, [&](std::span<const std::span<const std::byte>> spans,
                                      std::uint16_t kind, std::size_t first) {
    Status why = Status::ok;
    std::size_t sent = w.send_many_journaled(spans, Deadline::now(), kind, token, first, &why);
    while (sent < spans.size() && !is_poll(d) && !d.expired() &&
           (why == Status::timeout || why == Status::interrupted || why == Status::full)) {
      {
        nb::gil_scoped_release nogil;
        sent += w.send_many_journaled(spans.subspan(sent), d.capped(kSlice), kind, token,
                                      first + sent, &why);
      }
      if (sent < spans.size()) check_signals();
    }
    if (why == Status::closed && sent == 0)
      throw_py(PyExc_ValueError, "put_batch_journaled: no journal is open (open_journal first)");
    return sent;
  });
}

std::string QueueHandle::identity() {
  const auto& h = state().queue->segment().header();
  return name_ + "." + std::to_string(h.created_ns);
}

nb::object QueueHandle::get_lease(std::size_t max_items, bool block, std::optional<double> timeout) {
  const Deadline d = make_deadline(block, timeout);
  if (max_items == 0) throw_py(PyExc_ValueError, "get_lease: max_items must be at least 1");
  QueueState& st = state();
  if (!st.rmu_.lock(d)) throw_py(g.empty, "");
  Locked guard(st.rmu_);
  shmq::QueueReader& r = reader(st);
  auto h = std::make_unique<LeaseHandle>();
  Status s = r.try_lease(max_items, h->lease);
  if (s == Status::empty && !is_poll(d))
    s = block_in_slices([&](Deadline slice) { return r.lease(max_items, slice, h->lease); }, d);
  if (s == Status::full)
    throw_py(PyExc_RuntimeError, "get_lease: this handle already holds 3 leases or views; ack or "
                                 "release one first");
  if (s != Status::ok) raise_get(s);
  h->owner = st_;
  h->reader_epoch = st.reader_epoch;
  h->raw_only = raw_only_;
  return nb::cast(h.release(), nb::rv_policy::take_ownership);
}

LeaseHandle::~LeaseHandle() {
  // An unacked lease given back (a lease of a gone reader was handed on with its slot).
  if (held()) {
    if (!owner->rmu_.lock(Deadline::in(std::chrono::seconds(1)))) {
      lease.forget();  // its reader busy elsewhere: it hands the lease on when it leaves
      return;
    }
    Locked guard(owner->rmu_);
    if (!lease.give_back()) lease.forget();
  } else {
    lease.forget();
  }
}

bool LeaseHandle::held() const {
  return owner && owner->reader && owner->reader_epoch == reader_epoch &&
         owner->fork_generation_ == g_fork_generation && lease.valid();
}

void LeaseHandle::check() {
  if (!held()) {
    lease.forget();
    throw_py(PyExc_ValueError, "the lease was acked, released, or lost with its queue handle");
  }
}

nb::list LeaseHandle::ids() {
  check();
  nb::list out;
  (void)lease.for_each([&](std::uint64_t id, std::span<const std::byte>, std::uint16_t) noexcept {
    PyObject* o = PyLong_FromUnsignedLongLong(id);
    if (o != nullptr) PyList_Append(out.ptr(), o);
    Py_XDECREF(o);
  });
  if (PyErr_Occurred()) throw nb::python_error();
  return out;
}

nb::list LeaseHandle::items() {
  check();
  nb::list out;
  bool failed = false;
  (void)lease.for_each([&](std::uint64_t, std::span<const std::byte> b, std::uint16_t kind) noexcept {
    if (failed) return;
    PyObject* o = raw_only && kind != 0 ? bytes_from(b.data(), b.size()) : decode(b.data(), b.size(), kind);
    if (o == nullptr || PyList_Append(out.ptr(), o) != 0) failed = true;
    Py_XDECREF(o);
  });
  if (failed) throw nb::python_error();
  return out;
}

nb::list LeaseHandle::batches(std::size_t max_bytes) {
  check();
  struct Chunk {
    std::string bytes;
    std::size_t count = 0;
    std::uint64_t first_id = 0;
  };
  std::vector<Chunk> chunks(1);
  bool failed = false;
  (void)lease.for_each([&](std::uint64_t id, std::span<const std::byte> b, std::uint16_t kind) noexcept {
    try {
      if (chunks.back().count != 0 &&
          chunks.back().bytes.size() + kBatchRecordHeader + b.size() > max_bytes)
        chunks.emplace_back();
      if (chunks.back().count == 0) chunks.back().first_id = id;
      append_record(chunks.back().bytes, b, kind);
      ++chunks.back().count;
    } catch (...) {
      failed = true;
    }
  });
  if (failed) throw_py(PyExc_MemoryError, "shmq: no memory for a batch");
  nb::list out;
  for (const Chunk& c : chunks)
    if (c.count != 0)
      out.append(nb::make_tuple(nb::bytes(c.bytes.data(), c.bytes.size()), c.count, c.first_id));
  return out;
}

void LeaseHandle::ack() {
  check();
  if (!owner->rmu_.lock(Deadline::never())) throw_py(PyExc_RuntimeError, "lease: reader busy");
  Locked guard(owner->rmu_);
  lease.ack();
}

void LeaseHandle::release() {
  check();
  if (!owner->rmu_.lock(Deadline::never())) throw_py(PyExc_RuntimeError, "lease: reader busy");
  Locked guard(owner->rmu_);
  if (!lease.give_back())
    throw_py(PyExc_RuntimeError, "lease: the queue's table of given-back leases is full; try "
                                 "again, or close the handle (which hands the lease on)");
}

void QueueHandle::task_done() {
  auto r = state().queue->task_done();
  if (!r) throw_py(PyExc_ValueError, "task_done() called too many times");
}

bool QueueHandle::join(std::optional<double> timeout) {
  const Deadline d = make_deadline(true, timeout);
  QueueState& st = state();
  const Status s = block_in_slices([&](Deadline slice) { return st.queue->join(slice); }, d);
  return s == Status::ok;
}

void QueueHandle::close() {
  if (closed_) return;
  closed_ = true;
  if (st_) {
    unwatch(*st_);
    st_->writer.reset();
    st_->reader.reset();
    ++st_->reader_epoch;
    if (st_->views_ == 0) st_->queue.reset();
    st_.reset();
  }
}

shmq::core::WaitWord* QueueHandle::wait_word(bool* ready, shmq::core::SleepMark* mark) {
  QueueState& st = state();
  shmq::QueueReader& r = reader(st);
  *ready = r.ready_guess();
  *mark = r.data_sleep_mark();
  return r.data_wait_word();
}

QueueState& QueueHandle::attached(bool with_writer) {
  QueueState& st = state();
  reader(st);
  if (with_writer) writer(st);
  return st;
}

QueueState& QueueHandle::state() {
  if (closed_ || !st_ || !st_->queue) {
    std::string what = "Queue " + name_ + " is closed";
    if (closed_error_.ptr() == PyExc_OSError) what = "handle is closed";
    throw_py(closed_error_.ptr(), what);
  }
  return *st_;
}

shmq::QueueWriter& QueueHandle::writer(QueueState& st) {
  if (!st.writer) {
    auto w = st.queue->writer();
    if (!w) throw_error(w.error());
    st.writer.emplace(std::move(*w));
  }
  return *st.writer;
}

shmq::QueueReader& QueueHandle::reader(QueueState& st) {
  if (!st.reader) {
    auto r = st.queue->reader();
    if (!r) throw_error(r.error());
    st.reader.emplace(std::move(*r));
  }
  return *st.reader;
}

std::size_t QueueHandle::send_batch(QueueState& st, shmq::QueueWriter& w,
                                    std::span<const std::span<const std::byte>> spans,
                                    std::uint16_t kind, Deadline d) {
  if (joinable_) st.queue->tasks_added(static_cast<std::int64_t>(spans.size()));
  Status why = Status::ok;
  std::size_t sent = w.send_many(spans, Deadline::now(), kind, &why);
  while (sent < spans.size() && !is_poll(d) && !d.expired()) {
    if (why != Status::timeout && why != Status::interrupted && why != Status::full) break;
    {
      nb::gil_scoped_release nogil;
      sent += w.send_many(spans.subspan(sent), d.capped(kSlice), kind, &why);
    }
    if (sent < spans.size()) check_signals();
  }
  if (sent < spans.size()) last_status_ = why == Status::ok ? Status::full : why;
  if (joinable_ && sent < spans.size())
    st.queue->tasks_added(-static_cast<std::int64_t>(spans.size() - sent));
  return sent;
}

void QueueHandle::raise_put(Status s) {
  switch (s) {
    case Status::full:
    case Status::timeout: throw_py(g.full, "");
    case Status::too_big: throw_py(PyExc_ValueError, "message too big for this queue");
    case Status::closed: throw_py(closed_error_.ptr(), "Queue " + name_ + " is closed");
    default: throw_py(PyExc_OSError, std::string("shmq: put failed: ") +
                                         std::string(shmq::status_name(s)));
  }
}

void QueueHandle::raise_get(Status s) {
  switch (s) {
    case Status::empty:
    case Status::timeout: throw_py(g.empty, "");
    case Status::closed: throw_py(closed_error_.ptr(), "Queue " + name_ + " is closed");
    default: throw_py(PyExc_OSError, std::string("shmq: get failed: ") +
                                         std::string(shmq::status_name(s)));
  }
}

void bind_queue(nb::module_& m) {
  nb::class_<LeaseHandle>(m, "LeaseHandle")
      .def_prop_ro("first_id", &LeaseHandle::first_id)
      .def_prop_ro("count", &LeaseHandle::count)
      .def_prop_ro("redelivered", &LeaseHandle::redelivered)
      .def_prop_ro("held", &LeaseHandle::held)
      .def("ids", &LeaseHandle::ids)
      .def("items", &LeaseHandle::items)
      .def("batches", &LeaseHandle::batches, nb::arg("max_bytes"))
      .def("ack", &LeaseHandle::ack)
      .def("release", &LeaseHandle::release);
  nb::class_<QueueHandle>(m, "QueueHandle")
      .def(nb::init<const std::string&, std::optional<bool>, std::uint64_t, std::uint64_t,
                    std::uint64_t, bool, bool, nb::handle, std::uint32_t, std::uint64_t>(),
           nb::arg("name"), nb::arg("create").none(), nb::arg("slots"), nb::arg("slot_size"),
           nb::arg("maxsize"), nb::arg("raw_only"), nb::arg("joinable"), nb::arg("closed_error"),
           nb::arg("arena_chunks") = shmq::QueueConfig{}.arena_chunks,
           nb::arg("arena_chunk_bytes") = shmq::QueueConfig{}.arena_chunk_bytes)
      .def_prop_ro("name", &QueueHandle::name)
      .def_prop_ro("capacity", &QueueHandle::capacity)
      .def_prop_ro("closed", &QueueHandle::closed)
      .def("put", &QueueHandle::put, nb::arg("obj").none(), nb::arg("block") = true,
           nb::arg("timeout").none() = nb::none())
      .def("get", &QueueHandle::get, nb::arg("block") = true,
           nb::arg("timeout").none() = nb::none())
      .def("put_flatbuffer", &QueueHandle::put_flatbuffer, nb::arg("buffer"),
           nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("put_nowait", &QueueHandle::put_nowait, nb::arg("obj").none())
      .def("get_nowait", &QueueHandle::get_nowait)
      .def("put_always", &QueueHandle::put_always, nb::arg("obj").none())
      .def("get_always", &QueueHandle::get_always)
      .def("put_many", &QueueHandle::put_many, nb::arg("items"), nb::arg("block") = true,
           nb::arg("timeout").none() = nb::none())
      .def("get_many", &QueueHandle::get_many, nb::arg("max_items") = 1024,
           nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("get_view", &QueueHandle::get_view, nb::arg("block") = true,
           nb::arg("timeout").none() = nb::none())
      .def("get_batches", &QueueHandle::get_batches, nb::arg("max_items"), nb::arg("max_bytes"),
           nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("put_batch", &QueueHandle::put_batch, nb::arg("payload"), nb::arg("start") = 0,
           nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("identity", &QueueHandle::identity)
      .def("open_journal", &QueueHandle::open_journal, nb::arg("name"))
      .def("journal_record", &QueueHandle::journal_record)
      .def("put_batch_journaled", &QueueHandle::put_batch_journaled, nb::arg("payload"),
           nb::arg("start"), nb::arg("token"), nb::arg("block") = true,
           nb::arg("timeout").none() = nb::none())
      .def("get_lease", &QueueHandle::get_lease, nb::arg("max_items") = 1024,
           nb::arg("block") = true, nb::arg("timeout").none() = nb::none())
      .def("qsize", &QueueHandle::qsize)
      .def("empty", &QueueHandle::empty)
      .def("full", &QueueHandle::full)
      .def("task_done", &QueueHandle::task_done)
      .def("join", &QueueHandle::join, nb::arg("timeout").none() = nb::none())
      .def("close", &QueueHandle::close);
}

}  // namespace shmq::py
