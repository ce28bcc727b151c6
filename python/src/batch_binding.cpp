// Module functions over the batch format (batch_format.hpp), for shmq.nats: a shmq.nats.Queue
// unpacks the batches bridges publish, and tests pack them. decode_record decodes one record as
// shmq.Queue.get does (codec.hpp), for the records a shmq.nats.Queue receives.
#include <nanobind/nanobind.h>

#include <string>
#include <vector>

#include "batch_format.hpp"
#include "codec.hpp"
#include "support.hpp"

namespace shmq::py {

namespace {

// [(bytes, kind), ...] from a batch payload; ValueError if it is malformed.
nb::list batch_records(nb::bytes payload) {
  std::vector<BatchRecord> records;
  const std::span<const std::byte> all(reinterpret_cast<const std::byte*>(payload.c_str()),
                                       payload.size());
  if (!parse_batch(all, records))
    throw_py(PyExc_ValueError, "shmq batch: a record runs past the end of the message");
  nb::list out;
  for (const BatchRecord& r : records)
    out.append(nb::make_tuple(steal_or_throw(bytes_from(r.bytes.data(), r.bytes.size())), r.kind));
  return out;
}

// A batch payload from [(bytes-like, kind), ...].
nb::bytes batch_pack(nb::handle records) {
  std::string out;
  for (nb::handle item : records) {
    nb::tuple t = nb::borrow<nb::tuple>(item);
    if (t.size() != 2) throw_py(PyExc_TypeError, "batch_pack takes (bytes, kind) pairs");
    Py_buffer view;
    if (PyObject_GetBuffer(t[0].ptr(), &view, PyBUF_SIMPLE) != 0) throw nb::python_error();
    const auto kind = nb::cast<std::uint16_t>(t[1]);
    append_record(out, {static_cast<const std::byte*>(view.buf), static_cast<std::size_t>(view.len)},
                  kind);
    PyBuffer_Release(&view);
  }
  return nb::bytes(out.data(), out.size());
}

// The object one record stands for (codec.hpp's decode): kind 1 unpickled (out-of-band buffers
// included), kind 2 the FlatBuffers buffer after its prefix (ValueError if the prefix is
// malformed), any other kind its bytes.
nb::object decode_record(nb::bytes payload, std::uint16_t kind) {
  return steal_or_throw(decode(reinterpret_cast<const std::byte*>(payload.c_str()), payload.size(), kind));
}

}  // namespace

void bind_batch(nb::module_& m) {
  m.def("batch_records", &batch_records, nb::arg("payload"));
  m.def("batch_pack", &batch_pack, nb::arg("records"));
  m.def("decode_record", &decode_record, nb::arg("payload"), nb::arg("kind"));
}

}  // namespace shmq::py
