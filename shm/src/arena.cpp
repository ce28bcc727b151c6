// Arenas: segment set-up and validation, block allocation and references, the process-wide
// registry (one participant per arena per process), fork and exit handling.
#include "shmq/shm/arena.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shmq/core/futex_barrier.hpp"
#include "shmq/shm/detail/arena_shared.hpp"

namespace shmq {

std::string_view sync_type_name(SyncType t) noexcept {
  switch (t) {
    case SyncType::free: return "free";
    case SyncType::mutex: return "mutex";
    case SyncType::recursive_mutex: return "recursive_mutex";
    case SyncType::semaphore: return "semaphore";
    case SyncType::event: return "event";
    case SyncType::condition: return "condition";
    case SyncType::barrier: return "barrier";
    case SyncType::value: return "value";
  }
  return "unknown";
}

std::string SyncHandle::to_string() const {
  return arena + "@" + std::to_string(block) + "." + std::to_string(generation);
}

Result<SyncHandle> SyncHandle::parse(std::string_view text) {
  const auto at = text.rfind('@');
  const auto dot = text.rfind('.');
  auto bad = [&] {
    std::string what(text);
    what += " is not a sync handle (<arena>@<block>.<generation>)";
    return Error(Errc::invalid_argument, what);
  };
  if (at == std::string_view::npos || dot == std::string_view::npos || dot < at) return bad();
  auto number = [](std::string_view s, std::uint32_t& out) {
    if (s.empty() || s.size() > 10) return false;
    std::uint64_t v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    if (v > UINT32_MAX) return false;
    out = static_cast<std::uint32_t>(v);
    return true;
  };
  SyncHandle h;
  h.arena = std::string(text.substr(0, at));
  if (!valid_segment_name(h.arena) || !number(text.substr(at + 1, dot - at - 1), h.block) ||
      !number(text.substr(dot + 1), h.generation))
    return bad();
  return h;
}

namespace detail {

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPooledMaxBytes = 64 * 1024;  // larger objects get an arena of their own
constexpr std::uint64_t kPoolFirstArenaBytes = 16 * 1024;
constexpr std::uint64_t kPoolMaxArenaBytes = 4 * 1024 * 1024;

// Process-wide state. Leaked on purpose: blocks may be released from static destructors of other
// translation units, after a static of ours would have been destroyed.
struct Registry {
  std::mutex mu;  // guards everything here and ArenaShared's process-local fields
  std::vector<ArenaShared*> live;
  std::unordered_map<std::string, std::weak_ptr<ArenaShared>> by_name;
  std::vector<std::shared_ptr<ArenaShared>> pool[32];  // by log2(block_bytes)
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

void at_fork_prepare() { registry().mu.lock(); }
void at_fork_parent() { registry().mu.unlock(); }
void at_fork_child() {
  Registry& r = registry();
  // Only close(): the child must not keep its parent's participant descriptions open (the
  // parent's death would stay hidden while the child lives); it joins anew on first use.
  for (ArenaShared* a : r.live) a->participant.release();
  // relaxed: the child is single-threaded here.
  g_fork_epoch.fetch_add(1, std::memory_order_relaxed);
  r.mu.unlock();
}

void install_process_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    ::pthread_atfork(&at_fork_prepare, &at_fork_parent, &at_fork_child);
    std::atexit([] { leave_arenas_at_exit(); });
  });
}

std::string quoted(std::string_view name) { return "arena '" + std::string(name) + "'"; }

// Locks the guard with our holder id; a guard taken from a dead holder needs no repair [A1].
void lock_guard(ArenaShared& a, std::uint32_t holder) noexcept {
  Status s;
  do {
    s = a.body->guard.lock(holder, Deadline::never(), a);
  } while (s == Status::interrupted);
  (void)s;  // ok, owner_died (nothing to repair), or corrupt (a hostile word: proceed)
}

