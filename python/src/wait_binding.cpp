// wait(): futex_waitv over the data words of several Queue and Pipe readers.
#include <nanobind/stl/optional.h>

#include <functional>
#include <vector>

#include "pipe_binding.hpp"
#include "queue_binding.hpp"
#include "shmq/core/wait_any.hpp"

namespace shmq::py {

namespace {

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

}  // namespace

void bind_wait(nb::module_& m) {
  m.def("wait", &wait_handles, nb::arg("handles"), nb::arg("timeout").none());
}

}  // namespace shmq::py
