// shmq ls / stat: an arena's objects, read with pread.
#include "arena_view.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>

#include "shmq/shm/arena.hpp"
#include "shmq/shm/sync.hpp"

namespace shmq::cli {

namespace {

template <class T>
T field(const std::byte* base, std::size_t offset) {
  T v;
  std::memcpy(&v, base + offset, sizeof v);
  return v;
}

constexpr std::size_t kChunkEntries = 16384;  // entries copied per pread (1 MiB)

// Whether the participant a mutex word names is alive (its slot's generation and kernel lock).
bool holder_alive(const Probe& p, std::uint32_t word) {
  const std::uint32_t i = core::holder_index(word);
  if (i >= kMaxParticipants) return false;
  // relaxed: a snapshot copy.
  const std::uint32_t gen = p.header()->participants[i].generation.load(std::memory_order_relaxed);
  if ((gen & core::kHolderGenerationMask) != core::holder_generation(word)) return false;
  return p.lock_held(kParticipantLockBase + i);
}

}  // namespace

ArenaState read_arena_state(const Probe& p, std::size_t limit) {
  ArenaState s;
  if (!p.sound()) {
    s.error = "the header is not sound";
    return s;
  }
  std::byte body[sizeof(ArenaBodyHeader)];
  if (auto r = p.read_at(kHeaderBytes, body, sizeof body); !r) {
    s.error = r.error().what;
    return s;
  }
  const auto magic = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, magic));
  s.block_bytes = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, block_bytes));
  s.blocks = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, blocks));
  const auto table = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, table_offset));
  const auto data = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, data_offset));
  s.allocations = field<std::uint64_t>(body, offsetof(ArenaBodyHeader, allocations));
  const std::uint64_t body_bytes = p.header()->body_bytes;
  auto bad = [&](const char* what, std::uint64_t v) {
    s.error = fmt::format("corrupt arena at field {}: {}", what, v);
    return s;
  };
  if (magic != kArenaBodyMagic) return bad("magic (arena body)", magic);
  if (s.block_bytes < kMinArenaBlockBytes || s.block_bytes > kMaxArenaBlockBytes ||
      s.block_bytes % kMinArenaBlockBytes != 0)
    return bad("block_bytes", s.block_bytes);
  if (s.blocks == 0 || s.blocks > kMaxArenaBlocks) return bad("blocks", s.blocks);
  if (table != sizeof(ArenaBodyHeader)) return bad("table_offset", table);
  if (data < table + s.blocks * sizeof(ArenaEntry) || data > body_bytes ||
      s.blocks * s.block_bytes > body_bytes - data)
    return bad("data_offset", data);

  std::vector<std::byte> chunk;
  for (std::uint64_t first = 0; first < s.blocks; first += kChunkEntries) {
    const std::uint64_t n = std::min<std::uint64_t>(kChunkEntries, s.blocks - first);
    chunk.resize(n * sizeof(ArenaEntry));
    if (auto r = p.read_at(kHeaderBytes + table + first * sizeof(ArenaEntry), chunk.data(), chunk.size()); !r) {
      s.error = r.error().what;
      return s;
    }
    for (std::uint64_t k = 0; k < n; ++k) {
      const std::byte* e = chunk.data() + k * sizeof(ArenaEntry);
      const auto refs = field<std::uint64_t>(e, offsetof(ArenaEntry, refs));
      if (refs == 0) continue;
      ++s.in_use;
      const auto type = static_cast<SyncType>(field<std::uint32_t>(e, offsetof(ArenaEntry, type)));
      const std::string type_name(sync_type_name(type));
      ++s.by_type[type_name];
      if (s.objects.size() >= limit) continue;
      ArenaObject o;
      o.index = static_cast<std::uint32_t>(first + k);
      o.generation = field<std::uint32_t>(e, offsetof(ArenaEntry, generation));
      o.type = type_name;
      o.bytes = field<std::uint32_t>(e, offsetof(ArenaEntry, bytes));
      o.holders = static_cast<std::uint32_t>(std::popcount(refs));
      const char* name = reinterpret_cast<const char*>(e + offsetof(ArenaEntry, name));
      o.name = std::string(name, strnlen(name, kSyncNameBytes - 1));
      if (type == SyncType::mutex || type == SyncType::recursive_mutex) {
        std::byte m[sizeof(MutexState)];
        if (p.read_at(kHeaderBytes + data + o.index * s.block_bytes, m, sizeof m)) {
          const auto word = field<std::uint32_t>(m, offsetof(MutexState, m));
          o.locked = (word & core::FutexMutex::kLocked) != 0;
          o.holder_pid = o.locked ? field<std::uint32_t>(m, offsetof(MutexState, holder_pid)) : 0;
          o.holder_alive = o.locked && holder_alive(p, word & core::FutexMutex::kHolderMask);
        }
      }
      s.objects.push_back(std::move(o));
    }
  }
  s.ok = true;
  return s;
}

}  // namespace shmq::cli