struct Guarded {
  Guarded(ArenaShared& a, std::uint32_t holder) : arena(a) { lock_guard(a, holder); }
  ~Guarded() { arena.body->guard.unlock(); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  ArenaShared& arena;
};

struct Layout {
  std::uint64_t table_offset, data_offset, body_bytes;
};
Layout layout_for(std::uint64_t block_bytes, std::uint64_t blocks) {
  Layout l{};
  l.table_offset = sizeof(ArenaBodyHeader);
  l.data_offset = core::align_up(l.table_offset + blocks * sizeof(ArenaEntry), kPage);
  l.body_bytes = l.data_offset + blocks * block_bytes;
  return l;
}

}  // namespace

// ---- ArenaShared ----------------------------------------------------------------------------------

ArenaShared::~ArenaShared() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.live.erase(std::remove(r.live.begin(), r.live.end(), this), r.live.end());
  auto it = r.by_name.find(segment.name());
  if (it != r.by_name.end() && it->second.expired()) r.by_name.erase(it);
}

core::HolderState ArenaShared::holder_state(std::uint32_t h) const noexcept {
  const std::uint32_t i = core::holder_index(h);
  if (i >= kMaxParticipants) return core::HolderState::invalid;
  // relaxed: our own id, stored by this process.
  if (h == holder.load(std::memory_order_relaxed)) return core::HolderState::alive;
  // acquire: [A3] pairs with the release bump in Segment::join().
  const std::uint32_t gen = segment.header().participants[i].generation.load(std::memory_order_acquire);
  if ((gen & core::kHolderGenerationMask) != core::holder_generation(h)) return core::HolderState::dead;
  return segment.participant_alive(i) ? core::HolderState::alive : core::HolderState::dead;
}

std::uint32_t ArenaShared::rejoin() noexcept {
  std::lock_guard<std::mutex> lock(registry().mu);
  return rejoin_locked(nullptr);
}

std::uint32_t ArenaShared::rejoin_locked(std::size_t* lost) noexcept {
  // relaxed: [A3] ours; the registry mutex orders concurrent rejoins in this process.
  const std::uint32_t epoch_now = g_fork_epoch.load(std::memory_order_relaxed);
  if (epoch.load(std::memory_order_relaxed) == epoch_now) return holder.load(std::memory_order_relaxed);
  participant.release();  // closes the inherited description (at_fork_child did already)
  holder.store(kNoHolder, std::memory_order_relaxed);
  epoch.store(epoch_now, std::memory_order_relaxed);
  if (!join_locked()) return kNoHolder;
  const std::uint32_t h = holder.load(std::memory_order_relaxed);
  Guarded g(*this, h);
  for (auto it = local_refs.begin(); it != local_refs.end();) {
    ArenaEntry& e = table[it->first];
    // relaxed: [A1] under the guard.
    const bool same = e.refs.load(std::memory_order_relaxed) != 0 &&
                      e.generation.load(std::memory_order_relaxed) == it->second.generation;
    if (same) {
      e.refs.fetch_or(bit(), std::memory_order_relaxed);
    } else if (lost != nullptr) {
      ++*lost;  // kept: our handles still name it; drop_local_ref ignores them once reused
    }
    ++it;
  }
  return h;
}

bool ArenaShared::join_locked() noexcept {
  auto p = segment.join(Role::both);
  if (!p) return false;
  participant = std::move(*p);
  const std::uint32_t h = core::make_holder(participant.index(), participant.generation());
  // relaxed: [A3] read by this process only (the registry mutex or the owning thread).
  holder.store(h, std::memory_order_relaxed);
  epoch.store(g_fork_epoch.load(std::memory_order_relaxed), std::memory_order_relaxed);
  pid.store(static_cast<std::uint32_t>(::getpid()), std::memory_order_relaxed);
  // Bits of this slot belong to its previous holder, who is gone: clear them.
  Guarded g(*this, h);
  clear_bits_locked(1ull << participant.index());
  return true;
}

// Under the guard: drops `mask`'s bits from every entry, freeing blocks left with none.
void ArenaShared::clear_bits_locked(std::uint64_t mask) noexcept {
  for (std::uint32_t i = 0; i < blocks; ++i) {
    ArenaEntry& e = table[i];
    // relaxed (all): [A1] under the guard.
    const std::uint64_t refs = e.refs.load(std::memory_order_relaxed);
    if ((refs & mask) == 0) continue;
    e.refs.store(refs & ~mask, std::memory_order_relaxed);
    if ((refs & ~mask) == 0) free_locked(e);
  }
}

