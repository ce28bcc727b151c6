// shmq::fb::Reader<T>: receives FlatBuffers messages of root type T and hands out typed views
// into shared memory, verified first.
//
//   shmq::fb::Reader<shmq::schema::Order> r(rx);
//   auto m = r.recv(shmq::Deadline::in(100ms));
//   if (!m) { log(m.error().message()); ... }      // never a crash, whatever the bytes
//   else    { const auto* o = m.get(); use(o->symbol()); }   // zero copy; m.release() when done
//
// The checks are ReadChecks, given what the reader Expects (a type identity and how to verify a
// buffer of it): Reader<T> passes T's, DynReader (dyn_read.hpp) a run-time schema type's, and the
// Python binding's get_fb the same.
//
// Modes (ReaderOptions::mode):
//   verify            (default) flatbuffers::Verifier checks the buffer in place, then the view
//                     points into shared memory.
//   trusted           no verification (only the prefix and the 4-byte identifier are checked):
//                     for peers you trust, e.g. the same program on both ends.
//   copy_then_verify  copy the buffer out (one heap copy per message), release the channel space
//                     at once, verify the copy: for a writer that might change bytes while they
//                     are read, so what was verified is exactly what is read.
// A message that fails any check is consumed (released), counted (Stats::verify_failures for
// verification failures) and returned as an error: wrong_kind, wrong_type (the text names both
// types), malformed, verify_failed.
//
// Works with any reader type R with try_recv(Message&) and recv(Message&, Deadline) returning
// Status; optional stats() (core::Stats& or *). Thread roles: one thread at a time per Reader.
//
// Synchronization
//   None of its own: the channel's recv (acquire) pairs with the writer's commit (release), so the
//   prefix and buffer are visible before decoding; Received::release() hands the space back
//   through the channel's own release (release order there).
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "shmq/core/stats.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/serialize/decode.hpp"
#include "shmq/serialize/read_error.hpp"
#include "shmq/shm/message.hpp"

namespace shmq {
class PipeReader;  // the default channel; include shmq/shm/pipe.hpp to use it
}

namespace shmq::fb {

enum class VerifyMode : std::uint8_t { verify, trusted, copy_then_verify };

struct ReaderOptions {
  VerifyMode mode = VerifyMode::verify;
  VerifyLimits limits{};
  // Stats to count verify failures in when the reader type has no stats() of its own.
  core::Stats* stats = nullptr;
};

// A received message of root type T, or the reason there is none. Move-only. When ok(), it holds
// the channel space (zero copy) until release() or destruction.
template <RootType T>
class Received {
 public:
  Received() = default;

  bool ok() const noexcept { return root_ != nullptr; }
  explicit operator bool() const noexcept { return ok(); }
  const ReadError& error() const noexcept { return error_; }
  ReadErrc code() const noexcept { return error_.code; }

  const T* get() const noexcept { return root_; }  // nullptr unless ok()
  const T* operator->() const noexcept { return root_; }
  const T& operator*() const noexcept { return *root_; }
  // The FlatBuffers buffer (without the shmq prefix).
  std::span<const std::byte> buffer() const noexcept { return buffer_; }
  // True if the view points into shared memory (not a copy).
  bool zero_copy() const noexcept { return zero_copy_; }

  void release() noexcept {
    root_ = nullptr;
    buffer_ = {};
    zero_copy_ = false;
    msg_.release();
  }

 private:
  template <RootType, class>
  friend class Reader;

  Message msg_;
  const T* root_ = nullptr;
  std::span<const std::byte> buffer_;
  ReadError error_;
  bool zero_copy_ = false;
};

namespace detail {

template <class R>
core::Stats* reader_stats(R& r, core::Stats* fallback) noexcept {
  if constexpr (requires { { r.stats() } -> std::convertible_to<core::Stats*>; }) {
    return r.stats();
  } else if constexpr (requires { { &r.stats() } -> std::convertible_to<core::Stats*>; }) {
    return &r.stats();
  } else {
    return fallback;
  }
}

constexpr ReadErrc errc_of(Status s) noexcept {
  switch (s) {
    case Status::ok: return ReadErrc::ok;
    case Status::empty: return ReadErrc::empty;
    case Status::timeout: return ReadErrc::timeout;
    case Status::interrupted: return ReadErrc::interrupted;
    case Status::closed: return ReadErrc::closed;
    default: return ReadErrc::corrupt;  // full / too_big cannot come from a receive
  }
}

}  // namespace detail

// The root type a reader accepts, known at compile time (Reader<T>) or at run time (a schema
// loaded with Schema::load_*, see dyn_read.hpp): its identity and how to check a buffer of it.
struct Expected {
  std::uint32_t type_id = 0;
  const char* name = "";  // for error messages; static or owned by the caller's schema
  // Full verification, and the trusted mode's cheap identity check (the buffer's identifier).
  bool (*verify)(const void* ctx, std::span<const std::byte> buffer, VerifyLimits limits) noexcept = nullptr;
  bool (*identity)(const void* ctx, std::span<const std::byte> buffer) noexcept = nullptr;
  const void* ctx = nullptr;
};

template <RootType T>
Expected expected_of() noexcept {
  return {type_id<T>(), RootTraits<T>::name(),
          [](const void*, std::span<const std::byte> b, VerifyLimits l) noexcept {
            return verify_buffer<T>(b, l);
          },
          [](const void*, std::span<const std::byte> b) noexcept { return identifier_matches<T>(b); },
          nullptr};
}

// A received message after the checks: the buffer to read, or why there is none.
struct Checked {
  std::span<const std::byte> buffer;  // empty unless error.code == ok
  bool zero_copy = false;             // buffer points into shared memory
};

// The checks every typed reader makes on a received message (Reader<T>, DynReader, the Python
// binding): prefix, alignment (an unaligned buffer is copied), the mode's verification, and the
// accounting of a rejected message (consumed: released at once, counted). Used by one thread.
class ReadChecks {
 public:
  ReadChecks(ReaderOptions options, core::Stats* stats) noexcept : options_(options), stats_(stats) {}

