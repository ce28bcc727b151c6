// A single-producer single-consumer byte ring on caller-supplied memory (shared between processes).
//
// Files: spsc_format.hpp (layout, records, checks), spsc_end.hpp (what both ends share),
// spsc_writer.hpp, spsc_reader.hpp. This header includes them all and states the protocol.
//
// Layout (spsc_format.hpp): a control block followed by 2^k data bytes of 8-aligned records
// {u32 length, u32 tag} + payload. A message of at most max_payload() bytes is one `whole`
// record (read in place: zero copy); a larger one streams as `first`, `middle`..., `last` chunks
// that the reader copies into a buffer, so any size works. A chunked message whose writer stops
// (dies, times out, closes) before `last` is discarded, never delivered: the writer (or the next
// writer) appends an `abort` record, and a reader that sees the writer gone drops it.
//
// Roles: one SpscWriter and one SpscReader at a time, each used by one thread at a time. The
// caller (the Pipe) makes the roles exclusive and tells the ring whether the peer is alive.
//
// Synchronization
//   [P1] commit: the writer writes a record's payload, zeroes the header after it (the next
//        frontier, when free), then stores its header (release); the reader polls the header at
//        its read position (acquire) and reads the record once it is committed (spsc_format.hpp).
//        A message crosses one cache line to a polling reader: the one its header shares with
//        the start of its payload. Records written between two publishes form one commit
//        group: the group's first header is stored last, so a batch (or all chunks of a
//        try_send) appears at once.
//   [P2] head: the reader finishes with the bytes below head, then stores head (release); the
//        writer loads head (acquire) before overwriting them. The reader publishes head in
//        batches (see "Head batching").
//   [P3] close flags: a side publishes its last records, then stores its *_closed flag
//        (release); the peer loads the flag (acquire) and then looks at the records again.
//   [P4] tail: after each group's commit the writer stores tail (release). The polling reader
//        never reads it (its line stays with the writer); a reader about to sleep, a guess, and
//        the reader's corruption check load it (acquire): a tail past the read position with no
//        committed header there is corrupt. A reader may run up to a ring past a tail not yet
//        stored; a writer killed between a commit and its tail store leaves such records, and
//        the next writer finds the frontier by walking the committed headers from tail.
//   [D1] data_wait / [D2] space_wait: the Dekker pairs of wait.hpp. The writer notifies
//        data_wait after [P1]/[P4]; the reader notifies space_wait after [P2]. FUTEX_WAKE is
//        issued only when a waiter is registered. Both ends announce themselves as light wakers
//        when their process can register for membarrier: then no fence runs per message, and a
//        sleeping peer pays a global barrier instead (wait.hpp).
//   Crash-recovery words (writer_streaming, read_pos, held, *_attached) are relaxed: they are
//   read by a later holder of the role, after the kernel handed the role lock over.
//
// Head batching
//   Publishing head costs the reader a store to a line the writer reads; measured across
//   processes it halved the Pipe's small-message rate. So the reader publishes head only when it
//   has read head_batch() bytes past it (1/16 of the ring, at most 16 KiB), when it finds the
//   ring empty (always before it sleeps), on close, and for every chunk of a streamed message.
//   In between it stores its read position in the crash-recovery word read_pos (relaxed, a line
//   only it writes), so a reader killed with unpublished reads never has them delivered again:
//   the next reader skips to read_pos (if it lies on the chain of committed records from head).
//   The cost: a writer may find the ring full while up to head_batch() bytes are read but not
//   yet returned; it gets them back as soon as the reader reads on or runs dry.
//   Contract seen by users: a send/commit is a release; a recv that returns the message is an
//   acquire of everything the writer did before that send.
//
// Shared values are never trusted: each index, length and tag is read once into a local and
// bound-checked; a violation makes the call return Status::corrupt and bumps
// Stats::corrupt_events. Nothing read from the ring is asserted.
#pragma once

#include "shmq/core/spsc_end.hpp"
#include "shmq/core/spsc_format.hpp"
#include "shmq/core/spsc_reader.hpp"
#include "shmq/core/spsc_writer.hpp"
