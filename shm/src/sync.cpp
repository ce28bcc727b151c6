// Synchronization objects: creation and opening in arenas, holder ids, owner_died reporting.
// The algorithms live in core/futex_*.hpp.
#include "shmq/shm/sync.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <new>
#include <string>

namespace shmq {

std::uint32_t detail::gettid_now() noexcept { return static_cast<std::uint32_t>(::syscall(SYS_gettid)); }

namespace {
thread_local std::uint32_t t_last_dead_pid = 0;
}  // namespace

namespace detail {

std::uint32_t SyncObject::pid_of(std::uint32_t dead) const noexcept {
  const ArenaShared* a = block_.arena();
  const std::uint32_t i = core::holder_index(dead);
  if (i >= kMaxParticipants) return 0;
  const ParticipantSlot& slot = a->segment.header().participants[i];
  // acquire: [A3] the slot's generation tells whether its pid is still the dead holder's.
  if ((slot.generation.load(std::memory_order_acquire) & core::kHolderGenerationMask) !=
      core::holder_generation(dead))
    return 0;
  return slot.pid.load(std::memory_order_relaxed);  // relaxed: a display field
}

Result<SyncBlock> SyncObject::make(SyncType t, std::uint64_t bytes, Arena* arena, std::string_view name) {
  if (arena == nullptr) return Arena::allocate_anywhere(t, bytes);
  return arena->allocate(t, bytes, name);
}

Result<SyncBlock> SyncObject::find(SyncType t, Arena& arena, std::string_view name) {
  return arena.find(name, t);
}

// Builds objects over blocks (their constructors are private).
struct SyncAccess {
  // T over state S at `offset` of the block; `init(S&)` first when given.
  template <class T, class S, class Init>
  static Result<T> wrap(Result<SyncBlock> b, std::size_t offset, Init&& init) {
    if (!b) return std::move(b).error();
    if (offset % alignof(S) != 0 || offset + sizeof(S) > b->bytes())
      return Error(Errc::invalid_argument, "offset " + std::to_string(offset) + " leaves no room for a " +
                                               std::to_string(sizeof(S)) + "-byte object in its block");
    auto* s = reinterpret_cast<S*>(b->data() + offset);
    init(s);
    return T(std::move(*b), s);
  }
  template <class T, class S>
  static Result<T> wrap(Result<SyncBlock> b, std::size_t offset = 0) {
    return wrap<T, S>(std::move(b), offset, [](S*) {});
  }
};

}  // namespace detail

using detail::SyncAccess;

// ---- Mutex and RecursiveMutex --------------------------------------------------------------------

namespace {

// relaxed (holder_pid): before the handle is shared ([A2]); afterwards a display field.
void init_mutex(MutexState* m) noexcept {
  new (m) MutexState;
  m->m.init();
  m->holder_pid.store(0, std::memory_order_relaxed);
}

}  // namespace

Result<Mutex> Mutex::create() {
  return SyncAccess::wrap<Mutex, MutexState>(make(SyncType::mutex, sizeof(MutexState), nullptr, {}), 0,
                                             init_mutex);
}
Result<Mutex> Mutex::create(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Mutex, MutexState>(make(SyncType::mutex, sizeof(MutexState), &arena, name), 0,
                                             init_mutex);
}
Result<Mutex> Mutex::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<Mutex, MutexState>(Arena::open_block(h, SyncType::mutex, o));
}
Result<Mutex> Mutex::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Mutex, MutexState>(find(SyncType::mutex, arena, name));
}
Result<Mutex> Mutex::from_block(SyncBlock b, std::size_t offset, bool init) {
  if (init) return SyncAccess::wrap<Mutex, MutexState>(std::move(b), offset, init_mutex);
  return SyncAccess::wrap<Mutex, MutexState>(std::move(b), offset);
}

Status Mutex::after_lock(Status s, std::uint32_t dead) noexcept {
  if (s != Status::ok && s != Status::owner_died) return s;
  if (s == Status::owner_died) {
    const std::uint32_t pid = pid_of(dead);
    // relaxed: the dead holder's last display store (see MutexState).
    t_last_dead_pid = pid != 0 ? pid : m_->holder_pid.load(std::memory_order_relaxed);
  }
  m_->holder_pid.store(own_pid(), std::memory_order_relaxed);  // relaxed: display
  return s;
}

