// The `shmq` subcommands. Each returns the process exit code: 0 ok, 1 error (already reported on
// stderr in words), 2 usage (reported by main from CLI11's parse errors).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shmq/core/result.hpp"
#include "shmq/shm/gc.hpp"

namespace shmq::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Prints "shmq: <context>: <what>" to stderr and returns kExitError (kExitUsage for an invalid
// name).
int report(const std::string& context, const Error& e);
int report(const std::string& context, const std::string& what);

struct LsOptions {
  std::vector<std::string> patterns;
  bool json = false;
};
int cmd_ls(const LsOptions& o);

struct StatOptions {
  std::string name;
  bool json = false;
};
int cmd_stat(const StatOptions& o);

struct WatchOptions {
  std::string name;
  double interval = 1.0;
  std::uint64_t count = 0;  // 0: until interrupted
};
int cmd_watch(const WatchOptions& o);

struct CreateOptions {
  std::string name;
  std::string kind;        // "pipe" | "queue"
  std::uint64_t capacity = 0;   // pipe ring bytes; 0 = the library default
  bool duplex = false;
  std::uint64_t slots = 0;      // queue; 0 = default
  std::uint64_t slot_size = 0;  // queue; 0 = default
  std::uint64_t maxsize = 0;    // queue; 0 = slots
  std::uint32_t arena_chunks = 0;
  std::uint64_t arena_chunk_bytes = 0;
  bool slots_given = false, slot_size_given = false, maxsize_given = false, capacity_given = false;
  bool arena_chunks_given = false, arena_chunk_bytes_given = false;
};
int cmd_create(const CreateOptions& o);

struct RmOptions {
  std::vector<std::string> names;
  bool force = false;  // remove even while live participants are attached
};
int cmd_rm(const RmOptions& o);

struct GcOptions {
  GcPolicy policy;  // the library's (shm/gc.hpp): patterns, include_named, force, dry_run, grace
  bool json = false;
};
int cmd_gc(const GcOptions& o);

struct DumpOptions {
  std::string name;
  std::uint64_t count = 10;
  unsigned direction = 0;
  std::string schema;     // .fbs file
  std::string root_type;
  std::vector<std::string> include_dirs;
  std::uint64_t max_bytes = 64;  // bytes shown as hex/text per message
  bool json = false;
};
int cmd_dump(const DumpOptions& o);

struct SendOptions {
  std::string name;
  std::vector<std::string> files;  // one message per file; empty: one message per stdin line
  std::uint16_t kind = 0;
  unsigned direction = 0;
  double timeout = -1;  // seconds per message; <0: wait forever
};
int cmd_send(const SendOptions& o);

struct RecvOptions {
  std::string name;
  std::uint64_t count = 0;  // 0: until closed (or the timeout)
  double timeout = -1;      // seconds to wait for each message; <0: forever
  std::string file_prefix;  // write message i to <prefix><i>; empty: one line per message
  unsigned direction = 0;
};
int cmd_recv(const RecvOptions& o);

}  // namespace shmq::cli
