// _shmq: the thin native half of the Python package. One native call per put/get: it encodes the
// object (bytes-like raw, anything else pickle protocol 5 with out-of-band buffers), claims room
// in the channel with the GIL held, and releases the GIL only when it has to sleep.
//
// Threads: every handle serializes its writer and its reader with a mutex of its own (the C++
// roles are one-thread-at-a-time). The fast path takes it with try_lock while holding the GIL; a
// thread that finds it taken waits for it with the GIL released. Lock order: a thread never waits
// for a handle mutex while holding the GIL, so the GIL and the mutexes cannot deadlock.
//
// Fork: after os.fork() the child must not act as its parent's writer, reader or participant.
// after_fork_in_child() (registered with os.register_at_fork by the package) drops every role
// handle (their destructors only close file descriptors in a forked child), forgets messages held
// by views (their release would give the parent's ring space away) and keeps the mappings, so a
// handle re-acquires its roles lazily, as a new participant, on first use.
//
// Payload of kind 1 (pickle): either a plain pickle (first byte 0x80, the PROTO opcode) or, when
// the pickler produced out-of-band buffers, {u8 0x01, u8[3] 0, u32 n, u64 length[n]} followed by
// the pickle and then the n buffers back to back.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <dirent.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/core/wait_any.hpp"
#include "shmq/shm/message.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/segment.hpp"
#include "shmq/shm/queue.hpp"

namespace nb = nanobind;

