// MpmcRing: a bounded multi-producer multi-consumer queue of fixed-size slots on caller-supplied
// memory (the Vyukov scheme: one 64-bit sequence number per slot), that survives the death of
// any participant at any instruction.
//
// Files: mpmc_format.hpp (layout, slot states, claim words, checks, the MpmcRing view),
// mpmc_recovery.hpp (crash recovery), mpmc_end.hpp (what both sides share), mpmc_writer.hpp,
// mpmc_reader.hpp. This header includes them all and states the protocol.
//
// Layout (mpmc_format.hpp): a header of six cache lines, then `slots` slots of {seq, length,
// kind, flags} + slot_size payload bytes. A slot's seq says whether it is free for the writer of
// position p (p), committed for its reader (p + 1), or released for the next lap (p + slots).
//
// Synchronization
//   [Q1] commit: a writer fills a slot, then stores seq = p + 1 (release); a reader loads seq
//        (acquire) before it reads length, kind, flags and payload.
//   [Q2] release: a reader done with a slot stores seq = p + slots (release); a writer loads seq
//        (acquire) before it overwrites the slot.
//   [Q3] claim record: before its CAS on enqueue_pos / dequeue_pos a participant stores what it
//        claims in its own claim word (relaxed), and the CAS is a release. A survivor that loads
//        the position (acquire) and sees the CAS therefore sees the claim word too.
//   [Q4] claim clear: after commit (Q1) or release (Q2) the claim word is cleared (release); a
//        survivor that loads 0 (acquire) and then re-reads seq sees the commit or release.
//   [Q5] sleeping: readers sleep on data_ready, writers notify it after Q1; writers sleep on
//        space_free, readers notify it after Q2 (the Dekker pair of wait.hpp). A wake is issued
//        only when someone is registered as a waiter. Sleeps are sliced (kSleepSlice) so that a
//        waker that died between publish and wake strands nobody, and liveness is re-checked.
//   [Q6] closed: stored with release, loaded with acquire; then every sleeper is woken.
//   Contract for users: send/commit is a release, recv is an acquire: all a writer wrote into a
//   message before commit is visible to the reader that receives it. FIFO per writer; messages of
//   different writers are ordered by their claims.
//
// Crash recovery (the DESIGN promise). Every participant owns kClaimWords claim words in a table
// the host provides (ClaimRegistry; shm uses the segment's participant slots, whose liveness the
// kernel keeps with OFD locks). A claim word holds {48 low bits of the first position, count,
// op} for a claim in flight, 0 when idle.
//   Writer died after its enqueue CAS, before commit: the slot stays at seq == p while
//     enqueue_pos > p. A reader that finds this for longer than kStuckGrace scans the table for
//     claim words covering (enqueue, p). Any live claimant: keep waiting (a live but slow owner is
//     never robbed). None (all dead, or their words reused by new holders): the owner is dead, and
//     since it is dead the slot never changes again; the reader claims p on dequeue_pos (recording
//     its own claim first), releases the slot without delivering it, and counts `recovered`.
//   Reader died after its dequeue CAS, before release: the slot stays at seq == q + 1 (or q, if
//     the dead reader was discarding a dead writer's slot) while dequeue_pos > q. A writer that
//     finds the slot of p = q + slots in that state scans for claims covering (dequeue, q); none
//     alive: it CASes seq to p, counting `abandoned` (a committed message died with its reader)
//     or `recovered`.
//   Why "no live claimant" means "owner dead": the owner stores its claim before its CAS [Q3] and
//     clears it only after commit/release [Q4], so while it lives and has not finished, its word
//     covers p; a survivor re-reads seq after the scan to rule out a finish during the scan.
//     A participant always clears its word on every path that leaves without a claim, so a live
//     participant's stale word cannot keep a dead owner's slot stuck forever.
//   The host's reclaim(p) runs for every recovered slot (shm: unlinks the spill file of p).
#pragma once

#include "shmq/core/mpmc_end.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/mpmc_reader.hpp"
#include "shmq/core/mpmc_recovery.hpp"
#include "shmq/core/mpmc_writer.hpp"