void ArenaShared::free_locked(ArenaEntry& e) noexcept {
  // relaxed (all): [A1] under the guard.
  e.type.store(static_cast<std::uint32_t>(SyncType::free), std::memory_order_relaxed);
  const std::uint32_t n = body->live.load(std::memory_order_relaxed);
  body->live.store(n == 0 ? 0 : n - 1, std::memory_order_relaxed);
}

// Under the guard: the bits of every participant slot whose holder is dead.
std::uint64_t ArenaShared::dead_mask_locked() const noexcept {
  std::uint64_t mask = 0;
  const std::uint32_t me = core::holder_index(holder.load(std::memory_order_relaxed));  // relaxed: ours
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    if (i == me) continue;
    // acquire: [A3]; a never-taken slot holds no bits.
    if (segment.header().participants[i].generation.load(std::memory_order_acquire) == 0) continue;
    if (!segment.participant_alive(i)) mask |= 1ull << i;
  }
  return mask;
}

std::uint64_t ArenaShared::bit() const noexcept {
  return 1ull << core::holder_index(holder.load(std::memory_order_relaxed));  // relaxed: ours
}

Result<SyncBlock> ArenaShared::allocate(const std::shared_ptr<ArenaShared>& self, SyncType type,
                                        std::uint64_t bytes, std::string_view name) {
  if (bytes > block_bytes)
    return Error(Errc::too_big, std::to_string(bytes) + " bytes do not fit a block of " +
                                    quoted(segment.name()) + " (" + std::to_string(block_bytes) + ")");
  if (name.size() >= kSyncNameBytes)
    return Error(Errc::invalid_argument, "object name '" + std::string(name) + "' is longer than " +
                                             std::to_string(kSyncNameBytes - 1) + " characters");
  std::lock_guard<std::mutex> lock(registry().mu);
  const std::uint32_t h = current_holder_locked();
  if (h == kNoHolder) return no_slot();
  Guarded g(*this, h);
  for (int attempt = 0; attempt < 2; ++attempt) {
    // relaxed: [A1] under the guard.
    const std::uint32_t start = body->rotor.load(std::memory_order_relaxed) % blocks;
    for (std::uint32_t k = 0; k < blocks; ++k) {
      const std::uint32_t i = (start + k) % blocks;
      ArenaEntry& e = table[i];
      if (e.refs.load(std::memory_order_relaxed) != 0) continue;  // relaxed: [A1]
      if (!name.empty() && find_locked(name) >= 0)
        return Error(Errc::exists, quoted(segment.name()) + " already holds an object named '" +
                                       std::string(name) + "'");
      return take_locked(self, i, type, bytes, name);
    }
    if (attempt == 0) clear_bits_locked(dead_mask_locked());
  }
  return Error(Errc::too_big, quoted(segment.name()) + " is full (" + std::to_string(blocks) +
                                  " blocks in use)");
}

