// PipeEnd: the native half of shmq.Connection (python/shmq/_connection.py). A duplex pipe's end 0
// writes direction 0 and reads direction 1, end 1 the reverse; a one-way pipe's end 0 reads and
// end 1 writes direction 0. Roles are taken lazily on first use; each direction is serialized by
// its own HandleMutex (support.hpp).
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <optional>
#include <string>

#include "channel.hpp"
#include "shmq/shm/pipe.hpp"

namespace shmq::py {

struct PipeState final : ChannelState {
  std::optional<shmq::Pipe> pipe;
  std::optional<shmq::PipeWriter> writer;
  std::optional<shmq::PipeReader> reader;
  // This end's hold on its roles (held ends: the lifetime of a multiprocessing Connection end).
  // A forked child keeps the parent's copy: the end stays open while either has it.
  shmq::RoleHold hold;
  std::optional<unsigned> wdir, rdir;  // the directions this end writes and reads

  // Lets go of the hold and the roles: the last holder of the end ends its streams (close),
  // any other leaves them to the holders that remain.
  void release_roles();
  void after_fork() override;
  void drop_all() override;
  bool reader_attached() const override { return reader.has_value(); }
  void leave_mapped() override {
    if (pipe) pipe->leave_mapped();
  }
  ~PipeState() override;
};

class PipeEnd {
 public:
  // hold_fd: a hold of this end received from another process (owned from here), or -1 to take
  // a new one.
  PipeEnd(const std::string& name, bool create, std::uint64_t capacity, bool duplex, int end,
          bool readable, bool writable, bool raw_only, int hold_fd);

  // The fd of this end's hold (to pass to another process, as multiprocessing passes a
  // Connection's fd), or -1 (a pipe without held ends, or closed).
  int hold_fd() const { return st_ ? st_->hold.fd() : -1; }

  const std::string& name() const { return name_; }
  int end() const { return end_; }
  bool readable() const { return readable_; }
  bool writable() const { return writable_; }
  bool raw_only() const { return raw_only_; }
  bool closed() const { return closed_; }

  void send(nb::handle obj);
  // Sends without waiting: 1 when sent, 0 when the ring has no room for it now (or another
  // thread is sending), -1 when it is larger than the ring (only a blocking send streams it).
  int send_nowait(nb::handle obj);
  void send_flatbuffer(nb::handle buffer);
  void send_bytes(nb::handle buf, Py_ssize_t offset, std::optional<Py_ssize_t> size);
  nb::object recv();
  nb::object recv_bytes(std::optional<Py_ssize_t> maxlength);
  std::size_t recv_bytes_into(nb::handle buf, Py_ssize_t offset);
  bool poll(std::optional<double> timeout);
  void close();

  // Sends an encoded payload; raises BrokenPipeError when the reader is gone.
  void send_payload(const Payload& p);
  // For bindings of other encodings (fb_binding.cpp): runs `send(PipeWriter&, Deadline) -> Status`
  // with the writer role and its lock, raising as send_payload does.
  template <class Send>
  void send_with(Send&& send);
  // Receives one message into `m` as recv_into does; returns the state that a view of `m` keeps
  // alive (its views_ already counted).
  std::shared_ptr<ChannelState> recv_held(shmq::Message& m);
  // Receives one message into `m`; raises EOFError at end of stream.
  void recv_into(shmq::Message& m);

  // For readiness fds (ready_binding.cpp): the state with the reader role taken if `with_reader`
  // and the writer role if `with_writer`; raises as every call does once closed.
  PipeState& attached(bool with_reader, bool with_writer);
  // The pipe was gone when this end was opened: it reads as the end of the stream.
  bool gone() const { return gone_; }

  // For wait(): the reader's data word and whether a message (or end of stream) is ready now.
  shmq::core::WaitWord* wait_word(bool* ready);
  bool ready_guess() { return gone_ || (st_ && st_->reader && st_->reader->ready_guess()); }
  // ready_guess, or the writer closed or died (a syscall).
  bool ready_slow() {
    return ready_guess() || (st_ && st_->reader && !st_->reader->writer_alive());
  }

 private:
  [[noreturn]] static void raise_send(Status s);
  PipeState& state();
  void take_hold(int hold_fd);
  shmq::PipeWriter& writer(PipeState& st);
  shmq::PipeReader& reader(PipeState& st);

  std::shared_ptr<PipeState> st_;
  std::string name_;
  int end_;
  unsigned wdir_ = 0, rdir_ = 0;
  bool duplex_ = true;
  bool readable_, writable_, raw_only_;
  bool closed_ = false;
  bool gone_ = false;
};

template <class Send>
void PipeEnd::send_with(Send&& send) {
  PipeState& st = state();
  if (!writable_) throw_py(PyExc_OSError, "connection is read-only");
  if (gone_) throw_py(PyExc_BrokenPipeError, "the other end of the pipe is closed");
  if (!st.wmu_.lock(Deadline::never())) throw_py(PyExc_OSError, "cannot lock the connection");
  Locked guard(st.wmu_);
  const Status s = send(writer(st), Deadline::never());
  if (s != Status::ok) raise_send(s);
}

void bind_pipe(nb::module_& m);

}  // namespace shmq::py
