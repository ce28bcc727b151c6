// What lies in /dev/shm, and the one policy for cleaning up after crashed processes: the CLI's
// `shmq gc` and Python's shmq.gc() both call collect_garbage().
//
// The policy
//   - A segment some process holds (mapped, being created, a participant or a role) is kept. The
//     kernel's locks decide (segment_in_use), never header bytes, so the answer is as good for a
//     corrupt segment as for a sound one.
//   - A file younger than the grace period is kept: a creator takes its lock just after
//     open(O_CREAT|O_EXCL), and the grace covers the instant in between.
//   - An anonymous segment (a generated "anon-..." name, unlinked by its last user) that nobody
//     holds is removed: its last user died before it could unlink it. Corrupt ones too.
//   - A named segment lives like a file until Queue::unlink / Pipe::unlink / `shmq rm`: it is
//     kept even when nobody is attached and it holds committed messages (reported "idle, N
//     messages"). Only `include_named` removes one, and only an empty one unless `force`; a named
//     segment whose content cannot be read (corrupt, another user's) counts as non-empty.
//   - Spill files of a queue that no longer exists are removed after the grace period; those of
//     an anonymous (memfd) queue that some process still maps are kept.
// The check and the unlink are two steps. A process that opens the name between them keeps a
// working mapping but loses the name; Segment::open closes that window from its side by checking,
// after taking its attach lock, that the name still leads to the file it mapped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmq {

// Names of every shmq segment in /dev/shm, sorted, without the "shmq." prefix. A Queue's spill
// files are not segments and are left out.
std::vector<std::string> list_segment_names();

// Whether `name` has the form random_segment_name() gives an unnamed Pipe or Queue.
bool generated_segment_name(std::string_view name) noexcept;

// Shell-style patterns (fnmatch) over segment names; an empty list matches every name.
bool name_matches(const std::vector<std::string>& patterns, const std::string& name);

struct GcPolicy {
  std::vector<std::string> patterns;  // shell patterns (fnmatch) over names; empty: every name
  bool include_named = false;         // also remove named segments nobody holds, if empty
  bool force = false;                 // with include_named: even those holding messages
  bool dry_run = false;               // decide and report, remove nothing
  double grace_seconds = 5.0;         // younger files are left alone
};

enum class GcAction : std::uint8_t { removed, would_remove, kept, failed };
// "removed", "would-remove", "kept", "failed".
std::string_view gc_action_name(GcAction a) noexcept;

struct GcEntry {
  std::string name;  // a segment's name, or a spill file's name in /dev/shm
  GcAction action = GcAction::kept;
  std::string reason;                     // why, in words
  bool spill_file = false;
  bool named = false;                     // a named segment (it lives until unlinked)
  bool corrupt = false;                   // its header is not sound
  std::string problem;                    // what is wrong with it, if corrupt
  std::optional<std::uint64_t> messages;  // committed messages it holds, where counted
};

// Applies the policy to /dev/shm: one entry per segment or spill file it looked at and had
// something to say about (a spill file of a live queue is not listed).
std::vector<GcEntry> collect_garbage(const GcPolicy& policy);

}  // namespace shmq
