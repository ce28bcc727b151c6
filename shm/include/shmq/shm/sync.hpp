// Synchronization objects between processes, each a block of a shared arena (arena.hpp):
// Mutex, RecursiveMutex, Semaphore, Event, Condition, Barrier. None of them can be wedged by a
// process that dies (kill -9 included):
//   - a mutex records its holder; when the holder dies, the next acquirer gets the lock with
//     Status::owner_died (at once if the death is seen before it sleeps, else within
//     core::kHolderCheckSlice), and can repair what the lock protects;
//   - a semaphore records the units each process holds and returns a dead one's units;
//   - a barrier breaks (Status::broken for every waiter) when one of its parties dies;
//   - a condition's mutex follows the mutex rules; an event has no owner.
//
//   auto m = shmq::Mutex::create();                     // in this process's default arenas
//   std::string h = m->handle().to_string();            // e.g. "anon-3f..@12.1", to another process
//   auto same = shmq::Mutex::open(*shmq::SyncHandle::parse(h));
//   if (same->lock() == shmq::Status::owner_died) repair();
//   ...; same->unlock();
//
// Objects live while some process holds a handle of them (arena.hpp); named arenas let
// unrelated processes find objects by name: Mutex::create(arena, "db"), Mutex::open(arena, "db").
// The algorithms and their Synchronization blocks are in core/futex_*.hpp: lock and acquire are
// acquires, unlock and release are releases, set() happens before a wait that sees it, and a
// barrier's arrivals happen before the returns of its round.
//
// Threads: every object may be used by any number of threads of any number of processes; a
// process is one holder (its threads share its participant slot), so a RecursiveMutex also
// records the holding thread. Fork: a forked child is a new holder (arena.hpp); a lock its
// parent held stays held by the parent.
// Hot paths are noexcept and allocation-free; owner_died and the pid of the dead holder come
// with the lock that recovered it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string_view>

#include "shmq/core/futex_barrier.hpp"
#include "shmq/core/futex_condition.hpp"
#include "shmq/core/futex_event.hpp"
#include "shmq/core/futex_mutex.hpp"
#include "shmq/core/futex_semaphore.hpp"
#include "shmq/core/result.hpp"
#include "shmq/core/status.hpp"
#include "shmq/core/wait.hpp"
#include "shmq/shm/arena.hpp"
#include "shmq/shm/detail/arena_shared.hpp"

namespace shmq {

// ---- block layouts (what each SyncType's block holds) -------------------------------------------

struct MutexState {  // SyncType::mutex and SyncType::recursive_mutex
  core::RecursiveFutexMutex m;            // a plain Mutex uses m.mutex only
  std::atomic<std::uint32_t> holder_pid;  // the holder's pid (display, owner_died reports)
};
static_assert(sizeof(MutexState) == 16);

struct SemaphoreState {  // SyncType::semaphore
  core::FutexSemaphore sem;
};

struct EventState {  // SyncType::event
  core::FutexEvent event;
};

struct ConditionState {  // SyncType::condition
  core::FutexCondition cond;
};

struct BarrierState {  // SyncType::barrier
  core::FutexBarrier barrier;
};

// Python's Value(lock=True) keeps its payload after a recursive mutex in one block.
inline constexpr std::size_t kValuePayloadOffset = sizeof(MutexState);

// The calling thread's id as the recursive mutex records it (gettid, cached per thread).
namespace detail {
std::uint32_t gettid_now() noexcept;
inline thread_local std::uint32_t t_thread_id = 0;
}  // namespace detail
inline std::uint32_t current_thread_id() noexcept {
  if (detail::t_thread_id == 0) [[unlikely]]
    detail::t_thread_id = detail::gettid_now();
  return detail::t_thread_id;
}

namespace detail {

struct SyncAccess;

// What every object shares: its block and the arena behind it.
class SyncObject {
 public:
  bool valid() const noexcept { return block_.valid(); }
  SyncHandle handle() const { return block_.handle(); }
  const SyncBlock& block() const noexcept { return block_; }
  // This process's holder id in the object's arena (kNoHolder: it could not join), and the
  // registry that knows the others: for bindings that drive the core algorithms themselves.
  std::uint32_t holder() const noexcept { return block_.arena()->current_holder(); }
  const core::HolderRegistry& reg() const noexcept { return *block_.arena(); }
  // This process's pid as the arena knows it (valid after holder()).
  std::uint32_t own_pid() const noexcept {
    return block_.arena()->pid.load(std::memory_order_relaxed);  // relaxed: ours
  }

