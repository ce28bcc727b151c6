// The process-local state of one arena (internal to shm: arena.cpp and the sync objects).
// One per arena per process, shared by every handle of the process (std::shared_ptr).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>

#include "shmq/core/futex_mutex.hpp"
#include "shmq/shm/arena.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq::detail {

// Bumped in a forked child (pthread_atfork); an arena joined under another epoch joins again.
inline std::atomic<std::uint32_t> g_fork_epoch{0};

struct ArenaShared final : core::HolderRegistry {
  ArenaShared() = default;
  ArenaShared(const ArenaShared&) = delete;
  ArenaShared& operator=(const ArenaShared&) = delete;
  ~ArenaShared();

  static Result<std::shared_ptr<ArenaShared>> create(const ArenaConfig& c);
  static Result<std::shared_ptr<ArenaShared>> open_named(std::string_view name, const OpenOptions& o);
  static Result<std::shared_ptr<ArenaShared>> attach(Segment seg);

  // This process's holder id (joins again after a fork); kNoHolder if it cannot join.
  std::uint32_t current_holder() noexcept {
    // relaxed: [A3] our own fields; g_fork_epoch changes only in a single-threaded child.
    if (epoch.load(std::memory_order_relaxed) != g_fork_epoch.load(std::memory_order_relaxed))
        [[unlikely]]
      return rejoin();
    return holder.load(std::memory_order_relaxed);
  }
  core::HolderState holder_state(std::uint32_t h) const noexcept override;

  Result<SyncBlock> allocate(const std::shared_ptr<ArenaShared>& self, SyncType type,
                             std::uint64_t bytes, std::string_view name);
  Result<SyncBlock> open(const std::shared_ptr<ArenaShared>& self, std::uint32_t block,
                         std::uint32_t generation, SyncType type, std::string_view by_name);
  void add_local_ref(std::uint32_t block, std::uint32_t generation) noexcept;
  void drop_local_ref(std::uint32_t block, std::uint32_t generation, SyncType type) noexcept;
  std::byte* block_data(std::uint32_t i) const noexcept { return data + std::uint64_t{i} * block_bytes; }

  // ---- with the registry mutex held
  std::uint32_t current_holder_locked() noexcept;
  std::uint32_t rejoin_locked(std::size_t* lost) noexcept;
  bool join_locked() noexcept;
  Error no_slot() const;

  // ---- with the arena guard held
  void clear_bits_locked(std::uint64_t mask) noexcept;
  void free_locked(ArenaEntry& e) noexcept;
  std::uint64_t dead_mask_locked() const noexcept;
  std::int64_t find_locked(std::string_view name) const noexcept;
  SyncBlock take_locked(const std::shared_ptr<ArenaShared>& self, std::uint32_t i, SyncType type,
                        std::uint64_t bytes, std::string_view name);
  SyncBlock make_block(const std::shared_ptr<ArenaShared>& self, std::uint32_t i,
                       std::uint32_t generation, SyncType type, std::uint32_t bytes) const;
  std::uint64_t bit() const noexcept;

  std::uint32_t rejoin() noexcept;

  Segment segment;
  ArenaBodyHeader* body = nullptr;
  ArenaEntry* table = nullptr;
  std::byte* data = nullptr;
  std::uint64_t block_bytes = 0;
  std::uint32_t blocks = 0;

  // ---- process-local (the registry mutex guards all but the two atomics' hot-path reads)
  struct LocalRef {
    std::uint32_t count = 0;
    std::uint32_t generation = 0;
  };
  Participant participant;
  std::atomic<std::uint32_t> holder{kNoHolder};
  std::atomic<std::uint32_t> epoch{0};
  std::atomic<std::uint32_t> pid{0};  // the process that joined (display: a lock's holder pid)
  std::unordered_map<std::uint32_t, LocalRef> local_refs;  // block -> this process's handles
  bool left = false;  // leave_arenas_at_exit() ran
};

}  // namespace shmq::detail
