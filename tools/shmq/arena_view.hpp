// Reading an arena's objects (shm/arena.hpp) for `shmq ls` and `shmq stat`, by pread(2) like
// every other view: nothing is mapped or written, every shared value is checked before use.
//
// Synchronization
//   None with the arena's users: entries are copied while processes allocate and free, so the
//   counts and the objects listed are a guess of one instant (an entry may be torn between its
//   refs and its type; such an entry is shown as it reads, never trusted for an offset).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "inspect.hpp"

namespace shmq::cli {

struct ArenaObject {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  std::string type;            // sync_type_name
  std::string name;            // "" when unnamed
  std::uint32_t bytes = 0;
  std::uint32_t holders = 0;   // participants holding a handle
  // Mutexes: who holds the lock (pid 0: free); whether that holder lives.
  bool locked = false;
  std::uint32_t holder_pid = 0;
  bool holder_alive = false;
};

struct ArenaState {
  bool ok = false;
  std::string error;
  std::uint64_t block_bytes = 0;
  std::uint64_t blocks = 0;
  std::uint64_t in_use = 0;                  // entries with holders
  std::uint64_t allocations = 0;             // since creation
  std::map<std::string, std::uint64_t> by_type;
  std::vector<ArenaObject> objects;          // the first `limit` objects in use
};

ArenaState read_arena_state(const Probe& p, std::size_t limit);

}  // namespace shmq::cli
