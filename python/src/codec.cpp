#include "codec.hpp"

#include <cstring>
#include <string>

#include "pickler.hpp"
#include "support.hpp"

namespace shmq::py {

namespace {

// Pickles at least this large are read through a memoryview of shared memory instead of a copy.
constexpr std::size_t kPickleViewThreshold = 1 << 16;
// Copies at least this large run with the GIL released.
constexpr std::size_t kNoGilCopy = 1 << 20;
constexpr std::uint8_t kOobTag = 0x01;

// Out-of-band buffers the pickler hands to the collector during one dumps() call.
thread_local std::vector<PyObject*> tl_buffers;

PyObject* collect_buffer(PyObject*, PyObject* buf) {
  Py_INCREF(buf);
  tl_buffers.push_back(buf);
  Py_RETURN_NONE;  // None: the buffer travels out of band
}
PyMethodDef collect_def = {"_collect", collect_buffer, METH_O, nullptr};

PyObject* corrupt_pickle() {
  PyErr_SetString(PyExc_OSError, "shmq: a pickled message has a corrupt out-of-band header");
  return nullptr;
}

}  // namespace

void init_codec() { g.collector = PyCFunction_New(&collect_def, nullptr); }
void codec_after_fork() { tl_buffers.clear(); }

// ---------------------------------------------------------------------------------------------
// Encoding

Payload::~Payload() {
  for (Py_buffer& v : views_) PyBuffer_Release(&v);
  if (raw_view_.obj != nullptr) PyBuffer_Release(&raw_view_);
  Py_XDECREF(pickled_);
}

void Payload::encode(PyObject* obj, bool raw_only) {
  if (PyBytes_CheckExact(obj)) {
    kind_ = kBytesKind;
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
      kind_ = kBytesKind;
      add(PyBytes_AS_STRING(b), static_cast<std::size_t>(PyBytes_GET_SIZE(b)));
      return;
    }
    kind_ = kBytesKind;
    add(raw_view_.buf, static_cast<std::size_t>(raw_view_.len));
    return;
  }
  if (raw_only)
    throw_py(PyExc_TypeError, std::string("serializer='bytes' sends only bytes, bytearray and "
                                          "memoryview objects, not ") +
                                  Py_TYPE(obj)->tp_name);
  pickle(obj);
}

void Payload::encode_flatbuffer(PyObject* obj) {
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

void Payload::write(std::byte* dst) const {
  for (std::size_t i = 0; i < nparts_; ++i) {
    const Part& p = i < kInline ? parts_[i] : extra_[i - kInline];
    if (p.size != 0) std::memcpy(dst, p.data, p.size);
    dst += p.size;
  }
}

void Payload::add(const void* p, std::size_t n) {
  const Part part{static_cast<const std::byte*>(p), n};
  if (nparts_ < kInline) {
    parts_[nparts_] = part;
  } else {
    extra_.push_back(part);
  }
  ++nparts_;
  total_ += n;
}

void Payload::pickle(PyObject* obj) {
  const std::size_t mark = tl_buffers.size();
  PyObject* res = forking_dumps(obj);  // buffers go to g.collector, appending to tl_buffers
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
  kind_ = kPickleKind;
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

std::optional<std::span<const std::byte>> flatbuffer_of(const std::byte* p, std::size_t n) {
  if (n < kFbPrefixBytes) return std::nullopt;
  std::uint32_t start = 0;
  std::memcpy(&start, p + 4, 4);
  if (start < kFbPrefixBytes || start > n) return std::nullopt;
  return std::span<const std::byte>(p + start, n - start);
}

PyObject* decode(const std::byte* p, std::size_t n, std::uint16_t kind) {
  if (kind == kPickleKind) return unpickle(p, n);
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

}  // namespace shmq::py
