// QueueHandle: the native half of shmq.Queue, SimpleQueue and JoinableQueue (python/shmq/_queues.py).
// One handle per Python object; its writer and reader roles are taken lazily on first use and
// each is serialized by its own HandleMutex (support.hpp).
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <optional>
#include <string>

#include "channel.hpp"
#include "shmq/core/wait_any.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::py {

struct QueueState final : ChannelState {
  std::optional<shmq::Queue> queue;
  std::optional<shmq::QueueWriter> writer;
  std::optional<shmq::QueueReader> reader;
  // Bumped whenever `reader` goes (close, fork, exit): a lease taken under an older value lost
  // its reader, and with it the right to ack or give back (it went with the participant slot).
  std::uint64_t reader_epoch = 0;

  void after_fork() override;
  void drop_all() override;
  bool reader_attached() const override { return reader.has_value(); }
  void leave_mapped() override {
    if (queue) queue->leave_mapped();
  }
  ~QueueState() override;
};

class QueueHandle {
 public:
  QueueHandle(const std::string& name, std::optional<bool> create, std::uint64_t slots,
              std::uint64_t slot_size, std::uint64_t maxsize, bool raw_only, bool joinable,
              nb::handle closed_error, std::uint32_t arena_chunks, std::uint64_t arena_chunk_bytes);

  const std::string& name() const { return name_; }
  std::uint64_t capacity() const { return capacity_; }
  bool closed() const { return closed_; }

  void put(nb::handle obj, bool block, std::optional<double> timeout);
  void put_flatbuffer(nb::handle buffer, bool block, std::optional<double> timeout);
  // Sends an encoded payload (counting it as a task for a JoinableQueue).
  void put_encoded(const Payload& p, bool block, std::optional<double> timeout);
  nb::object get(bool block, std::optional<double> timeout);
  void put_nowait(nb::handle obj) { put(obj, false, std::nullopt); }
  nb::object get_nowait() { return get(false, std::nullopt); }
  void put_always(nb::handle obj) { put(obj, true, std::nullopt); }
  nb::object get_always() { return get(true, std::nullopt); }
  std::size_t put_many(nb::handle items, bool block, std::optional<double> timeout);
  nb::list get_many(std::size_t max_items, bool block, std::optional<double> timeout);
  nb::object get_view(bool block, std::optional<double> timeout);
  // Up to max_items messages under a lease (shmq.Queue.get_lease): a LeaseHandle.
  nb::object get_lease(std::size_t max_items, bool block, std::optional<double> timeout);
  // Raw batches for shmq.nats bridges (batch_format.hpp), never decoding a payload: up to
  // max_items messages as [(batch bytes, count), ...], each batch at most max_bytes unless one
  // message alone is larger; and the records of `payload` from index `start` on, put in order
  // with their kinds, returning how many were put before the deadline.
  nb::list get_batches(std::size_t max_items, std::size_t max_bytes, bool block,
                       std::optional<double> timeout);
  std::size_t put_batch(nb::bytes payload, std::size_t start, bool block,
                        std::optional<double> timeout);
  // Journals (shmq::QueueJournal) for the bridge-in: open one on this handle's writer, read its
  // record (token, next), and put_batch with each run recorded as (token, index after it).
  void open_journal(const std::string& name);
  nb::tuple journal_record();
  std::size_t put_batch_journaled(nb::bytes payload, std::size_t start, std::uint64_t token,
                                  bool block, std::optional<double> timeout);
  // Tells this queue apart from an earlier one of the same name: "<name>.<creation ns>".
  std::string identity();

  // For bindings of other encodings (fb_binding.cpp). put_with runs `send(QueueWriter&, Deadline)
  // -> Status` with the writer role and its lock, as put does (a JoinableQueue counts the task;
  // a failure, or an exception out of `send`, takes it back; statuses raise as put's do).
  template <class Send>
  void put_with(bool block, std::optional<double> timeout, Send&& send);
  // Receives one message into `m` as get_view does; returns the state that a view of `m` keeps
  // alive (its views_ already counted).
  std::shared_ptr<ChannelState> recv_held(shmq::Message& m, bool block, std::optional<double> timeout);

  std::size_t qsize() { return state().queue->size_guess(); }
  bool empty() { return qsize() == 0; }
  bool full() { return qsize() >= capacity_; }
  void task_done();
  bool join(std::optional<double> timeout);
  void close();

  // For readiness fds (ready_binding.cpp): the state with its reader role, and also its writer
  // role if `writer`, taken; raises as every call does once the handle is closed.
  QueueState& attached(bool writer);

  // For wait(): the reader's data word, whether a message is ready now, and its sleep mark.
  shmq::core::WaitWord* wait_word(bool* ready, shmq::core::SleepMark* mark);
  bool ready_guess() { return st_ && st_->reader && st_->reader->ready_guess(); }
  bool ready_slow() { return ready_guess(); }

 private:
  QueueState& state();
  shmq::QueueWriter& writer(QueueState& st);
  shmq::QueueReader& reader(QueueState& st);
  std::size_t send_batch(QueueState& st, shmq::QueueWriter& w,
                         std::span<const std::span<const std::byte>> spans, std::uint16_t kind,
                         Deadline d);
  [[noreturn]] void raise_put(Status s);
  [[noreturn]] void raise_get(Status s);

  friend struct LeaseHandle;
  std::shared_ptr<QueueState> st_;
  std::string name_;
  std::uint64_t capacity_ = 0;
  bool raw_only_;
  bool joinable_;
  bool closed_ = false;
  Status last_status_ = Status::ok;
  nb::object closed_error_;
};

// The native half of shmq.Lease: messages held under a QueueLease until ack() or release().
struct LeaseHandle {
  std::shared_ptr<QueueState> owner;
  shmq::QueueLease lease;
  std::uint64_t reader_epoch = 0;
  bool raw_only = false;

  ~LeaseHandle();
  bool held() const;
  std::uint64_t first_id() const { return lease.first_id(); }
  std::uint64_t count() const { return lease.size(); }
  bool redelivered() const { return lease.redelivered(); }
  nb::list ids();
  nb::list items();
  nb::list batches(std::size_t max_bytes);
  void ack();
  void release();

 private:
  void check();
};

template <class Send>
void QueueHandle::put_with(bool block, std::optional<double> timeout, Send&& send) {
  const Deadline d = make_deadline(block, timeout);
  QueueState& st = state();
  if (!st.wmu_.lock(d)) throw_py(g.full, "");
  Locked guard(st.wmu_);
  shmq::QueueWriter& w = writer(st);
  if (joinable_) st.queue->tasks_added(1);
  Status s = Status::ok;
  try {
    s = send(w, d);
  } catch (...) {
    if (joinable_) st.queue->tasks_added(-1);
    throw;
  }
  if (s == Status::ok) return;
  if (joinable_) st.queue->tasks_added(-1);
  raise_put(s);
}

void bind_queue(nb::module_& m);

}  // namespace shmq::py
