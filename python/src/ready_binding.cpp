// Readiness fds and the watcher thread (see ready.hpp for what they promise and cost).
//
// Who touches what
//   Watcher::mu guards the watch list and every Watch's signalled/armed flags; it is held only
//   for short, non-blocking steps (never while sleeping, never while waiting for the GIL), so a
//   thread holding the GIL may take it.
//   The watcher thread never touches Python. Between two passes it sleeps in wait_any without mu;
//   the predicates it evaluates then read shared words only (Queue: the ring's positions; Pipe:
//   the published tail/head and close flags, compared with positions recorded under mu), so they
//   race with nobody. unwatch() waits for the pass to end before the channel may drop what those
//   predicates read.
//   Every read of a watched channel ends in watch_after_read, under mu, after the message was
//   taken: so a watcher that signalled for a message the reader took meanwhile is corrected by
//   that read's after_read (which runs after the signal), and one that evaluates after it sees
//   the message gone.
//   A Pipe's "empty" is relative to its reader's own position, which only the reader's thread
//   knows: after each read that left the ring empty, that thread records (rmu_ and mu held) the
//   tail it has read up to, and the watcher signals when the tail moves past it. A Queue's
//   "empty" is shared state, so the watcher also clears an fd whose queue other processes
//   drained.
//
// Synchronization
//   [R2] dirty + poke: a thread that changed what the watcher must watch stores dirty (release)
//        and notifies poke, a process-local WaitWord in the watcher's wait set; wait.hpp's Dekker
//        pair makes the watcher either see dirty in its re-check (acquire) or be woken.
//   [R3] seen_tail / seen_head: stored (release) under mu by the thread that records them,
//        loaded (acquire) by the watcher's predicates between passes.
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "pipe_binding.hpp"
#include "queue_binding.hpp"
#include "ready.hpp"
#include "shmq/core/wait_any.hpp"

namespace shmq::py {

using Clock = std::chrono::steady_clock;

class Watch {
 public:
  Watch() = default;
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  virtual ~Watch() {
    if (data_fd >= 0) ::close(data_fd);
    if (space_fd >= 0) ::close(space_fd);
  }

  // ---- the watcher's view (shared words only; any thread)
  virtual bool data_ready() const noexcept = 0;
  // A liveness check (a syscall): the pipe's writer closed or died.
  virtual bool peer_gone() const noexcept { return false; }
  // Whether the watcher may clear the fd by itself (readiness is shared state).
  virtual bool shared_state() const noexcept { return false; }
  virtual bool space_ready() const noexcept = 0;
  virtual bool space_peer_gone() const noexcept { return false; }

  // ---- the owner's view (the reader's thread, rmu_ held; mu held)
  // True if nothing is left for this process to read; records the position read up to.
  virtual bool drained() noexcept = 0;
  // Records the state from which room is measured (the writer's thread; mu held).
  virtual void arm_space() noexcept {}

  int data_fd = -1;
  int space_fd = -1;
  core::WaitWord* data_word = nullptr;  // null: never readable (a write-only end)
  core::SleepMark data_mark{};
  core::WaitWord* space_word = nullptr;
  bool signalled = false;    // mu: data_fd's count is non-zero
  bool space_armed = false;  // mu: a put/send waits for room
};

namespace {

// ---------------------------------------------------------------------------------------------
// The two kinds of channel

class QueueWatch final : public Watch {
 public:
  explicit QueueWatch(QueueState& st) : st_(st) {
    data_word = st.reader->data_wait_word();
    data_mark = st.reader->data_sleep_mark();
  }
  bool data_ready() const noexcept override { return st_.reader->ready_guess(); }
  bool shared_state() const noexcept override { return true; }
  bool drained() noexcept override { return !st_.reader->ready_guess(); }
  bool space_ready() const noexcept override {
    return st_.writer && st_.writer->writable_guess();
  }
  void attach_writer() noexcept { space_word = st_.writer->space_wait_word(); }

 private:
  QueueState& st_;  // outlives the watch: the handle unwatches before it drops roles
};

class PipeWatch final : public Watch {
 public:
  explicit PipeWatch(PipeState& st) : st_(st) {}