// Under the guard: entry i is free; make it ours [A1].
SyncBlock ArenaShared::take_locked(const std::shared_ptr<ArenaShared>& self, std::uint32_t i,
                                   SyncType type, std::uint64_t bytes, std::string_view name) {
  ArenaEntry& e = table[i];
  // relaxed (all): [A1] under the guard; refs is stored last (the commit).
  std::uint32_t gen = e.generation.load(std::memory_order_relaxed) + 1;
  if (gen == 0) gen = 1;
  const bool reused = e.generation.load(std::memory_order_relaxed) != 0;
  e.generation.store(gen, std::memory_order_relaxed);
  e.type.store(static_cast<std::uint32_t>(type), std::memory_order_relaxed);
  e.bytes.store(static_cast<std::uint32_t>(bytes), std::memory_order_relaxed);
  std::memset(e.name, 0, sizeof e.name);
  if (!name.empty()) std::memcpy(e.name, name.data(), name.size());
  std::byte* p = block_data(i);
  if (reused) std::memset(p, 0, block_bytes);  // a fresh segment is zero already
  e.refs.store(bit(), std::memory_order_relaxed);
  body->rotor.store(i + 1, std::memory_order_relaxed);
  body->live.store(body->live.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  body->allocations.fetch_add(1, std::memory_order_relaxed);
  local_refs[i] = LocalRef{1, gen};
  return make_block(self, i, gen, type, static_cast<std::uint32_t>(bytes));
}

SyncBlock ArenaShared::make_block(const std::shared_ptr<ArenaShared>& self, std::uint32_t i,
                                  std::uint32_t gen, SyncType type, std::uint32_t bytes) const {
  SyncBlock b;
  b.arena_ = self;
  b.data_ = block_data(i);
  b.index_ = i;
  b.generation_ = gen;
  b.type_ = type;
  b.bytes_ = bytes;
  return b;
}

// Under the guard: the block named `name`, or -1.
std::int64_t ArenaShared::find_locked(std::string_view name) const noexcept {
  for (std::uint32_t i = 0; i < blocks; ++i) {
    const ArenaEntry& e = table[i];
    if (e.refs.load(std::memory_order_relaxed) == 0) continue;  // relaxed: [A1]
    if (std::memchr(e.name, 0, sizeof e.name) == nullptr) continue;  // not terminated: not a match
    if (name == std::string_view(e.name)) return i;
  }
  return -1;
}

Result<SyncBlock> ArenaShared::open(const std::shared_ptr<ArenaShared>& self, std::uint32_t i,
                                    std::uint32_t gen, SyncType type, std::string_view by_name) {
  std::lock_guard<std::mutex> lock(registry().mu);
  const std::uint32_t h = current_holder_locked();
  if (h == kNoHolder) return no_slot();
  Guarded g(*this, h);
  if (!by_name.empty()) {
    const std::int64_t found = find_locked(by_name);
    if (found < 0)
      return Error(Errc::not_found, quoted(segment.name()) + " holds no object named '" +
                                        std::string(by_name) + "'");
    i = static_cast<std::uint32_t>(found);
    gen = table[i].generation.load(std::memory_order_relaxed);  // relaxed: [A1]
  }
  if (i >= blocks)
    return Error(Errc::not_found, quoted(segment.name()) + " has no block " + std::to_string(i) +
                                      " (it has " + std::to_string(blocks) + ")");
  ArenaEntry& e = table[i];
  // relaxed (all): [A1] under the guard.
  const std::uint64_t refs = e.refs.load(std::memory_order_relaxed);
  if (refs == 0 || e.generation.load(std::memory_order_relaxed) != gen)
    return Error(Errc::not_found, "object " + std::to_string(i) + "." + std::to_string(gen) + " of " +
                                      quoted(segment.name()) +
                                      " no longer exists (every handle of it was dropped)");
  const auto t = static_cast<SyncType>(e.type.load(std::memory_order_relaxed));
  if (t != type)
    return Error(Errc::wrong_kind, "object " + std::to_string(i) + " of " + quoted(segment.name()) +
                                       " is a " + std::string(sync_type_name(t)) + ", not a " +
                                       std::string(sync_type_name(type)));
  const std::uint32_t bytes = e.bytes.load(std::memory_order_relaxed);
  if (bytes > block_bytes)
    return Error(Errc::corrupt, quoted(segment.name()) + " has a corrupt entry " + std::to_string(i));
  e.refs.store(refs | bit(), std::memory_order_relaxed);
  LocalRef& l = local_refs[i];
  l.count += 1;
  l.generation = gen;
  return make_block(self, i, gen, type, bytes);
}

void ArenaShared::add_local_ref(std::uint32_t i, std::uint32_t gen) noexcept {
  std::lock_guard<std::mutex> lock(registry().mu);
  auto it = local_refs.find(i);
  if (it != local_refs.end() && it->second.generation == gen) it->second.count += 1;
}

// A handle of generation `gen` goes; the last one of this process gives up our bit [A1]. A
// handle of an older generation (its block was lost after a fork and allocated again) counts
// for nothing.
void ArenaShared::drop_local_ref(std::uint32_t i, std::uint32_t gen, SyncType type) noexcept {
  std::lock_guard<std::mutex> lock(registry().mu);
  auto it = local_refs.find(i);
  if (it == local_refs.end() || it->second.generation != gen || --it->second.count != 0) return;
  local_refs.erase(it);
  if (left) return;  // at exit: a sweep frees our bits later
  const std::uint32_t h = current_holder_locked();
  if (h == kNoHolder) return;
  Guarded g(*this, h);
  ArenaEntry& e = table[i];
  // relaxed (all): [A1] under the guard.
  if (e.generation.load(std::memory_order_relaxed) != gen) return;  // not ours any more
  if (type == SyncType::barrier) reinterpret_cast<core::FutexBarrier*>(block_data(i))->unregister(h);
  const std::uint64_t refs = e.refs.load(std::memory_order_relaxed);
  e.refs.store(refs & ~bit(), std::memory_order_relaxed);
  if ((refs & ~bit()) == 0 && refs != 0) free_locked(e);
}

std::uint32_t ArenaShared::current_holder_locked() noexcept {
  // relaxed: [A3] ours.
  if (epoch.load(std::memory_order_relaxed) != g_fork_epoch.load(std::memory_order_relaxed))
    return rejoin_locked(nullptr);
  return holder.load(std::memory_order_relaxed);
}

Error ArenaShared::no_slot() const {
  return Error(Errc::too_many_participants,
               quoted(segment.name()) + " already has " + std::to_string(kMaxParticipants) +
                   " live participants (processes using its objects)");
}

Result<std::shared_ptr<ArenaShared>> ArenaShared::attach(Segment seg) {
  install_process_hooks();
  const std::string who = quoted(seg.name().empty() ? "(anonymous)" : seg.name());
  if (seg.body_bytes() < sizeof(ArenaBodyHeader))
    return Error(Errc::corrupt, who + " is too small for an arena header");
  auto* body = reinterpret_cast<ArenaBodyHeader*>(seg.body());
  ArenaBodyHeader h{};
  // Copied once: another process controls these bytes.
  std::memcpy(static_cast<void*>(&h), body, offsetof(ArenaBodyHeader, guard));
  if (h.magic != kArenaBodyMagic) return Error(Errc::corrupt, who + " has a corrupt body (magic)");
  if (h.block_bytes < kMinArenaBlockBytes || h.block_bytes > kMaxArenaBlockBytes ||
      h.block_bytes % kMinArenaBlockBytes != 0)
    return Error(Errc::corrupt,
                 who + " has a corrupt body (block_bytes " + std::to_string(h.block_bytes) + ")");
  if (h.blocks == 0 || h.blocks > kMaxArenaBlocks)
    return Error(Errc::corrupt, who + " has a corrupt body (blocks " + std::to_string(h.blocks) + ")");
  const Layout l = layout_for(h.block_bytes, h.blocks);
  if (h.table_offset != l.table_offset || h.data_offset != l.data_offset || l.body_bytes > seg.body_bytes())
    return Error(Errc::corrupt, who + " has a corrupt body (offsets or sizes disagree with the file)");
  auto a = std::make_shared<ArenaShared>();
  a->body = body;
  a->table = reinterpret_cast<ArenaEntry*>(seg.body() + h.table_offset);
  a->data = seg.body() + h.data_offset;
  a->block_bytes = h.block_bytes;
  a->blocks = static_cast<std::uint32_t>(h.blocks);
  a->segment = std::move(seg);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!a->join_locked()) return a->no_slot();
  r.live.push_back(a.get());
  if (!a->segment.name().empty()) r.by_name[a->segment.name()] = a;
  return a;
}