namespace {

using shmq::Deadline;
using shmq::Status;
using Clock = std::chrono::steady_clock;

// Blocking calls sleep at most this long between checks for signals (Ctrl-C within 100 ms).
constexpr auto kSlice = std::chrono::milliseconds(50);
// Pickles at least this large are read through a memoryview of shared memory instead of a copy.
constexpr std::size_t kPickleViewThreshold = 1 << 16;
// Copies at least this large run with the GIL released.
constexpr std::size_t kNoGilCopy = 1 << 20;
constexpr std::uint8_t kOobTag = 0x01;
constexpr std::size_t kBatch = 64;
// FlatBuffers records, as serialize/include/shmq/serialize/prefix.hpp lays them out (message kind
// 2, then {u32 type id, u32 start}); repeated here so the module does not need the FlatBuffers
// C++ headers.
constexpr std::uint16_t kFlatBuffersKind = 2;
constexpr std::uint32_t kFbPrefixBytes = 8;

// ---------------------------------------------------------------------------------------------
// Cached Python objects (set at import; the module lives until the interpreter ends).

struct Globals {
  PyObject* dumps = nullptr;
  PyObject* loads = nullptr;
  PyObject* empty = nullptr;       // queue.Empty
  PyObject* full = nullptr;        // queue.Full
  PyObject* too_short = nullptr;   // multiprocessing.BufferTooShort
  PyObject* protocol = nullptr;    // int 5
  PyObject* cb_kwnames = nullptr;  // ("buffer_callback",)
  PyObject* buffers_kwnames = nullptr;  // ("buffers",)
  PyObject* collector = nullptr;   // a builtin that appends to tl_buffers
};
Globals g;

// Bumped in a forked child; handles and views compare it with the value they were made under.
std::uint64_t g_fork_generation = 0;

thread_local std::vector<PyObject*> tl_buffers;

PyObject* collect_buffer(PyObject*, PyObject* buf) {
  Py_INCREF(buf);
  tl_buffers.push_back(buf);
  Py_RETURN_NONE;  // None: the buffer travels out of band
}
PyMethodDef collect_def = {"_collect", collect_buffer, METH_O, nullptr};

// ---------------------------------------------------------------------------------------------
// Errors

[[noreturn]] void throw_py(PyObject* type, const std::string& what) {
  PyErr_SetString(type, what.c_str());
  throw nb::python_error();
}

[[noreturn]] void throw_error(const shmq::Error& e) {
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

Deadline make_deadline(bool block, std::optional<double> timeout) {
  if (!block) return Deadline::now();
  if (!timeout) return Deadline::never();
  const double t = *timeout > 0 ? *timeout : 0.0;
  if (t > 1e9) return Deadline::never();
  return Deadline::in(std::chrono::duration<double>(t));
}

bool is_poll(Deadline d) { return !d.is_never() && d.expired(); }

// Runs attempt(slice) with the GIL released, slice by slice, until it returns a status other
// than timeout/interrupted or `d` passes; checks for signals (with the GIL) between slices.
template <class F>
Status block_in_slices(F&& attempt, Deadline d) {
  for (;;) {
    Status s;
    {
      nb::gil_scoped_release nogil;
      s = attempt(d.capped(kSlice));
    }
    if (s != Status::timeout && s != Status::interrupted) return s;
    check_signals();
    if (d.expired()) return Status::timeout;
  }
}

// A mutex that a thread holding the GIL takes without ever blocking while it holds the GIL.
class HandleMutex {
 public:
  // true when taken; false when `d` passed first.
  bool lock(Deadline d) {
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
  void unlock() { m_.unlock(); }
  void reset_after_fork() { new (&m_) std::timed_mutex(); }  // another thread may have held it

 private:
  std::timed_mutex m_;
};

class Locked {
 public:
  explicit Locked(HandleMutex& m) : m_(&m) {}
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;
  ~Locked() {
    if (m_) m_->unlock();
  }

 private:
  HandleMutex* m_;
};

// ---------------------------------------------------------------------------------------------
// Encoding: an object becomes 1 to n byte ranges; writing them needs no GIL.

struct Part {
  const std::byte* data;
  std::size_t size;
};

class Payload {
 public:
  Payload() = default;
  Payload(const Payload&) = delete;
  Payload& operator=(const Payload&) = delete;
  ~Payload() {  // with the GIL held
    for (Py_buffer& v : views_) PyBuffer_Release(&v);
    if (raw_view_.obj != nullptr) PyBuffer_Release(&raw_view_);
    Py_XDECREF(pickled_);
  }

  // Returns false with TypeError set if raw_only and obj is not bytes-like.
  void encode(PyObject* obj, bool raw_only) {
    if (PyBytes_CheckExact(obj)) {
      kind_ = 0;
      add(PyBytes_AS_STRING(obj), static_cast<std::size_t>(PyBytes_GET_SIZE(obj)));
      return;
    }
    if (PyByteArray_Check(obj) || PyMemoryView_Check(obj) || PyBytes_Check(obj)) {
      if (PyObject_GetBuffer(obj, &raw_view_, PyBUF_ANY_CONTIGUOUS) != 0) {
        // a non-contiguous memoryview: copy it to bytes first
        PyErr_Clear();
        PyObject* b = PyBytes_FromObject(obj);
        if (b == nullptr) throw nb::python_error();
        pickled_ = b;
        kind_ = 0;
        add(PyBytes_AS_STRING(b), static_cast<std::size_t>(PyBytes_GET_SIZE(b)));
        return;
      }
      kind_ = 0;
      add(raw_view_.buf, static_cast<std::size_t>(raw_view_.len));
      return;
    }
    if (raw_only)
      throw_py(PyExc_TypeError, std::string("serializer='bytes' sends only bytes, bytearray and "
                                            "memoryview objects, not ") +
                                    Py_TYPE(obj)->tp_name);
    pickle(obj);
  }

  // Raw bytes that the caller keeps alive (send_bytes' slice of a buffer it holds).
  void raw(const void* data, std::size_t n) {
    kind_ = 0;
    add(data, n);
  }

  // A finished FlatBuffers buffer (kind 2): the serialize module's prefix {type id, start = 8}
  // and the buffer, written straight from the caller's memory into the channel (one copy).
  // The type id is the buffer's own file_identifier (bytes 4..7), as C++'s fb::Reader expects.
  void encode_flatbuffer(PyObject* obj) {
    if (PyObject_GetBuffer(obj, &raw_view_, PyBUF_C_CONTIGUOUS) != 0) throw nb::python_error();
    const auto len = static_cast<std::size_t>(raw_view_.len);
    if (len < 8)
      throw_py(PyExc_ValueError, "a FlatBuffers buffer has at least 8 bytes (root offset and "
                                 "file_identifier); got " + std::to_string(len));
    std::uint32_t prefix[2] = {0, kFbPrefixBytes};
    std::memcpy(&prefix[0], static_cast<const char*>(raw_view_.buf) + 4, 4);
    header_.assign(1, 0);
    std::memcpy(header_.data(), prefix, sizeof prefix);
    kind_ = kFlatBuffersKind;
    add(header_.data(), kFbPrefixBytes);
    add(raw_view_.buf, len);
  }

  std::uint16_t kind() const { return kind_; }
  std::size_t size() const { return total_; }
  bool single() const { return nparts_ == 1; }
  Part part0() const { return parts_[0]; }

  void write(std::byte* dst) const {
    for (std::size_t i = 0; i < nparts_; ++i) {
      const Part& p = i < kInline ? parts_[i] : extra_[i - kInline];
      if (p.size != 0) std::memcpy(dst, p.data, p.size);
      dst += p.size;
    }
  }

 private:
  static constexpr std::size_t kInline = 3;

  void add(const void* p, std::size_t n) {
    const Part part{static_cast<const std::byte*>(p), n};
    if (nparts_ < kInline) {
      parts_[nparts_] = part;
    } else {
      extra_.push_back(part);
    }
    ++nparts_;
    total_ += n;
  }

  void pickle(PyObject* obj) {
    const std::size_t mark = tl_buffers.size();
    PyObject* args[] = {nullptr, obj, g.protocol, g.collector};
    PyObject* res = PyObject_Vectorcall(g.dumps, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                        g.cb_kwnames);
    std::vector<PyObject*> bufs(tl_buffers.begin() + static_cast<std::ptrdiff_t>(mark),
                                tl_buffers.end());
    tl_buffers.resize(mark);
    struct Drop {
      std::vector<PyObject*>& v;
      ~Drop() {
        for (PyObject* o : v) Py_DECREF(o);
      }
    } drop{bufs};
    if (res == nullptr) throw nb::python_error();
    pickled_ = res;
    kind_ = 1;
    char* pdata = PyBytes_AS_STRING(res);
    const auto plen = static_cast<std::size_t>(PyBytes_GET_SIZE(res));
    if (bufs.empty()) {
      add(pdata, plen);
      return;
    }
    views_.reserve(bufs.size());
    header_.assign(1 + bufs.size(), 0);
    for (PyObject* b : bufs) {
      Py_buffer v;
      if (PyObject_GetBuffer(b, &v, PyBUF_FULL_RO) != 0) throw nb::python_error();
      views_.push_back(v);
      if (!PyBuffer_IsContiguous(&v, 'A')) {
        PyErr_SetString(PyExc_BufferError, "out-of-band pickle buffer is not contiguous");
        throw nb::python_error();
      }
    }
    const std::uint32_t n = static_cast<std::uint32_t>(bufs.size());
    unsigned char head[8] = {kOobTag, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(head + 4, &n, 4);
    std::memcpy(header_.data(), head, 8);
    for (std::size_t i = 0; i < views_.size(); ++i) {
      const auto len = static_cast<std::uint64_t>(views_[i].len);
      header_[1 + i] = len;
    }
    add(header_.data(), header_.size() * 8);
    add(pdata, plen);
    for (Py_buffer& v : views_) add(v.buf, static_cast<std::size_t>(v.len));
  }

  Part parts_[kInline]{};
  std::vector<Part> extra_;
  std::size_t nparts_ = 0;
  std::size_t total_ = 0;
  std::uint16_t kind_ = 0;
  Py_buffer raw_view_{};
  PyObject* pickled_ = nullptr;  // keeps the pickle (or a bytes copy) alive
  std::vector<Py_buffer> views_;
  std::vector<std::uint64_t> header_;
};

// ---------------------------------------------------------------------------------------------
// Decoding (GIL held)

PyObject* bytes_from(const std::byte* p, std::size_t n) {
  if (n < kNoGilCopy) return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p), static_cast<Py_ssize_t>(n));
  PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
  if (b == nullptr) return nullptr;
  char* dst = PyBytes_AS_STRING(b);
  {
    nb::gil_scoped_release nogil;
    std::memcpy(dst, p, n);
  }
  return b;
}

PyObject* corrupt_pickle() {
  PyErr_SetString(PyExc_OSError, "shmq: a pickled message has a corrupt out-of-band header");
  return nullptr;
}

// Unpickles `n` bytes at `p` (kind 1). Returns a new reference or nullptr with an error set.
PyObject* unpickle(const std::byte* p, std::size_t n) {
  if (n >= 8 && static_cast<std::uint8_t>(p[0]) == kOobTag) {
    std::uint32_t nbufs = 0;
    std::memcpy(&nbufs, p + 4, 4);
    if (nbufs == 0 || nbufs > (n - 8) / 8) return corrupt_pickle();
    const std::size_t head = 8 + 8 * static_cast<std::size_t>(nbufs);
    std::vector<std::uint64_t> lens(nbufs);
    std::memcpy(lens.data(), p + 8, 8 * static_cast<std::size_t>(nbufs));
    std::uint64_t sum = 0;
    for (std::uint64_t l : lens) {
      if (l > n || sum + l > n - head) return corrupt_pickle();
      sum += l;
    }
    const std::size_t plen = n - head - static_cast<std::size_t>(sum);
    PyObject* list = PyList_New(nbufs);
    if (list == nullptr) return nullptr;
    const std::byte* at = p + head + plen;
    for (std::uint32_t i = 0; i < nbufs; ++i) {
      // bytearray: writable, as multiprocessing hands numpy arrays back writable
      PyObject* ba = PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(lens[i]));
      if (ba == nullptr) {
        Py_DECREF(list);
        return nullptr;
      }
      if (lens[i] >= kNoGilCopy) {
        char* dst = PyByteArray_AS_STRING(ba);
        nb::gil_scoped_release nogil;
        std::memcpy(dst, at, lens[i]);
      } else if (lens[i] != 0) {
        std::memcpy(PyByteArray_AS_STRING(ba), at, lens[i]);
      }
      at += lens[i];
      PyList_SET_ITEM(list, i, ba);
    }
    PyObject* mv = PyMemoryView_FromMemory(const_cast<char*>(reinterpret_cast<const char*>(p + head)),
                                           static_cast<Py_ssize_t>(plen), PyBUF_READ);
    if (mv == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyObject* args[] = {nullptr, mv, list};
    PyObject* res = PyObject_Vectorcall(g.loads, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                        g.buffers_kwnames);
    PyObject* r = PyObject_CallMethod(mv, "release", nullptr);
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
    Py_DECREF(mv);
    Py_DECREF(list);
    return res;
  }
  PyObject* src;
  if (n < kPickleViewThreshold) {
    src = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p), static_cast<Py_ssize_t>(n));
  } else {
    src = PyMemoryView_FromMemory(const_cast<char*>(reinterpret_cast<const char*>(p)),
                                  static_cast<Py_ssize_t>(n), PyBUF_READ);
  }
  if (src == nullptr) return nullptr;
  PyObject* args[] = {nullptr, src};
  PyObject* res = PyObject_Vectorcall(g.loads, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (PyMemoryView_Check(src)) {
    // the view points into shared memory that is released next: make later use fail cleanly
    PyObject* r = PyObject_CallMethod(src, "release", nullptr);
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
  }
  Py_DECREF(src);
  return res;
}

// The Python object a message stands for: bytes for kind 0 (and for any kind but pickle).
// The FlatBuffers buffer inside a kind-2 payload, after its prefix; the prefix is read once and
// bound-checked (another process wrote it). nullopt if it is malformed.
std::optional<std::span<const std::byte>> flatbuffer_of(const std::byte* p, std::size_t n) {
  if (n < kFbPrefixBytes) return std::nullopt;
  std::uint32_t start = 0;
  std::memcpy(&start, p + 4, 4);
  if (start < kFbPrefixBytes || start > n) return std::nullopt;
  return std::span<const std::byte>(p + start, n - start);
}

// The Python object a message stands for: bytes for kind 0 (and for any kind but pickle); for
// FlatBuffers (kind 2) the buffer without its prefix, ready for the generated classes.
PyObject* decode(const std::byte* p, std::size_t n, std::uint16_t kind) {
  if (kind == 1) return unpickle(p, n);
  if (kind == kFlatBuffersKind) {
    const auto fb = flatbuffer_of(p, n);
    if (!fb) {
      PyErr_SetString(PyExc_ValueError, "a FlatBuffers message with a malformed prefix");
      return nullptr;
    }
    return bytes_from(fb->data(), fb->size());
  }
  return bytes_from(p, n);
}

nb::object steal_or_throw(PyObject* o) {
  if (o == nullptr) throw nb::python_error();
  return nb::steal(o);
}

// ---------------------------------------------------------------------------------------------
// Registry of live channel states, for fork and exit.

class ChannelState;
std::vector<ChannelState*> g_states;  // GIL-protected

class ChannelState {
 public:
  ChannelState() : fork_generation_(g_fork_generation) { g_states.push_back(this); }
  virtual ~ChannelState() {
    for (auto& s : g_states) {
      if (s == this) {
        s = g_states.back();
        g_states.pop_back();
        break;
      }
    }
  }
  ChannelState(const ChannelState&) = delete;
  ChannelState& operator=(const ChannelState&) = delete;

