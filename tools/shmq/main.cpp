// shmq: list, inspect, watch, create, clean up and script shmq segments.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <iostream>

#include "commands.hpp"
#include "shmq/core/message_kind.hpp"

namespace {

constexpr const char* kFooter =
    "Exit status: 0 ok, 1 error (explained on stderr), 2 usage.\n"
    "Segments live in /dev/shm as shmq.<name>.";

}  // namespace

int main(int argc, char** argv) {
  using namespace shmq::cli;
  CLI::App app{"Inspect and manage shmq shared-memory pipes and queues.", "shmq"};
  app.footer(kFooter);
  app.require_subcommand(1, 1);
  app.set_version_flag("--version", "shmq 0.1.0");

  LsOptions ls;
  auto* c_ls = app.add_subcommand("ls", "List every shmq segment in /dev/shm");
  c_ls->add_option("patterns", ls.patterns, "Only names matching these shell patterns ('jobs-*')");
  c_ls->add_flag("--json", ls.json, "Print JSON instead of a table");

  StatOptions st;
  auto* c_stat = app.add_subcommand("stat", "Show a segment's header, participants and statistics");
  c_stat->add_option("name", st.name, "Segment name (without the shmq. prefix)")->required();
  c_stat->add_flag("--json", st.json, "Print JSON");

  WatchOptions wa;
  auto* c_watch = app.add_subcommand("watch", "Show live rates of a segment, refreshing in place");
  c_watch->add_option("name", wa.name, "Segment name")->required();
  c_watch->add_option("-i,--interval", wa.interval, "Seconds between samples")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str();
  c_watch->add_option("-n,--count", wa.count, "Stop after N samples (0: until Ctrl-C)")
      ->capture_default_str();

  CreateOptions cr;
  auto* c_create = app.add_subcommand("create", "Create a named pipe or queue");
  c_create->add_option("name", cr.name, "Segment name")->required();
  c_create->add_option("--kind", cr.kind, "pipe or queue")
      ->required()
      ->check(CLI::IsMember({"pipe", "queue"}));
  auto* o_cap = c_create->add_option("--capacity", cr.capacity,
                                     "Pipe: ring bytes per direction (a power of two)");
  auto* o_duplex = c_create->add_flag("--duplex", cr.duplex, "Pipe: two directions");
  auto* o_slots = c_create->add_option("--slots", cr.slots, "Queue: number of slots (a power of two)");
  auto* o_slot_size = c_create->add_option("--slot-size", cr.slot_size, "Queue: bytes per slot");
  auto* o_maxsize = c_create->add_option("--maxsize", cr.maxsize,
                                         "Queue: bound in messages (0: the number of slots)");
  auto* o_arena = c_create->add_option("--arena-chunks", cr.arena_chunks,
                                       "Queue: large-message arena chunks (0: none; default 8)");
  auto* o_chunk = c_create->add_option("--arena-chunk-bytes", cr.arena_chunk_bytes,
                                       "Queue: bytes per arena chunk (a multiple of 4096; default 2 MiB)");

  RmOptions rm;
  auto* c_rm = app.add_subcommand("rm", "Remove named segments");
  c_rm->add_option("names", rm.names, "Segment names")->required();
  c_rm->add_flag("-f,--force", rm.force,
                 "Remove even if live processes are attached (they keep their mapping)");

  GcOptions gc;
  auto* c_gc = app.add_subcommand(
      "gc", "Remove what crashed processes left: anonymous segments nobody holds (never data "
            "in a named one)");
  c_gc->footer(
      "Nothing any process holds is removed: the kernel's locks decide (mapped, being created,\n"
      "a participant or a role), and files younger than --grace are left alone. Anonymous\n"
      "segments (unnamed queues and pipes, removed by their last user) nobody holds are\n"
      "removed, corrupt ones too. Named segments live until `shmq rm`, even idle and holding\n"
      "messages: --include-named removes idle empty ones, and --force those holding messages\n"
      "(or unreadable ones) as well; each is listed. Spill files of a queue that is gone are\n"
      "removed, except an anonymous queue's while some process maps it.");
  c_gc->add_option("patterns", gc.policy.patterns,
                   "Only names matching these shell patterns ('jobs-*')");
  c_gc->add_flag("-n,--dry-run", gc.policy.dry_run, "Only report what would be removed");
  auto* o_named = c_gc->add_flag("--include-named", gc.policy.include_named,
                                 "Also remove named segments nobody holds, if they hold no message");
  c_gc->add_flag("-f,--force", gc.policy.force,
                 "With --include-named: remove them even holding messages")
      ->needs(o_named);
  c_gc->add_flag("--json", gc.json, "Print JSON");
  c_gc->add_option("--grace", gc.policy.grace_seconds,
                   "Seconds a file must have existed before gc removes it (its creator may "
                   "still be setting it up)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();

  DumpOptions du;
  auto* c_dump = app.add_subcommand("dump", "Peek at waiting messages without consuming them");
  c_dump->add_option("name", du.name, "Segment name")->required();
  c_dump->add_option("-n,--count", du.count, "Show at most N messages")->capture_default_str();
  c_dump->add_option("--direction", du.direction, "Pipe direction (0, or 1 for a duplex pipe)")
      ->check(CLI::Range(0u, 1u));
  auto* o_schema =
      c_dump->add_option("--schema", du.schema, "FlatBuffers schema (.fbs) for kind-2 messages")
          ->check(CLI::ExistingFile);
  auto* o_root = c_dump->add_option("--root-type", du.root_type,
                                    "The root table (default: the schema's root_type)");
  o_root->needs(o_schema);
  c_dump->add_option("-I,--include", du.include_dirs, "Include directory for the schema");
  c_dump->add_option("--max-bytes", du.max_bytes, "Bytes shown as hex and text per message")
      ->capture_default_str();
  c_dump->add_flag("--json", du.json, "Print JSON");

  SendOptions se;
  auto* c_send = app.add_subcommand(
      "send", "Send messages: one per stdin line, or one per --file");
  c_send->add_option("name", se.name, "Segment name")->required();
  c_send->add_option("-f,--file", se.files, "Send this file's contents as one message (repeatable)")
      ->check(CLI::ExistingFile);
  using shmq::MessageKind;
  c_send->add_option("--kind", se.kind,
                     fmt::format("Message kind ({} bytes, {} pickle, {} FlatBuffers, {}+ yours)",
                                 kind_value(MessageKind::bytes), kind_value(MessageKind::pickle),
                                 kind_value(MessageKind::flatbuffers), shmq::kFirstUserKind))
      ->capture_default_str();
  c_send->add_option("--direction", se.direction, "Pipe direction")->check(CLI::Range(0u, 1u));
  c_send->add_option("-t,--timeout", se.timeout, "Seconds to wait for room for each message")
      ->check(CLI::NonNegativeNumber);

  RecvOptions re;
  auto* c_recv = app.add_subcommand(
      "recv", "Receive messages: one per stdout line, or one per --file");
  c_recv->add_option("name", re.name, "Segment name")->required();
  c_recv->add_option("-n,--count", re.count, "Stop after N messages (0: until closed)")
      ->capture_default_str();
  c_recv->add_option("-t,--timeout", re.timeout, "Seconds to wait for each message")
      ->check(CLI::NonNegativeNumber);
  c_recv->add_option("-f,--file", re.file_prefix,
                     "Write message i to <PREFIX><i> instead of a line on stdout");
  c_recv->add_option("--direction", re.direction, "Pipe direction")->check(CLI::Range(0u, 1u));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help/version on stdout, errors on stderr
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (c_create->parsed()) {
    cr.capacity_given = o_cap->count() > 0;
    cr.slots_given = o_slots->count() > 0;
    cr.slot_size_given = o_slot_size->count() > 0;
    cr.maxsize_given = o_maxsize->count() > 0;
    cr.arena_chunks_given = o_arena->count() > 0;
    cr.arena_chunk_bytes_given = o_chunk->count() > 0;
    const bool queue_opts = cr.slots_given || cr.slot_size_given || cr.maxsize_given ||
                            cr.arena_chunks_given || cr.arena_chunk_bytes_given;
    const bool pipe_opts = cr.capacity_given || o_duplex->count() > 0;
    if (cr.kind == "pipe" && queue_opts) {
      std::cerr << "shmq create: --slots, --slot-size, --maxsize and --arena-* apply to queues only\n";
      return kExitUsage;
    }
    if (cr.kind == "queue" && pipe_opts) {
      std::cerr << "shmq create: --capacity and --duplex apply to pipes only\n";
      return kExitUsage;
    }
    return cmd_create(cr);
  }

  try {
    if (c_ls->parsed()) return cmd_ls(ls);
    if (c_stat->parsed()) return cmd_stat(st);
    if (c_watch->parsed()) return cmd_watch(wa);
    if (c_rm->parsed()) return cmd_rm(rm);
    if (c_gc->parsed()) return cmd_gc(gc);
    if (c_dump->parsed()) return cmd_dump(du);
    if (c_send->parsed()) return cmd_send(se);
    if (c_recv->parsed()) return cmd_recv(re);
  } catch (const std::exception& e) {
    // Only allocation failures or I/O stream errors get here; report, do not abort.
    std::cerr << "shmq: " << e.what() << "\n";
    return kExitError;
  }
  return kExitUsage;
}