 protected:
  SyncObject() = default;
  explicit SyncObject(SyncBlock b) noexcept : block_(std::move(b)) {}
  // The pid of the dead holder `dead` (0 if unknown).
  std::uint32_t pid_of(std::uint32_t dead) const noexcept;
  template <class T>
  T* state() const noexcept {
    return reinterpret_cast<T*>(block_.data());
  }
  static Result<SyncBlock> make(SyncType t, std::uint64_t bytes, Arena* arena, std::string_view name);
  static Result<SyncBlock> find(SyncType t, Arena& arena, std::string_view name);
  SyncBlock block_;
};

}  // namespace detail

// ---- Mutex -------------------------------------------------------------------------------------

class Mutex : public detail::SyncObject {
 public:
  static Result<Mutex> create();
  static Result<Mutex> create(Arena& arena, std::string_view name = {});
  static Result<Mutex> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<Mutex> open(Arena& arena, std::string_view name);
  // Over a block that holds a MutexState at `offset` (Python: a Value's lock); `init` makes a
  // fresh (unlocked) one there first.
  static Result<Mutex> from_block(SyncBlock b, std::size_t offset = 0, bool init = false);
  Mutex() = default;

  // ok | owner_died (ours now; its holder died holding it: repair what it protects) | timeout |
  // interrupted | corrupt | closed (this process could not join the arena). `spin`: pause
  // rounds before sleeping.
  Status lock(Deadline d = Deadline::never(),
              std::uint32_t spin = core::Backoff::kDefaultBudget) noexcept {
    if (lock_if_free()) [[likely]]
      return Status::ok;
    return lock_slow(d, spin);
  }
  Status try_lock() noexcept { return lock(Deadline::now()); }  // one CAS; dead holder check if held
  bool lock_if_free() noexcept {  // one CAS and nothing else (no dead holder check)
    const std::uint32_t h = holder();
    if (h == kNoHolder || !m_->m.mutex.try_lock(h)) return false;
    SHMQ_KILL_POINT(core::KillPoint::lock_acquired);
    m_->holder_pid.store(own_pid(), std::memory_order_relaxed);  // relaxed: display
    return true;
  }
  bool unlock() noexcept {  // false: this process does not hold it
    if (!m_->m.mutex.held_by(holder())) return false;
    m_->m.mutex.unlock();
    return true;
  }
  bool unlock_any() noexcept;  // releases it whoever holds it (multiprocessing.Lock); false if free
  bool locked_guess() const noexcept;
  bool held_by_this_process() const noexcept;
  std::uint32_t holder_pid_guess() const noexcept;
  // The pid of the holder whose death the calling thread's last owner_died reported (0: unknown).
  static std::uint32_t last_dead_pid() noexcept;

  core::FutexMutex& word() const noexcept { return m_->m.mutex; }

 private:
  friend struct detail::SyncAccess;
  friend class Condition;
  Mutex(SyncBlock b, MutexState* m) noexcept : SyncObject(std::move(b)), m_(m) {}
  Status lock_slow(Deadline d, std::uint32_t spin) noexcept;
  Status after_lock(Status s, std::uint32_t dead) noexcept;
  MutexState* m_ = nullptr;
};

// ---- RecursiveMutex ----------------------------------------------------------------------------

class RecursiveMutex : public detail::SyncObject {
 public:
  static Result<RecursiveMutex> create();
  static Result<RecursiveMutex> create(Arena& arena, std::string_view name = {});
  static Result<RecursiveMutex> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<RecursiveMutex> open(Arena& arena, std::string_view name);
  static Result<RecursiveMutex> from_block(SyncBlock b, std::size_t offset = 0, bool init = false);
  RecursiveMutex() = default;