  // `s` is the channel's outcome for `msg`. On return `err` says what happened; on ok the
  // buffer stays valid while `msg` holds the message.
  Checked check(Message& msg, Status s, const Expected& want, ReadError& err) {
    Checked out;
    err = ReadError{};
    err.expected_type = want.type_id;
    err.expected_name = want.name;
    err.code = detail::errc_of(s);
    if (s != Status::ok) return out;
    const ReadErrc e = decode(msg, want, err, out);
    if (e == ReadErrc::ok) return out;
    err.code = e;
    err.kind = msg.kind();
    err.size = msg.size();
    out = Checked{};
    msg.release();  // consumed: the space goes back at once
    ++rejected_;
    if (e == ReadErrc::verify_failed) {
      ++verify_failures_;
      if (stats_ != nullptr) core::Stats::bump(stats_->verify_failures);
    }
    return out;
  }

  const ReaderOptions& options() const noexcept { return options_; }
  void set_mode(VerifyMode mode) noexcept { options_.mode = mode; }
  std::uint64_t rejected() const noexcept { return rejected_; }
  std::uint64_t verify_failures() const noexcept { return verify_failures_; }

 private:
  ReadErrc decode(Message& msg, const Expected& want, ReadError& err, Checked& out) {
    const Parsed p = parse_payload(msg.bytes(), msg.kind(), want.type_id);
    err.got_type = p.got_type;
    if (p.code != ReadErrc::ok) return p.code;
    std::span<const std::byte> buf = p.buffer;
    bool in_shared = msg.zero_copy();
    if (options_.mode == VerifyMode::copy_then_verify || !buffer_aligned(buf)) {
      buf = copy_out(msg, buf);
      in_shared = false;
    }
    const bool good = options_.mode == VerifyMode::trusted
                          ? want.identity(want.ctx, buf)
                          : want.verify(want.ctx, buf, options_.limits);
    if (!good) return ReadErrc::verify_failed;
    out.buffer = buf;
    out.zero_copy = in_shared;
    return ReadErrc::ok;
  }

  // Replaces the message by an owned, aligned copy of its buffer (releasing the channel space).
  static std::span<const std::byte> copy_out(Message& msg, std::span<const std::byte> buf) {
    const std::uint16_t kind = msg.kind();
    std::vector<std::byte> copy(buf.begin(), buf.end());  // operator new: 16-byte aligned
    msg.set_owned(std::move(copy), kind);                 // releases the borrowed space first
    return msg.bytes();
  }

  ReaderOptions options_;
  core::Stats* stats_;
  std::uint64_t rejected_ = 0;
  std::uint64_t verify_failures_ = 0;
};

template <RootType T, class R = PipeReader>
class Reader {
 public:
  explicit Reader(R& reader, ReaderOptions options = {}) noexcept
      : r_(&reader), checks_(options, detail::reader_stats(reader, options.stats)),
        want_(expected_of<T>()) {
    // Odr-use the registration so the type's name is known to other readers' error messages.
    if constexpr (requires { RootTraits<T>::registered_; }) (void)RootTraits<T>::registered_;
  }

  // Never blocks: ok, or empty | closed | corrupt, or a consumed bad message's error.
  Received<T> try_recv() {
    Received<T> out;
    const Status s = r_->try_recv(out.msg_);
    finish(out, s);
    return out;
  }

  // Waits until `deadline`: ok, or timeout | interrupted | closed | corrupt, or a bad message's
  // error (a bad message ends the wait: it is reported, not skipped silently).
  Received<T> recv(Deadline deadline) {
    Received<T> out;
    const Status s = r_->recv(out.msg_, deadline);
    finish(out, s);
    return out;
  }

  // Messages this Reader consumed and rejected, and those among them the verifier rejected.
  std::uint64_t rejected() const noexcept { return checks_.rejected(); }
  std::uint64_t verify_failures() const noexcept { return checks_.verify_failures(); }

 private:
  void finish(Received<T>& out, Status s) {
    const Checked c = checks_.check(out.msg_, s, want_, out.error_);
    if (out.error_.code != ReadErrc::ok) return;
    out.buffer_ = c.buffer;
    out.root_ = root_of<T>(c.buffer);
    out.zero_copy_ = c.zero_copy;
  }

  R* r_;
  ReadChecks checks_;
  Expected want_;
};

template <RootType T, class R>
Reader<T, R> make_reader(R& reader, ReaderOptions options = {}) noexcept {
  return Reader<T, R>(reader, options);
}

}  // namespace shmq::fb
