// The heavy half of an asymmetric fence: membarrier(2) with MEMBARRIER_CMD_GLOBAL_EXPEDITED. A
// waker that would fence on every message leaves the fence to the rare sleeper instead (the
// light wakers of wait.hpp). GLOBAL, not PRIVATE: the waker is usually another process, and
// PRIVATE_EXPEDITED reaches only the caller's own threads.
//
// Requirements (Linux 4.16+): the process whose threads skip their fence registers once
// (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED; the registration belongs to its mm, survives fork
// and is dropped by exec, so every attach registers again: a repeat is a cheap no-op); the
// process issuing the barrier needs no registration. Where the kernel lacks the command, or a
// seccomp filter refuses it, registration fails and the waker keeps its fence.
#pragma once

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace shmq::core {

// True if this process is now registered to receive global expedited barriers.
inline bool register_for_global_barrier() noexcept {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

// Every running thread of every registered process executes a full memory barrier before this
// returns (a thread not running passed one when it was switched out). The caller's own accesses
// are ordered as by a seq_cst fence on both sides of the call. False if the kernel refused.
inline bool global_barrier() noexcept {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}

}  // namespace shmq::core