Status Mutex::lock_slow(Deadline d, std::uint32_t spin) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return Status::closed;
  std::uint32_t dead = 0;
  return after_lock(m_->m.mutex.lock(h, d, reg(), spin, &dead), dead);
}

bool Mutex::unlock_any() noexcept { return m_->m.mutex.unlock() != 0; }

bool Mutex::locked_guess() const noexcept {
  return (m_->m.mutex.holder_guess() & core::FutexMutex::kLocked) != 0;
}
bool Mutex::held_by_this_process() const noexcept { return m_->m.mutex.held_by(holder()); }
std::uint32_t Mutex::holder_pid_guess() const noexcept {
  return locked_guess() ? m_->holder_pid.load(std::memory_order_relaxed) : 0;  // relaxed: display
}
std::uint32_t Mutex::last_dead_pid() noexcept { return t_last_dead_pid; }

Result<RecursiveMutex> RecursiveMutex::create() {
  return SyncAccess::wrap<RecursiveMutex, MutexState>(
      make(SyncType::recursive_mutex, sizeof(MutexState), nullptr, {}), 0, init_mutex);
}
Result<RecursiveMutex> RecursiveMutex::create(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<RecursiveMutex, MutexState>(
      make(SyncType::recursive_mutex, sizeof(MutexState), &arena, name), 0, init_mutex);
}
Result<RecursiveMutex> RecursiveMutex::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<RecursiveMutex, MutexState>(Arena::open_block(h, SyncType::recursive_mutex, o));
}
Result<RecursiveMutex> RecursiveMutex::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<RecursiveMutex, MutexState>(find(SyncType::recursive_mutex, arena, name));
}
Result<RecursiveMutex> RecursiveMutex::from_block(SyncBlock b, std::size_t offset, bool init) {
  if (init) return SyncAccess::wrap<RecursiveMutex, MutexState>(std::move(b), offset, init_mutex);
  return SyncAccess::wrap<RecursiveMutex, MutexState>(std::move(b), offset);
}

Status RecursiveMutex::lock_slow(Deadline d, std::uint32_t spin) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return Status::closed;
  std::uint32_t dead = 0;
  const Status s = m_->m.lock(h, current_thread_id(), d, reg(), spin, &dead);
  if (s == Status::owner_died) {
    const std::uint32_t pid = pid_of(dead);
    t_last_dead_pid = pid != 0 ? pid : m_->holder_pid.load(std::memory_order_relaxed);  // relaxed: display
  }
  if (s == Status::ok || s == Status::owner_died)
    m_->holder_pid.store(own_pid(), std::memory_order_relaxed);  // relaxed: display
  return s;
}

bool RecursiveMutex::held_by_this_thread() const noexcept {
  return m_->m.owned_by(holder(), current_thread_id());
}
std::uint32_t RecursiveMutex::depth_guess() const noexcept {
  // relaxed: written by the holding thread only, which is the caller when it counts.
  return held_by_this_thread() ? m_->m.depth.load(std::memory_order_relaxed) : 0;
}
std::uint32_t RecursiveMutex::holder_pid_guess() const noexcept {
  const bool locked = (m_->m.mutex.holder_guess() & core::FutexMutex::kLocked) != 0;
  return locked ? m_->holder_pid.load(std::memory_order_relaxed) : 0;  // relaxed: display
}

// ---- Semaphore ---------------------------------------------------------------------------------

namespace {
Result<SemaphoreConfig> check_semaphore(const SemaphoreConfig& c) {
  if (c.bound > core::kSemaphoreMax || c.value > c.bound)
    return Error(Errc::invalid_argument, "semaphore value " + std::to_string(c.value) + " and bound " +
                                             std::to_string(c.bound) + " must satisfy 0 <= value <= bound <= " +
                                             std::to_string(core::kSemaphoreMax));
  return c;
}
auto init_semaphore(const SemaphoreConfig& c) {
  return [c](SemaphoreState* s) {
    new (s) SemaphoreState;
    s->sem.init(c.value, c.bound, c.track_units ? core::FutexSemaphore::kTrackUnits : 0);
  };
}
}  // namespace

