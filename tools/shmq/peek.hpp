// Peeking at a channel's waiting messages without consuming them, for `shmq dump`, `ls` and
// `stat` (depth).
//
// Nothing is mapped and nothing is written: ring control words, record headers and payloads are
// copied with pread(2) and checked before use, like every other shared value. Layouts come from
// the channels' own headers (core/spsc_ring.hpp, core/mpmc_ring.hpp), read-only.
//
// Synchronization
//   None with the channel: the reader may consume and the writer may overwrite while we look.
//   The guard is positional. Pipe: a record at position p stays intact while head <= p (the
//   writer reuses bytes only below head); after copying a record we re-read head and drop the
//   record (and stop) if head passed it. Queue: a slot of position p stays intact while its seq
//   is p + 1; after copying it we re-read seq and drop it (and stop) if it changed. The snapshot
//   is therefore a consistent prefix of what was waiting, never torn bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "inspect.hpp"

namespace shmq::cli {

// Depth and flags of one direction, read from the ring itself (exact at the instant read).
struct RingState {
  bool ok = false;
  std::string error;              // why not ok (corrupt ring words)
  std::uint64_t depth_bytes = 0;  // pipe: bytes waiting (record headers included)
  std::uint64_t depth_messages = 0;  // queue: messages waiting or being written
  bool has_message_depth = false;
  bool writer_closed = false, reader_closed = false;  // pipe
  bool closed = false;                               // queue
  std::uint64_t arena_chunks = 0, arena_chunk_bytes = 0, arena_in_use = 0;  // queue
  std::uint64_t head = 0, tail = 0;                   // pipe positions / queue dequeue, enqueue
  std::uint64_t read = 0;  // pipe: how far the reader has read (>= head: space not yet returned)
};

RingState read_ring_state(const Probe& p, unsigned direction);

struct PeekedMessage {
  std::uint64_t position = 0;
  std::uint16_t kind = 0;
  std::uint64_t size = 0;          // the whole message
  std::vector<std::byte> bytes;    // its first bytes (at most the keep limit)
  bool chunked = false;            // pipe: streamed in chunks (larger than half the ring)
  bool complete = true;            // a chunked message whose last chunk is not yet written: false
  bool held = false;               // pipe: delivered to the reader, not yet released
  bool spilled = false;            // queue: the payload lives in a side allocation
  std::string note;
};

struct PeekResult {
  std::vector<PeekedMessage> messages;
  std::string stopped;  // why the walk stopped before `count` (empty: nothing more waiting)
  bool corrupt = false; // stopped on a violated invariant
};

// keep: bytes of each payload to copy (the rest is only measured).
PeekResult peek(const Probe& p, unsigned direction, std::size_t count, std::size_t keep);

}  // namespace shmq::cli
