// gc: the policy of gc.hpp applied to /dev/shm.
#include "shmq/shm/gc.hpp"

#include <dirent.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <string>
#include <utility>

#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"
#include "shmq/shm/segment.hpp"

namespace shmq {
namespace {

constexpr std::string_view kGeneratedPrefix = "anon-";
constexpr std::size_t kGeneratedHexDigits = 32;
constexpr std::string_view kMemfdTagPrefix = "memfd-";  // the spill tag of an anonymous queue

std::string plural(std::uint64_t n, std::string_view what) {
  return std::to_string(n) + " " + std::string(what) + (n == 1 ? "" : "s");
}

double seconds_since(const timespec& t) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const double d = static_cast<double>(now.tv_sec - t.tv_sec) +
                   static_cast<double>(now.tv_nsec - t.tv_nsec) * 1e-9;
  return std::max(0.0, d);
}

// Committed messages a named segment holds, read through the library's own validation. The
// segment is opened as an observer: no role, no participant slot, and a named segment is never
// unlinked by its last mapping.
Result<std::uint64_t> messages_held(std::string_view name, SegmentKind kind) {
  const OpenOptions observe{.allow_other_users = true, .initializing_wait_ms = 0};
  if (kind == SegmentKind::arena)  // its objects are state, not messages: never "empty"
    return Error(Errc::wrong_kind, "an arena holds synchronization objects and values, not messages");
  if (kind == SegmentKind::queue) {
    auto q = Queue::open(name, observe);
    if (!q) return std::move(q).error();
    return static_cast<std::uint64_t>(q->size_guess());
  }
  auto p = Pipe::open(name, observe);
  if (!p) return std::move(p).error();
  std::uint64_t n = 0;
  for (unsigned d = 0; d < p->directions(); ++d) n += p->waiting_guess(d);
  return n;
}

// Where the policy stands on one segment nobody holds and that is older than the grace period.
void judge_unheld(GcEntry& e, const SegmentFileInfo& info, const GcPolicy& policy) {
  if (!e.named) {
    e.reason = e.corrupt ? "anonymous, corrupt, and nobody holds it"
                         : "anonymous, and every process that used it is gone";
    e.action = GcAction::removed;
    return;
  }
  auto held = e.corrupt ? Result<std::uint64_t>(info.problem)
                        : messages_held(e.name, info.kind);
  if (held) e.messages = *held;
  const std::string idle = held ? "idle, " + plural(*held, "message") : "idle";
  if (!policy.include_named) {
    e.reason = "named: it lives until `shmq rm` or unlink() (" + idle + ")";
    return;
  }
  if (held && *held == 0) {
    e.reason = "named, idle and empty (--include-named)";
    e.action = GcAction::removed;
  } else if (policy.force) {
    e.reason = "named and idle (--include-named --force): " +
               (held ? plural(*held, "message") + " deleted" : "its content is deleted unread");
    e.action = GcAction::removed;
  } else {
    e.reason = held ? "named and " + idle + "; pass --force to delete them"
                    : "named and idle, but what it holds cannot be read (" + held.error().what +
                          "); pass --force to remove it";
  }
}

GcEntry gc_segment(const std::string& name, const GcPolicy& policy) {
  GcEntry e;
  e.name = name;
  if (!valid_segment_name(name)) {
    e.reason = "not a name shmq gives a segment: left alone";
    return e;
  }
  auto info = inspect_segment_file(name);
  if (!info) {
    e.action = GcAction::failed;
    e.reason = info.error().what;
    if (info.error().code == Errc::not_found) e.name.clear();  // gone meanwhile: nothing to say
    return e;
  }
  e.corrupt = info->problem.code != Errc::ok;
  if (e.corrupt) e.problem = info->problem.what;
  // A generated name with a sound header that does not carry the flag was chosen by a user.
  e.named = !generated_segment_name(name) ||
            (!e.corrupt && (info->flags & kUnlinkWhenUnused) == 0);
  auto in_use = segment_in_use(name);
  if (!in_use) {
    e.action = GcAction::failed;
    e.reason = in_use.error().what;
    if (in_use.error().code == Errc::not_found) e.name.clear();
    return e;
  }
  if (*in_use) {
    e.reason = "in use by a live process";
    return e;
  }
  if (info->age_seconds < policy.grace_seconds) {
    e.reason = "nobody holds it, but it is younger than the grace period (" +
               std::to_string(static_cast<int>(policy.grace_seconds)) + " s)";
    return e;
  }
  judge_unheld(e, *info, policy);
  if (e.action != GcAction::removed) return e;
  if (policy.dry_run) {
    e.action = GcAction::would_remove;
    return e;
  }
  // Ask the kernel once more right before the unlink: the window left is the one Segment::open
  // closes (see gc.hpp).
  if (auto again = segment_in_use(name); again && *again) {
    e.action = GcAction::kept;
    e.reason = "in use: a process attached while gc was looking";
    return e;
  }
  if (auto r = Segment::unlink(name); !r) {
    e.action = GcAction::failed;
    e.reason = r.error().what;
    return e;
  }
  (void)Queue::remove_spill_files(name);
  return e;
}

// A process that maps the memfd labelled `label` (an anonymous queue's segment), or 0. Reads
// /proc/<pid>/maps of every process it may read: a user's own, or all of them as root, which
// covers whoever may remove that queue's spill files.
pid_t memfd_mapped_by(const std::string& label) {
  const std::string mapped = "/memfd:" + label + " (deleted)";  // how maps shows a memfd
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  pid_t found = 0;
  while (const dirent* d = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(d->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::ifstream maps(std::string("/proc/") + d->d_name + "/maps");
    for (std::string line; std::getline(maps, line);) {
      if (line.ends_with(mapped)) {
        found = static_cast<pid_t>(pid);
        break;
      }
    }
    if (found != 0) break;
  }
  ::closedir(proc);
  return found;
}

// One spill file whose queue has no segment in /dev/shm (removed while a writer was between
// creating the file and committing its slot, or by hand; or an anonymous queue's).
GcEntry gc_orphan_spill(const std::string& file, const std::string& queue, const GcPolicy& policy) {
  GcEntry e;
  e.name = file;
  e.spill_file = true;
  if (queue.starts_with(kMemfdTagPrefix)) {
    if (const pid_t pid = memfd_mapped_by(std::string(kSegmentFilePrefix) + queue); pid != 0) {
      e.reason = "spill file of anonymous queue '" + queue + "', mapped by pid " + std::to_string(pid);
      return e;
    }
  }
  const std::string path = std::string(kShmDirectory) + "/" + file;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    e.name.clear();  // gone meanwhile
    return e;
  }
  e.reason = "spill file of a missing queue '" + queue + "'";
  if (seconds_since(st.st_ctim) < policy.grace_seconds) {
    e.reason += ", younger than the grace period";
    return e;
  }
  if (policy.dry_run) {
    e.action = GcAction::would_remove;
  } else if (::unlink(path.c_str()) == 0 || errno == ENOENT) {
    e.action = GcAction::removed;
  } else {
    e.action = GcAction::failed;
    e.reason = "cannot remove " + path + ": " + std::strerror(errno);
  }
  return e;
}

std::vector<GcEntry> gc_orphan_spills(const GcPolicy& policy) {
  std::vector<std::pair<std::string, std::string>> orphans;  // file, queue
  if (DIR* dir = ::opendir(std::string(kShmDirectory).c_str())) {
    while (const dirent* d = ::readdir(dir)) {
      std::string queue;
      if (!Queue::is_spill_file_name(d->d_name, &queue) || !name_matches(policy.patterns, queue))
        continue;
      struct stat st {};
      if (::stat(segment_path(queue).c_str(), &st) == 0) continue;  // its queue owns it
      orphans.emplace_back(d->d_name, std::move(queue));
    }
    ::closedir(dir);
  }
  std::vector<GcEntry> out;
  for (const auto& [file, queue] : orphans) {
    GcEntry e = gc_orphan_spill(file, queue, policy);
    if (!e.name.empty()) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::vector<std::string> list_segment_names() {
  std::vector<std::string> names;
  DIR* dir = ::opendir(std::string(kShmDirectory).c_str());
  if (dir == nullptr) return names;
  while (const dirent* e = ::readdir(dir)) {
    const std::string_view file = e->d_name;
    if (!file.starts_with(kSegmentFilePrefix)) continue;
    if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN) continue;
    const std::string_view name = file.substr(kSegmentFilePrefix.size());
    if (name.empty() || Queue::is_spill_file_name(file)) continue;
    names.emplace_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

bool name_matches(const std::vector<std::string>& patterns, const std::string& name) {
  if (patterns.empty()) return true;
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
}

bool generated_segment_name(std::string_view name) noexcept {
  if (name.size() != kGeneratedPrefix.size() + kGeneratedHexDigits || !name.starts_with(kGeneratedPrefix))
    return false;
  return std::all_of(name.begin() + kGeneratedPrefix.size(), name.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string_view gc_action_name(GcAction a) noexcept {
  switch (a) {
    case GcAction::removed: return "removed";
    case GcAction::would_remove: return "would-remove";
    case GcAction::kept: return "kept";
    case GcAction::failed: return "failed";
  }
  return "unknown";
}

std::vector<GcEntry> collect_garbage(const GcPolicy& policy) {
  std::vector<GcEntry> out;
  for (const std::string& name : list_segment_names()) {
    if (!name_matches(policy.patterns, name)) continue;
    GcEntry e = gc_segment(name, policy);
    if (!e.name.empty()) out.push_back(std::move(e));
  }
  for (GcEntry& e : gc_orphan_spills(policy)) out.push_back(std::move(e));
  return out;
}

}  // namespace shmq