  // Drops the roles (fork: their destructors only close fds in a child) and resets mutexes.
  virtual void after_fork() = 0;
  // Drops roles and the mapping (exit). Views keep nothing valid after this.
  virtual void drop_all() = 0;

  std::uint64_t fork_generation_;
  int views_ = 0;  // MessageViews alive that point into this state's mapping
  HandleMutex wmu_, rmu_;
};

// ---------------------------------------------------------------------------------------------
// A received message kept alive for a memoryview (get_view).

struct View {
  std::shared_ptr<ChannelState> owner;
  shmq::Message msg;
  std::uint64_t fork_generation = g_fork_generation;
  int exports = 0;

  ~View() { release_now(); }
  void release_now() noexcept {
    if (!owner) return;
    if (fork_generation == g_fork_generation) {
      msg.release();
    } else {
      new (&msg) shmq::Message();  // a parent's message: never hand its space back from here
    }
    owner->views_ -= 1;
    owner.reset();
  }
};

int view_getbuffer(PyObject* self, Py_buffer* buf, int flags) {
  View* v = nb::inst_ptr<View>(self);
  if (!v->owner || !v->msg.valid()) {
    PyErr_SetString(PyExc_ValueError, "the message view was released");
    return -1;
  }
  std::span<const std::byte> bytes = v->msg.bytes();
  if (v->msg.kind() == kFlatBuffersKind) {  // the buffer, not its prefix
    const auto fb = flatbuffer_of(bytes.data(), bytes.size());
    if (!fb) {
      PyErr_SetString(PyExc_ValueError, "a FlatBuffers message with a malformed prefix");
      return -1;
    }
    bytes = *fb;
  }
  if (PyBuffer_FillInfo(buf, self, const_cast<std::byte*>(bytes.data()),
                        static_cast<Py_ssize_t>(bytes.size()), 1, flags) != 0)
    return -1;
  v->exports += 1;
  return 0;
}

void view_releasebuffer(PyObject* self, Py_buffer*) {
  View* v = nb::inst_ptr<View>(self);
  v->exports -= 1;
}

PyType_Slot view_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(view_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(view_releasebuffer)},
    {0, nullptr}};