Result<std::shared_ptr<ArenaShared>> ArenaShared::create(const ArenaConfig& c) {
  if (c.block_bytes < kMinArenaBlockBytes || c.block_bytes > kMaxArenaBlockBytes ||
      c.block_bytes % kMinArenaBlockBytes != 0)
    return Error(Errc::invalid_argument, "block_bytes " + std::to_string(c.block_bytes) +
                                             " is not a multiple of 64 in [64, 1 GiB]");
  if (c.blocks == 0 || c.blocks > kMaxArenaBlocks)
    return Error(Errc::invalid_argument, "blocks " + std::to_string(c.blocks) + " is not in [1, " +
                                             std::to_string(kMaxArenaBlocks) + "]");
  const Layout l = layout_for(c.block_bytes, c.blocks);
  SegmentConfig sc;
  sc.name = c.name;
  sc.kind = SegmentKind::arena;
  sc.params.capacity = c.blocks;
  sc.params.slot_size = c.block_bytes;
  sc.params.directions = 1;
  sc.body_bytes = l.body_bytes;
  auto seg = Segment::create(sc, [&](Segment& s) {
    auto* b = new (s.body()) ArenaBodyHeader;
    b->magic = kArenaBodyMagic;
    b->block_bytes = c.block_bytes;
    b->blocks = c.blocks;
    b->table_offset = l.table_offset;
    b->data_offset = l.data_offset;
    b->guard.init();
    // relaxed (all): before the segment is published ([S1] release).
    b->rotor.store(0, std::memory_order_relaxed);
    b->live.store(0, std::memory_order_relaxed);
    b->allocations.store(0, std::memory_order_relaxed);
    // The table is zero (a fresh file): every entry free, generation 0.
  });
  if (!seg) return std::move(seg).error();
  return attach(std::move(*seg));
}

