// shmq rm / gc: removing segments.
//
// "In use" is decided by the kernel's locks alone (segment_in_use: the creator lock, the attach
// lock every mapping holds, participant and role locks), never by header bytes, so the answer is
// as good for a corrupt segment as for a sound one. gc removes a segment only when
//   - no process holds any of its locks (nobody has it mapped, nobody is creating it), and
//   - its file is older than the grace period (default 5 s): a creator holds its lock from just
//     after open(O_CREAT|O_EXCL), and the grace covers the instant in between.
// That applies to corrupt segments too: a corrupt file nobody holds is removed and reported; a
// corrupt file some live process still holds is reported and kept (that process may be the one
// that can explain it; `shmq rm --force` removes it anyway).
//
// The check and the unlink are two steps. A process that opens the name between them keeps a
// working mapping but loses the name; Segment::open closes that window from its side by checking,
// after taking its attach lock, that the name still leads to the file it mapped.
#include <dirent.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "inspect.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::cli {

using json = nlohmann::ordered_json;

namespace {

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

}  // namespace

int cmd_rm(const RmOptions& o) {
  int rc = kExitOk;
  for (const auto& name : o.names) {
    const std::string ctx = "rm " + name;
    if (!valid_segment_name(name)) {
      rc = std::max(rc, report(ctx, Error(Errc::invalid_name, "invalid segment name '" + name + "'")));
      continue;
    }
    auto in_use = segment_in_use(name);
    if (!in_use) {
      const Error& e = in_use.error();
      rc = std::max(rc, report(ctx, e.code == Errc::not_found
                                        ? Error(e.code, "no segment named '" + name + "'")
                                        : e));
      continue;
    }
    if (*in_use && !o.force) {
      rc = std::max(rc, report(ctx, "segment '" + name +
                                        "' is in use by a live process; stop it first, or pass "
                                        "--force (its users keep their mapping, the name goes)"));
      continue;
    }
    if (auto r = Segment::unlink(name); !r) {
      rc = std::max(rc, report(ctx, r.error()));
      continue;
    }
    // A queue's messages larger than a slot live in files of their own.
    (void)Queue::remove_spill_files(name);
  }
  return rc;
}