  // The reader's thread (rmu_ held), when the watch starts: true if a message is there now.
  bool start_reader() noexcept {
    if (!st_.reader) return false;
    data_word = st_.reader->data_wait_word();
    return !drained();
  }
  void attach_writer() noexcept { space_word = st_.writer->space_wait_word(); }

  bool data_ready() const noexcept override {
    if (!st_.reader) return false;
    // acquire: [R3]
    return st_.reader->published_tail() != seen_tail_.load(std::memory_order_acquire) ||
           st_.reader->writer_closed_flag();
  }
  bool peer_gone() const noexcept override { return st_.reader && !st_.reader->writer_alive(); }
  bool drained() noexcept override {
    // The tail only grows: if it reads the same before and after ready_guess() found nothing
    // past the reader's position, that position is this tail.
    const std::uint64_t t1 = st_.reader->published_tail();
    if (st_.reader->ready_guess()) return false;
    const std::uint64_t t2 = st_.reader->published_tail();
    if (t1 != t2) return false;
    // release: [R3]
    seen_tail_.store(t1, std::memory_order_release);
    return true;
  }
  bool space_ready() const noexcept override {
    if (!st_.writer) return false;
    // acquire: [R3]
    return st_.writer->published_head() != seen_head_.load(std::memory_order_acquire) ||
           st_.writer->reader_closed_flag();
  }
  bool space_peer_gone() const noexcept override {
    return st_.writer && !st_.writer->reader_alive();
  }
  void arm_space() noexcept override {
    // release: [R3]
    seen_head_.store(st_.writer->published_head(), std::memory_order_release);
  }