Result<std::shared_ptr<ArenaShared>> ArenaShared::open_named(std::string_view name, const OpenOptions& o) {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.by_name.find(std::string(name));
    if (it != r.by_name.end())
      if (auto a = it->second.lock()) return a;
  }
  auto seg = Segment::open(name, SegmentKind::arena, o);
  if (!seg) return std::move(seg).error();
  return attach(std::move(*seg));
}

// ---- the default pool ---------------------------------------------------------------------------

Result<SyncBlock> allocate_pooled(SyncType type, std::uint64_t bytes) {
  if (bytes > kPooledMaxBytes) {
    const std::uint64_t block = core::align_up(bytes == 0 ? 1 : bytes, kPage);
    auto a = ArenaShared::create({.name = "", .block_bytes = block, .blocks = 1});
    if (!a) return std::move(a).error();
    return (*a)->allocate(*a, type, bytes, {});
  }
  std::uint32_t cls = 6;  // 64 bytes
  while ((1ull << cls) < bytes) ++cls;
  std::vector<std::shared_ptr<ArenaShared>> arenas;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    arenas = r.pool[cls];
  }
  for (auto& a : arenas) {
    // relaxed: a guess that skips full arenas without their guard.
    if (a->body->live.load(std::memory_order_relaxed) >= a->blocks) continue;
    auto b = a->allocate(a, type, bytes, {});
    if (b || b.error().code != Errc::too_big) return b;
  }
  const std::uint64_t block = 1ull << cls;
  std::uint64_t arena_bytes = kPoolFirstArenaBytes << std::min<std::size_t>(arenas.size(), 20);
  arena_bytes = std::min(std::max(arena_bytes, block * 4), kPoolMaxArenaBytes);
  auto a = ArenaShared::create({.name = "", .block_bytes = block,
                                .blocks = static_cast<std::uint32_t>(arena_bytes / block)});
  if (!a) return std::move(a).error();
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.pool[cls].push_back(*a);
  }
  return (*a)->allocate(*a, type, bytes, {});
}

}  // namespace detail

// ---- SyncBlock -------------------------------------------------------------------------------

SyncBlock::SyncBlock(SyncBlock&& o) noexcept
    : arena_(std::move(o.arena_)),
      data_(std::exchange(o.data_, nullptr)),
      index_(o.index_),
      generation_(o.generation_),
      bytes_(o.bytes_),
      type_(o.type_) {}

SyncBlock& SyncBlock::operator=(SyncBlock&& o) noexcept {
  if (this != &o) {
    reset();
    arena_ = std::move(o.arena_);
    data_ = std::exchange(o.data_, nullptr);
    index_ = o.index_;
    generation_ = o.generation_;
    bytes_ = o.bytes_;
    type_ = o.type_;
  }
  return *this;
}

SyncBlock::~SyncBlock() { reset(); }