  // As Mutex::lock; a thread that holds it counts one more level.
  Status lock(Deadline d = Deadline::never(),
              std::uint32_t spin = core::Backoff::kDefaultBudget) noexcept {
    if (lock_if_free()) [[likely]]
      return Status::ok;
    return lock_slow(d, spin);
  }
  Status try_lock() noexcept { return lock(Deadline::now()); }
  bool lock_if_free() noexcept {  // one more level, or one CAS (no dead holder check)
    const std::uint32_t h = holder();
    if (h == kNoHolder) return false;
    core::RecursiveFutexMutex& r = m_->m;
    const std::uint32_t thread = current_thread_id();
    if (r.owned_by(h, thread)) {
      const std::uint32_t n = r.depth.load(std::memory_order_relaxed);  // relaxed: holder only
      if (n == 0 || n == UINT32_MAX) return false;  // corrupt: the slow path reports it
      r.depth.store(n + 1, std::memory_order_relaxed);
      return true;
    }
    if (!r.mutex.try_lock(h)) return false;
    SHMQ_KILL_POINT(core::KillPoint::lock_acquired);
    r.adopt(thread, 1);
    m_->holder_pid.store(own_pid(), std::memory_order_relaxed);  // relaxed: display
    return true;
  }
  bool unlock() noexcept {  // false: the calling thread does not hold it
    return m_->m.unlock(holder(), current_thread_id());
  }
  bool held_by_this_thread() const noexcept;
  std::uint32_t depth_guess() const noexcept;  // levels held by the calling thread (0: none)
  std::uint32_t holder_pid_guess() const noexcept;

  core::RecursiveFutexMutex& word() const noexcept { return m_->m; }

 private:
  friend struct detail::SyncAccess;
  friend class Condition;
  RecursiveMutex(SyncBlock b, MutexState* m) noexcept : SyncObject(std::move(b)), m_(m) {}
  Status lock_slow(Deadline d, std::uint32_t spin) noexcept;
  MutexState* m_ = nullptr;
};

// ---- Semaphore ---------------------------------------------------------------------------------

struct SemaphoreConfig {
  std::uint32_t value = 1;
  std::uint32_t bound = core::kSemaphoreMax;  // BoundedSemaphore: == value
  bool track_units = true;  // return a dead holder's units (off for signalling semaphores)
};

class Semaphore : public detail::SyncObject {
 public:
  static Result<Semaphore> create(const SemaphoreConfig& c);
  static Result<Semaphore> create(Arena& arena, const SemaphoreConfig& c, std::string_view name = {});
  static Result<Semaphore> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<Semaphore> open(Arena& arena, std::string_view name);
  // Over a block of this type that another handle created (a binding's shared block).
  static Result<Semaphore> from_block(SyncBlock b);
  Semaphore() = default;

  Status acquire(Deadline d = Deadline::never()) noexcept;  // ok | timeout | interrupted | corrupt | closed
  Status try_acquire() noexcept { return acquire(Deadline::now()); }
  Status release(std::uint32_t n = 1) noexcept;  // ok | full (past the bound; no change) | corrupt | closed
  std::uint32_t value_guess() const noexcept { return s_->sem.value_guess(); }
  core::FutexSemaphore& core() const noexcept { return s_->sem; }
  std::uint32_t bound() const noexcept { return s_->sem.bound(); }
  std::uint32_t units_held_guess() const noexcept;  // by this process

 private:
  friend struct detail::SyncAccess;
  Semaphore(SyncBlock b, SemaphoreState* s) noexcept : SyncObject(std::move(b)), s_(s) {}
  SemaphoreState* s_ = nullptr;
};

// ---- Event -------------------------------------------------------------------------------------

class Event : public detail::SyncObject {
 public:
  static Result<Event> create();
  static Result<Event> create(Arena& arena, std::string_view name = {});
  static Result<Event> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<Event> open(Arena& arena, std::string_view name);
  // Over a block of this type that another handle created (a binding's shared block).
  static Result<Event> from_block(SyncBlock b);
  Event() = default;

  void set() noexcept { e_->event.set(); }
  void clear() noexcept { e_->event.clear(); }
  bool is_set() const noexcept { return e_->event.is_set(); }
  // ok | timeout | interrupted
  Status wait(Deadline d = Deadline::never()) noexcept { return e_->event.wait(d); }
  core::FutexEvent& core() const noexcept { return e_->event; }