 private:
  PipeState& st_;
  std::atomic<std::uint64_t> seen_tail_{0};
  std::atomic<std::uint64_t> seen_head_{0};
};

// ---------------------------------------------------------------------------------------------
// The watcher

void signal_fd(int fd) noexcept {
  const std::uint64_t one = 1;
  while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void drain_fd(int fd) noexcept {
  std::uint64_t v;
  while (::read(fd, &v, sizeof v) < 0 && errno == EINTR) {
  }
}

class Watcher {
 public:
  std::mutex mu;

  // mu held.
  void add(const std::shared_ptr<Watch>& w) {
    watches_.push_back(w);
    if (!running_) {
      running_ = true;
      stop_ = false;
      thread_ = std::thread([this] { run(); });
    }
    nudge();
  }

  // mu held via `lk`; waits (with lk released) until no pass can still read `w`.
  void remove(const std::shared_ptr<Watch>& w, std::unique_lock<std::mutex>& lk) {
    for (auto& x : watches_) {
      if (x == w) {
        x = watches_.back();
        watches_.pop_back();
        break;
      }
    }
    if (!in_wait_) return;
    const std::uint64_t pass = passes_;
    nudge();
    cv_.wait(lk, [&] { return passes_ != pass || !running_; });
  }

  // [R2] Makes the watcher start a new pass soon (after a change of what it must watch).
  void nudge() noexcept {
    // release: [R2] pairs with the acquire in the wait predicate of run().
    dirty_.store(true, std::memory_order_release);
    poke_.notify();
  }

  void signal(Watch& w) noexcept {
    w.signalled = true;
    signal_fd(w.data_fd);
  }

  void clear(Watch& w) noexcept {
    drain_fd(w.data_fd);
    w.signalled = false;
  }

  // Stops the thread and forgets every watch; GIL released by the caller.
  std::vector<std::shared_ptr<Watch>> shutdown() {
    std::unique_lock lk(mu);
    if (running_) {
      stop_ = true;
      nudge();
      std::thread t = std::move(thread_);
      lk.unlock();
      t.join();
      lk.lock();
      running_ = false;
    }
    return std::exchange(watches_, {});
  }

  // In a forked child: the parent's thread does not exist here and mu may have been held by it.
  // The object is leaked then (its thread_ names a thread of the parent only).
  std::vector<std::shared_ptr<Watch>> abandon() noexcept { return std::exchange(watches_, {}); }

 private:
  struct Waited {
    Watch* w;
    bool data;
    bool space;
  };

  void run();
  // One pass, mu held: signals, clears and fires what is due; fills the wait set.
  void pass(bool liveness);

  std::vector<std::shared_ptr<Watch>> watches_;  // mu
  std::vector<Waited> waited_;                    // the last pass's wait set (watcher thread)
  std::vector<core::WaitWord*> words_;
  std::vector<core::SleepMark> marks_;
  core::WaitWord poke_{};
  std::atomic<bool> dirty_{false};
  std::condition_variable cv_;
  std::thread thread_;
  std::uint64_t passes_ = 0;  // mu
  bool running_ = false;      // mu
  bool stop_ = false;         // mu
  bool in_wait_ = false;      // mu
};

void Watcher::pass(bool liveness) {
  waited_.clear();
  words_.assign(1, &poke_);
  marks_.assign(1, core::SleepMark{});
  for (const auto& sp : watches_) {
    Watch& w = *sp;
    bool data = false;
    bool space = false;
    if (!w.signalled) {
      if (w.data_ready() || (liveness && w.peer_gone())) {
        signal(w);
      } else if (w.data_word != nullptr) {
        data = true;
        words_.push_back(w.data_word);
        marks_.push_back(w.data_mark);
      }
    } else if (w.shared_state() && !w.data_ready()) {
      clear(w);  // other processes drained the queue
      if (w.data_ready()) signal(w);
    }
    if (w.space_armed) {
      if (w.space_ready() || (liveness && w.space_peer_gone())) {
        w.space_armed = false;
        signal_fd(w.space_fd);
      } else if (w.space_word != nullptr) {
        space = true;
        words_.push_back(w.space_word);
        marks_.push_back(core::SleepMark{});
      }
    }
    if (data || space) waited_.push_back({&w, data, space});
  }
}

void Watcher::run() {
  std::unique_lock lk(mu);
  auto next_liveness = Clock::now();
  for (;;) {
    ++passes_;
    in_wait_ = false;
    cv_.notify_all();
    if (stop_) return;
    // relaxed: [R2] everything is re-evaluated below, under mu, after this store.
    dirty_.store(false, std::memory_order_relaxed);
    const auto now = Clock::now();
    const bool liveness = now >= next_liveness;
    if (liveness) next_liveness = now + kSlice;
    pass(liveness);
    in_wait_ = true;
    lk.unlock();
    auto ready = [this] {
      // acquire: [R2]
      if (dirty_.load(std::memory_order_acquire)) return true;
      for (const Waited& x : waited_) {
        if (x.data && x.w->data_ready()) return true;
        if (x.space && x.w->space_ready()) return true;
      }
      return false;
    };
    // A slice bounds the sleep: liveness is checked once per slice and a queue drained by other
    // processes is noticed within one.
    core::wait_any(std::span<core::WaitWord* const>(words_), ready, Deadline::in(kSlice),
                   std::span<const core::SleepMark>(marks_));
    lk.lock();
  }
}

Watcher* g_watcher = new Watcher;  // never destroyed: a forked child may inherit a locked mu

// ---------------------------------------------------------------------------------------------
// Entry points

int new_eventfd() {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    throw nb::python_error();
  }
  return fd;
}

// Starts watching a channel's data. rmu_ is taken (without the GIL while it waits) so that the
// reader's position is read while no read is in flight.
template <class W, class State>
std::shared_ptr<Watch> start_watch(State& st, bool has_reader) {
  if (st.watch) return st.watch;
  auto w = std::make_shared<W>(st);
  w->data_fd = new_eventfd();
  bool ready_now = false;
  if (has_reader) {
    if (!st.rmu_.lock(Deadline::never())) throw_py(PyExc_OSError, "cannot lock the channel");
    Locked guard(st.rmu_);
    if constexpr (std::is_same_v<W, PipeWatch>) {
      ready_now = w->start_reader();
    } else {
      ready_now = w->data_ready();
    }
  }
  std::lock_guard lk(g_watcher->mu);
  if (ready_now) g_watcher->signal(*w);
  g_watcher->add(w);
  st.watch = w;
  return w;
}

int ready_fd(nb::handle h) {
  if (nb::isinstance<PipeEnd>(h)) {
    PipeEnd* p = nb::cast<PipeEnd*>(h);
    PipeState& st = p->attached(p->readable(), false);
    auto w = start_watch<PipeWatch>(st, p->readable() && st.reader);
    if (p->gone()) {  // the pipe vanished before this end opened it: the end of the stream
      std::lock_guard lk(g_watcher->mu);
      if (!w->signalled) g_watcher->signal(*w);
    }
    return w->data_fd;
  }
  if (nb::isinstance<QueueHandle>(h)) {
    QueueState& st = nb::cast<QueueHandle*>(h)->attached(false);
    return start_watch<QueueWatch>(st, true)->data_fd;
  }
  throw_py(PyExc_TypeError, "fileno() of a shmq queue or connection handle");
}

// Arms the one-shot room fd of a channel whose last put/send found no room.
int space_fd(nb::handle h) {
  std::shared_ptr<Watch> w;
  if (nb::isinstance<PipeEnd>(h)) {
    PipeEnd* p = nb::cast<PipeEnd*>(h);
    PipeState& st = p->attached(p->readable(), true);
    w = start_watch<PipeWatch>(st, p->readable() && st.reader);
    static_cast<PipeWatch&>(*w).attach_writer();
  } else if (nb::isinstance<QueueHandle>(h)) {
    QueueState& st = nb::cast<QueueHandle*>(h)->attached(true);
    w = start_watch<QueueWatch>(st, true);
    static_cast<QueueWatch&>(*w).attach_writer();
  } else {
    throw_py(PyExc_TypeError, "a shmq queue or connection handle");
  }
  std::lock_guard lk(g_watcher->mu);
  if (w->space_fd < 0) w->space_fd = new_eventfd();
  drain_fd(w->space_fd);
  w->arm_space();
  w->space_armed = true;
  g_watcher->nudge();
  return w->space_fd;
}

void drop_watches(std::vector<std::shared_ptr<Watch>> watches) {
  for (ChannelState* s : channel_states()) s->watch.reset();
  watches.clear();  // closes the fds
}

}  // namespace

void watch_after_read(Watch& w) noexcept {
  std::lock_guard lk(g_watcher->mu);
  if (!w.drained() || !w.signalled) return;  // drained() also records a pipe's position
  g_watcher->clear(w);
  g_watcher->nudge();  // the watcher puts the channel's word back into its sleep
}

void unwatch(ChannelState& st) {
  if (!st.watch) return;
  std::shared_ptr<Watch> w = std::move(st.watch);
  auto remove = [&] {
    std::unique_lock lk(g_watcher->mu);
    g_watcher->remove(w, lk);
  };
  if (PyGILState_Check()) {
    nb::gil_scoped_release nogil;  // the wait for the watcher's pass needs no GIL
    remove();
  } else {
    remove();
  }
  // w's fds close with it; asyncio loops stopped watching them already (_asyncio.forget).
}

void watch_shutdown() {
  std::vector<std::shared_ptr<Watch>> watches;
  {
    nb::gil_scoped_release nogil;
    watches = g_watcher->shutdown();
  }
  drop_watches(std::move(watches));
}

void watch_after_fork_in_child() {
  Watcher* old = g_watcher;
  g_watcher = new Watcher;
  drop_watches(old->abandon());  // `old` is leaked: its mutex may be locked forever
}

void bind_ready(nb::module_& m) {
  m.def("ready_fd", &ready_fd, nb::arg("handle"),
        "The readiness eventfd of a queue or connection handle: readable while a message (or "
        "the end of a pipe's stream) waits. Starts the watcher thread.");
  m.def("space_fd", &space_fd, nb::arg("handle"),
        "Arms and returns the handle's one-shot room eventfd: it becomes readable once the "
        "channel may have room (or its reader is gone).");
}

}  // namespace shmq::py
