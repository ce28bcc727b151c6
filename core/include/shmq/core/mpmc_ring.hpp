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
//        Every participant announces itself as a light waker on the word it wakes when its
//        process can register for membarrier: no fence per message; a sleeper pays a global
//        barrier instead (wait.hpp).
//   [Q6] closed: stored with release, loaded with acquire; then every sleeper is woken.
//   [Q7] sealed writes: a writer fills its slots, marks them kSlotSealed, stores its host's seal
//        word covering them (release), then commits. A survivor finding a dead writer's sealed
//        slot loads that seal word (acquire) and, if it covers the slot, commits it on the dead
//        writer's behalf (a CAS free -> committed) instead of discarding it; the host's seal word
//        is thus the one place that says whether the messages were put (shm: queue journals).
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
//
// Leases (a reader mode: MpmcReader::try_lease / ack_lease / give_back). A lease is a reader's
// claim of consecutive positions [q, q + n) recorded with op `lease` instead of `dequeue`. Its
// messages are held until ack_lease(); if the holder dies, or gives them back, they are delivered
// again to the next reader that takes a lease, instead of being abandoned. Positions are unique
// and monotonic, so q + i is a stable id for each message. Plain reads are untouched.
//   [L1] take and ack: the lease word is stored before the dequeue CAS, as any claim [Q3]. An ack
//        first downgrades the word to a plain `dequeue` claim, then releases the slots [Q2], then
//        clears the word [Q4]: a holder killed while acking leaves a plain claim, which the
//        writers' abandon path takes (its messages were handled), never a lease to redeliver.
//   [L2] adoption: a reader copies an orphaned lease word into a free claim word of its own and
//        then clears the orphan, both under the adoption lock. Killed between the two, it leaves
//        two identical words; the next lock holder merges them (identical lease words of dead
//        participants are one lease), so one reader, and only one, adopts a lease.
//   [L3] the adoption lock (MpmcRingHeader::adopt_lock) holds mpmc::holder_id of its holder
//        (participant index and generation); a holder found dead, or its slot taken by a new
//        generation, is broken with a CAS. Acquire on taking, release on leaving: every move of
//        a lease word is made and seen under it. Only lease words move under it; plain claims
//        never wait for it.
//   [L4] dead holders: under the lock, a lease word of a dead participant is moved into the
//        orphan table (MpmcRingHeader::orphans), where readers adopt it; the participant slot's
//        next holder does the same before it zeroes its words (else the lease would be lost), and
//        writers never recover a slot a lease covers (recover_unreleased_read): they wait, as for
//        a live reader, until it is adopted and acked. A dead lease that finds the orphan table
//        full waits in its word for a later move.
//   [L5] stale lease words: a reader killed after storing its lease word but before (or after
//        losing) its CAS leaves a word for positions it never took. Before a dead word becomes an
//        orphan it is checked (valid_dead_lease): dequeue_pos must be past its end, all its
//        slots held (committed, unreleased), and no other claim may cover its first position;
//        otherwise it is dropped, and a slot really held by another dead reader goes the
//        ordinary abandon way. (Two readers killed in the same instant on the same position, one
//        of them before its CAS, can thus lose that position's lease to `abandoned`.)
#pragma once

#include "shmq/core/mpmc_end.hpp"
#include "shmq/core/mpmc_format.hpp"
#include "shmq/core/mpmc_reader.hpp"
#include "shmq/core/mpmc_recovery.hpp"
#include "shmq/core/mpmc_writer.hpp"
