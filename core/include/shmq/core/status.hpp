// Status: the outcome of a hot-path call (send, recv, claim) on any channel. Full and empty are
// outcomes, not errors; cold-path failures use Result<T> and Errc (result.hpp) instead.
//
// Batches (send_many, recv_many and their try_ forms, on the rings, Pipe and Queue alike) return
// how many messages they moved and report through an optional last argument `Status* why`: ok
// when a receive delivered at least one message (it takes "up to max") or a send sent them all;
// otherwise the outcome that stopped the batch.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmq {

enum class Status : std::uint8_t {
  ok,
  full,         // try_*: no room now (a reader lags)
  empty,        // try_*: nothing to read now
  too_big,      // the message can never fit this way (try_send larger than the ring, claim > max_claim)
  closed,       // the peer closed or died (and, for a reader, everything committed was drained)
  timeout,      // the deadline passed first
  interrupted,  // a futex sleep returned EINTR; the caller may check signals and retry
  corrupt,      // a shared index, length or record violated an invariant (see Stats::corrupt_events)
  owner_died,   // a lock was taken over from a holder that died holding it (the caller holds it now)
  broken,       // a barrier broke: a party died, timed out, aborted, or reset it
};

constexpr std::string_view status_name(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::full: return "full";
    case Status::empty: return "empty";
    case Status::too_big: return "too_big";
    case Status::closed: return "closed";
    case Status::timeout: return "timeout";
    case Status::interrupted: return "interrupted";
    case Status::corrupt: return "corrupt";
    case Status::owner_died: return "owner_died";
    case Status::broken: return "broken";
  }
  return "unknown";
}

}  // namespace shmq