void SyncBlock::reset() noexcept {
  if (!arena_) return;
  arena_->drop_local_ref(index_, generation_, type_);
  arena_.reset();
  data_ = nullptr;
}

SyncHandle SyncBlock::handle() const {
  return SyncHandle{arena_ ? arena_->segment.name() : std::string(), index_, generation_};
}

SyncBlock SyncBlock::share() const {
  SyncBlock b;
  if (!arena_) return b;
  arena_->add_local_ref(index_, generation_);
  b.arena_ = arena_;
  b.data_ = data_;
  b.index_ = index_;
  b.generation_ = generation_;
  b.bytes_ = bytes_;
  b.type_ = type_;
  return b;
}

std::uint32_t SyncBlock::holder() const noexcept { return arena_ ? arena_->current_holder() : kNoHolder; }

const core::HolderRegistry& SyncBlock::registry() const noexcept { return *arena_; }

// ---- Arena -------------------------------------------------------------------------------------

Result<Arena> Arena::create(const ArenaConfig& config) {
  auto a = detail::ArenaShared::create(config);
  if (!a) return std::move(a).error();
  return Arena(std::move(*a));
}

Result<Arena> Arena::open(std::string_view name, const OpenOptions& options) {
  auto a = detail::ArenaShared::open_named(name, options);
  if (!a) return std::move(a).error();
  return Arena(std::move(*a));
}

Result<void> Arena::unlink(std::string_view name) { return Segment::unlink(name); }

Result<SyncBlock> Arena::allocate_anywhere(SyncType type, std::uint64_t bytes) {
  return detail::allocate_pooled(type, bytes);
}

Result<SyncBlock> Arena::open_block(const SyncHandle& h, SyncType type, const OpenOptions& options) {
  auto a = detail::ArenaShared::open_named(h.arena, options);
  if (!a) return std::move(a).error();
  return (*a)->open(*a, h.block, h.generation, type, {});
}

Result<SyncBlock> Arena::allocate(SyncType type, std::uint64_t bytes, std::string_view name) {
  return shared_->allocate(shared_, type, bytes, name);
}

Result<SyncBlock> Arena::find(std::string_view name, SyncType type) {
  if (name.empty()) return Error(Errc::invalid_argument, "an object name is empty");
  return shared_->open(shared_, 0, 0, type, name);
}

Result<SyncBlock> Arena::open_block(std::uint32_t block, std::uint32_t generation, SyncType type) {
  return shared_->open(shared_, block, generation, type, {});
}

const std::string& Arena::name() const noexcept { return shared_->segment.name(); }
std::uint64_t Arena::block_bytes() const noexcept { return shared_->block_bytes; }
std::uint32_t Arena::blocks() const noexcept { return shared_->blocks; }
std::uint32_t Arena::live_guess() const noexcept {
  return shared_->body->live.load(std::memory_order_relaxed);  // relaxed: a guess
}
const Segment& Arena::segment() const noexcept { return shared_->segment; }

// ---- process-wide ------------------------------------------------------------------------------

std::size_t rejoin_arenas_after_fork() {
  detail::Registry& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::size_t lost = 0;
  for (detail::ArenaShared* a : r.live) a->rejoin_locked(&lost);
  return lost;
}

void leave_arenas_at_exit() noexcept {
  detail::Registry& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (detail::ArenaShared* a : r.live) {
    if (a->left) continue;
    // relaxed: [A3] ours. An arena not used since a fork registered nothing in this process.
    const bool joined = a->epoch.load(std::memory_order_relaxed) ==
                        detail::g_fork_epoch.load(std::memory_order_relaxed);
    const std::uint32_t h = joined ? a->holder.load(std::memory_order_relaxed) : kNoHolder;
    if (h != kNoHolder) {
      detail::Guarded g(*a, h);
      for (const auto& [i, ref] : a->local_refs) {
        const ArenaEntry& e = a->table[i];
        // relaxed: [A1] under the guard.
        if (e.type.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(SyncType::barrier))
          reinterpret_cast<core::FutexBarrier*>(a->block_data(i))->unregister(h);
      }
    }
    a->left = true;
    a->segment.leave_mapped();
  }
}

}  // namespace shmq