namespace {

struct GcEntry {
  std::string name;
  std::string action;  // removed | would-remove | kept | failed
  std::string reason;
  bool corrupt = false;
  std::string problem;  // the first problem found in the header, if any
};

GcEntry gc_one(const std::string& name, const GcOptions& o) {
  GcEntry e;
  e.name = name;
  auto probe = Probe::open(name);
  if (!probe) {
    const Errc c = probe.error().code;
    // A file named shmq.<something no segment can be called> was not made by shmq: leave it.
    e.action = c == Errc::not_found ? "gone" : c == Errc::invalid_name ? "skipped" : "failed";
    e.reason = probe.error().what;
    return e;
  }
  const Probe& p = *probe;
  e.corrupt = !p.sound();
  if (const Error err = p.first_error(); err.code != Errc::ok) e.problem = err.what;

  auto in_use = segment_in_use(name);
  if (!in_use) {
    e.action = in_use.error().code == Errc::not_found ? "gone" : "failed";
    e.reason = in_use.error().what;
    return e;
  }
  const Liveness l = p.liveness();
  if (*in_use) {
    e.action = "kept";
    if (l.alive > 0) {
      e.reason = fmt::format("in use: {} live participant{}", l.alive, l.alive == 1 ? "" : "s");
    } else if (l.creator_alive) {
      e.reason = "in use: its creator is setting it up";
    } else {
      e.reason = "in use: mapped by a live process";
    }
    return e;
  }
  const double age = p.file_age_seconds();
  if (age < o.grace) {
    e.action = "kept";
    e.reason = fmt::format("nobody attached, but younger than the {:g} s grace period", o.grace);
    return e;
  }
  if (e.corrupt) {
    e.reason = "corrupt and nobody attached";
  } else if (l.dead > 0) {
    e.reason = l.dead == 1 ? std::string("its only participant is dead")
                           : fmt::format("all {} participants are dead", l.dead);
  } else {
    e.reason = "nobody attached";
  }
  if (o.dry_run) {
    e.action = "would-remove";
    return e;
  }
  // Ask the kernel once more right before the unlink: the window left is the one
  // Segment::open closes (see the top of this file).
  auto again = segment_in_use(name);
  if (again && *again) {
    e.action = "kept";
    e.reason = "in use: a process attached while gc was looking";
    return e;
  }
  if (auto r = Segment::unlink(name); !r) {
    e.action = r.error().code == Errc::not_found ? "gone" : "failed";
    e.reason = r.error().what;
    return e;
  }
  (void)Queue::remove_spill_files(name);
  e.action = "removed";
  return e;
}

// Spill files whose queue no longer exists (its segment was removed while a writer was between
// creating a spill file and committing it, or by hand), older than the grace period.
std::vector<GcEntry> gc_orphan_spills(const GcOptions& o) {
  std::vector<GcEntry> out;
  DIR* dir = ::opendir(std::string(kShmDir).c_str());
  if (dir == nullptr) return out;
  std::vector<std::pair<std::string, std::string>> orphans;  // file, queue
  while (const dirent* d = ::readdir(dir)) {
    std::string queue;
    if (!Queue::is_spill_file_name(d->d_name, &queue)) continue;
    if (!name_matches(o.patterns, queue)) continue;
    struct stat st {};
    const std::string seg = std::string(kShmDir) + "/" + std::string(kFilePrefix) + queue;
    if (::stat(seg.c_str(), &st) == 0) continue;  // its queue exists: the queue owns it
    orphans.emplace_back(d->d_name, queue);
  }
  ::closedir(dir);
  // An anonymous queue (memfd) has no file in /dev/shm: its spill files are orphans only once no
  // process maps it any more.
  std::erase_if(orphans, [&](const auto& orphan) {
    const auto& [file, queue] = orphan;
    if (queue.rfind("memfd-", 0) != 0) return false;
    const pid_t pid = memfd_mapped_by("shmq." + queue);
    if (pid == 0) return false;
    GcEntry e;
    e.name = file;
    e.action = "kept";
    e.reason = fmt::format("spill file of anonymous queue '{}', mapped by pid {}", queue, pid);
    out.push_back(std::move(e));
    return true;
  });
  for (const auto& [file, queue] : orphans) {
    GcEntry e;
    e.name = file;
    const std::string path = std::string(kShmDir) + "/" + file;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) continue;
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    const double age = static_cast<double>(now.tv_sec - st.st_ctim.tv_sec);
    if (age < o.grace) {
      e.action = "kept";
      e.reason = "spill file of a missing queue '" + queue + "', younger than the grace period";
    } else if (o.dry_run) {
      e.action = "would-remove";
      e.reason = "spill file of a missing queue '" + queue + "'";
    } else if (::unlink(path.c_str()) == 0 || errno == ENOENT) {
      e.action = "removed";
      e.reason = "spill file of a missing queue '" + queue + "'";
    } else {
      e.action = "failed";
      e.reason = std::string("cannot remove: ") + std::strerror(errno);
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

int cmd_gc(const GcOptions& o) {
  std::vector<GcEntry> entries;
  for (const auto& name : list_segment_names()) {
    if (!name_matches(o.patterns, name)) continue;
    GcEntry e = gc_one(name, o);
    if (e.action != "gone") entries.push_back(std::move(e));
  }
  for (auto& e : gc_orphan_spills(o)) entries.push_back(std::move(e));
  int rc = kExitOk;
  std::size_t removed = 0, kept = 0, corrupt = 0, failed = 0;
  for (const auto& e : entries) {
    removed += e.action == "removed" || e.action == "would-remove";
    kept += e.action == "kept";
    corrupt += e.corrupt;
    if (e.action == "failed") {
      ++failed;
      rc = kExitError;
    }
  }
  if (o.json) {
    json arr = json::array();
    for (const auto& e : entries) {
      json j = {{"name", e.name}, {"action", e.action}, {"reason", e.reason}, {"corrupt", e.corrupt}};
      j["problem"] = e.problem.empty() ? json(nullptr) : json(e.problem);
      arr.push_back(std::move(j));
    }
    json out = {{"dry_run", o.dry_run},
                {"removed", removed},
                {"kept", kept},
                {"corrupt", corrupt},
                {"failed", failed},
                {"segments", arr}};
    std::cout << out.dump(2) << "\n";
  } else {
    for (const auto& e : entries) {
      std::cout << fmt::format("{:<12} {}: {}\n", e.action, e.name, e.reason);
      if (e.corrupt && !e.problem.empty()) std::cout << fmt::format("{:<12}   {}\n", "", e.problem);
    }
    std::cout << fmt::format("gc: {} {}, {} kept, {} corrupt{}\n", removed,
                             o.dry_run ? "would be removed" : "removed", kept, corrupt,
                             failed != 0 ? fmt::format(", {} failed", failed) : std::string());
  }
  for (const auto& e : entries) {
    if (e.action == "failed") std::cerr << "shmq: gc " << e.name << ": " << e.reason << "\n";
  }
  return rc;
}

}  // namespace shmq::cli