// ---------------------------------------------------------------------------------------------
// Generic put/get over a writer or reader with the shapes of the contract.

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
  // Larger than any claim: one contiguous buffer, which the channel streams in chunks.
  std::vector<std::byte> joined;
  std::span<const std::byte> msg;
  if (p.single()) {
    msg = {p.part0().data, p.part0().size};
  } else {
    joined.resize(n);
    p.write(joined.data());
    msg = joined;
  }
  if (is_poll(d)) {
    Status s = w.try_send(msg, p.kind());
    return s;
  }
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

// ---------------------------------------------------------------------------------------------
// Queue

struct QueueState final : ChannelState {
  std::optional<shmq::Queue> queue;
  std::optional<shmq::QueueWriter> writer;
  std::optional<shmq::QueueReader> reader;

  void after_fork() override {
    writer.reset();
    reader.reset();
    wmu_.reset_after_fork();
    rmu_.reset_after_fork();
    fork_generation_ = g_fork_generation;
  }
  void drop_all() override {
    writer.reset();
    reader.reset();
    if (views_ == 0) queue.reset();
  }
  ~QueueState() override {
    writer.reset();
    reader.reset();
  }
};

class QueueHandle {
 public:
  QueueHandle(const std::string& name, std::optional<bool> create, std::uint64_t slots,
              std::uint64_t slot_size, std::uint64_t maxsize, bool raw_only, bool joinable,
              nb::handle closed_error, std::uint32_t arena_chunks, std::uint64_t arena_chunk_bytes)
      : raw_only_(raw_only), joinable_(joinable), closed_error_(nb::borrow(closed_error)) {
    st_ = std::make_shared<QueueState>();
    const bool may_create = !create.has_value() || *create;
    const bool may_open = !name.empty() && (!create.has_value() || !*create);
    if (maxsize > slots && may_create && slots != 0)
      throw_py(PyExc_ValueError, "maxsize " + std::to_string(maxsize) + " exceeds slots " +
                                     std::to_string(slots) + "; pass a larger slots=");
    std::optional<shmq::Error> err;
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

  const std::string& name() const { return name_; }
  std::uint64_t capacity() const { return capacity_; }
  bool closed() const { return closed_; }

  void put(nb::handle obj, bool block, std::optional<double> timeout) {
    Payload p;
    p.encode(obj.ptr(), raw_only_);
    put_encoded(p, block, timeout);
  }

  void put_flatbuffer(nb::handle buffer, bool block, std::optional<double> timeout) {
    Payload p;
    p.encode_flatbuffer(buffer.ptr());
    put_encoded(p, block, timeout);
  }

  void put_encoded(const Payload& p, bool block, std::optional<double> timeout) {
    const Deadline d = make_deadline(block, timeout);
    QueueState& st = state();
    if (!st.wmu_.lock(d)) throw_py(g.full, "");
    Locked guard(st.wmu_);
    shmq::QueueWriter& w = writer(st);
    if (joinable_) st.queue->tasks_added(1);
    const Status s = put_payload(w, p, d);
    if (s == Status::ok) return;
    if (joinable_) st.queue->tasks_added(-1);
    raise_put(s);
  }

  nb::object get(bool block, std::optional<double> timeout) {
    const Deadline d = make_deadline(block, timeout);
    QueueState& st = state();
    if (!st.rmu_.lock(d)) throw_py(g.empty, "");
    Locked guard(st.rmu_);
    shmq::QueueReader& r = reader(st);
    shmq::Message m;
    const Status s = recv_message(r, m, d);
    if (s != Status::ok) raise_get(s);
    return steal_or_throw(decode(m.data(), m.size(), m.kind()));
  }

  void put_nowait(nb::handle obj) { put(obj, false, std::nullopt); }
  nb::object get_nowait() { return get(false, std::nullopt); }
  void put_always(nb::handle obj) { put(obj, true, std::nullopt); }
  nb::object get_always() { return get(true, std::nullopt); }

  std::size_t put_many(nb::handle items, bool block, std::optional<double> timeout) {
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

  nb::list get_many(std::size_t max_items, bool block, std::optional<double> timeout) {
    const Deadline d = make_deadline(block, timeout);
    nb::list out;
    if (max_items == 0) return out;
    QueueState& st = state();
    if (!st.rmu_.lock(d)) throw_py(g.empty, "");
    Locked guard(st.rmu_);
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

  nb::object get_view(bool block, std::optional<double> timeout) {
    const Deadline d = make_deadline(block, timeout);
    QueueState& st = state();
    if (!st.rmu_.lock(d)) throw_py(g.empty, "");
    Locked guard(st.rmu_);
    shmq::QueueReader& r = reader(st);
    auto view = std::make_unique<View>();
    const Status s = recv_message(r, view->msg, d);
    if (s != Status::ok) raise_get(s);
    view->owner = st_;
    st.views_ += 1;
    return nb::cast(view.release(), nb::rv_policy::take_ownership);
  }

  std::size_t qsize() { return state().queue->size_guess(); }
  bool empty() { return qsize() == 0; }
  bool full() { return qsize() >= capacity_; }

  void task_done() {
    auto r = state().queue->task_done();
    if (!r) throw_py(PyExc_ValueError, "task_done() called too many times");
  }

  bool join(std::optional<double> timeout) {
    const Deadline d = make_deadline(true, timeout);
    QueueState& st = state();
    const Status s = block_in_slices([&](Deadline slice) { return st.queue->join(slice); }, d);
    return s == Status::ok;
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    if (st_) {
      st_->writer.reset();
      st_->reader.reset();
      if (st_->views_ == 0) st_->queue.reset();
      st_.reset();
    }
  }

  shmq::core::WaitWord* wait_word(bool* ready, shmq::core::SleepMark* mark) {
    QueueState& st = state();
    shmq::QueueReader& r = reader(st);
    *ready = r.ready_guess();
    *mark = r.data_sleep_mark();
    return r.data_wait_word();
  }
  bool ready_guess() { return st_ && st_->reader && st_->reader->ready_guess(); }
  bool ready_slow() { return ready_guess(); }

 private:
  QueueState& state() {
    if (closed_ || !st_ || !st_->queue) {
      std::string what = "Queue " + name_ + " is closed";
      if (closed_error_.ptr() == PyExc_OSError) what = "handle is closed";
      throw_py(closed_error_.ptr(), what);
    }
    return *st_;
  }
  shmq::QueueWriter& writer(QueueState& st) {
    if (!st.writer) {
      auto w = st.queue->writer();
      if (!w) throw_error(w.error());
      st.writer.emplace(std::move(*w));
    }
    return *st.writer;
  }
  shmq::QueueReader& reader(QueueState& st) {
    if (!st.reader) {
      auto r = st.queue->reader();
      if (!r) throw_error(r.error());
      st.reader.emplace(std::move(*r));
    }
    return *st.reader;
  }

  std::size_t send_batch(QueueState& st, shmq::QueueWriter& w,
                         std::span<const std::span<const std::byte>> spans, std::uint16_t kind,
                         Deadline d) {
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

  [[noreturn]] void raise_put(Status s) {
    switch (s) {
      case Status::full:
      case Status::timeout: throw_py(g.full, "");
      case Status::too_big: throw_py(PyExc_ValueError, "message too big for this queue");
      case Status::closed: throw_py(closed_error_.ptr(), "Queue " + name_ + " is closed");
      default: throw_py(PyExc_OSError, std::string("shmq: put failed: ") +
                                           std::string(shmq::status_name(s)));
    }
  }
  [[noreturn]] void raise_get(Status s) {
    switch (s) {
      case Status::empty:
      case Status::timeout: throw_py(g.empty, "");
      case Status::closed: throw_py(closed_error_.ptr(), "Queue " + name_ + " is closed");
      default: throw_py(PyExc_OSError, std::string("shmq: get failed: ") +
                                           std::string(shmq::status_name(s)));
    }
  }

  std::shared_ptr<QueueState> st_;
  std::string name_;
  std::uint64_t capacity_ = 0;
  bool raw_only_;
  bool joinable_;
  bool closed_ = false;
  Status last_status_ = Status::ok;
  nb::object closed_error_;
};



// ---------------------------------------------------------------------------------------------
// Pipe ends

struct PipeState final : ChannelState {
  std::optional<shmq::Pipe> pipe;
  std::optional<shmq::PipeWriter> writer;
  std::optional<shmq::PipeReader> reader;

  void after_fork() override {
    writer.reset();
    reader.reset();
    wmu_.reset_after_fork();
    rmu_.reset_after_fork();
    fork_generation_ = g_fork_generation;
  }
  void drop_all() override {
    if (writer) writer->close();
    if (reader) reader->close();
    writer.reset();
    reader.reset();
    if (views_ == 0) pipe.reset();
  }
  ~PipeState() override {
    writer.reset();
    reader.reset();
  }
};

class PipeEnd {
 public:
  PipeEnd(const std::string& name, bool create, std::uint64_t capacity, bool duplex, int end,
          bool readable, bool writable, bool raw_only)
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

  const std::string& name() const { return name_; }
  int end() const { return end_; }
  bool readable() const { return readable_; }
  bool writable() const { return writable_; }
  bool raw_only() const { return raw_only_; }
  bool closed() const { return closed_; }

  void send(nb::handle obj) {
    Payload p;
    p.encode(obj.ptr(), raw_only_);
    send_payload(p);
  }

  void send_flatbuffer(nb::handle buffer) {
    Payload p;
    p.encode_flatbuffer(buffer.ptr());
    send_payload(p);
  }

  void send_bytes(nb::handle buf, Py_ssize_t offset, std::optional<Py_ssize_t> size) {
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

  nb::object recv() {
    shmq::Message m;
    recv_into(m);
    return steal_or_throw(decode(m.data(), m.size(), m.kind()));
  }

  nb::object recv_bytes(std::optional<Py_ssize_t> maxlength) {
    if (maxlength && *maxlength < 0) throw_py(PyExc_ValueError, "negative maxlength");
    shmq::Message m;
    recv_into(m);
    if (maxlength && m.size() > static_cast<std::size_t>(*maxlength))
      throw_py(PyExc_OSError, "bad message length");
    return steal_or_throw(bytes_from(m.data(), m.size()));
  }

  std::size_t recv_bytes_into(nb::handle buf, Py_ssize_t offset) {
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

  bool poll(std::optional<double> timeout) {
    PipeState& st = state();
    if (!readable_) throw_py(PyExc_OSError, "connection is write-only");
    if (gone_) return true;
    const Deadline d = make_deadline(true, timeout);
    if (!st.rmu_.lock(d)) return false;
    Locked guard(st.rmu_);
    shmq::PipeReader& r = reader(st);
    if (r.ready_guess()) return true;
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

  void close() {
    if (closed_) return;
    closed_ = true;
    if (st_) {
      if (st_->writer) st_->writer->close();
      if (st_->reader) st_->reader->close();
      st_->writer.reset();
      st_->reader.reset();
      if (st_->views_ == 0) st_->pipe.reset();
      st_.reset();
    }
  }

  shmq::core::WaitWord* wait_word(bool* ready) {
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
  bool ready_guess() { return gone_ || (st_ && st_->reader && st_->reader->ready_guess()); }
  // ready_guess, or the writer closed or died (a syscall).
  bool ready_slow() { return ready_guess() || (st_ && st_->reader && !st_->reader->writer_alive()); }

 private:
  PipeState& state() {
    if (closed_ || !st_) throw_py(PyExc_OSError, "handle is closed");
    return *st_;
  }
  shmq::PipeWriter& writer(PipeState& st) {
    if (!st.writer) {
      auto w = st.pipe->writer(wdir_);
      if (!w) throw_error(w.error());
      st.writer.emplace(std::move(*w));
    }
    return *st.writer;
  }
  shmq::PipeReader& reader(PipeState& st) {
    if (!st.reader) {
      auto r = st.pipe->reader(rdir_);
      if (!r) throw_error(r.error());
      st.reader.emplace(std::move(*r));
    }
    return *st.reader;
  }

  void send_payload(const Payload& p) {
    PipeState& st = state();
    if (!writable_) throw_py(PyExc_OSError, "connection is read-only");
    if (gone_) throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
    if (!st.wmu_.lock(Deadline::never())) throw_py(PyExc_OSError, "cannot lock the connection");
    Locked guard(st.wmu_);
    const Status s = put_payload(writer(st), p, Deadline::never());
    switch (s) {
      case Status::ok: return;
      case Status::closed: throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
      case Status::too_big: throw_py(PyExc_ValueError, "message too big for this pipe");
      default: throw_py(PyExc_OSError, std::string("shmq: send failed: ") +
                                           std::string(shmq::status_name(s)));
    }
  }

  void recv_into(shmq::Message& m) {
    PipeState& st = state();
    if (!readable_) throw_py(PyExc_OSError, "connection is write-only");
    if (gone_) throw_py(PyExc_EOFError, "");
    if (!st.rmu_.lock(Deadline::never())) throw_py(PyExc_OSError, "cannot lock the connection");
    Locked guard(st.rmu_);
    const Status s = recv_message(reader(st), m, Deadline::never());
    switch (s) {
      case Status::ok: return;
      case Status::closed: throw_py(PyExc_EOFError, "");
      default: throw_py(PyExc_OSError, std::string("shmq: recv failed: ") +
                                           std::string(shmq::status_name(s)));
    }
  }

  std::shared_ptr<PipeState> st_;
  std::string name_;
  int end_;
  unsigned wdir_ = 0, rdir_ = 0;
  bool duplex_ = true;
  bool readable_, writable_, raw_only_;
  bool closed_ = false;
  bool gone_ = false;
};

// ---------------------------------------------------------------------------------------------
// wait(): futex_waitv over the data words of several readers.

nb::list wait_handles(nb::handle handles, std::optional<double> timeout) {
  nb::object seq = steal_or_throw(PySequence_Fast(handles.ptr(), "wait() needs a sequence"));
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  if (n > static_cast<Py_ssize_t>(shmq::core::kWaitAnyMax))
    throw_py(PyExc_ValueError, "wait() takes at most 128 shmq objects");
  std::vector<shmq::core::WaitWord*> words(static_cast<std::size_t>(n), nullptr);
  // Queue readers mark their sleep (a Pipe's next reader clears a dead one's count instead).
  std::vector<shmq::core::SleepMark> marks(static_cast<std::size_t>(n));
  std::vector<std::function<bool()>> ready(static_cast<std::size_t>(n));
  std::vector<std::function<bool()>> ready_slow(static_cast<std::size_t>(n));
  nb::list out;
  for (Py_ssize_t i = 0; i < n; ++i) {
    nb::handle h(PySequence_Fast_GET_ITEM(seq.ptr(), i));
    bool now = false;
    if (nb::isinstance<PipeEnd>(h)) {
      PipeEnd* p = nb::cast<PipeEnd*>(h);
      words[i] = p->wait_word(&now);
      ready[i] = [p] { return p->ready_guess(); };
      ready_slow[i] = [p] { return p->ready_slow(); };
    } else if (nb::isinstance<QueueHandle>(h)) {
      QueueHandle* q = nb::cast<QueueHandle*>(h);
      words[i] = q->wait_word(&now, &marks[static_cast<std::size_t>(i)]);
      ready[i] = [q] { return q->ready_guess(); };
      ready_slow[i] = [q] { return q->ready_slow(); };
    } else {
      throw_py(PyExc_TypeError, "wait() takes shmq connections and queues");
    }
    if (now || ready_slow[static_cast<std::size_t>(i)]()) out.append(i);
  }
  const Deadline d = make_deadline(true, timeout);
  if (out.size() != 0 || is_poll(d) || n == 0) return out;
  auto any_ready = [&] {
    for (auto& f : ready)
      if (f()) return true;
    return false;
  };
  for (;;) {
    {
      nb::gil_scoped_release nogil;
      shmq::core::wait_any(std::span<shmq::core::WaitWord* const>(words), any_ready,
                           d.capped(kSlice), std::span<const shmq::core::SleepMark>(marks));
    }
    for (Py_ssize_t i = 0; i < n; ++i)
      if (ready_slow[static_cast<std::size_t>(i)]()) out.append(i);
    if (out.size() != 0) return out;
    check_signals();
    if (d.expired()) return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Process-wide functions

void after_fork_in_child() {
  ++g_fork_generation;
  tl_buffers.clear();
  for (ChannelState* s : g_states) s->after_fork();
}

void close_all() {
  for (ChannelState* s : std::vector<ChannelState*>(g_states)) s->drop_all();
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

PyObject* keep(nb::object o) { return o.release().ptr(); }

NB_MODULE(_shmq, m) {
  m.doc() = "shmq native core (internal; use the shmq package)";

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
  g.collector = PyCFunction_New(&collect_def, nullptr);

  nb::class_<View>(m, "MessageView", nb::type_slots(view_slots))
      .def_prop_ro("kind", [](View& v) { return v.msg.kind(); })
      .def("__len__", [](View& v) { return v.msg.size(); })
      .def("release", [](View& v) {
        if (v.exports > 0)
          throw_py(PyExc_BufferError, "the message is still referenced by a memoryview or an "
                                      "object made from it");
        v.release_now();
      });

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
      .def("qsize", &QueueHandle::qsize)
      .def("empty", &QueueHandle::empty)
      .def("full", &QueueHandle::full)
      .def("task_done", &QueueHandle::task_done)
      .def("join", &QueueHandle::join, nb::arg("timeout").none() = nb::none())
      .def("close", &QueueHandle::close);

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
      .def("send_flatbuffer", &PipeEnd::send_flatbuffer, nb::arg("buffer"))
      .def("recv", &PipeEnd::recv)
      .def("send_bytes", &PipeEnd::send_bytes, nb::arg("buf"), nb::arg("offset") = 0,
           nb::arg("size").none() = nb::none())
      .def("recv_bytes", &PipeEnd::recv_bytes, nb::arg("maxlength").none() = nb::none())
      .def("recv_bytes_into", &PipeEnd::recv_bytes_into, nb::arg("buf"), nb::arg("offset") = 0)
      .def("poll", &PipeEnd::poll, nb::arg("timeout").none() = 0.0)
      .def("close", &PipeEnd::close);

  m.def("wait", &wait_handles, nb::arg("handles"), nb::arg("timeout").none());
  m.def("after_fork_in_child", &after_fork_in_child);
  m.def("close_all", &close_all);
  m.def("gc_scan", &gc_scan);
  m.def("unlink", &unlink_name, nb::arg("name"));
}
