// Support shared by every binding file of _shmq: the cached Python objects, errors turned into
// Python exceptions, deadlines from (block, timeout), sleeping in GIL-free slices, the per-handle
// mutex, and the registry of channel states that fork and exit walk.
//
// Threads: every handle serializes its writer and its reader with a HandleMutex of its own (the
// C++ roles are one-thread-at-a-time). The fast path takes it with try_lock while holding the GIL;
// a thread that finds it taken waits for it with the GIL released. Lock order: a thread never
// waits for a handle mutex while holding the GIL, so the GIL and the mutexes cannot deadlock.
//
// Fork: after os.fork() the child must not act as its parent's writer, reader or participant.
// after_fork_in_child() (module.cpp) bumps g_fork_generation and calls after_fork() on every
// ChannelState: roles are dropped (their destructors only close file descriptors in a forked
// child), mutexes reset, mappings kept, so a handle re-acquires its roles lazily on first use.
#pragma once

#include <nanobind/nanobind.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shmq/core/result.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"

namespace shmq::py {

namespace nb = nanobind;

// Blocking calls sleep at most one slice between checks for signals (Ctrl-C within 100 ms).
inline constexpr auto kSlice = core::kSleepSlice;

// Cached Python objects (set at import by init_globals; the module lives until the interpreter
// ends).
struct Globals {
  PyObject* dumps = nullptr;
  PyObject* loads = nullptr;
  PyObject* empty = nullptr;       // queue.Empty
  PyObject* full = nullptr;        // queue.Full
  PyObject* too_short = nullptr;   // multiprocessing.BufferTooShort
  PyObject* protocol = nullptr;    // int 5
  PyObject* cb_kwnames = nullptr;  // ("buffer_callback",)
  PyObject* buffers_kwnames = nullptr;  // ("buffers",)
  PyObject* collector = nullptr;   // a builtin that appends to the codec's out-of-band buffers
};
extern Globals g;
void init_globals();

// Bumped in a forked child; handles and views compare it with the value they were made under.
extern std::uint64_t g_fork_generation;

[[noreturn]] void throw_py(PyObject* type, const std::string& what);
[[noreturn]] void throw_error(const shmq::Error& e);
void check_signals();
nb::object steal_or_throw(PyObject* o);

Deadline make_deadline(bool block, std::optional<double> timeout);
inline bool is_poll(Deadline d) { return !d.is_never() && d.expired(); }

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
  bool lock(Deadline d);
  bool try_lock() { return m_.try_lock(); }
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

class Watch;  // readiness fds (ready.hpp)

// The native state behind one Python handle, registered for fork and exit (GIL-protected).
class ChannelState {
 public:
  ChannelState();
  virtual ~ChannelState();
  ChannelState(const ChannelState&) = delete;
  ChannelState& operator=(const ChannelState&) = delete;

  // Drops the roles (fork: their destructors only close fds in a child) and resets mutexes.
  virtual void after_fork() = 0;
  // Drops roles and the mapping (exit). Views keep nothing valid after this.
  virtual void drop_all() = 0;
  // Whether the reader role that handed out held messages still exists: a held message may be
  // released only through a live reader (its release hook points into the reader's state).
  virtual bool reader_attached() const { return true; }
  // At exit, while another thread is inside a call on the channel: gives up the mapping's
  // attach lock (the last user removes an unnamed segment) but keeps the memory mapped.
  virtual void leave_mapped() {}

  std::uint64_t fork_generation_;
  int views_ = 0;  // MessageViews alive that point into this state's mapping
  HandleMutex wmu_, rmu_;
  std::shared_ptr<Watch> watch;  // set while the channel has a readiness fd (ready.hpp)
};

// Every live ChannelState (GIL-protected).
std::vector<ChannelState*>& channel_states();

}  // namespace shmq::py
