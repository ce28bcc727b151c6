// Result<T>: the cold-path return type (create, open, attach). The hot path never uses it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace shmq {

// One enum for the whole library: the CLI and the Python binding map each code to one exit code
// or exception class, so a shared list keeps those maps total.
enum class Errc : std::uint32_t {
  ok = 0,
  invalid_argument,   // a parameter is out of range (capacity not a power of two, name too long)
  invalid_name,       // a segment name with characters outside [A-Za-z0-9._-] or a bad length
  exists,             // create: a segment of that name already exists
  not_found,          // open: no segment of that name
  permission_denied,  // the OS refused access (EACCES/EPERM)
  wrong_owner,        // the segment belongs to another uid and allow_other_users was not given
  insecure_mode,      // the segment file is group- or world-accessible
  bad_magic,          // not a shmq segment
  bad_version,        // a shmq segment of another layout version
  wrong_kind,         // a pipe opened as a queue or the reverse
  size_mismatch,      // sizes in the header disagree with fstat or with each other
  truncated,          // the file is smaller than its header says
  corrupt,            // a shared index, length or offset violates an invariant
  initializing,       // the creator has not finished (or died) while setting up the segment
  role_taken,         // a second live writer or reader of one direction
  too_many_participants,
  closed,             // the channel or its peer is closed
  too_big,            // a message larger than the channel can carry
  timeout,
  interrupted,        // a blocking call was interrupted by a signal (EINTR) the caller asked to see
  system,             // another OS error; see sys_errno
};

std::string_view errc_name(Errc e) noexcept;

struct Error {
  Errc code = Errc::ok;
  int sys_errno = 0;   // errno of the failing call, 0 if none
  std::string what;    // a sentence a user can act on

  Error() = default;
  Error(Errc c, std::string msg, int err = 0) : code(c), sys_errno(err), what(std::move(msg)) {}
};

// An expected-like type: g++ 12 offers std::expected only in C++2b mode.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}
  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool ok_ = true;
};

inline std::string_view errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::invalid_name: return "invalid_name";
    case Errc::exists: return "exists";
    case Errc::not_found: return "not_found";
    case Errc::permission_denied: return "permission_denied";
    case Errc::wrong_owner: return "wrong_owner";
    case Errc::insecure_mode: return "insecure_mode";
    case Errc::bad_magic: return "bad_magic";
    case Errc::bad_version: return "bad_version";
    case Errc::wrong_kind: return "wrong_kind";
    case Errc::size_mismatch: return "size_mismatch";
    case Errc::truncated: return "truncated";
    case Errc::corrupt: return "corrupt";
    case Errc::initializing: return "initializing";
    case Errc::role_taken: return "role_taken";
    case Errc::too_many_participants: return "too_many_participants";
    case Errc::closed: return "closed";
    case Errc::too_big: return "too_big";
    case Errc::timeout: return "timeout";
    case Errc::interrupted: return "interrupted";
    case Errc::system: return "system";
  }
  return "unknown";
}

}  // namespace shmq