Result<Semaphore> Semaphore::create(const SemaphoreConfig& c) {
  if (auto ok = check_semaphore(c); !ok) return std::move(ok).error();
  return SyncAccess::wrap<Semaphore, SemaphoreState>(
      make(SyncType::semaphore, sizeof(SemaphoreState), nullptr, {}), 0, init_semaphore(c));
}
Result<Semaphore> Semaphore::create(Arena& arena, const SemaphoreConfig& c, std::string_view name) {
  if (auto ok = check_semaphore(c); !ok) return std::move(ok).error();
  return SyncAccess::wrap<Semaphore, SemaphoreState>(
      make(SyncType::semaphore, sizeof(SemaphoreState), &arena, name), 0, init_semaphore(c));
}
Result<Semaphore> Semaphore::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<Semaphore, SemaphoreState>(Arena::open_block(h, SyncType::semaphore, o));
}
Result<Semaphore> Semaphore::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Semaphore, SemaphoreState>(find(SyncType::semaphore, arena, name));
}

Status Semaphore::acquire(Deadline d) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return Status::closed;
  return s_->sem.acquire(h, d, reg());
}
Status Semaphore::release(std::uint32_t n) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return Status::closed;
  return s_->sem.release(h, n, reg());
}
std::uint32_t Semaphore::units_held_guess() const noexcept { return s_->sem.units_of(holder()); }

// ---- Event -------------------------------------------------------------------------------------

namespace {
void init_event(EventState* e) noexcept {
  new (e) EventState;
  e->event.init();
}
}  // namespace

Result<Event> Event::create() {
  return SyncAccess::wrap<Event, EventState>(make(SyncType::event, sizeof(EventState), nullptr, {}), 0,
                                             init_event);
}
Result<Event> Event::create(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Event, EventState>(make(SyncType::event, sizeof(EventState), &arena, name), 0,
                                             init_event);
}
Result<Event> Event::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<Event, EventState>(Arena::open_block(h, SyncType::event, o));
}
Result<Event> Event::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Event, EventState>(find(SyncType::event, arena, name));
}

// ---- Condition ---------------------------------------------------------------------------------

namespace {
void init_condition(ConditionState* c) noexcept {
  new (c) ConditionState;
  c->cond.init();
}
}  // namespace

Result<Condition> Condition::create() {
  return SyncAccess::wrap<Condition, ConditionState>(
      make(SyncType::condition, sizeof(ConditionState), nullptr, {}), 0, init_condition);
}
Result<Condition> Condition::create(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Condition, ConditionState>(
      make(SyncType::condition, sizeof(ConditionState), &arena, name), 0, init_condition);
}
Result<Condition> Condition::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<Condition, ConditionState>(Arena::open_block(h, SyncType::condition, o));
}
Result<Condition> Condition::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Condition, ConditionState>(find(SyncType::condition, arena, name));
}

int Condition::enter() noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return -1;
  return c_->cond.enter_wait(h, reg());
}

std::uint32_t Condition::notify(std::uint32_t n) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return 0;
  return c_->cond.notify(n, h, reg());
}

// enter, unlock, await, relock (a dead holder's mutex is taken over), leave.
template <class Unlock, class Relock>
ConditionWait Condition::wait_with(Deadline d, Unlock&& unlock, Relock&& relock) noexcept {
  const int record = enter();  // our holder id in the condition's arena (the mutex's may differ)
  if (record < 0) return {Status::full, false};
  unlock();
  const Status got = c_->cond.await(record, d);
  Status r;
  while ((r = relock()) == Status::interrupted) {
  }
  if (r != Status::ok && r != Status::owner_died) return {r, false};
  const bool notified = c_->cond.leave_wait(record);
  const Status s = notified ? Status::ok
                            : (got == Status::interrupted || got == Status::corrupt ? got : Status::timeout);
  return {s, r == Status::owner_died};
}