 private:
  friend struct detail::SyncAccess;
  Event(SyncBlock b, EventState* e) noexcept : SyncObject(std::move(b)), e_(e) {}
  EventState* e_ = nullptr;
};

// ---- Condition ---------------------------------------------------------------------------------

struct ConditionWait {
  Status status;     // ok (notified) | timeout | interrupted (the mutex is held again in these
                     // three) | full (kConditionWaiters waiters already; the mutex stays held) |
                     // corrupt | closed (the mutex may not be held)
  bool owner_died;   // the mutex was taken back from a holder that died (repair its state)
};

class Condition : public detail::SyncObject {
 public:
  static Result<Condition> create();
  static Result<Condition> create(Arena& arena, std::string_view name = {});
  static Result<Condition> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<Condition> open(Arena& arena, std::string_view name);
  // Over a block of this type that another handle created (a binding's shared block).
  static Result<Condition> from_block(SyncBlock b);
  Condition() = default;

  // The caller holds `m` and holds it again when wait returns (see ConditionWait).
  ConditionWait wait(Mutex& m, Deadline d = Deadline::never()) noexcept;
  ConditionWait wait(RecursiveMutex& m, Deadline d = Deadline::never()) noexcept;
  // The caller holds the mutex the waiters use. Return how many were woken.
  std::uint32_t notify(std::uint32_t n = 1) noexcept;
  std::uint32_t notify_all() noexcept { return notify(core::kConditionWaiters); }
  std::uint32_t waiting_guess() const noexcept { return c_->cond.waiting_guess(); }

  // The pieces of wait(), for callers that release and retake the mutex themselves (a binding
  // that checks for signals between sleeps): with the mutex held, enter() (-1: full); mutex
  // released, await() until it returns other than timeout/interrupted or the caller gives up;
  // mutex held again, leave() (whether it was notified).
  int enter() noexcept;
  Status await(int record, Deadline d) noexcept { return c_->cond.await(record, d); }
  bool leave(int record) noexcept { return c_->cond.leave_wait(record); }

 private:
  friend struct detail::SyncAccess;
  Condition(SyncBlock b, ConditionState* c) noexcept : SyncObject(std::move(b)), c_(c) {}
  template <class Unlock, class Relock>
  ConditionWait wait_with(Deadline d, Unlock&& unlock, Relock&& relock) noexcept;
  ConditionState* c_ = nullptr;
};

// ---- Barrier -----------------------------------------------------------------------------------

class Barrier : public detail::SyncObject {
 public:
  static Result<Barrier> create(std::uint32_t parties);
  static Result<Barrier> create(Arena& arena, std::uint32_t parties, std::string_view name = {});
  static Result<Barrier> open(const SyncHandle& h, const OpenOptions& o = {});
  static Result<Barrier> open(Arena& arena, std::string_view name);
  // Over a block of this type that another handle created (a binding's shared block).
  static Result<Barrier> from_block(SyncBlock b);
  Barrier() = default;

  // ok (index: arrival order, parties - 1 for the last) | broken | timeout | interrupted |
  // corrupt | closed. `action` runs in the last arrival before the others are released; false
  // breaks the barrier (that caller gets broken).
  core::BarrierResult wait(Deadline d = Deadline::never(),
                           const std::function<bool()>& action = {}) noexcept;
  void abort() noexcept { b_->barrier.abort(); }
  void reset() noexcept { b_->barrier.reset(); }
  bool broken() const noexcept { return b_->barrier.broken(); }
  std::uint32_t parties() const noexcept {
    return b_->barrier.parties.load(std::memory_order_relaxed);  // relaxed: immutable
  }
  std::uint32_t waiting_guess() const noexcept { return b_->barrier.waiting_guess(); }
  core::FutexBarrier& core() const noexcept { return b_->barrier; }

 private:
  friend struct detail::SyncAccess;
  Barrier(SyncBlock b, BarrierState* s) noexcept : SyncObject(std::move(b)), b_(s) {}
  BarrierState* b_ = nullptr;
};

}  // namespace shmq
