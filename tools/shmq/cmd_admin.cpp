// shmq rm / gc: removing segments. gc's policy lives in the library (shm/gc.hpp), shared with
// Python's shmq.gc(); this file only prints what it did.
#include <fmt/core.h>

#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "inspect.hpp"
#include "shmq/shm/gc.hpp"
#include "shmq/shm/queue.hpp"

namespace shmq::cli {

using json = nlohmann::ordered_json;

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

int cmd_gc(const GcOptions& o) {
  const std::vector<GcEntry> entries = collect_garbage(o.policy);
  int rc = kExitOk;
  std::size_t removed = 0, kept = 0, corrupt = 0, failed = 0;
  for (const auto& e : entries) {
    removed += e.action == GcAction::removed || e.action == GcAction::would_remove;
    kept += e.action == GcAction::kept;
    corrupt += e.corrupt;
    if (e.action == GcAction::failed) {
      ++failed;
      rc = kExitError;
    }
  }
  if (o.json) {
    json arr = json::array();
    for (const auto& e : entries) {
      json j = {{"name", e.name},
                {"action", gc_action_name(e.action)},
                {"reason", e.reason},
                {"spill_file", e.spill_file},
                {"named", e.named},
                {"corrupt", e.corrupt}};
      j["problem"] = e.problem.empty() ? json(nullptr) : json(e.problem);
      j["messages"] = e.messages ? json(*e.messages) : json(nullptr);
      arr.push_back(std::move(j));
    }
    json out = {{"dry_run", o.policy.dry_run},
                {"include_named", o.policy.include_named},
                {"force", o.policy.force},
                {"removed", removed},
                {"kept", kept},
                {"corrupt", corrupt},
                {"failed", failed},
                {"segments", arr}};
    std::cout << out.dump(2) << "\n";
  } else {
    for (const auto& e : entries) {
      std::cout << fmt::format("{:<12} {}: {}\n", gc_action_name(e.action), e.name, e.reason);
      if (e.corrupt && !e.problem.empty()) std::cout << fmt::format("{:<12}   {}\n", "", e.problem);
    }
    std::cout << fmt::format("gc: {} {}, {} kept, {} corrupt{}\n", removed,
                             o.policy.dry_run ? "would be removed" : "removed", kept, corrupt,
                             failed != 0 ? fmt::format(", {} failed", failed) : std::string());
  }
  for (const auto& e : entries) {
    if (e.action == GcAction::failed) std::cerr << "shmq: gc " << e.name << ": " << e.reason << "\n";
  }
  return rc;
}

}  // namespace shmq::cli