ConditionWait Condition::wait(Mutex& m, Deadline d) noexcept {
  const std::uint32_t h = m.holder();
  if (h == kNoHolder) return {Status::closed, false};
  if (!m.word().held_by(h)) return {Status::corrupt, false};  // the caller does not hold it
  return wait_with(
      d, [&] { m.word().unlock(); },
      [&] {
        std::uint32_t dead = 0;
        const Status s = m.word().lock(h, Deadline::never(), m.reg(), core::Backoff::kDefaultBudget, &dead);
        return m.after_lock(s, dead);
      });
}

ConditionWait Condition::wait(RecursiveMutex& m, Deadline d) noexcept {
  const std::uint32_t h = m.holder();
  if (h == kNoHolder) return {Status::closed, false};
  const std::uint32_t thread = current_thread_id();
  if (!m.word().owned_by(h, thread)) return {Status::corrupt, false};
  std::uint32_t depth = 0;
  return wait_with(
      d, [&] { depth = m.word().release_all(); },
      [&] {
        const Status s = m.word().mutex.lock(h, Deadline::never(), m.reg());
        if (s == Status::ok || s == Status::owner_died) {
          m.word().adopt(thread, depth);
          m.m_->holder_pid.store(m.own_pid(), std::memory_order_relaxed);  // relaxed: display
        }
        return s;
      });
}

// ---- Barrier -----------------------------------------------------------------------------------

Result<Barrier> Barrier::create(std::uint32_t parties) {
  if (parties == 0 || parties > core::kBarrierMaxParties)
    return Error(Errc::invalid_argument, "barrier parties must be in [1, " +
                                             std::to_string(core::kBarrierMaxParties) + "]");
  return SyncAccess::wrap<Barrier, BarrierState>(
      make(SyncType::barrier, sizeof(BarrierState), nullptr, {}), 0, [parties](BarrierState* b) {
        new (b) BarrierState;
        b->barrier.init(parties);
      });
}
Result<Barrier> Barrier::create(Arena& arena, std::uint32_t parties, std::string_view name) {
  if (parties == 0 || parties > core::kBarrierMaxParties)
    return Error(Errc::invalid_argument, "barrier parties must be in [1, " +
                                             std::to_string(core::kBarrierMaxParties) + "]");
  return SyncAccess::wrap<Barrier, BarrierState>(
      make(SyncType::barrier, sizeof(BarrierState), &arena, name), 0, [parties](BarrierState* b) {
        new (b) BarrierState;
        b->barrier.init(parties);
      });
}
Result<Barrier> Barrier::open(const SyncHandle& h, const OpenOptions& o) {
  return SyncAccess::wrap<Barrier, BarrierState>(Arena::open_block(h, SyncType::barrier, o));
}
Result<Barrier> Barrier::open(Arena& arena, std::string_view name) {
  return SyncAccess::wrap<Barrier, BarrierState>(find(SyncType::barrier, arena, name));
}

core::BarrierResult Barrier::wait(Deadline d, const std::function<bool()>& action) noexcept {
  const std::uint32_t h = holder();
  if (h == kNoHolder) return {Status::closed, 0};
  return b_->barrier.wait(h, d, reg(), [&] { return action ? action() : true; });
}

// ---- from_block ----------------------------------------------------------------------------------

namespace {
Result<SyncBlock> typed(SyncBlock b, SyncType t) {
  if (!b.valid()) return Error(Errc::invalid_argument, "an empty block");
  if (b.type() != t)
    return Error(Errc::wrong_kind, "the block holds a " + std::string(sync_type_name(b.type())) + ", not a " +
                                       std::string(sync_type_name(t)));
  return b;
}
}  // namespace

Result<Semaphore> Semaphore::from_block(SyncBlock b) {
  return SyncAccess::wrap<Semaphore, SemaphoreState>(typed(std::move(b), SyncType::semaphore));
}
Result<Event> Event::from_block(SyncBlock b) {
  return SyncAccess::wrap<Event, EventState>(typed(std::move(b), SyncType::event));
}
Result<Condition> Condition::from_block(SyncBlock b) {
  return SyncAccess::wrap<Condition, ConditionState>(typed(std::move(b), SyncType::condition));
}
Result<Barrier> Barrier::from_block(SyncBlock b) {
  return SyncAccess::wrap<Barrier, BarrierState>(typed(std::move(b), SyncType::barrier));
}

}  // namespace shmq
