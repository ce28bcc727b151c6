// MessageView: the buffer protocol over a message in shared memory, released explicitly (or when
// the view object goes) so the slot returns to the writers.
#include "channel.hpp"

namespace shmq::py {

void View::release_now() noexcept {
  if (!owner) return;
  if (fork_generation == g_fork_generation && owner->reader_attached()) {
    msg.release();
  } else {
    // A parent's message (never hand its space back from here), or one whose reader was closed
    // (its release hook would touch the reader's freed state): forget it.
    new (&msg) shmq::Message();
  }
  owner->views_ -= 1;
  owner.reset();
}

namespace {

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

}  // namespace

void bind_message_view(nb::module_& m) {
  nb::class_<View>(m, "MessageView", nb::type_slots(view_slots))
      .def_prop_ro("kind", [](View& v) { return v.msg.kind(); })
      .def("__len__", [](View& v) { return v.msg.size(); })
      .def("release", [](View& v) {
        if (v.exports > 0)
          throw_py(PyExc_BufferError, "the message is still referenced by a memoryview or an "
                                      "object made from it");
        v.release_now();
      });
}

}  // namespace shmq::py
